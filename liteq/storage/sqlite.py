"""The default store: one directory holding a SQLite database in WAL mode and a blob cache.

Why it is shaped this way:

- Every write is one ``BEGIN IMMEDIATE`` transaction. Taking the write lock up front means a
  transaction never has to upgrade a read lock, the one case where SQLite gives up with
  ``database is locked`` without honouring the busy timeout (the SqliteHuey failure mode).
- Claiming is a single ``UPDATE ... RETURNING`` over a partial index of pending rows, so two
  claimers can never select the same row and the cost does not grow with the backlog. Scheduled
  rows live in their own partial index and are promoted to pending in the claim transaction.
- Task ids are time-ordered (48-bit milliseconds, then randomness), so the unique index on ``id``
  is appended to at its right edge instead of being written at random pages: enqueue cost stays
  flat at millions of rows.
- Payloads and results above ``blob_threshold`` go to a ``diskcache.Cache`` beside the database
  (eviction disabled) and the row keeps the key, so the hot table stays small and page-cache
  friendly. The blob is written before the row's transaction and deleted if that transaction fails.
- Connections are per thread and per process: after ``fork`` the child opens its own, never
  touching the parent's. A store pickles as its location and options.
"""

from __future__ import annotations

import builtins
import os
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..exceptions import StorageError
from ..wake import DONE, WORK, broadcast
from . import sqlite_history
from .base import (
    CASCADE_REASON,
    PENDING,
    SCHEDULED,
    STATS_MEMORY,
    ClaimedTask,
    NewTask,
    Outcome,
    StatsRow,
    TaskRow,
    check_lease,
    check_new_tasks,
    checked_outcomes,
)
from .sqlite_extras import SqliteExtras
from .sqlite_schema import (
    _CLAIM_COLUMNS,
    _CLEAR_LEASE,
    _FINISH,
    _ROW_COLUMNS,
    _UNLOCKED,
    BLOB_DIRNAME,
    DB_FILENAME,
    DEFAULT_BLOB_THRESHOLD,
    DEFAULT_BUSY_TIMEOUT,
    DEFAULT_RESULT_TTL,
    MIGRATIONS,
    SCHEMA_VERSION,
    SLOT_MEMORY,
    _chunks,
    _marks,
)

#: A blob no row refers to is collected once it is this old (seconds): a write in flight is younger.
BLOB_MIN_AGE = 3600.0
#: Rows deleted by the first transaction of a purge or prune; later ones adapt (see ``_delete``).
_FIRST_DELETE_BATCH = 1000
_MIN_DELETE_BATCH = 50
_MAX_DELETE_BATCH = 20_000

__all__ = [
    "DB_FILENAME",
    "DEFAULT_BLOB_THRESHOLD",
    "DEFAULT_BUSY_TIMEOUT",
    "DEFAULT_RESULT_TTL",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "SqliteStorage",
]


