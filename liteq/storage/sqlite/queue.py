"""The queue of the SQLite store: a task's way through its states, one transaction per batch
(new tasks come in through :mod:`.intake`).

- Every write is one ``BEGIN IMMEDIATE`` transaction (:meth:`.connection.Database.write`).
- Claiming is a single ``UPDATE ... RETURNING`` over a partial index of pending rows, so two
  claimers can never select the same row and the cost does not grow with the backlog. Scheduled
  rows live in their own partial index and are promoted to pending in the claim transaction.
- Locks and rate limits (:mod:`.controls`) and dependencies (:mod:`.canvas`) are applied in the
  same transaction as the claim or completion that touches them.
"""

from __future__ import annotations

import itertools
import random
import sqlite3
import time
from collections.abc import Mapping, Sequence
from typing import Any

from ...wake import DONE, WORK
from ..checks import check_lease, checked_outcomes
from ..policy import open_dependencies, retry_blocked
from ..records import ClaimedTask, Outcome
from ..states import PENDING, SCHEDULED, is_cascaded
from .blobs import Blobs
from .canvas import cascade
from .connection import Database
from .controls import hold_back
from .schema import CLEAR_LEASE, FINISH, UNLOCKED, chunks, marks

__all__ = ["Queue"]

#: Outcomes per set-based finishing statement: eight parameters each, under SQLite's lowest limit.
FINISH_CHUNK = 100
#: One finished outcome as the set-based statement binds it:
#: ``(id, lease_token, state, result, result_ref, error, reason, result_ttl)``.
FinishRow = tuple[str, str, str, "bytes | None", "str | None", "bytes | None", "str | None", "float | None"]
_FINISH_ONE = (
    "UPDATE tasks SET state = :state, result = :result, result_ref = :ref, error = :error, reason = :reason, "
    + FINISH
    + " WHERE id = :id AND lease_token = :token AND state = 'running' RETURNING attempts, lock_key, dependents"
)
_finish_many_sql: dict[int, str] = {}
#: What a claim returns of each row, in the order its rows are unpacked.
CLAIM_COLUMNS = (
    "id, name, queue, payload, payload_ref, attempts, max_attempts, lease_token, lease_deadline, "
    "enqueued_at, expires_at, priority, seq, lock_key, timeout, soft_timeout, rate_limit"
)


def _finish_many(n: int) -> str:
    """The statement finishing ``n`` outcomes at once: the outcomes are a ``VALUES`` list joined to
    their rows by id, and a row takes part only while its lease token still matches (the fence)."""
    sql = _finish_many_sql.get(n)
    if sql is None:
        sql = _finish_many_sql[n] = (
            "UPDATE tasks SET state = v.column3, result = v.column4, result_ref = v.column5, error = v.column6, "
            "reason = v.column7, finished_at = ?1, result_expires_at = ?1 + COALESCE(v.column8, tasks.result_ttl, ?2), "
            + CLEAR_LEASE
            + " FROM (VALUES "
            + ",".join(["(?,?,?,?,?,?,?,?)"] * n)
            + ") AS v WHERE tasks.id = v.column1 AND tasks.lease_token = v.column2 AND tasks.state = 'running' "
            "RETURNING tasks.id, tasks.attempts, tasks.lock_key, tasks.dependents"
        )
    return sql


def finish_batch(
    conn: sqlite3.Connection, outcomes: Sequence[FinishRow], now: float, default_ttl: float
) -> dict[str, tuple[int, str | None, int]]:
    """Finish many leased tasks in a few statements; the ids must be distinct. Returns the rows
    that were accepted (``(attempts, lock_key, dependents)`` by id); a task missing from it had
    lost its lease (a stale token, or no longer running) and was left as it was."""
    accepted: dict[str, tuple[int, str | None, int]] = {}
    for chunk in chunks(outcomes, FINISH_CHUNK):
        params: list[Any] = [now, default_ttl, *itertools.chain.from_iterable(chunk)]
        for id_, attempts, lock_key, dependents in conn.execute(_finish_many(len(chunk)), params):
            accepted[id_] = (attempts, lock_key, dependents)
    return accepted


