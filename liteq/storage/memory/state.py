"""The one in-memory state every part of :class:`~liteq.storage.memory.MemoryStorage` works on.

The parts (:mod:`.queue`, :mod:`.canvas`, :mod:`.history`, :mod:`.retention`, :mod:`.schedules`, :mod:`.workers`)
hold no data of their own: they share one :class:`MemoryState` and take its lock, so a call is
atomic across all of them, as one SQLite transaction is.
"""

from __future__ import annotations

import copy
import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass

from ..contract import STATS_MEMORY
from ..policy import result_expiry
from ..records import ScheduleState, TaskRow, WorkerInfo

__all__ = ["Entry", "MemoryState", "bare"]


@dataclass(slots=True)
class Entry:
    """A stored task: its row plus what the row does not show (the limits stored with it)."""

    seq: int
    row: TaskRow
    result_ttl: float | None
    timeout: float | None = None
    soft_timeout: float | None = None
    rate_limit: float | None = None


class MemoryState:
    """Every dict of the memory store, under one re-entrant lock; ``notify`` wakes waiters."""

    def __init__(self, *, result_ttl: float, location: str, notify: Callable[[], None]) -> None:
        self.result_ttl = result_ttl
        self.location = location
        self.notify = notify
        self.lock = threading.RLock()
        self.tasks: dict[str, Entry] = {}
        self.keys: dict[str, str] = {}
        self.workers: dict[str, WorkerInfo] = {}
        self.slots: dict[tuple[str, float], str] = {}
        self.schedules: dict[str, ScheduleState] = {}
        self.rates: dict[str, float] = {}
        # Canvas links: who waits for a task, how many a task still waits for, its release delay and
        # not-before time once the last one succeeds, what it required, and group members by index.
        self.dependents: dict[str, list[str]] = {}
        self.waiting: dict[str, int] = {}
        self.holds: dict[str, tuple[float, float | None]] = {}
        self.requires: dict[str, list[str]] = {}
        self.groups: dict[str, dict[int, str]] = {}
        self.seq = itertools.count(1)
        self.stats: dict[tuple[int, str, str, str], tuple[int, float, float]] = {}

    def settle(self, e: Entry, state: str, now: float, ttl: float | None = None) -> None:
        """Move ``e`` to the finished ``state`` and count it in the statistics (no cascade)."""
        self.waiting.pop(e.row.id, None)
        r = e.row
        r.state = state
        r.finished_at = now
        r.result_expires_at = result_expiry(now, ttl, e.result_ttl, self.result_ttl)
        r.lease_owner = r.lease_token = None
        r.lease_deadline = None
        # The history the dashboard charts (SqliteStorage keeps it with a trigger).
        latency = max(now - r.enqueued_at, 0.0)
        key = (int(now // 60), r.queue, r.name, state)
        n, total, worst = self.stats.get(key, (0, 0.0, 0.0))
        self.stats[key] = (n + 1, total + latency, max(worst, latency))

    def forget_stats_before(self, now: float) -> None:
        """Drop per-minute statistics older than :data:`~liteq.storage.contract.STATS_MEMORY`."""
        horizon = int((now - STATS_MEMORY) // 60)
        for key in [k for k in self.stats if k[0] < horizon]:
            del self.stats[key]


def bare(r: TaskRow) -> TaskRow:
    """A copy of ``r`` without its values (payload, result, error, progress, error history)."""
    c = copy.copy(r)
    c.payload = c.result = c.error = c.progress = None
    c.errors = []
    return c
