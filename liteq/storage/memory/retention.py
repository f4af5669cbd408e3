"""Deleting tasks from the memory store: purge by filter, prune past the result TTL."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence

from ..states import RUNNING
from .state import Entry, MemoryState

__all__ = ["prune", "purge"]


def _drop(s: MemoryState, pred: Callable[[Entry], bool]) -> int:
    with s.lock:
        doomed = [i for i, e in s.tasks.items() if pred(e)]
        for i in doomed:
            e = s.tasks.pop(i)
            if e.row.idempotency_key is not None:
                s.keys.pop(e.row.idempotency_key, None)
    if doomed:
        s.notify()
    return len(doomed)


def purge(
    s: MemoryState,
    *,
    queue: str | None = None,
    states: Iterable[str] | None = None,
    ids: Sequence[str] | None = None,
) -> int:
    """Delete matching tasks; see :meth:`Storage.purge`."""
    wanted = set(states) if states is not None else None
    idset = set(ids) if ids is not None else None

    def match(e: Entry) -> bool:
        r = e.row
        if queue is not None and r.queue != queue:
            return False
        if wanted is None and r.state == RUNNING:
            return False
        if wanted is not None and r.state not in wanted:
            return False
        return idset is None or r.id in idset

    return _drop(s, match)


def prune(s: MemoryState, *, now: float | None = None, limit: int = 10_000) -> int:
    """Delete finished tasks past their TTL; see :meth:`Storage.prune`."""
    now = time.time() if now is None else now
    budget = [limit]
    with s.lock:
        s.forget_stats_before(now)

    def match(e: Entry) -> bool:
        x = e.row.result_expires_at
        if x is None or x > now or budget[0] <= 0:
            return False
        budget[0] -= 1
        return True

    return _drop(s, match)
