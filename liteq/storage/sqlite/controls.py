"""Task controls of the SQLite store, applied inside the enqueue and claim transactions: unique
keys and periodic slots (an enqueue that is a no-op), locks (one holder at a time) and rate limits
(shared by every worker of the store)."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping

from ...ratelimit import admit
from ..records import NewTask
from .schema import CLEAR_LEASE, marks

__all__ = ["duplicate_of", "hold_back"]


def duplicate_of(conn: sqlite3.Connection, t: NewTask, now: float, unique: dict[str, str]) -> str | None:
    """The id of a task that makes ``t`` a no-op (unique key waiting, periodic slot fired), or None.

    A periodic slot is claimed by inserting its row; the insert and the task's own insert
    commit together, so a slot fires once however many schedulers race for it.
    """
    if t.unique_key is not None:
        if t.unique_key in unique:
            return unique[t.unique_key]
        found = conn.execute(
            "SELECT id FROM tasks WHERE unique_key = ? AND state IN ('pending', 'scheduled') LIMIT 1",
            (t.unique_key,),
        ).fetchone()
        if found is not None:
            return str(found["id"])
        unique[t.unique_key] = t.id
    if t.slot is not None:
        schedule, slot = t.slot
        if not conn.execute(
            "INSERT OR IGNORE INTO periodic_slots (schedule, slot, task_id, fired_at) VALUES (?,?,?,?)",
            (schedule, slot, t.id, now),
        ).rowcount:
            row = conn.execute(
                "SELECT task_id FROM periodic_slots WHERE schedule = ? AND slot = ?", (schedule, slot)
            ).fetchone()
            return str(row["task_id"])
        conn.execute("INSERT OR IGNORE INTO schedules (name, last_slot) VALUES (?, ?)", (schedule, slot))
        conn.execute(
            "UPDATE schedules SET last_slot = max(COALESCE(last_slot, ?), ?), last_fired_at = ?, last_task_id = ? "
            "WHERE name = ?",
            (slot, slot, now, t.id, schedule),
        )
    return None


def hold_back(
    conn: sqlite3.Connection, rows: list[sqlite3.Row], now: float, limits: Mapping[str, float] | None
) -> list[sqlite3.Row]:
    """Undo claims that break a lock (two holders in one batch) or a rate limit, in the claim's
    transaction: the task waits (``pending`` for a lock, ``scheduled`` at its turn for a rate),
    and the claim is not counted as an attempt."""

    def rate_of(r: sqlite3.Row) -> float | None:
        # The app's current rate wins; a pool without the app uses the one stored with the task.
        return limits[r["name"]] if limits and r["name"] in limits else r["rate_limit"]

    if not any(r["lock_key"] is not None or r["rate_limit"] is not None for r in rows) and not (
        limits and any(r["name"] in limits for r in rows)
    ):
        return rows
    keep: list[sqlite3.Row] = []
    locks: set[str] = set()
    undo: list[tuple[str, float | None]] = []
    for r in sorted(rows, key=lambda r: (-r["priority"], r["seq"])):
        if r["lock_key"] is not None:
            if r["lock_key"] in locks:
                undo.append((r["id"], None))
                continue
            locks.add(r["lock_key"])
        keep.append(r)
    if any(rate_of(r) is not None for r in keep):
        names = sorted({r["name"] for r in keep if rate_of(r) is not None})
        next_at = dict(
            conn.execute(f"SELECT name, next_at FROM rate_limits WHERE name IN ({marks(len(names))})", names).fetchall()
        )
        admitted = []
        for r in keep:
            rate = rate_of(r)
            if rate is None or (r["expires_at"] is not None and r["expires_at"] <= now):
                admitted.append(r)
                continue
            ok, when, next_at[r["name"]] = admit(next_at.get(r["name"]), now, rate)
            if ok:
                admitted.append(r)
            else:
                undo.append((r["id"], when))
        keep = admitted
        conn.executemany(
            "INSERT INTO rate_limits (name, next_at) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET next_at = excluded.next_at",
            [(n, next_at[n]) for n in names],
        )
    conn.executemany(
        "UPDATE tasks SET state = CASE WHEN ? IS NULL THEN 'pending' ELSE 'scheduled' END, "
        "run_at = COALESCE(?, run_at), attempts = attempts - 1, started_at = NULL, " + CLEAR_LEASE + " WHERE id = ?",
        [(when, when, id_) for id_, when in undo],
    )
    return keep
