"""Canvas in the SQLite store: group membership, dependencies between tasks, and the cascade
when a task finishes (a success counts down its dependents' ``waiting``, the last one releases
them; a failure fails them and theirs with its error). Runs inside the caller's transaction."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from ..policy import cascade_reason
from ..records import NewTask
from .connection import Database
from .schema import FINISH, marks

__all__ = ["cascade", "group_members", "link"]


def link(conn: sqlite3.Connection, tasks: Sequence[NewTask], now: float, result_ttl: float) -> None:
    """Record group membership and dependencies of freshly inserted tasks (canvas)."""
    members = [(t.group_id, t.group_index or 0, t.id) for t in tasks if t.group_id is not None]
    if members:
        conn.executemany("INSERT OR REPLACE INTO task_groups (group_id, position, task_id) VALUES (?,?,?)", members)
    for t in tasks:
        if not t.depends_on:
            continue
        deps = list(dict.fromkeys(t.depends_on))
        states = dict(conn.execute(f"SELECT id, state FROM tasks WHERE id IN ({marks(len(deps))})", deps).fetchall())
        bad = next((d for d in deps if states.get(d) in ("failed", "cancelled", "expired")), None)
        if bad is not None:
            conn.execute(
                "UPDATE tasks SET state = 'failed', reason = :reason, error = (SELECT error FROM tasks WHERE id = :dep), "
                + FINISH
                + " WHERE id = :id",
                {"reason": cascade_reason(bad, None), "dep": bad, "id": t.id, "now": now, "ttl": None,
                 "default_ttl": result_ttl},
            )  # fmt: skip
            cascade(conn, t.id, "failed", now, result_ttl)  # dependents linked earlier in this batch
            continue
        # A dependency already gone (pruned after it finished) or succeeded is not waited for.
        open_deps = [d for d in deps if d in states and states[d] != "succeeded"]
        if not open_deps:
            continue
        # Its own start time (an eta, or a countdown counted from its release) waits with it.
        conn.execute(
            "UPDATE tasks SET state = 'scheduled', not_before = CASE WHEN run_at > enqueued_at THEN run_at END, "
            "release_delay = ?, run_at = ?, waiting = ? WHERE id = ?",
            (t.release_delay, float("inf"), len(open_deps), t.id),
        )
        conn.executemany("INSERT INTO task_deps (task_id, dependent_id) VALUES (?, ?)", [(d, t.id) for d in open_deps])
        conn.executemany("UPDATE tasks SET dependents = dependents + 1 WHERE id = ?", [(d,) for d in open_deps])


def cascade(conn: sqlite3.Connection, task_id: str, state: str, now: float, result_ttl: float) -> bool:
    """After ``task_id`` finished in ``state``: count a success towards its dependents (those
    with nothing left to wait for become pending), or fail them (and theirs) with its error.
    Runs in the completing transaction. Returns True when some task became runnable."""
    if state == "succeeded":
        rows = conn.execute(
            "UPDATE tasks SET waiting = waiting - 1 WHERE id IN "
            "(SELECT dependent_id FROM task_deps WHERE task_id = ?) AND state = 'scheduled' AND waiting > 0 "
            "RETURNING id, waiting",
            (task_id,),
        ).fetchall()
        ready = [{"now": now, "id": r["id"]} for r in rows if r["waiting"] == 0]
        conn.executemany(
            "UPDATE tasks SET run_at = max(:now + release_delay, COALESCE(not_before, 0)), "
            "state = CASE WHEN max(:now + release_delay, COALESCE(not_before, 0)) <= :now "
            "THEN 'pending' ELSE 'scheduled' END WHERE id = :id",
            ready,
        )
        return bool(ready)
    params = {"reason": cascade_reason(task_id, None), "root": task_id, "now": now, "ttl": None,
              "default_ttl": result_ttl}  # fmt: skip
    frontier = [task_id]
    while frontier:
        params["parent"] = frontier.pop()
        failed = conn.execute(
            "UPDATE tasks SET state = 'failed', waiting = 0, reason = :reason, "
            "error = (SELECT error FROM tasks WHERE id = :root), "
            + FINISH
            + " WHERE id IN (SELECT dependent_id FROM task_deps WHERE task_id = :parent) "
            "AND state = 'scheduled' AND waiting > 0 RETURNING id, dependents",
            params,
        ).fetchall()
        frontier += [r["id"] for r in failed if r["dependents"]]
    return False


def group_members(db: Database, group_id: str) -> list[str]:
    """Member ids of a group in order; see :meth:`Storage.group_members`."""
    return [
        r["task_id"]
        for r in db.read(
            "SELECT g.task_id FROM task_groups g JOIN tasks t ON t.id = g.task_id "
            "WHERE g.group_id = ? ORDER BY g.position",
            (group_id,),
        )
    ]
