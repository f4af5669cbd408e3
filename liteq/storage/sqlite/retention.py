"""Retention in the SQLite store: deleting tasks (``purge`` by hand, ``prune`` past their TTL)
without holding the write lock long, and the housekeeping that goes with it (fired periodic
slots, old statistics, orphaned blobs)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Sequence
from typing import Any

from ...exceptions import StorageError
from ..contract import STATS_MEMORY
from .blobs import BLOB_MIN_AGE, Blobs
from .connection import Database
from .schedules import prune_slots
from .schema import chunks, marks

__all__ = ["Retention"]

#: Rows deleted by the first transaction of a purge or prune; later ones adapt (see ``delete``).
_FIRST_DELETE_BATCH = 1000
_MIN_DELETE_BATCH = 50
_MAX_DELETE_BATCH = 20_000


class Retention:
    """Deletes tasks and their blobs over one :class:`Database` in short transactions."""

    def __init__(self, db: Database, blobs: Blobs) -> None:
        self.db = db
        self.blobs = blobs
        self._next_blob_sweep = 0.0  # monotonic time of the next orphan-blob sweep (see prune)

    def delete(self, where: str, params: Sequence[Any], limit: int | None = None) -> int:
        """Delete the rows matching ``where`` (at most ``limit``) in short transactions.

        One ``DELETE`` of a million finished rows would hold the write lock for seconds and make
        every other writer of the store fail with ``StoreBusy``. So rows go in batches whose size
        adapts to stay well under the busy timeout, and between batches the lock is left free for
        as long as the batch held it, so a waiting writer (whose busy handler polls) gets in.
        """
        target = min(max(self.db.busy_timeout / 10, 0.005), 0.2)
        batch = _FIRST_DELETE_BATCH
        total = after = 0
        while limit is None or total < limit:
            size = batch if limit is None else min(batch, limit - total)

            def run(conn: sqlite3.Connection, size: int = size, after: int = after) -> list[sqlite3.Row]:
                # In seq order from where the last batch stopped: rows kept by the filter are not
                # scanned again by every batch.
                rows = conn.execute(
                    f"DELETE FROM tasks WHERE seq IN (SELECT seq FROM tasks WHERE ({where}) AND seq > ? "
                    "ORDER BY seq LIMIT ?) RETURNING id, payload_ref, result_ref, seq",
                    [*params, after, size],
                ).fetchall()
                for chunk in chunks([r["id"] for r in rows]):
                    holes = marks(len(chunk))
                    conn.execute(f"DELETE FROM task_errors WHERE task_id IN ({holes})", chunk)
                    conn.execute(f"DELETE FROM task_deps WHERE task_id IN ({holes})", chunk)
                    conn.execute(f"DELETE FROM task_groups WHERE task_id IN ({holes})", chunk)
                return rows

            started = time.monotonic()
            rows = self.db.write(run)
            took = time.monotonic() - started
            refs = [ref for r in rows for ref in (r["payload_ref"], r["result_ref"]) if ref]
            if refs:
                self.blobs.drop(refs)
            total += len(rows)
            after = max((r["seq"] for r in rows), default=after)
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
            clauses.append(f"state IN ({marks(len(wanted))})" if wanted else "0")
            params += wanted
        else:
            clauses.append("state != 'running'")
        if ids is not None:
            total = 0
            for chunk in chunks(ids):
                where = " AND ".join([*clauses, f"id IN ({marks(len(chunk))})"])
                total += self.delete(where, [*params, *chunk])
            return total
        return self.delete(" AND ".join(clauses), params)

    def prune(self, *, now: float | None = None, limit: int = 10_000) -> int:
        """Delete finished tasks past their TTL; see :meth:`Storage.prune`. Now and then (every
        ``BLOB_MIN_AGE``) it also collects orphaned blobs (:meth:`.blobs.Blobs.collect`)."""
        now = time.time() if now is None else now
        mono = time.monotonic()
        if mono >= self._next_blob_sweep:
            self._next_blob_sweep = mono + BLOB_MIN_AGE
            try:
                self.blobs.collect(now=now, min_age=BLOB_MIN_AGE)
            except StorageError:  # an orphan blob is harmless; the next sweep tries again
                pass
        prune_slots(self.db, now)
        if self.db.read("SELECT 1 FROM task_stats WHERE minute < ? LIMIT 1", (int((now - STATS_MEMORY) // 60),)):
            self.db.write(
                lambda conn: conn.execute("DELETE FROM task_stats WHERE minute < ?", (int((now - STATS_MEMORY) // 60),))
            )
        if not self.db.read("SELECT 1 FROM tasks WHERE result_expires_at <= ? LIMIT 1", (now,)):
            return 0
        return self.delete("result_expires_at <= ?", (now,), limit=limit)
