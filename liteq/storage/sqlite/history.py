"""The SQLite store's reads: rows by id and filter, counts, and for inspection at scale: keyset pages of the task list, the oldest
pending task per queue, and the per-minute history kept by the ``task_stats`` trigger.

:class:`History` also reads rows by id or filter, and the live counts. Rows become
:class:`~liteq.storage.records.TaskRow` by column name (:func:`task_row`). Every page query is a handful of index
seeks, so its cost does not grow with the number of tasks:

- tasks that are not pending are found through ``tasks_by_name`` (name, state, seq): the names are
  enumerated by hopping through it (one seek per distinct name), then for each wanted name and
  state come the newest ``limit`` rows before the cursor;
- pending tasks are found through the claim's own index, ``tasks_pending`` (queue, priority, seq):
  its (queue, priority) ranges are enumerated the same way, each read newest first. So an
  enqueue writes no list index entry (schema v9);
- the runs are merged newest first.
"""

from __future__ import annotations

import heapq
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ..records import StatsRow, TaskRow
from ..states import PENDING, STATES
from .blobs import Blobs
from .connection import Database
from .schema import COUNTS, ROW_COLUMNS, chunks, marks

__all__ = ["History", "named", "names", "oldest_pending", "page", "pending_ranges", "stats", "task_row"]

Read = Callable[[str, Sequence[Any]], list[sqlite3.Row]]

#: The fields of :class:`TaskRow` read from the columns of the same name (``ROW_COLUMNS``).
_ROW_FIELDS = tuple(c.strip() for c in ROW_COLUMNS.split(","))

# Each step asks the index for the next name after the last one: one seek per distinct name. The
# ``state <> 'pending'`` term is the partial index's own condition, which lets the planner use it.
_NAMES = (
    "WITH RECURSIVE n(name) AS (SELECT min(name) FROM tasks WHERE state <> 'pending' UNION ALL "
    "SELECT (SELECT min(name) FROM tasks WHERE state <> 'pending' AND name > n.name) FROM n "
    "WHERE n.name IS NOT NULL) SELECT name FROM n WHERE name IS NOT NULL"
)
# The pending index's ranges, one seek each: the next queue, then each queue's priorities downwards.
_FIRST_QUEUE = "SELECT min(queue) AS queue FROM tasks WHERE state = 'pending'"
_NEXT_QUEUE = "SELECT min(queue) AS queue FROM tasks WHERE state = 'pending' AND queue > ?"
_NEXT_PRIORITY = "SELECT max(priority) AS priority FROM tasks WHERE state = 'pending' AND queue = ? AND priority < ?"
_TOP_PRIORITY = "SELECT max(priority) AS priority FROM tasks WHERE state = 'pending' AND queue = ?"


def names(read: Read) -> list[str]:
    """Every distinct name of a stored task that is not pending, in order (``tasks_by_name``)."""
    return [r["name"] for r in read(_NAMES, ())]


def pending_ranges(read: Read, queue: str | None = None) -> list[tuple[str, int]]:
    """The ``(queue, priority)`` pairs that have pending tasks (of ``queue`` only, when given): the
    ranges of ``tasks_pending``, within each of which the tasks lie in store order."""
    queues: list[str] = []
    if queue is not None:
        queues.append(queue)
    else:
        found = read(_FIRST_QUEUE, ())[0]["queue"]
        while found is not None:
            queues.append(found)
            found = read(_NEXT_QUEUE, (found,))[0]["queue"]
    ranges: list[tuple[str, int]] = []
    for q in queues:
        priority = read(_TOP_PRIORITY, (q,))[0]["priority"]
        while priority is not None:
            ranges.append((q, priority))
            priority = read(_NEXT_PRIORITY, (q, priority))[0]["priority"]
    return ranges


