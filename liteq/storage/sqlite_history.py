"""The SQLite store's reads for inspection at scale: keyset pages of the task list, the oldest
pending task per queue, and the per-minute history kept by the ``task_stats`` trigger.

Each function takes the store's ``read(sql, params)`` and returns raw rows or plain data; the
store turns rows into :class:`~liteq.storage.base.TaskRow`. Every query is a handful of index
seeks (``tasks_by_name``: name, state, seq), so its cost does not grow with the number of tasks:

- the names are enumerated by hopping through the index (one seek per distinct name);
- a page is, for each wanted name and state, the newest ``limit`` rows before the cursor, merged.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from .base import STATES, StatsRow
from .sqlite_schema import _ROW_COLUMNS

__all__ = ["names", "oldest_pending", "page", "stats"]

Read = Callable[[str, Sequence[Any]], list[Any]]

# Each step asks the index for the next name after the last one: one seek per distinct name.
_NAMES = (
    "WITH RECURSIVE n(name) AS (SELECT min(name) FROM tasks UNION ALL "
    "SELECT (SELECT min(name) FROM tasks WHERE name > n.name) FROM n WHERE n.name IS NOT NULL) "
    "SELECT name FROM n WHERE name IS NOT NULL"
)


def names(read: Read) -> list[str]:
    """Every distinct task name stored, in order."""
    return [r[0] for r in read(_NAMES, ())]


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
) -> list[Any]:
    """Raw rows (``_ROW_COLUMNS``) of one newest-first page; see :meth:`Storage.page`."""
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
        bound = found[0][0]
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
        marks = ",".join("?" * len(wanted))
        return read(
            f"SELECT {_ROW_COLUMNS}, seq FROM tasks WHERE parent_id = ? AND state IN ({marks}){extra} "
            "ORDER BY seq DESC LIMIT ?",
            (parent, *wanted, *params, limit),
        )
    if name is None and states is None:
        # No name or state: the rowid order itself is the page.
        where = ("WHERE " + extra[5:]) if extra else ""
        return read(f"SELECT {_ROW_COLUMNS}, seq FROM tasks {where} ORDER BY seq DESC LIMIT ?", (*params, limit))
    sql = (
        f"SELECT {_ROW_COLUMNS}, seq FROM tasks INDEXED BY tasks_by_name "
        f"WHERE name = ? AND state = ?{extra} ORDER BY seq DESC LIMIT ?"
    )
    runs = []
    for task_name in [name] if name is not None else names(read):
        for state in wanted:
            rows = read(sql, (task_name, state, *params, limit))
            if rows:
                runs.append(rows)
    merged = heapq.merge(*runs, key=lambda r: -r[-1])
    return [r for _, r in zip(range(limit), merged, strict=False)]


def oldest_pending(read: Read, queues: Iterable[str]) -> dict[str, Any]:
    """The raw row of the pending task stored first in each of ``queues`` that has one."""
    out: dict[str, Any] = {}
    task_names = names(read)
    sql = (
        f"SELECT {_ROW_COLUMNS}, seq FROM tasks INDEXED BY tasks_by_name "
        "WHERE name = ? AND state = 'pending' AND queue = ? ORDER BY seq LIMIT 1"
    )
    for queue in queues:
        best = None
        for task_name in task_names:
            rows = read(sql, (task_name, queue))
            if rows and (best is None or rows[0][-1] < best[-1]):
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
        f"SELECT minute / {span} * {span} AS m, queue, name, state, sum(n), sum(latency_sum), max(latency_max) "
        f"FROM task_stats WHERE {where} GROUP BY m, queue, name, state ORDER BY m, queue, name, state",
        params,
    )
    return [
        StatsRow(
            minute=float(r[0] * 60), queue=r[1], name=r[2], state=r[3], count=r[4], latency_sum=r[5], latency_max=r[6]
        )
        for r in rows
    ]