class SqliteStorage(SqliteExtras):
    """Tasks, results and workers in ``<path>/liteq.sqlite3``; large values in ``<path>/blobs``.

    ``durability="full"`` (``synchronous=FULL``) survives power loss; ``"normal"`` (the default)
    never corrupts but may lose the last commits on power loss. ``busy_timeout`` is how long a
    write waits for another process's lock before raising :class:`StoreBusy`.
    """

    # -- writes ------------------------------------------------------------------------------------

    def enqueue(self, tasks: Sequence[NewTask], *, now: float | None = None) -> list[str]:
        """Store a batch atomically; see :meth:`Storage.enqueue`."""
        if not tasks:
            return []
        now = time.time() if now is None else now
        check_new_tasks(tasks, now)
        rows = []
        refs: list[str] = []
        keys = [t.idempotency_key for t in tasks if t.idempotency_key is not None]
        threshold = self._value_threshold
        special = False
        for t in tasks:
            payload: bytes | None = t.payload
            ref = None
            if t.unique_key is not None or t.slot is not None or t.depends_on or t.group_id is not None:
                special = True
            if len(t.payload) > threshold:
                # Keyed by write, not by id: a refused or duplicate enqueue never touches a stored blob.
                ref = f"p:{t.id}:{os.urandom(8).hex()}"
                payload = None
                refs.append(ref)
                self._put_blob(ref, t.payload)
            run_at = now if t.run_at is None else t.run_at
            rows.append(
                (
                    t.id,
                    t.name,
                    t.queue,
                    t.priority,
                    SCHEDULED if run_at > now else PENDING,
                    run_at,
                    t.expires_at,
                    now,
                    t.max_attempts,
                    t.idempotency_key,
                    payload,
                    ref,
                    t.result_ttl,
                    t.parent_id,
                    t.unique_key,
                    t.lock_key,
                    t.timeout,
                    t.soft_timeout,
                    t.rate_limit,
                )
            )
        sql = (
            "INSERT INTO tasks (id, name, queue, priority, state, run_at, expires_at, enqueued_at, "
            "max_attempts, idempotency_key, payload, payload_ref, result_ttl, parent_id, unique_key, lock_key, "
            "timeout, soft_timeout, rate_limit) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
        )
        if len(rows) == 1 and not keys and not special:
            # One plain task, which is what every delay() sends: nothing to look up before the
            # INSERT, so skip the batch bookkeeping below (a tenth of the Python time of delay()).
            row = rows[0]
            try:
                self._write(lambda conn: conn.execute(sql, row), WORK)
            except BaseException:
                self._drop_blobs(refs)
                raise
            return [row[0]]
        unused: list[str] = []

        def run(conn: sqlite3.Connection) -> list[str]:
            unused.clear()
            unique: dict[str, str] = {}
            existing: dict[str, str] = {}
            if keys:
                for chunk in _chunks(keys):
                    for id_, key in conn.execute(
                        f"SELECT id, idempotency_key FROM tasks WHERE idempotency_key IN ({_marks(len(chunk))})",
                        chunk,
                    ):
                        existing[key] = id_
            ids = []
            insert = []
            for t, row in zip(tasks, rows, strict=True):
                key = t.idempotency_key
                if key is not None and key in existing:
                    ids.append(existing[key])
                    if row[11]:
                        unused.append(row[11])
                    continue
                twin = self._twin(conn, t, now, unique) if special else None
                if twin is not None:
                    ids.append(twin)
                    if row[11]:
                        unused.append(row[11])
                    continue
                if key is not None:
                    existing[key] = t.id
                ids.append(t.id)
                insert.append(row)
            if len(insert) == 1:
                conn.execute(sql, insert[0])
            elif insert:
                conn.executemany(sql, insert)
            if special:
                inserted = {row[0] for row in insert}
                self._link(conn, [t for t in tasks if t.id in inserted], now)
            return ids

        try:
            ids = self._write(run, WORK)
        except BaseException:
            self._drop_blobs(refs)
            raise
        self._drop_blobs(unused)  # blobs of entries that an idempotency key turned into no-ops
        return ids

    def claim(
        self,
        owner: str,
        queues: Sequence[str],
        *,
        limit: int = 1,
        lease: float = 60.0,
        now: float | None = None,
        ids: Sequence[str] | None = None,
        limits: Mapping[str, float] | None = None,
    ) -> list[ClaimedTask]:
        """Lease due tasks in one ``UPDATE ... RETURNING``; see :meth:`Storage.claim`."""
        if limit < 1 or (not queues and ids is None):
            return []
        check_lease(lease)
        now = time.time() if now is None else now
        params: list[Any] = [owner, now + lease, now]
        if ids is not None:
            if not ids:
                return []
            pick = (
                f"SELECT seq FROM tasks WHERE id IN ({_marks(len(ids))}) AND state IN ('pending','scheduled') "
                f"AND waiting = 0 {_UNLOCKED} LIMIT ?"
            )
            params += [*ids, limit]
        elif len(queues) == 1:
            pick = f"SELECT seq FROM tasks WHERE state = 'pending' AND queue = ? {_UNLOCKED} ORDER BY priority DESC, seq LIMIT ?"
            params += [queues[0], limit]
        else:
            # Each queue's best rows come from its own index range; the merge takes the best overall.
            part = (
                f"SELECT * FROM (SELECT seq, priority FROM tasks WHERE state = 'pending' AND queue = ? {_UNLOCKED} "
                "ORDER BY priority DESC, seq LIMIT ?)"
            )
            pick = (
                "SELECT seq FROM (" + " UNION ALL ".join([part] * len(queues)) + ") ORDER BY priority DESC, seq LIMIT ?"
            )
            for q in queues:
                params += [q, limit]
            params.append(limit)
        sql = (
            "UPDATE tasks SET state = 'running', attempts = attempts + 1, lease_owner = ?, "
            "lease_token = lower(hex(randomblob(12))), lease_deadline = ?, started_at = ? "
            f"WHERE seq IN ({pick}) RETURNING {_CLAIM_COLUMNS}"
        )

        def run(conn: sqlite3.Connection) -> list[Any]:
            conn.execute("UPDATE tasks SET state = 'pending' WHERE state = 'scheduled' AND run_at <= ?", (now,))
            taken: list[Any] = []
            while True:
                rows = conn.execute(sql, params).fetchall()
                taken += rows
                dead = [r[0] for r in rows if r[10] is not None and r[10] <= now]
                if dead:
                    conn.executemany(
                        "UPDATE tasks SET state = 'expired', reason = 'expired', " + _FINISH + " WHERE id = :id",
                        [{"now": now, "ttl": None, "default_ttl": self.result_ttl, "id": id_} for id_ in dead],
                    )
                    for id_ in dead:
                        self._cascade(conn, id_, "expired", now)
                # A batch made only of expired tasks says nothing about what is behind it: look again.
                if not rows or len(dead) < len(rows):
                    return self._hold_back(conn, taken, now, limits)

        rows = self._write(run)
        rows.sort(key=lambda r: (-r[11], r[12]))  # RETURNING promises no order
        claimed = []
        lost: list[tuple[str, str, str]] = []
        for r in rows:
            if r[10] is not None and r[10] <= now:
                continue
            payload = r[3]
            if r[4]:
                payload, problem = self._read_blob(r[4])
                if problem is not None:
                    lost.append((r[0], r[7], problem))
                    continue
            claimed.append(
                ClaimedTask(
                    id=r[0],
                    name=r[1],
                    queue=r[2],
                    payload=b"" if payload is None else bytes(payload),
                    attempt=r[5],
                    max_attempts=r[6],
                    lease_token=r[7],
                    lease_deadline=r[8],
                    enqueued_at=r[9],
                    expires_at=r[10],
                    priority=r[11],
                    timeout=r[14],
                    soft_timeout=r[15],
                )
            )
        if lost:
            self._fail_lost_payloads(lost, now)
        return claimed

    def _fail_lost_payloads(self, lost: Sequence[tuple[str, str, str]], now: float) -> None:
        """Fail claimed tasks whose payload blob cannot be read, each with the reason; the other
        tasks of the claim are unaffected. The row keeps its blob key, so a restored blob file and
        ``liteq retry`` bring the task back."""

        def run(conn: sqlite3.Connection) -> None:
            for id_, token, problem in lost:
                row = conn.execute(
                    "UPDATE tasks SET state = 'failed', reason = :reason, "
                    + _FINISH
                    + " WHERE id = :id AND lease_token = :token AND state = 'running' RETURNING dependents",
                    {"reason": problem, "id": id_, "token": token, "now": now, "ttl": None,
                     "default_ttl": self.result_ttl},
                ).fetchone()  # fmt: skip
                if row is not None and row[0]:
                    self._cascade(conn, id_, "failed", now)

        self._write(run, DONE)

    def extend(
        self, owner: str, leases: Sequence[tuple[str, str]], *, lease: float, now: float | None = None
    ) -> list[bool]:
        """Push lease deadlines; see :meth:`Storage.extend`."""
        if not leases:
            return []
        deadline = (time.time() if now is None else now) + check_lease(lease)

        def run(conn: sqlite3.Connection) -> list[bool]:
            return [
                conn.execute(
                    "UPDATE tasks SET lease_deadline = ? WHERE id = ? AND lease_token = ? AND state = 'running'",
                    (deadline, id_, token),
                ).rowcount
                == 1
                for id_, token in leases
            ]

        return self._write(run)

    def complete(self, outcomes: Sequence[Outcome], *, now: float | None = None) -> list[bool]:
        """Apply outcomes under their lease tokens; see :meth:`Storage.complete`."""
        if not outcomes:
            return []
        now = time.time() if now is None else now
        outcomes = checked_outcomes(outcomes, now)
        refs: list[str | None] = []
        for o in outcomes:
            ref = None
            if o.result is not None and len(o.result) > self._value_threshold:
                ref = f"r:{o.id}:{o.lease_token}"
                self._put_blob(ref, o.result)
            refs.append(ref)
        finish_sql = (
            "UPDATE tasks SET state = :state, result = :result, result_ref = :ref, error = :error, "
            "reason = :reason, "
            + _FINISH
            + " WHERE id = :id AND lease_token = :token AND state = 'running' RETURNING attempts, lock_key, dependents"
        )
        retry_sql = (
            "UPDATE tasks SET state = CASE WHEN :run_at <= :now THEN 'pending' ELSE 'scheduled' END, "
            "run_at = :run_at, error = :error, reason = :reason, " + _CLEAR_LEASE + " "
            "WHERE id = :id AND lease_token = :token AND state = 'running' RETURNING attempts, lock_key"
        )

        def run(conn: sqlite3.Connection) -> list[bool]:
            applied = []
            for o, ref in zip(outcomes, refs, strict=True):
                params = {
                    "id": o.id,
                    "token": o.lease_token,
                    "error": o.error,
                    "reason": o.reason,
                    "now": now,
                }
                if o.state in (SCHEDULED, PENDING):
                    params["run_at"] = now if o.run_at is None else o.run_at
                    row = conn.execute(retry_sql, params).fetchone()
                else:
                    params.update(
                        state=o.state,
                        result=None if ref else o.result,
                        ref=ref,
                        ttl=o.result_ttl,
                        default_ttl=self.result_ttl,
                    )
                    row = conn.execute(finish_sql, params).fetchone()
                if row is not None and o.error is not None:
                    conn.execute(
                        "INSERT INTO task_errors (task_id, attempt, at, error) VALUES (?,?,?,?)",
                        (o.id, row[0], now, o.error),
                    )
                if row is not None and row[1] is not None:
                    freed.append(row[1])
                if row is not None and len(row) > 2 and row[2] and self._cascade(conn, o.id, o.state, now):
                    freed.append(o.id)
                applied.append(row is not None)
            return applied

        freed: list[str] = []
        wake = DONE + WORK if any(o.state in (SCHEDULED, PENDING) for o in outcomes) else DONE
        try:
            applied = self._write(run, wake)
        except BaseException:
            self._drop_blobs(refs)
            raise
        self._drop_blobs(ref for ref, ok in zip(refs, applied, strict=True) if not ok)
        if freed and WORK not in wake:
            broadcast(self.wake_dir, WORK)  # a lock came free: tasks waiting for it can run now
        return applied

    def release(self, leases: Sequence[tuple[str, str]], *, uncount: bool = True) -> int:
        """Hand leased tasks back to ``pending``; see :meth:`Storage.release`."""
        if not leases:
            return 0
        back = 1 if uncount else 0
        now = time.time()

        def run(conn: sqlite3.Connection) -> int:
            n = 0
            for id_, token in leases:
                row = conn.execute(
                    "UPDATE tasks SET state = CASE WHEN cancel_requested THEN 'cancelled' ELSE 'pending' END, "
                    "reason = CASE WHEN cancel_requested THEN 'cancelled' ELSE reason END, "
                    "finished_at = CASE WHEN cancel_requested THEN :now END, "
                    "result_expires_at = CASE WHEN cancel_requested THEN :now + COALESCE(result_ttl, :ttl) END, "
                    "attempts = max(attempts - :back, 0), started_at = NULL, "
                    + _CLEAR_LEASE
                    + " WHERE id = :id AND lease_token = :token AND state = 'running' RETURNING state, dependents",
                    {"back": back, "id": id_, "token": token, "now": now, "ttl": self.result_ttl},
                ).fetchone()
                if row is None:
                    continue
                n += 1
                if row[0] == "cancelled" and row[1]:
                    # A cancelled task handed back fails what waits for it, as everywhere else.
                    self._cascade(conn, id_, "cancelled", now)
            return n

        return self._write(run, WORK + DONE)

    def reap(self, *, now: float | None = None, owner: str | None = None) -> list[str]:
        """Recover lost leases; see :meth:`Storage.reap`."""
        now = time.time() if now is None else now
        params: dict[str, Any] = {"now": now, "owner": owner, "default_ttl": self.result_ttl, "ttl": None}
        if owner is None:
            where = "state = 'running' AND lease_deadline < :now"
        else:
            where = "state = 'running' AND lease_owner = :owner"

        def run(conn: sqlite3.Connection) -> list[str]:
            cancelled = conn.execute(
                "UPDATE tasks SET state = 'cancelled', reason = 'cancelled', "
                + _FINISH
                + f" WHERE {where} AND cancel_requested RETURNING id, dependents",
                params,
            ).fetchall()
            failed = conn.execute(
                "UPDATE tasks SET state = 'failed', reason = 'worker lost', error = NULL, "
                + _FINISH
                + f" WHERE {where} AND attempts >= max_attempts RETURNING id, dependents",
                params,
            ).fetchall()
            for r in cancelled + failed:
                if r[1]:
                    self._cascade(conn, r[0], "failed", now)
            back = conn.execute(
                "UPDATE tasks SET state = 'pending', reason = 'worker lost', started_at = NULL, "
                + _CLEAR_LEASE
                + f" WHERE {where} RETURNING id",
                params,
            ).fetchall()
            return [r[0] for r in cancelled + failed + back]

        # Read first so an idle reaper never takes the write lock.
        probe = "SELECT 1 FROM tasks WHERE " + where + " LIMIT 1"
        if not self._read(probe, params):
            return []
        return self._write(run, WORK + DONE)

    def set_progress(self, id: str, lease_token: str, progress: bytes) -> bool:
        """Record progress of a running task; see :meth:`Storage.set_progress`."""

        def run(conn: sqlite3.Connection) -> bool:
            return (
                conn.execute(
                    "UPDATE tasks SET progress = ? WHERE id = ? AND lease_token = ? AND state = 'running'",
                    (progress, id, lease_token),
                ).rowcount
                == 1
            )

        return self._write(run)

    def cancel(self, ids: Sequence[str], *, now: float | None = None) -> list[str | None]:
        """Cancel waiting tasks and flag running ones; see :meth:`Storage.cancel`."""
        if not ids:
            return []
        now = time.time() if now is None else now

        def run(conn: sqlite3.Connection) -> dict[str, str]:
            states: dict[str, str] = {}
            for chunk in _chunks(ids):
                marks = _marks(len(chunk))
                for task_id, dependents in conn.execute(
                    "UPDATE tasks SET state = 'cancelled', reason = 'cancelled', waiting = 0, finished_at = ?, "
                    "result_expires_at = ? + COALESCE(result_ttl, ?) "
                    f"WHERE id IN ({marks}) AND state IN ('pending', 'scheduled') RETURNING id, dependents",
                    (now, now, self.result_ttl, *chunk),
                ).fetchall():
                    if dependents:
                        self._cascade(conn, task_id, "cancelled", now)
                conn.execute(
                    f"UPDATE tasks SET cancel_requested = 1 WHERE id IN ({marks}) AND state = 'running'", chunk
                )
                states.update(conn.execute(f"SELECT id, state FROM tasks WHERE id IN ({marks})", chunk).fetchall())
            return states

        states = self._write(run, DONE)
        return [states.get(i) for i in ids]

    def retry(self, ids: Sequence[str], *, now: float | None = None) -> list[bool]:
        """Re-run finished tasks by hand; see :meth:`Storage.retry`."""
        if not ids:
            return []
        now = time.time() if now is None else now

        def run(conn: sqlite3.Connection) -> tuple[list[bool], list[str | None]]:
            chosen: set[str] = set()
            cascaded: set[str] = set()
            for chunk in _chunks(ids):
                for id_, reason in conn.execute(
                    f"SELECT id, reason FROM tasks WHERE id IN ({_marks(len(chunk))}) "
                    "AND state IN ('failed', 'cancelled', 'expired')",
                    chunk,
                ):
                    chosen.add(id_)
                    if reason and reason.startswith(CASCADE_REASON):
                        cascaded.add(id_)
            out: list[bool] = []
            refs: list[str | None] = []
            for id_ in ids:
                if id_ not in chosen:
                    out.append(False)
                    continue
                # A canvas step that failed because a step before it failed waits again for those
                # retried with it (or still running); while one stays failed it cannot run, so it
                # is not retried. (A step cancelled or failed on its own runs at once, as before.)
                deps = (
                    conn.execute(
                        "SELECT t.id, t.state FROM task_deps d JOIN tasks t ON t.id = d.task_id "
                        "WHERE d.dependent_id = ?",
                        (id_,),
                    ).fetchall()
                    if id_ in cascaded
                    else []
                )
                if any(d not in chosen and st in ("failed", "cancelled", "expired") for d, st in deps):
                    out.append(False)
                    continue
                waiting = sum(1 for d, st in deps if d in chosen or st != "succeeded")
                (ref,) = conn.execute("SELECT result_ref FROM tasks WHERE id = ?", (id_,)).fetchone()
                row = conn.execute(
                    "UPDATE tasks SET state = CASE WHEN :waiting > 0 THEN 'scheduled' ELSE 'pending' END, "
                    "run_at = CASE WHEN :waiting > 0 THEN :inf ELSE :now END, waiting = :waiting, attempts = 0, "
                    "reason = NULL, result = NULL, result_ref = NULL, finished_at = NULL, started_at = NULL, "
                    "result_expires_at = NULL, expires_at = NULL, cancel_requested = 0 "
                    "WHERE id = :id AND state IN ('failed', 'cancelled', 'expired') RETURNING id",
                    {"waiting": waiting, "inf": float("inf"), "now": now, "id": id_},
                ).fetchone()
                out.append(row is not None)
                refs.append(ref if row is not None else None)
            return out, refs

        applied, old_refs = self._write(run, WORK)
        self._drop_blobs(old_refs)  # the results of the runs that are retried are garbage now
        return applied

    def _delete(self, where: str, params: Sequence[Any], limit: int | None = None) -> int:
        """Delete the rows matching ``where`` (at most ``limit``) in short transactions.

        One ``DELETE`` of a million finished rows would hold the write lock for seconds and make
        every other writer of the store fail with ``StoreBusy``. So rows go in batches whose size
        adapts to stay well under the busy timeout, and between batches the lock is left free for
        as long as the batch held it, so a waiting writer (whose busy handler polls) gets in.
        """
        target = min(max(self.busy_timeout / 10, 0.005), 0.2)
        batch = _FIRST_DELETE_BATCH
        total = after = 0
        while limit is None or total < limit:
            size = batch if limit is None else min(batch, limit - total)

            def run(conn: sqlite3.Connection, size: int = size, after: int = after) -> list[Any]:
                # In seq order from where the last batch stopped: rows kept by the filter are not
                # scanned again by every batch.
                rows = conn.execute(
                    f"DELETE FROM tasks WHERE seq IN (SELECT seq FROM tasks WHERE ({where}) AND seq > ? "
                    "ORDER BY seq LIMIT ?) RETURNING id, payload_ref, result_ref, seq",
                    [*params, after, size],
                ).fetchall()
                for chunk in _chunks([r[0] for r in rows]):
                    marks = _marks(len(chunk))
                    conn.execute(f"DELETE FROM task_errors WHERE task_id IN ({marks})", chunk)
                    conn.execute(f"DELETE FROM task_deps WHERE task_id IN ({marks})", chunk)
                    conn.execute(f"DELETE FROM task_groups WHERE task_id IN ({marks})", chunk)
                return rows

            started = time.monotonic()
            rows = self._write(run)
            took = time.monotonic() - started
            refs = [ref for r in rows for ref in (r[1], r[2]) if ref]
            if refs:
                self._drop_blobs(refs)
            total += len(rows)
            after = max((r[3] for r in rows), default=after)
            if len(rows) < size:
                break
            # Aim each batch at ``target`` seconds under the lock, whatever the machine and the row size.
            if took > target:
                batch = max(_MIN_DELETE_BATCH, batch // 2)
            elif took < target / 4:
                batch = min(_MAX_DELETE_BATCH, batch * 2)
            time.sleep(min(took, target))
        return total

    def purge(
        self, *, queue: str | None = None, states: Iterable[str] | None = None, ids: Sequence[str] | None = None
    ) -> int:
        """Delete matching tasks; see :meth:`Storage.purge`."""
        clauses: list[str] = []
        params: list[Any] = []
        if queue is not None:
            clauses.append("queue = ?")
            params.append(queue)
        wanted = list(states) if states is not None else None
        if wanted is not None:
            clauses.append(f"state IN ({_marks(len(wanted))})" if wanted else "0")
            params += wanted
        else:
            clauses.append("state != 'running'")
        if ids is not None:
            total = 0
            for chunk in _chunks(ids):
                where = " AND ".join([*clauses, f"id IN ({_marks(len(chunk))})"])
                total += self._delete(where, [*params, *chunk])
            return total
        return self._delete(" AND ".join(clauses), params)

    def collect_blobs(self, *, now: float | None = None, min_age: float = BLOB_MIN_AGE) -> int:
        """Delete blobs that no task refers to and that were written over ``min_age`` seconds ago;
        return how many.

        Rows drop their blobs when deleted, and a refused write drops its own; what is left are
        blobs of a process killed between writing a blob and committing its row. ``min_age``
        keeps the blob of a write still in flight.
        """
        now = time.time() if now is None else now
        index = os.path.join(self.path, BLOB_DIRNAME, "cache.db")
        if not os.path.exists(index):
            return 0
        try:
            # diskcache's own table, read directly: it keeps each key's store time, which its API
            # does not expose.
            conn = sqlite3.connect(f"file:{index}?mode=ro", uri=True, timeout=self.busy_timeout)
            try:
                keys = [
                    k for (k,) in conn.execute("SELECT key FROM Cache WHERE store_time < ?", (now - min_age,))
                    if isinstance(k, str)
                ]  # fmt: skip
            finally:
                conn.close()
        except sqlite3.Error as exc:
            raise self._translate(exc, 0.0, where=index) from exc
        by_id: dict[str, list[str]] = {}
        for key in keys:
            parts = key.split(":")
            if len(parts) == 3 and parts[0] in ("p", "r"):
                by_id.setdefault(parts[1], []).append(key)
        live: set[str] = set()
        ids = list(by_id)
        for chunk in _chunks(ids):
            for payload_ref, result_ref in self._read(
                f"SELECT payload_ref, result_ref FROM tasks WHERE id IN ({_marks(len(chunk))})", chunk
            ):
                live.update(ref for ref in (payload_ref, result_ref) if ref)
        orphans = [key for group in by_id.values() for key in group if key not in live]
        self._drop_blobs(orphans)
        return len(orphans)

    def prune(self, *, now: float | None = None, limit: int = 10_000) -> int:
        """Delete finished tasks past their TTL; see :meth:`Storage.prune`. Now and then (every
        ``BLOB_MIN_AGE``) it also collects orphaned blobs (:meth:`collect_blobs`)."""
        now = time.time() if now is None else now
        mono = time.monotonic()
        if mono >= self._next_blob_sweep:
            self._next_blob_sweep = mono + BLOB_MIN_AGE
            try:
                self.collect_blobs(now=now)
            except StorageError:  # an orphan blob is harmless; the next sweep tries again
                pass
        if self._read("SELECT 1 FROM periodic_slots WHERE fired_at <= ? LIMIT 1", (now - SLOT_MEMORY,)):
            self._write(
                lambda conn: conn.execute("DELETE FROM periodic_slots WHERE fired_at <= ?", (now - SLOT_MEMORY,))
            )
        if self._read("SELECT 1 FROM task_stats WHERE minute < ? LIMIT 1", (int((now - STATS_MEMORY) // 60),)):
            self._write(
                lambda conn: conn.execute("DELETE FROM task_stats WHERE minute < ?", (int((now - STATS_MEMORY) // 60),))
            )
        if not self._read("SELECT 1 FROM tasks WHERE result_expires_at <= ? LIMIT 1", (now,)):
            return 0
        return self._delete("result_expires_at <= ?", (now,), limit=limit)

    # -- reads -------------------------------------------------------------------------------------

    def _row(self, r: Sequence[Any], extra: Sequence[Any] | None = None) -> TaskRow:
        row = TaskRow(
            id=r[0],
            name=r[1],
            queue=r[2],
            state=r[3],
            priority=r[4],
            payload=None,
            run_at=r[5],
            enqueued_at=r[6],
            attempts=r[7],
            max_attempts=r[8],
            expires_at=r[9],
            started_at=r[10],
            finished_at=r[11],
            lease_owner=r[12],
            lease_token=r[13],
            lease_deadline=r[14],
            idempotency_key=r[15],
            result_expires_at=r[16],
            reason=r[17],
            cancel_requested=bool(r[18]),
            parent_id=r[19],
            unique_key=r[20],
            lock_key=r[21],
        )
        if extra is not None:
            payload, payload_ref, result, result_ref, error, progress = extra
            row.payload = None if payload is None else bytes(payload)
            row.result = None if result is None else bytes(result)
            # A blob that cannot be read marks this row only (``damaged``), never the whole read.
            if payload_ref:
                row.payload, row.damaged = self._read_blob(payload_ref)
            if result_ref:
                row.result, problem = self._read_blob(result_ref)
                row.damaged = problem or row.damaged
            row.error = None if error is None else bytes(error)
            row.progress = None if progress is None else bytes(progress)
        return row

    def get(self, ids: Sequence[str], *, history: bool = False) -> list[TaskRow | None]:
        """Full rows by id; see :meth:`Storage.get`."""
        found: dict[str, TaskRow] = {}
        for chunk in _chunks(ids):
            rows = self._read(
                f"SELECT {_ROW_COLUMNS}, payload, payload_ref, result, result_ref, error, progress "
                f"FROM tasks WHERE id IN ({_marks(len(chunk))})",
                chunk,
            )
            for r in rows:
                found[r[0]] = self._row(r[:22], r[22:])
        if history and found:
            for chunk in _chunks(list(found)):
                for task_id, error in self._read(
                    f"SELECT task_id, error FROM task_errors WHERE task_id IN ({_marks(len(chunk))}) ORDER BY rowid",
                    chunk,
                ):
                    found[task_id].errors.append(bytes(error) if error is not None else b"")
        return [found.get(i) for i in ids]

    def list(
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
            clauses.append(f"state IN ({_marks(len(wanted))})" if wanted else "0")
            params += wanted
        if queue is not None:
            clauses.append("queue = ?")
            params.append(queue)
        if name is not None:
            clauses.append("name = ?")
            params.append(name)
        where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
        rows = self._read(
            f"SELECT {_ROW_COLUMNS} FROM tasks {where} ORDER BY seq LIMIT ? OFFSET ?", [*params, limit, offset]
        )
        return [self._row(r) for r in rows]

    def counts(self) -> dict[str, dict[str, int]]:
        """``{queue: {state: n}}``; see :meth:`Storage.counts`."""
        out: dict[str, dict[str, int]] = {}
        # Kept by triggers in each writing transaction (schema v4): no scan of the tasks.
        for queue, state, n in self._read("SELECT queue, state, n FROM task_counts WHERE n > 0"):
            out.setdefault(queue, {})[state] = n
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
    ) -> builtins.list[TaskRow]:
        """Newest-first keyset page; see :meth:`Storage.page`."""
        rows = sqlite_history.page(
            self._read,
            states=states,
            queue=queue,
            name=name,
            since=since,
            until=until,
            parent=parent,
            before=before,
            limit=limit,
        )
        return [self._row(r[:22]) for r in rows]

    def oldest_pending(self) -> dict[str, TaskRow]:
        """The first-stored pending task per queue; see :meth:`Storage.oldest_pending`."""
        queues = [q for q, by_state in self.counts().items() if by_state.get(PENDING)]
        return {q: self._row(r[:22]) for q, r in sqlite_history.oldest_pending(self._read, queues).items()}

    def stats(self, *, since: float, until: float | None = None, bucket: int = 60) -> builtins.list[StatsRow]:
        """Finish statistics per minute (or ``bucket``); see :meth:`Storage.stats`."""
        return sqlite_history.stats(self._read, since=since, until=until, bucket=bucket)

    def next_run_at(self, queues: Sequence[str]) -> float | None:
        """Earliest scheduled ``run_at`` in ``queues``; see :meth:`Storage.next_run_at`."""
        if not queues:
            return None
        rows = self._read(
            f"SELECT run_at FROM tasks WHERE state = 'scheduled' AND queue IN ({_marks(len(queues))}) "
            "ORDER BY run_at LIMIT 1",
            list(queues),
        )
        # Tasks waiting for others (canvas) have no start time (+inf) and wake no one.
        return rows[0][0] if rows and rows[0][0] != float("inf") else None