def page(
    read: Read,
    *,
    states: Iterable[str] | None,
    queue: str | None,
    name: str | None,
    since: float | None,
    until: float | None,
    parent: str | None,
    before: str | None,
    limit: int,
) -> list[sqlite3.Row]:
    """Raw rows (``ROW_COLUMNS``, ``seq``) of one newest-first page; see :meth:`Storage.page`."""
    if limit <= 0:
        return []
    wanted = list(dict.fromkeys(states)) if states is not None else list(STATES)
    if not wanted:
        return []
    bound: float | None = None
    if before is not None:
        found = read("SELECT seq FROM tasks WHERE id = ?", (before,))
        if not found:
            return []
        bound = found[0]["seq"]
    extra = ""
    params: list[Any] = []
    if queue is not None:
        extra += " AND queue = ?"
        params.append(queue)
    if since is not None:
        extra += " AND enqueued_at >= ?"
        params.append(since)
    if until is not None:
        extra += " AND enqueued_at < ?"
        params.append(until)
    if bound is not None:
        extra += " AND seq < ?"
        params.append(bound)
    if parent is not None:
        # Few rows share a parent: its partial index finds them, the sort is cheap.
        if name is not None:
            extra += " AND name = ?"
            params.append(name)
        return read(
            f"SELECT {ROW_COLUMNS}, seq FROM tasks WHERE parent_id = ? AND state IN ({marks(len(wanted))}){extra} "
            "ORDER BY seq DESC LIMIT ?",
            (parent, *wanted, *params, limit),
        )
    if name is None and states is None:
        # No name or state: the rowid order itself is the page.
        where = ("WHERE " + extra[5:]) if extra else ""
        return read(f"SELECT {ROW_COLUMNS}, seq FROM tasks {where} ORDER BY seq DESC LIMIT ?", (*params, limit))
    runs = []
    others = [state for state in wanted if state != PENDING]
    if others:
        sql = (
            f"SELECT {ROW_COLUMNS}, seq FROM tasks INDEXED BY tasks_by_name "
            f"WHERE name = ? AND state = ? AND state <> 'pending'{extra} ORDER BY seq DESC LIMIT ?"
        )
        for task_name in [name] if name is not None else names(read):
            for state in others:
                rows = read(sql, (task_name, state, *params, limit))
                if rows:
                    runs.append(rows)
    if len(others) < len(wanted):
        by_name, named = (" AND name = ?", [name]) if name is not None else ("", [])
        sql = (
            f"SELECT {ROW_COLUMNS}, seq FROM tasks INDEXED BY tasks_pending "
            f"WHERE state = 'pending' AND queue = ? AND priority = ?{by_name}{extra} ORDER BY seq DESC LIMIT ?"
        )
        for q, priority in pending_ranges(read, queue):
            rows = read(sql, (q, priority, *named, *params, limit))
            if rows:
                runs.append(rows)
    merged = heapq.merge(*runs, key=lambda r: -r["seq"])
    return [r for _, r in zip(range(limit), merged, strict=False)]


def named(
    read: Read, name: str, states: Iterable[str] | None, queue: str | None, limit: int, offset: int
) -> list[sqlite3.Row]:
    """Raw rows of one task name, oldest first (see :meth:`Storage.list`): those that are not
    pending through ``tasks_by_name``, the pending ones through the ranges of ``tasks_pending``."""
    wanted = list(dict.fromkeys(states)) if states is not None else list(STATES)
    others = [state for state in wanted if state != PENDING]
    want = limit + max(offset, 0) if limit >= 0 else -1
    on_queue, queued = (" AND queue = ?", [queue]) if queue is not None else ("", [])
    runs = []
    if others:
        runs.append(
            read(
                f"SELECT {ROW_COLUMNS}, seq FROM tasks WHERE name = ? AND state IN ({marks(len(others))}) "
                f"AND state <> 'pending'{on_queue} ORDER BY seq LIMIT ?",
                (name, *others, *queued, want),
            )
        )
    if len(others) < len(wanted):
        sql = (
            f"SELECT {ROW_COLUMNS}, seq FROM tasks INDEXED BY tasks_pending "
            "WHERE state = 'pending' AND queue = ? AND priority = ? AND name = ? ORDER BY seq LIMIT ?"
        )
        runs += [read(sql, (q, priority, name, want)) for q, priority in pending_ranges(read, queue)]
    merged = list(heapq.merge(*runs, key=lambda r: r["seq"]))
    start = max(offset, 0)
    return merged[start : start + limit] if limit >= 0 else merged[start:]


def oldest_pending(read: Read, queues: Iterable[str]) -> dict[str, sqlite3.Row]:
    """The raw row of the pending task stored first in each of ``queues`` that has one: the first
    row of each of the queue's ranges of ``tasks_pending``, the earliest of them."""
    out: dict[str, sqlite3.Row] = {}
    sql = (
        f"SELECT {ROW_COLUMNS}, seq FROM tasks INDEXED BY tasks_pending "
        "WHERE state = 'pending' AND queue = ? AND priority = ? ORDER BY seq LIMIT 1"
    )
    for queue in queues:
        best: sqlite3.Row | None = None
        for q, priority in pending_ranges(read, queue):
            rows = read(sql, (q, priority))
            if rows and (best is None or rows[0]["seq"] < best["seq"]):
                best = rows[0]
        if best is not None:
            out[queue] = best
    return out


