"""The SQLite store's way in: a batch of new tasks stored in one transaction.

Most tasks are *plain*: due now, every option at its default, nothing to look up (no idempotency
or unique key, periodic slot, dependency or group) and the payload inline. They take the cheap way:

- a plain row binds only the columns it has a value for (id, name, queue, priority, attempts,
  payload) and the enqueue time once per statement; the other columns keep their NULL defaults.
  sqlite3 adapts every ``None`` parameter through its protocol lookup, so binding them would cost
  more per row than the index writes;
- plain rows go in as multi-row ``VALUES`` lists, one statement per :data:`PLAIN_CHUNK` rows,
  which costs far less per row than running one statement per row (``executemany``);
- a plain row passes every check of :func:`~liteq.storage.checks.check_new_tasks` by construction,
  so only the other rows are checked, still before anything is written.

The rest (keys, slots, dependencies, blobs, a start time or limits) bind every column, and the
batch keeps its order: consecutive rows of one kind go in one statement each.
"""

from __future__ import annotations

import itertools
import os
import sqlite3
import time
from collections.abc import Sequence
from typing import Any, cast

from ...wake import WORK
from ..checks import check_new_tasks
from ..records import NewTask
from ..states import PENDING, SCHEDULED
from .blobs import Blobs
from .canvas import link
from .connection import Database
from .controls import duplicate_of
from .schema import chunks, marks

__all__ = ["PLAIN_CHUNK", "Intake", "insert_plain"]

#: Plain rows per ``INSERT`` statement: six parameters each, under SQLite's lowest limit (999).
PLAIN_CHUNK = 100
#: Every column an enqueue of a task that is not plain writes, in the order :data:`_INSERT` binds them.
_COLUMNS = (
    "id, name, queue, priority, state, run_at, expires_at, enqueued_at, max_attempts, idempotency_key, payload, "
    "payload_ref, result_ttl, parent_id, unique_key, lock_key, timeout, soft_timeout, rate_limit"
)
_INSERT = f"INSERT INTO tasks ({_COLUMNS}) VALUES ({marks(19)})"
_REF = 11  # payload_ref's position in an :data:`_INSERT` row
#: One plain row: ``?1`` is the enqueue time (also its start time), shared by the statement's rows.
_PLAIN_VALUES = "(?1, ?, ?, ?, ?, ?, ?, 'pending', ?1)"
_PLAIN_COLUMNS = "run_at, id, name, queue, priority, max_attempts, payload, state, enqueued_at"
_PLAIN_ONE = f"INSERT INTO tasks ({_PLAIN_COLUMNS}) VALUES {_PLAIN_VALUES}"
_plain_sql: dict[int, str] = {}

#: A plain row as :func:`insert_plain` binds it: ``(id, name, queue, priority, max_attempts, payload)``.
PlainRow = tuple[str, str, str, int, int, bytes]


def insert_plain(conn: sqlite3.Connection, rows: Sequence[PlainRow], now: float) -> None:
    """Insert plain rows, pending since ``now``, in order, :data:`PLAIN_CHUNK` per statement."""
    if len(rows) == 1:  # what every delay() sends
        conn.execute(_PLAIN_ONE, (now, *rows[0]))
        return
    for chunk in chunks(rows, PLAIN_CHUNK):
        n = len(chunk)
        sql = _plain_sql.get(n)
        if sql is None:
            sql = _plain_sql[n] = f"INSERT INTO tasks ({_PLAIN_COLUMNS}) VALUES " + ",".join([_PLAIN_VALUES] * n)
        params: list[Any] = [now]
        params += itertools.chain.from_iterable(chunk)
        conn.execute(sql, params)


