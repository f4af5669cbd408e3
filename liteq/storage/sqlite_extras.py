"""Task controls, canvas dependencies, periodic schedules and the worker registry of the SQLite
store: everything beyond the queue itself, as a layer of :class:`~liteq.storage.sqlite.SqliteStorage`."""

from __future__ import annotations

import builtins
import json
import sqlite3
import time
from collections.abc import Mapping, Sequence
from typing import Any

from ..ratelimit import admit
from .base import (
    NewTask,
    ScheduleState,
    WorkerInfo,
)
from .sqlite_base import SqliteBase
from .sqlite_schema import _CLEAR_LEASE, _FINISH, _chunks, _marks
from .state_files import StateFiles

__all__ = ["SqliteExtras"]


class SqliteExtras(SqliteBase):
    """Unique keys, periodic slots, rate limits and locks, dependencies, schedules, workers."""

    @staticmethod
    def _twin(conn: sqlite3.Connection, t: NewTask, now: float, unique: dict[str, str]) -> str | None:
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
                return str(found[0])
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
                return str(row[0])
            conn.execute("INSERT OR IGNORE INTO schedules (name, last_slot) VALUES (?, ?)", (schedule, slot))
            conn.execute(
                "UPDATE schedules SET last_slot = max(COALESCE(last_slot, ?), ?), last_fired_at = ?, last_task_id = ? "
                "WHERE name = ?",
                (slot, slot, now, t.id, schedule),
            )
        return None

    def _hold_back(
        self, conn: sqlite3.Connection, rows: list[Any], now: float, limits: Mapping[str, float] | None
    ) -> list[Any]:
        """Undo claims that break a lock (two holders in one batch) or a rate limit, in the claim's
        transaction: the task waits (``pending`` for a lock, ``scheduled`` at its turn for a rate),
        and the claim is not counted as an attempt."""

        def rate_of(r: Any) -> float | None:
            # The app's current rate wins; a pool without the app uses the one stored with the task.
            return limits[r[1]] if limits and r[1] in limits else r[16]

        if not any(r[13] is not None or r[16] is not None for r in rows) and not (
            limits and any(r[1] in limits for r in rows)
        ):
            return rows
        keep: list[Any] = []
        locks: set[str] = set()
        undo: list[tuple[str, float | None]] = []
        for r in sorted(rows, key=lambda r: (-r[11], r[12])):
            if r[13] is not None:
                if r[13] in locks:
                    undo.append((r[0], None))
                    continue
                locks.add(r[13])
            keep.append(r)
        if any(rate_of(r) is not None for r in keep):
            names = sorted({r[1] for r in keep if rate_of(r) is not None})
            next_at = dict(
                conn.execute(
                    f"SELECT name, next_at FROM rate_limits WHERE name IN ({_marks(len(names))})", names
                ).fetchall()
            )
            admitted = []
            for r in keep:
                rate = rate_of(r)
                if rate is None or (r[10] is not None and r[10] <= now):
                    admitted.append(r)
                    continue
                ok, when, next_at[r[1]] = admit(next_at.get(r[1]), now, rate)
                if ok:
                    admitted.append(r)
                else:
                    undo.append((r[0], when))
            keep = admitted
            conn.executemany(
                "INSERT INTO rate_limits (name, next_at) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET next_at = excluded.next_at",
                [(n, next_at[n]) for n in names],
            )
        conn.executemany(
            "UPDATE tasks SET state = CASE WHEN ? IS NULL THEN 'pending' ELSE 'scheduled' END, "
            "run_at = COALESCE(?, run_at), attempts = attempts - 1, started_at = NULL, "
            + _CLEAR_LEASE
            + " WHERE id = ?",
            [(when, when, id_) for id_, when in undo],
        )
        return keep

    def _link(self, conn: sqlite3.Connection, tasks: Sequence[NewTask], now: float) -> None:
        """Record group membership and dependencies of freshly inserted tasks (canvas)."""
        members = [(t.group_id, t.group_index or 0, t.id) for t in tasks if t.group_id is not None]
        if members:
            conn.executemany("INSERT OR REPLACE INTO task_groups (group_id, position, task_id) VALUES (?,?,?)", members)
        for t in tasks:
            if not t.depends_on:
                continue
            deps = list(dict.fromkeys(t.depends_on))
            states = dict(
                conn.execute(f"SELECT id, state FROM tasks WHERE id IN ({_marks(len(deps))})", deps).fetchall()
            )
            bad = next((d for d in deps if states.get(d) in ("failed", "cancelled", "expired")), None)
            if bad is not None:
                conn.execute(
                    "UPDATE tasks SET state = 'failed', reason = :reason, error = (SELECT error FROM tasks WHERE id = :dep), "
                    + _FINISH
                    + " WHERE id = :id",
                    {"reason": f"dependency failed: {bad}", "dep": bad, "id": t.id, "now": now, "ttl": None,
                     "default_ttl": self.result_ttl},
                )  # fmt: skip
                self._cascade(conn, t.id, "failed", now)  # dependents linked earlier in this batch
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
            conn.executemany(
                "INSERT INTO task_deps (task_id, dependent_id) VALUES (?, ?)", [(d, t.id) for d in open_deps]
            )
            conn.executemany("UPDATE tasks SET dependents = dependents + 1 WHERE id = ?", [(d,) for d in open_deps])

    def _cascade(self, conn: sqlite3.Connection, task_id: str, state: str, now: float) -> bool:
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
            ready = [{"now": now, "id": r[0]} for r in rows if r[1] == 0]
            conn.executemany(
                "UPDATE tasks SET run_at = max(:now + release_delay, COALESCE(not_before, 0)), "
                "state = CASE WHEN max(:now + release_delay, COALESCE(not_before, 0)) <= :now "
                "THEN 'pending' ELSE 'scheduled' END WHERE id = :id",
                ready,
            )
            return bool(ready)
        params = {"reason": f"dependency failed: {task_id}", "root": task_id, "now": now, "ttl": None,
                  "default_ttl": self.result_ttl}  # fmt: skip
        frontier = [task_id]
        while frontier:
            params["parent"] = frontier.pop()
            failed = conn.execute(
                "UPDATE tasks SET state = 'failed', waiting = 0, reason = :reason, "
                "error = (SELECT error FROM tasks WHERE id = :root), "
                + _FINISH
                + " WHERE id IN (SELECT dependent_id FROM task_deps WHERE task_id = :parent) "
                "AND state = 'scheduled' AND waiting > 0 RETURNING id, dependents",
                params,
            ).fetchall()
            frontier += [r[0] for r in failed if r[1]]
        return False

    def group_members(self, group_id: str) -> builtins.list[str]:
        """Member ids in order; see :meth:`Storage.group_members`."""
        return [
            r[0]
            for r in self._read(
                "SELECT g.task_id FROM task_groups g JOIN tasks t ON t.id = g.task_id "
                "WHERE g.group_id = ? ORDER BY g.position",
                (group_id,),
            )
        ]

    # -- periodic schedules ---------------------------------------------------------------------------

    def register_schedules(self, names: Sequence[str], *, now: float | None = None) -> None:
        """Record new schedules; see :meth:`Storage.register_schedules`."""
        now = time.time() if now is None else now
        known = set(self.schedule_states(names))
        fresh = [(n, now) for n in names if n not in known]
        if fresh:
            self._write(
                lambda conn: conn.executemany("INSERT OR IGNORE INTO schedules (name, last_slot) VALUES (?, ?)", fresh)
            )

    def schedule_states(self, names: Sequence[str] | None = None) -> dict[str, ScheduleState]:
        """Schedule states; see :meth:`Storage.schedule_states`."""
        sql = "SELECT name, paused, last_slot, last_fired_at, last_task_id FROM schedules"
        out: dict[str, ScheduleState] = {}
        if names is None:
            rows = self._read(sql)
        else:
            rows = []
            for chunk in _chunks(list(names)):
                rows += self._read(f"{sql} WHERE name IN ({_marks(len(chunk))})", chunk)
        for name, paused, last_slot, fired, task_id in rows:
            out[name] = ScheduleState(name, bool(paused), last_slot, fired, task_id)
        return out

    def set_schedule_paused(self, name: str, paused: bool, *, now: float | None = None) -> bool:
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

        return self._write(run)

    # -- workers -----------------------------------------------------------------------------------

    def register_worker(self, info: WorkerInfo) -> None:
        """Record a live worker; see :meth:`Storage.register_worker`."""
        self._write(
            lambda conn: conn.execute(
                "INSERT OR REPLACE INTO workers (id, host, pid, concurrency, queues, started_at, heartbeat_at, "
                "tasks_done, state, state_reason, state_since) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (
                    info.id,
                    info.host,
                    info.pid,
                    info.concurrency,
                    json.dumps(list(info.queues)),
                    info.started_at,
                    info.heartbeat_at,
                    info.tasks_done,
                    info.state,
                    info.state_reason,
                    info.state_since,
                ),
            )
        )
        if info.state == "ok":
            StateFiles(self.path).clear(info.id)

    def heartbeat(
        self,
        worker_id: str,
        *,
        tasks_done: int = 0,
        now: float | None = None,
        state: str = "ok",
        state_reason: str | None = None,
        state_since: float | None = None,
    ) -> None:
        """Refresh a worker's heartbeat and state; see :meth:`Storage.heartbeat`.

        A degraded state goes to a side file first (:mod:`.state_files`): the row cannot be
        written while another process holds the lock, and that is when it matters."""
        now = time.time() if now is None else now
        files = StateFiles(self.path)
        if state != "ok":
            files.write(worker_id, state, state_reason, state_since)
        self._write(
            lambda conn: conn.execute(
                "UPDATE workers SET heartbeat_at = ?, tasks_done = tasks_done + ?, state = ?, state_reason = ?, "
                "state_since = ? WHERE id = ?",
                (now, tasks_done, state, state_reason, state_since, worker_id),
            )
        )
        if state == "ok":
            files.clear(worker_id)

    def unregister_worker(self, worker_id: str) -> None:
        """Forget a worker; see :meth:`Storage.unregister_worker`."""
        self._write(lambda conn: conn.execute("DELETE FROM workers WHERE id = ?", (worker_id,)))
        StateFiles(self.path).clear(worker_id)

    def workers(self, *, stale_after: float | None = None, now: float | None = None) -> builtins.list[WorkerInfo]:
        """Recorded workers; see :meth:`Storage.workers`."""
        now = time.time() if now is None else now
        sql = (
            "SELECT id, host, pid, concurrency, queues, started_at, heartbeat_at, tasks_done, state, state_reason, "
            "state_since FROM workers"
        )
        params: list[Any] = []
        if stale_after is not None:
            sql += " WHERE heartbeat_at >= ?"
            params.append(now - stale_after)
        rows = [
            WorkerInfo(
                id=r[0],
                host=r[1],
                pid=r[2],
                concurrency=r[3],
                queues=json.loads(r[4]),
                started_at=r[5],
                heartbeat_at=r[6],
                tasks_done=r[7],
                state=r[8],
                state_reason=r[9],
                state_since=r[10],
            )
            for r in self._read(sql + " ORDER BY started_at", params)
        ]
        return StateFiles(self.path).overlay(rows)
