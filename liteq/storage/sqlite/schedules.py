"""Periodic schedules in the SQLite store: which exist, whether paused, the last slot fired (the
slot itself is claimed in the enqueue transaction, see :func:`.controls.duplicate_of`)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence

from ..records import ScheduleState
from .connection import Database
from .schema import SLOT_MEMORY, chunks, marks

__all__ = ["prune_slots", "register_schedules", "schedule_states", "set_schedule_paused"]


def register_schedules(db: Database, names: Sequence[str], *, now: float | None = None) -> None:
    """Record new schedules; see :meth:`Storage.register_schedules`."""
    now = time.time() if now is None else now
    known = set(schedule_states(db, names))
    fresh = [(n, now) for n in names if n not in known]
    if fresh:
        db.write(
            lambda conn: conn.executemany("INSERT OR IGNORE INTO schedules (name, last_slot) VALUES (?, ?)", fresh)
        )


def schedule_states(db: Database, names: Sequence[str] | None = None) -> dict[str, ScheduleState]:
    """Schedule states; see :meth:`Storage.schedule_states`."""
    sql = "SELECT name, paused, last_slot, last_fired_at, last_task_id FROM schedules"
    out: dict[str, ScheduleState] = {}
    rows: list[sqlite3.Row] = []
    if names is None:
        rows = db.read(sql)
    else:
        for chunk in chunks(list(names)):
            rows += db.read(f"{sql} WHERE name IN ({marks(len(chunk))})", chunk)
    for r in rows:
        out[r["name"]] = ScheduleState(
            name=r["name"],
            paused=bool(r["paused"]),
            last_slot=r["last_slot"],
            last_fired_at=r["last_fired_at"],
            last_task_id=r["last_task_id"],
        )
    return out


def set_schedule_paused(db: Database, name: str, paused: bool, *, now: float | None = None) -> bool:
    """Pause or resume; see :meth:`Storage.set_schedule_paused`."""
    now = time.time() if now is None else now

    def run(conn: sqlite3.Connection) -> bool:
        if paused:
            sql, params = "UPDATE schedules SET paused = 1 WHERE name = ?", (name,)
        else:  # resuming skips what was missed while paused
            sql = (
                "UPDATE schedules SET last_slot = CASE WHEN paused THEN max(COALESCE(last_slot, ?), ?) "
                "ELSE last_slot END, paused = 0 WHERE name = ?"
            )
            params = (now, now, name)  # type: ignore[assignment]
        return conn.execute(sql, params).rowcount == 1

    return db.write(run)


def prune_slots(db: Database, now: float) -> None:
    """Forget periodic slots fired longer ago than :data:`SLOT_MEMORY` (they can no longer race)."""
    if db.read("SELECT 1 FROM periodic_slots WHERE fired_at <= ? LIMIT 1", (now - SLOT_MEMORY,)):
        db.write(lambda conn: conn.execute("DELETE FROM periodic_slots WHERE fired_at <= ?", (now - SLOT_MEMORY,)))
