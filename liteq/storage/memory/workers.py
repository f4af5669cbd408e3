"""Live workers in the memory store: registration, heartbeats and their ok/degraded state."""

from __future__ import annotations

import copy
import time

from ..records import WorkerInfo
from .state import MemoryState

__all__ = ["heartbeat", "register_worker", "unregister_worker", "workers"]


def register_worker(s: MemoryState, info: WorkerInfo) -> None:
    """Record a live worker; see :meth:`Storage.register_worker`."""
    with s.lock:
        s.workers[info.id] = copy.deepcopy(info)


def heartbeat(
    s: MemoryState,
    worker_id: str,
    *,
    tasks_done: int,
    now: float | None,
    state: str,
    state_reason: str | None,
    state_since: float | None,
) -> None:
    """Refresh a heartbeat and state; see :meth:`Storage.heartbeat`."""
    now = time.time() if now is None else now
    with s.lock:
        w = s.workers.get(worker_id)
        if w is not None:
            w.heartbeat_at = now
            w.tasks_done += tasks_done
            w.state, w.state_reason, w.state_since = state, state_reason, state_since


def unregister_worker(s: MemoryState, worker_id: str) -> None:
    """Forget a worker; see :meth:`Storage.unregister_worker`."""
    with s.lock:
        s.workers.pop(worker_id, None)


def workers(s: MemoryState, *, stale_after: float | None = None, now: float | None = None) -> list[WorkerInfo]:
    """Recorded workers; see :meth:`Storage.workers`."""
    now = time.time() if now is None else now
    with s.lock:
        ws = sorted(s.workers.values(), key=lambda w: w.started_at)
        return [copy.deepcopy(w) for w in ws if stale_after is None or w.heartbeat_at >= now - stale_after]
