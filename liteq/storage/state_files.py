"""Worker health kept beside an SQLite store, for the moments the store itself cannot be written.

A pool is degraded precisely when its writes fail: another process holds the write lock (a
backup, a ``sqlite3`` shell), or the disk is full. Its row in ``workers`` cannot say so then, yet
that is when ``liteq status`` must show it. So a degraded heartbeat first writes one small file
per worker under ``<store>/workers/`` (atomically: write then rename), and :meth:`overlay` lays
those files over the rows read from the table. The file goes once an ``ok`` heartbeat has
committed, so a reader never sees ``ok`` before the store does. Best effort: a full disk may
refuse the file too, and the heartbeat's own error says why.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable

from .base import WorkerInfo

__all__ = ["StateFiles"]

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
