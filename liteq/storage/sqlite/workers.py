"""The worker registry of the SQLite store: registration, heartbeats and the health state
(``ok`` / ``degraded``) each pool reports.

A pool is degraded precisely when its writes fail: another process holds the write lock (a
backup, a ``sqlite3`` shell), or the disk is full. Its row in ``workers`` cannot say so then, yet
that is when ``liteq status`` must show it. So a degraded heartbeat first writes one small file
per worker under ``<store>/workers/`` (atomically: write then rename, :class:`StateFiles`), and
:meth:`StateFiles.overlay` lays those files over the rows read from the table. The file goes once
an ``ok`` heartbeat has committed, so a reader never sees ``ok`` before the store does. Best
effort: a full disk may refuse the file too, and the heartbeat's own error says why.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterable
from typing import Any

from ..records import WorkerInfo
from .connection import Database

__all__ = ["StateFiles", "heartbeat", "register_worker", "unregister_worker", "workers"]


#: The directory under the store that holds the files.
DIRNAME = "workers"


class StateFiles:
    """The side files of one store directory (see the module doc)."""

    def __init__(self, store_dir: str) -> None:
        self.dir = os.path.join(store_dir, DIRNAME)

    def _path(self, worker_id: str) -> str:
        # Worker ids hold ':' and whatever a user passed as --worker-id: hash them into a file name.
        return os.path.join(self.dir, hashlib.sha256(worker_id.encode()).hexdigest()[:32] + ".json")

    def write(self, worker_id: str, state: str, reason: str | None, since: float | None) -> None:
        """Record ``worker_id`` as being in ``state`` (ignored if the disk refuses)."""
        path = self._path(worker_id)
        tmp = f"{path}.{os.getpid()}.tmp"
        data = json.dumps({"id": worker_id, "state": state, "reason": reason, "since": since}).encode()
        try:
            os.makedirs(self.dir, mode=0o700, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except OSError:
            try:
                os.unlink(tmp)
            except OSError:
                pass

    def clear(self, worker_id: str) -> None:
        """Forget ``worker_id``'s file, if any."""
        try:
            os.unlink(self._path(worker_id))
        except OSError:
            pass

    def overlay(self, workers: Iterable[WorkerInfo]) -> list[WorkerInfo]:
        """``workers`` with the state of each one's file, where it has one."""
        out = list(workers)
        if not os.path.isdir(self.dir):
            return out
        for w in out:
            try:
                with open(self._path(w.id), "rb") as f:
                    data = json.loads(f.read())
            except (OSError, ValueError):
                continue
            if data.get("id") == w.id:
                w.state, w.state_reason, w.state_since = data["state"], data.get("reason"), data.get("since")
        return out


def register_worker(db: Database, info: WorkerInfo) -> None:
    """Record a live worker; see :meth:`Storage.register_worker`."""
    db.write(
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
        StateFiles(db.path).clear(info.id)


def heartbeat(
    db: Database,
    worker_id: str,
    *,
    tasks_done: int = 0,
    now: float | None = None,
    state: str = "ok",
    state_reason: str | None = None,
    state_since: float | None = None,
) -> None:
    """Refresh a worker's heartbeat and state; see :meth:`Storage.heartbeat`.

    A degraded state goes to a side file first (:class:`StateFiles`): the row cannot be
    written while another process holds the lock, and that is when it matters."""
    now = time.time() if now is None else now
    files = StateFiles(db.path)
    if state != "ok":
        files.write(worker_id, state, state_reason, state_since)
    db.write(
        lambda conn: conn.execute(
            "UPDATE workers SET heartbeat_at = ?, tasks_done = tasks_done + ?, state = ?, state_reason = ?, "
            "state_since = ? WHERE id = ?",
            (now, tasks_done, state, state_reason, state_since, worker_id),
        )
    )
    if state == "ok":
        files.clear(worker_id)


def unregister_worker(db: Database, worker_id: str) -> None:
    """Forget a worker; see :meth:`Storage.unregister_worker`."""
    db.write(lambda conn: conn.execute("DELETE FROM workers WHERE id = ?", (worker_id,)))
    StateFiles(db.path).clear(worker_id)


def workers(db: Database, *, stale_after: float | None = None, now: float | None = None) -> list[WorkerInfo]:
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
            id=r["id"],
            host=r["host"],
            pid=r["pid"],
            concurrency=r["concurrency"],
            queues=json.loads(r["queues"]),
            started_at=r["started_at"],
            heartbeat_at=r["heartbeat_at"],
            tasks_done=r["tasks_done"],
            state=r["state"],
            state_reason=r["state_reason"],
            state_since=r["state_since"],
        )
        for r in db.read(sql + " ORDER BY started_at", params)
    ]
    return StateFiles(db.path).overlay(rows)