def stats(read: Read, *, since: float, until: float | None, bucket: int = 60) -> list[StatsRow]:
    """Rows of ``task_stats``, added up per ``bucket`` seconds; see :meth:`Storage.stats`."""
    span = max(int(bucket) // 60, 1)
    lo = int(since // 60) if since % 60 == 0 else int(since // 60) + 1
    params: list[Any] = [lo]
    where = "minute >= ?"
    if until is not None:
        hi = int(until // 60) if until % 60 == 0 else int(until // 60) + 1
        where += " AND minute < ?"
        params.append(hi)
    rows = read(
        f"SELECT minute / {span} * {span} AS m, queue, name, state, sum(n) AS n, sum(latency_sum) AS latency_sum, "
        "max(latency_max) AS latency_max "
        f"FROM task_stats WHERE {where} GROUP BY m, queue, name, state ORDER BY m, queue, name, state",
        params,
    )
    return [
        StatsRow(
            minute=float(r["m"] * 60),
            queue=r["queue"],
            name=r["name"],
            state=r["state"],
            count=r["n"],
            latency_sum=r["latency_sum"],
            latency_max=r["latency_max"],
        )
        for r in rows
    ]


def task_row(r: sqlite3.Row, blobs: Blobs | None = None) -> TaskRow:
    """A :class:`TaskRow` from a row holding ``ROW_COLUMNS``; with ``blobs``, the row also holds
    ``payload, payload_ref, result, result_ref, error, progress`` and the values are filled in."""
    row = TaskRow(**{f: r[f] for f in _ROW_FIELDS}, payload=None)
    row.cancel_requested = bool(r["cancel_requested"])
    if blobs is not None:
        row.payload = None if r["payload"] is None else bytes(r["payload"])
        row.result = None if r["result"] is None else bytes(r["result"])
        # A blob that cannot be read marks this row only (``damaged``), never the whole read.
        if r["payload_ref"]:
            row.payload, row.damaged = blobs.read(r["payload_ref"])
        if r["result_ref"]:
            row.result, problem = blobs.read(r["result_ref"])
            row.damaged = problem or row.damaged
        row.error = None if r["error"] is None else bytes(r["error"])
        row.progress = None if r["progress"] is None else bytes(r["progress"])
    return row


class History:
    """The store's reads over one :class:`Database`: rows, counts, pages, statistics."""

    def __init__(self, db: Database, blobs: Blobs) -> None:
        self.db = db
        self.blobs = blobs

    def get(self, ids: Sequence[str], *, history: bool = False) -> list[TaskRow | None]:
        """Full rows by id; see :meth:`Storage.get`."""
        found: dict[str, TaskRow] = {}
        for chunk in chunks(ids):
            rows = self.db.read(
                f"SELECT {ROW_COLUMNS}, payload, payload_ref, result, result_ref, error, progress "
                f"FROM tasks WHERE id IN ({marks(len(chunk))})",
                chunk,
            )
            for r in rows:
                found[r["id"]] = task_row(r, self.blobs)
        if history and found:
            for chunk in chunks(list(found)):
                for task_id, error in self.db.read(
                    f"SELECT task_id, error FROM task_errors WHERE task_id IN ({marks(len(chunk))}) ORDER BY rowid",
                    chunk,
                ):
                    found[task_id].errors.append(bytes(error) if error is not None else b"")
        return [found.get(i) for i in ids]

    def select(
        self,
        *,
        states: Iterable[str] | None = None,
        queue: str | None = None,
        name: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[TaskRow]:
        """Rows matching filters, oldest first; see :meth:`Storage.list`."""
        clauses: list[str] = []
        params: list[Any] = []
        if states is not None:
            wanted = list(states)
            clauses.append(f"state IN ({marks(len(wanted))})" if wanted else "0")
            params += wanted
        if queue is not None:
            clauses.append("queue = ?")
            params.append(queue)
        if name is not None:
            return [task_row(r) for r in named(self.db.read, name, states, queue, limit, offset)]
        where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
        rows = self.db.read(
            f"SELECT {ROW_COLUMNS} FROM tasks {where} ORDER BY seq LIMIT ? OFFSET ?", [*params, limit, offset]
        )
        return [task_row(r) for r in rows]

    def counts(self) -> dict[str, dict[str, int]]:
        """``{queue: {state: n}}``; see :meth:`Storage.counts`."""
        out: dict[str, dict[str, int]] = {}
        # Finished tasks are counted by triggers as they finish; active ones are read from their
        # partial indexes, which hold only them (schema v7).
        for r in self.db.read(COUNTS):
            out.setdefault(r["queue"], {})[r["state"]] = r["n"]
        return out

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
    ) -> list[TaskRow]:
        """Newest-first keyset page; see :meth:`Storage.page`."""
        rows = page(
            self.db.read,
            states=states,
            queue=queue,
            name=name,
            since=since,
            until=until,
            parent=parent,
            before=before,
            limit=limit,
        )
        return [task_row(r) for r in rows]

    def oldest_pending(self) -> dict[str, TaskRow]:
        """The first-stored pending task per queue; see :meth:`Storage.oldest_pending`."""
        queues = [q for q, by_state in self.counts().items() if by_state.get(PENDING)]
        return {q: task_row(r) for q, r in oldest_pending(self.db.read, queues).items()}

    def stats(self, *, since: float, until: float | None = None, bucket: int = 60) -> list[StatsRow]:
        """Finish statistics per minute (or ``bucket``); see :meth:`Storage.stats`."""
        return stats(self.db.read, since=since, until=until, bucket=bucket)

    def next_run_at(self, queues: Sequence[str]) -> float | None:
        """Earliest scheduled ``run_at`` in ``queues``; see :meth:`Storage.next_run_at`."""
        if not queues:
            return None
        rows = self.db.read(
            f"SELECT run_at FROM tasks WHERE state = 'scheduled' AND queue IN ({marks(len(queues))}) "
            "ORDER BY run_at LIMIT 1",
            list(queues),
        )
        # Tasks waiting for others (canvas) have no start time (+inf) and wake no one.
        return rows[0]["run_at"] if rows and rows[0]["run_at"] != float("inf") else None
