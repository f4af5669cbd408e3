"""Large payloads and results beside the database: a ``diskcache.Cache`` in ``<path>/blobs`` whose
keys the task rows keep (``payload_ref``, ``result_ref``). A blob is written before its row's
transaction and dropped if that transaction fails; one that cannot be read marks its own task only."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterable
from typing import Any

from .connection import Database
from .schema import BLOB_DIRNAME, chunks, marks

__all__ = ["BLOB_MIN_AGE", "Blobs"]

#: A blob no row refers to is collected once it is this old (seconds): a write in flight is younger.
BLOB_MIN_AGE = 3600.0


class Blobs:
    """The blob cache of one store, opened on first use in each process."""

    def __init__(self, db: Database, *, size_threshold: int) -> None:
        self.db = db
        self.size_threshold = size_threshold
        self._cache: Any = None
        self._pid = 0
        self._lock = threading.Lock()

    def close(self) -> None:
        """Close the cache if this process opened it (a forked child's copy is left alone)."""
        if self._cache is not None and self._pid == os.getpid():
            self._cache.close()
        self._cache = None

    @property
    def cache(self) -> Any:
        """The ``diskcache.Cache`` holding large payloads and results, opened on first use."""
        if self._cache is None or self._pid != os.getpid():
            with self._lock:
                if self._cache is None or self._pid != os.getpid():
                    import diskcache

                    # Built in two steps so that a cache whose __init__ fails half-way (disk full)
                    # still has its connection closed instead of holding the file open.
                    cache = diskcache.Cache.__new__(diskcache.Cache)
                    directory = os.path.join(self.db.path, BLOB_DIRNAME)
                    try:
                        self._private_dir(directory)
                        cache.__init__(
                            directory,
                            eviction_policy="none",
                            timeout=self.db.busy_timeout,
                            size_limit=2**62,
                        )
                    except (sqlite3.Error, OSError) as exc:
                        with contextlib.suppress(Exception):
                            cache.close()
                        raise self.db.translate(exc, 0.0, where=os.path.join(self.db.path, BLOB_DIRNAME)) from exc
                    self._cache = cache
                    self._pid = os.getpid()
        return self._cache

    def _private_dir(self, directory: str) -> None:
        """Create the blob cache's directory and index with the store's permissions (diskcache
        would create them 0755/0644); the value files it writes inside are shielded by the directory."""
        if not os.path.isdir(directory):
            os.makedirs(directory, mode=self.db.mode, exist_ok=True)
            os.chmod(directory, self.db.mode)
        index = os.path.join(directory, "cache.db")
        try:
            fd = os.open(index, os.O_WRONLY | os.O_CREAT | os.O_EXCL, self.db.file_mode)
        except FileExistsError:
            return
        os.close(fd)
        os.chmod(index, self.db.file_mode)

    def put(self, key: str, value: bytes) -> None:
        """Store ``value`` under ``key`` (before the transaction of the row that refers to it)."""
        try:
            self.cache.set(key, value)
        except (sqlite3.Error, OSError) as exc:
            raise self.db.translate(exc, 0.0, where=os.path.join(self.db.path, BLOB_DIRNAME)) from exc

    @property
    def threshold(self) -> float:
        """Size above which a value goes to the blob cache. Under ``durability="full"`` nothing
        does: a blob file is not fsynced with the row's commit, so a value kept beside its row
        could be lost on power loss while the row survives. In the database it is exactly as
        durable as the row."""
        return float("inf") if self.db.durability == "full" else self.size_threshold

    def get(self, key: str) -> bytes | None:
        """The value under ``key``, or None; errors of a damaged cache propagate (see :meth:`read`)."""
        value = self.cache.get(key)
        return bytes(value) if value is not None else None

    def read(self, key: str) -> tuple[bytes | None, str | None]:
        """``(value, None)``, or ``(None, problem)`` when the blob is missing or cannot be read."""
        where = os.path.join(self.db.path, BLOB_DIRNAME)
        try:
            value = self.get(key)
        except Exception as exc:  # a damaged cache (sqlite3, OSError, unpickling): this value only
            return None, f"blob damaged: {key} in {where} cannot be read ({type(exc).__name__}: {exc})"
        if value is None:
            return None, f"blob missing: {key} is not in {where} (deleted or lost)"
        return value, None

    def drop(self, keys: Iterable[str | None]) -> None:
        """Delete these blobs (None entries skipped); a failure leaves an orphan for :meth:`collect`."""
        for key in keys:
            if key:
                try:
                    self.cache.delete(key)
                except (sqlite3.Error, OSError):  # an orphan blob is harmless; prune retries later
                    pass

    def collect(self, *, now: float, min_age: float) -> int:
        """Delete blobs that no task refers to and that were written over ``min_age`` seconds ago;
        return how many (see :meth:`SqliteStorage.collect_blobs`)."""
        index = os.path.join(self.db.path, BLOB_DIRNAME, "cache.db")
        if not os.path.exists(index):
            return 0
        try:
            # diskcache's own table, read directly: it keeps each key's store time, which its API
            # does not expose.
            conn = sqlite3.connect(f"file:{index}?mode=ro", uri=True, timeout=self.db.busy_timeout)
            try:
                keys = [
                    k for (k,) in conn.execute("SELECT key FROM Cache WHERE store_time < ?", (now - min_age,))
                    if isinstance(k, str)
                ]  # fmt: skip
            finally:
                conn.close()
        except sqlite3.Error as exc:
            raise self.db.translate(exc, 0.0, where=index) from exc
        by_id: dict[str, list[str]] = {}
        for key in keys:
            parts = key.split(":")
            if len(parts) == 3 and parts[0] in ("p", "r"):
                by_id.setdefault(parts[1], []).append(key)
        live: set[str] = set()
        for chunk in chunks(list(by_id)):
            for row in self.db.read(
                f"SELECT payload_ref, result_ref FROM tasks WHERE id IN ({marks(len(chunk))})", chunk
            ):
                live.update(ref for ref in (row["payload_ref"], row["result_ref"]) if ref)
        orphans = [key for group in by_id.values() for key in group if key not in live]
        self.drop(orphans)
        return len(orphans)