class Intake:
    """Stores batches of :class:`NewTask` over one :class:`Database`; ``result_ttl`` is the store's
    default time a finished task is kept (for a dependency that has already failed)."""

    def __init__(self, db: Database, blobs: Blobs, *, result_ttl: float) -> None:
        self.db = db
        self.blobs = blobs
        self.result_ttl = result_ttl

    def enqueue(self, tasks: Sequence[NewTask], *, now: float | None = None) -> list[str]:
        """Store a batch atomically; see :meth:`Storage.enqueue`."""
        if not tasks:
            return []
        now = time.time() if now is None else now
        threshold = self.blobs.threshold
        plain: list[PlainRow | None] = []
        others: list[NewTask] = []
        for t in tasks:
            release_delay, max_attempts = t.release_delay, t.max_attempts
            if (
                t.run_at is None
                and t.expires_at is None
                and t.idempotency_key is None
                and t.result_ttl is None
                and t.parent_id is None
                and t.unique_key is None
                and t.lock_key is None
                and t.slot is None
                and not t.depends_on
                and t.group_id is None
                and t.timeout is None
                and t.soft_timeout is None
                and t.rate_limit is None
                and release_delay.__class__ is float
                and release_delay == 0.0
                and max_attempts.__class__ is int
                and max_attempts >= 1
                and t.priority.__class__ is int
                and len(t.payload) <= threshold
            ):
                plain.append((t.id, t.name, t.queue, t.priority, max_attempts, t.payload))
            else:
                plain.append(None)
                others.append(t)
        if not others:
            rows = cast("list[PlainRow]", plain)  # no None among them
            self.db.write(lambda conn: insert_plain(conn, rows, now), WORK)
            return [t.id for t in tasks]
        check_new_tasks(others, now)
        return self._enqueue_mixed(tasks, plain, now, threshold)

    def _enqueue_mixed(
        self, tasks: Sequence[NewTask], plain: list[PlainRow | None], now: float, threshold: float
    ) -> list[str]:
        """Store a checked batch holding tasks that are not plain: their blobs, idempotency keys,
        unique keys, periodic slots and dependencies; ``plain[i]`` is task ``i``'s plain row or None."""
        rows: list[tuple[bool, tuple[Any, ...]]] = []
        refs: list[str] = []
        keys = [t.idempotency_key for t in tasks if t.idempotency_key is not None]
        needs_lookup = False
        for t, row in zip(tasks, plain, strict=True):
            if row is not None:
                rows.append((True, row))
                continue
            payload: bytes | None = t.payload
            ref = None
            if t.unique_key is not None or t.slot is not None or t.depends_on or t.group_id is not None:
                needs_lookup = True
            if len(t.payload) > threshold:
                # Keyed by write, not by id: a refused or duplicate enqueue never touches a stored blob.
                ref = f"p:{t.id}:{os.urandom(8).hex()}"
                payload = None
                refs.append(ref)
                self.blobs.put(ref, t.payload)
            run_at = now if t.run_at is None else t.run_at
            rows.append(
                (
                    False,
                    (t.id, t.name, t.queue, t.priority, SCHEDULED if run_at > now else PENDING, run_at, t.expires_at,
                     now, t.max_attempts, t.idempotency_key, payload, ref, t.result_ttl, t.parent_id, t.unique_key,
                     t.lock_key, t.timeout, t.soft_timeout, t.rate_limit),
                )
            )  # fmt: skip
        unused: list[str] = []

        def run(conn: sqlite3.Connection) -> list[str]:
            unused.clear()
            unique: dict[str, str] = {}
            existing: dict[str, str] = {}
            if keys:
                for chunk in chunks(keys):
                    for id_, key in conn.execute(
                        f"SELECT id, idempotency_key FROM tasks WHERE idempotency_key IN ({marks(len(chunk))})",
                        chunk,
                    ):
                        existing[key] = id_
            ids = []
            insert: list[tuple[bool, tuple[Any, ...]]] = []
            for t, (is_plain, row) in zip(tasks, rows, strict=True):
                ref = None if is_plain else row[_REF]
                key = t.idempotency_key
                if key is not None and key in existing:
                    ids.append(existing[key])
                    if ref:
                        unused.append(ref)
                    continue
                twin = duplicate_of(conn, t, now, unique) if needs_lookup and not is_plain else None
                if twin is not None:
                    ids.append(twin)
                    if ref:
                        unused.append(ref)
                    continue
                if key is not None:
                    existing[key] = t.id
                ids.append(t.id)
                insert.append((is_plain, row))
            # Consecutive rows of one kind go in together, so the rows keep the batch's order.
            for is_plain, run_rows in itertools.groupby(insert, key=lambda r: r[0]):
                if is_plain:
                    insert_plain(conn, [row for _, row in run_rows], now)
                else:
                    conn.executemany(_INSERT, [row for _, row in run_rows])
            if needs_lookup:
                inserted = {row[0] for _, row in insert}
                link(conn, [t for t in tasks if t.id in inserted], now, self.result_ttl)
            return ids

        try:
            ids = self.db.write(run, WORK)
        except BaseException:
            self.blobs.drop(refs)
            raise
        self.blobs.drop(unused)  # blobs of entries that an idempotency key turned into no-ops
        return ids
