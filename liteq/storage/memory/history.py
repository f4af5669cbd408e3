"""Reads of the memory store: rows, pages, counts and the per-minute statistics.

Scans are linear: the memory store is meant for thousands of tasks, not millions.
"""

from __future__ import annotations

import builtins
import copy
from collections.abc import Iterable, Sequence

from ..records import StatsRow, TaskRow
from ..states import PENDING, SCHEDULED
from .state import MemoryState, bare

__all__ = ["History"]


class History:
    """Reads over one :class:`MemoryState`; every method copies what it returns."""

    def __init__(self, state: MemoryState) -> None:
        self.s = state

    def get(self, ids: Sequence[str], *, history: bool = False) -> builtins.list[TaskRow | None]:
        """Rows by id; see :meth:`Storage.get`."""
        with self.s.lock:
            out: builtins.list[TaskRow | None] = []
            for id_ in ids:
                e = self.s.tasks.get(id_)
                if e is None:
                    out.append(None)
                    continue
                row = copy.copy(e.row)
                row.errors = list(e.row.errors) if history else []
                out.append(row)
            return out

    def list(
        self,
        *,
        states: Iterable[str] | None = None,
        queue: str | None = None,
        name: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> builtins.list[TaskRow]:
        """Rows matching filters, oldest first; see :meth:`Storage.list`."""
        wanted = set(states) if states is not None else None
        with self.s.lock:
            entries = sorted(self.s.tasks.values(), key=lambda e: e.seq)
            rows = [
                e.row
                for e in entries
                if (wanted is None or e.row.state in wanted)
                and (queue is None or e.row.queue == queue)
                and (name is None or e.row.name == name)
            ][offset : offset + limit]
            return [bare(r) for r in rows]

    def page(
        self,
        *,
        states: Iterable[str] | None = None,
        queue: str | None = None,
        name: str | None = None,
        since: float | None = None,
        until: float | None = None,
        parent: str | None = None,
        before: str | None = None,
        limit: int = 50,
    ) -> builtins.list[TaskRow]:
        """Newest-first keyset page (a linear scan); see :meth:`Storage.page`."""
        wanted = set(states) if states is not None else None
        with self.s.lock:
            bound = None
            if before is not None:
                cursor = self.s.tasks.get(before)
                if cursor is None:
                    return []
                bound = cursor.seq
            out: builtins.list[TaskRow] = []
            for e in sorted(self.s.tasks.values(), key=lambda e: -e.seq):
                r = e.row
                if len(out) >= limit:
                    break
                if (
                    (bound is None or e.seq < bound)
                    and (wanted is None or r.state in wanted)
                    and (queue is None or r.queue == queue)
                    and (name is None or r.name == name)
                    and (since is None or r.enqueued_at >= since)
                    and (until is None or r.enqueued_at < until)
                    and (parent is None or r.parent_id == parent)
                ):
                    out.append(bare(r))
            return out

    def oldest_pending(self) -> dict[str, TaskRow]:
        """The first-stored pending task per queue; see :meth:`Storage.oldest_pending`."""
        out: dict[str, TaskRow] = {}
        with self.s.lock:
            for e in sorted(self.s.tasks.values(), key=lambda e: e.seq):
                if e.row.state == PENDING and e.row.queue not in out:
                    out[e.row.queue] = bare(e.row)
        return out

    def stats(self, *, since: float, until: float | None = None, bucket: int = 60) -> builtins.list[StatsRow]:
        """Finish statistics per minute (or ``bucket``); see :meth:`Storage.stats`."""
        span = max(int(bucket) // 60, 1)
        summed: dict[tuple[int, str, str, str], tuple[int, float, float]] = {}
        with self.s.lock:
            for (m, q, n, st), (c, total, worst) in self.s.stats.items():
                if m * 60 >= since and (until is None or m * 60 < until):
                    key = (m // span * span, q, n, st)
                    c0, t0, w0 = summed.get(key, (0, 0.0, 0.0))
                    summed[key] = (c0 + c, t0 + total, max(w0, worst))
        return [
            StatsRow(minute=float(m * 60), queue=q, name=n, state=st, count=c, latency_sum=total, latency_max=worst)
            for (m, q, n, st), (c, total, worst) in sorted(summed.items())
        ]

    def counts(self) -> dict[str, dict[str, int]]:
        """``{queue: {state: n}}``; see :meth:`Storage.counts`."""
        out: dict[str, dict[str, int]] = {}
        with self.s.lock:
            for e in self.s.tasks.values():
                by_state = out.setdefault(e.row.queue, {})
                by_state[e.row.state] = by_state.get(e.row.state, 0) + 1
        return out

    def next_run_at(self, queues: Sequence[str]) -> float | None:
        """Earliest scheduled ``run_at``; see :meth:`Storage.next_run_at`."""
        qs = set(queues)
        with self.s.lock:
            times = [
                e.row.run_at
                for e in self.s.tasks.values()
                if e.row.state == SCHEDULED and e.row.queue in qs and e.row.id not in self.s.waiting
            ]
        return min(times) if times else None