def finish_one(conn: sqlite3.Connection, o: Outcome, ref: str | None, now: float, default_ttl: float) -> Any:
    """Finish one leased task; the row (``attempts, lock_key, dependents``) or None when its lease
    was lost."""
    return conn.execute(
        _FINISH_ONE,
        {"id": o.id, "token": o.lease_token, "state": o.state, "result": None if ref else o.result, "ref": ref,
         "error": o.error, "reason": o.reason, "now": now, "ttl": o.result_ttl, "default_ttl": default_ttl},
    ).fetchone()  # fmt: skip


class Queue:
    """Claim, extend, complete, release, reap, cancel and retry over one :class:`Database`.

    ``result_ttl`` is the store's default time a finished task is kept.
    """

    def __init__(self, db: Database, blobs: Blobs, *, result_ttl: float) -> None:
        self.db = db
        self.blobs = blobs
        self.result_ttl = result_ttl

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
        # Each lease gets its own token: a random prefix per claim and the row's seq. (SQL's
        # randomblob() per row cost a good part of a claimed row's time.) Tokens need uniqueness,
        # not secrecy: random (reseeded in every forked child) spares a system call per claim.
        params: list[Any] = [owner, f"{random.getrandbits(72):018x}.", now + lease, now]
        if ids is not None:
            if not ids:
                return []
            pick = (
                f"SELECT seq FROM tasks WHERE id IN ({marks(len(ids))}) AND state IN ('pending','scheduled') "
                f"AND waiting = 0 {UNLOCKED} LIMIT ?"
            )
            params += [*ids, limit]
        elif len(queues) == 1:
            pick = f"SELECT seq FROM tasks WHERE state = 'pending' AND queue = ? {UNLOCKED} ORDER BY priority DESC, seq LIMIT ?"
            params += [queues[0], limit]
        else:
            # Each queue's best rows come from its own index range; the merge takes the best overall.
            part = (
                f"SELECT * FROM (SELECT seq, priority FROM tasks WHERE state = 'pending' AND queue = ? {UNLOCKED} "
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
            "lease_token = ? || seq, lease_deadline = ?, started_at = ? "
            f"WHERE seq IN ({pick}) RETURNING {CLAIM_COLUMNS}"
        )

        def run(conn: sqlite3.Connection) -> list[sqlite3.Row]:
            conn.execute("UPDATE tasks SET state = 'pending' WHERE state = 'scheduled' AND run_at <= ?", (now,))
            taken: list[sqlite3.Row] = []
            while True:
                rows = conn.execute(sql, params).fetchall()
                taken += rows
                dead = [r["id"] for r in rows if r["expires_at"] is not None and r["expires_at"] <= now]
                if dead:
                    conn.executemany(
                        "UPDATE tasks SET state = 'expired', reason = 'expired', " + FINISH + " WHERE id = :id",
                        [{"now": now, "ttl": None, "default_ttl": self.result_ttl, "id": id_} for id_ in dead],
                    )
                    for id_ in dead:
                        cascade(conn, id_, "expired", now, self.result_ttl)
                # A batch made only of expired tasks says nothing about what is behind it: look again.
                if not rows or len(dead) < len(rows):
                    return hold_back(conn, taken, now, limits)

        rows = self.db.write(run)
        rows.sort(key=lambda r: (-r["priority"], r["seq"]))  # RETURNING promises no order
        claimed = []
        lost: list[tuple[str, str, str]] = []
        for r in rows:
            # By position, in CLAIM_COLUMNS order (a row read by name compares each name in turn).
            (id_, name, queue, payload, payload_ref, attempts, max_attempts, token, deadline, enqueued_at, expires_at,
             priority, _seq, _lock_key, timeout, soft_timeout, _rate_limit) = r  # fmt: skip
            if expires_at is not None and expires_at <= now:
                continue
            if payload_ref:
                payload, problem = self.blobs.read(payload_ref)
                if problem is not None:
                    lost.append((id_, token, problem))
                    continue
            claimed.append(
                ClaimedTask(
                    id_,
                    name,
                    queue,
                    b"" if payload is None else bytes(payload),
                    attempts,
                    max_attempts,
                    token,
                    deadline,
                    enqueued_at,
                    expires_at,
                    priority,
                    timeout,
                    soft_timeout,
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
                    + FINISH
                    + " WHERE id = :id AND lease_token = :token AND state = 'running' RETURNING dependents",
                    {"reason": problem, "id": id_, "token": token, "now": now, "ttl": None,
                     "default_ttl": self.result_ttl},
                ).fetchone()  # fmt: skip
                if row is not None and row["dependents"]:
                    cascade(conn, id_, "failed", now, self.result_ttl)

        self.db.write(run, DONE)

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

        return self.db.write(run)

    def complete(self, outcomes: Sequence[Outcome], *, now: float | None = None) -> list[bool]:
        """Apply outcomes under their lease tokens; see :meth:`Storage.complete`."""
        if not outcomes:
            return []
        now = time.time() if now is None else now
        outcomes = checked_outcomes(outcomes, now)
        refs: list[str | None] = []
        for o in outcomes:
            ref = None
            if o.result is not None and len(o.result) > self.blobs.threshold:
                ref = f"r:{o.id}:{o.lease_token}"
                self.blobs.put(ref, o.result)
            refs.append(ref)
        retry_sql = (
            "UPDATE tasks SET state = CASE WHEN :run_at <= :now THEN 'pending' ELSE 'scheduled' END, "
            "run_at = :run_at, error = :error, reason = :reason, " + CLEAR_LEASE + " "
            "WHERE id = :id AND lease_token = :token AND state = 'running' RETURNING attempts, lock_key, 0 AS dependents"
        )
        finishing = [
            (o.id, o.lease_token, o.state, None if ref else o.result, ref, o.error, o.reason, o.result_ttl)
            for o, ref in zip(outcomes, refs, strict=True)
            if o.state not in (SCHEDULED, PENDING)
        ]
        # The same task twice in one batch: only the first outcome may apply, which a set-based
        # statement cannot promise, so such a batch finishes its tasks one statement each.
        one_by_one = len({o.id for o in outcomes}) < len(outcomes)

        def run(conn: sqlite3.Connection) -> list[bool]:
            finished = {} if one_by_one else finish_batch(conn, finishing, now, self.result_ttl)
            applied = []
            for o, ref in zip(outcomes, refs, strict=True):
                row: Any
                if o.state in (SCHEDULED, PENDING):
                    params = {"id": o.id, "token": o.lease_token, "error": o.error, "reason": o.reason, "now": now,
                              "run_at": now if o.run_at is None else o.run_at}  # fmt: skip
                    row = conn.execute(retry_sql, params).fetchone()
                elif one_by_one:
                    row = finish_one(conn, o, ref, now, self.result_ttl)
                else:
                    row = finished.get(o.id)
                if row is None:
                    applied.append(False)
                    continue
                attempts, lock_key, dependents = row  # the columns every statement above returns
                if o.error is not None:
                    conn.execute(
                        "INSERT INTO task_errors (task_id, attempt, at, error) VALUES (?,?,?,?)",
                        (o.id, attempts, now, o.error),
                    )
                if lock_key is not None:
                    freed.append(lock_key)
                if dependents and cascade(conn, o.id, o.state, now, self.result_ttl):
                    freed.append(o.id)
                applied.append(True)
            return applied

        freed: list[str] = []
        wake = DONE + WORK if any(o.state in (SCHEDULED, PENDING) for o in outcomes) else DONE
        try:
            applied = self.db.write(run, wake)
        except BaseException:
            self.blobs.drop(refs)
            raise
        self.blobs.drop(ref for ref, ok in zip(refs, applied, strict=True) if not ok)
        if freed and WORK not in wake:
            self.db.wake_others(WORK)  # a lock came free: tasks waiting for it can run now
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
                    + CLEAR_LEASE
                    + " WHERE id = :id AND lease_token = :token AND state = 'running' RETURNING state, dependents",
                    {"back": back, "id": id_, "token": token, "now": now, "ttl": self.result_ttl},
                ).fetchone()
                if row is None:
                    continue
                n += 1
                if row["state"] == "cancelled" and row["dependents"]:
                    # A cancelled task handed back fails what waits for it, as everywhere else.
                    cascade(conn, id_, "cancelled", now, self.result_ttl)
            return n

        return self.db.write(run, WORK + DONE)

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
                + FINISH
                + f" WHERE {where} AND cancel_requested RETURNING id, dependents",
                params,
            ).fetchall()
            failed = conn.execute(
                "UPDATE tasks SET state = 'failed', reason = 'worker lost', error = NULL, "
                + FINISH
                + f" WHERE {where} AND attempts >= max_attempts RETURNING id, dependents",
                params,
            ).fetchall()
            for r in cancelled + failed:
                if r["dependents"]:
                    cascade(conn, r["id"], "failed", now, self.result_ttl)
            back = conn.execute(
                "UPDATE tasks SET state = 'pending', reason = 'worker lost', started_at = NULL, "
                + CLEAR_LEASE
                + f" WHERE {where} RETURNING id",
                params,
            ).fetchall()
            return [r["id"] for r in cancelled + failed + back]

        # Read first so an idle reaper never takes the write lock.
        probe = "SELECT 1 FROM tasks WHERE " + where + " LIMIT 1"
        if not self.db.read(probe, params):
            return []
        return self.db.write(run, WORK + DONE)

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

        return self.db.write(run)

    def cancel(self, ids: Sequence[str], *, now: float | None = None) -> list[str | None]:
        """Cancel waiting tasks and flag running ones; see :meth:`Storage.cancel`."""
        if not ids:
            return []
        now = time.time() if now is None else now

        def run(conn: sqlite3.Connection) -> dict[str, str]:
            states: dict[str, str] = {}
            for chunk in chunks(ids):
                holes = marks(len(chunk))
                for task_id, dependents in conn.execute(
                    "UPDATE tasks SET state = 'cancelled', reason = 'cancelled', waiting = 0, finished_at = ?, "
                    "result_expires_at = ? + COALESCE(result_ttl, ?) "
                    f"WHERE id IN ({holes}) AND state IN ('pending', 'scheduled') RETURNING id, dependents",
                    (now, now, self.result_ttl, *chunk),
                ).fetchall():
                    if dependents:
                        cascade(conn, task_id, "cancelled", now, self.result_ttl)
                conn.execute(
                    f"UPDATE tasks SET cancel_requested = 1 WHERE id IN ({holes}) AND state = 'running'", chunk
                )
                states.update(conn.execute(f"SELECT id, state FROM tasks WHERE id IN ({holes})", chunk).fetchall())
            return states

        states = self.db.write(run, DONE)
        return [states.get(i) for i in ids]

    def retry(self, ids: Sequence[str], *, now: float | None = None) -> list[bool]:
        """Re-run finished tasks by hand; see :meth:`Storage.retry`."""
        if not ids:
            return []
        now = time.time() if now is None else now

        def run(conn: sqlite3.Connection) -> tuple[list[bool], list[str | None]]:
            chosen: set[str] = set()
            cascaded: set[str] = set()
            for chunk in chunks(ids):
                for id_, reason in conn.execute(
                    f"SELECT id, reason FROM tasks WHERE id IN ({marks(len(chunk))}) "
                    "AND state IN ('failed', 'cancelled', 'expired')",
                    chunk,
                ):
                    chosen.add(id_)
                    if is_cascaded(reason):
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
                if retry_blocked(deps, chosen):
                    out.append(False)
                    continue
                waiting = len(open_dependencies(deps, chosen))
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

        applied, old_refs = self.db.write(run, WORK)
        self.blobs.drop(old_refs)  # the results of the runs that are retried are garbage now
        return applied
