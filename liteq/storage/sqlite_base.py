"""``SqliteBase``: connections, transactions, error translation, wake-ups and the blob cache of
the SQLite store. The queue operations live in :mod:`.sqlite` and :mod:`.sqlite_extras`."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ..exceptions import (
    ConfigurationError,
    SchemaVersionError,
    StorageError,
    StoreBusy,
    StoreCorrupt,
    StoreFull,
    StoreMoved,
    StoreReadOnly,
)
from ..inputs import check_duration
from ..wake import Waker, broadcast, wake_dir
from .base import (
    Storage,
)
from .sqlite_schema import (
    _NETWORK_FS,
    BLOB_DIRNAME,
    DB_FILENAME,
    DEFAULT_BLOB_THRESHOLD,
    DEFAULT_BUSY_TIMEOUT,
    DEFAULT_MODE,
    DEFAULT_RESULT_TTL,
    DURABILITY,
    MIGRATIONS,
    SCHEMA_VERSION,
    WAL_AUTOCHECKPOINT_PAGES,
    T,
    _filesystem_type,
)

__all__ = ["SqliteBase"]


def _statements(script: str) -> list[str]:
    """Split a migration script into statements; a trigger body's own ``;`` stays inside its statement."""
    out: list[str] = []
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \n;"):
                out.append(pending)
            pending = ""
    return out


def _reopen(cls: type[SqliteBase], path: str, options: dict[str, Any]) -> SqliteBase:
    return cls(path, **options)


class SqliteBase(Storage):
    """The SQLite store's plumbing; see :class:`~liteq.storage.sqlite.SqliteStorage`."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        durability: str = "normal",
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        blob_threshold: int = DEFAULT_BLOB_THRESHOLD,
        result_ttl: float = DEFAULT_RESULT_TTL,
        mode: int = DEFAULT_MODE,
    ) -> None:
        super().__init__()
        if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o777 or mode & 0o700 != 0o700:
            raise ConfigurationError(
                f"mode must be permission bits that give the owner rwx, such as 0o700 or 0o770, not {mode!r}"
            )
        if durability not in DURABILITY:
            raise ConfigurationError(f"durability must be 'normal' or 'full', not {durability!r}")
        busy_timeout = check_duration(busy_timeout, "busy_timeout")
        result_ttl = check_duration(result_ttl, "result_ttl")
        if blob_threshold < 1:
            raise ConfigurationError(f"blob_threshold must be a positive number of bytes, not {blob_threshold!r}")
        self.path = os.path.abspath(os.fspath(path))
        self.db_path = os.path.join(self.path, DB_FILENAME)
        self.location = self.path
        self.durability = durability
        self.busy_timeout = float(busy_timeout)
        self.blob_threshold = int(blob_threshold)
        self.result_ttl = float(result_ttl)
        self.mode = mode
        self.file_mode = mode & 0o666
        self._local = threading.local()
        self._blobs: Any = None
        self._blobs_pid = 0
        self._next_blob_sweep = 0.0  # monotonic time of the next orphan-blob sweep (see prune)
        self._blob_lock = threading.Lock()
        self._closed = False
        self.wake_dir = wake_dir(self.path)
        self._waker: Waker | None = None
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        try:
            self._create_private()
        except PermissionError as exc:
            raise StoreReadOnly(f"cannot create store directory {self.path}: {exc}", path=self.path) from exc
        except OSError as exc:
            raise StorageError(f"cannot create store directory {self.path}: {exc}", path=self.path) from exc
        fstype = _filesystem_type(self.path)
        if fstype in _NETWORK_FS:
            warnings.warn(
                f"liteq store {self.path} is on a network filesystem ({fstype}); SQLite locking is not "
                "reliable there. Put the store on a local disk, or serve it with `liteq serve`.",
                RuntimeWarning,
                stacklevel=2,
            )
        self._migrate()

    def __repr__(self) -> str:
        return f"SqliteStorage({self.path!r})"

    def _create_private(self) -> None:
        """Create the store directory with ``mode`` and the database file with ``file_mode``.

        SQLite creates its files with 0644 (less the umask) and gives the WAL and shared-memory
        files the database file's permissions; so the database file is created here first, with
        the store's bits, before SQLite opens it. An existing directory or file keeps its own
        permissions (the user chose them).
        """
        if not os.path.isdir(self.path):
            os.makedirs(self.path, mode=self.mode, exist_ok=True)
            os.chmod(self.path, self.mode)  # mkdir's mode is reduced by the umask
        try:
            fd = os.open(self.db_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, self.file_mode)
        except FileExistsError:
            return
        os.close(fd)
        os.chmod(self.db_path, self.file_mode)

    def __reduce__(self) -> tuple[Any, ...]:
        options = {
            "durability": self.durability,
            "busy_timeout": self.busy_timeout,
            "blob_threshold": self.blob_threshold,
            "result_ttl": self.result_ttl,
            "mode": self.mode,
        }
        return (_reopen, (type(self), self.path, options))

    # -- connections and transactions -------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.db_path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={DURABILITY[self.durability]}")
            conn.execute("PRAGMA temp_store=MEMORY")
            # 4 MiB of page cache per connection: the hot pages of the claim and enqueue indexes fit,
            # and a pool's memory does not grow with the store.
            conn.execute("PRAGMA cache_size=-4000")
            # Checkpoints fsync the database file (milliseconds): let the WAL grow to ~40 MB before a
            # committing connection pays for one; a pool checkpoints in the background meanwhile.
            conn.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
        except sqlite3.Error as exc:
            conn.close()
            raise self._translate(exc, 0.0) from exc
        with self._conns_lock:
            self._conns.append(conn)
        return conn

    @property
    def _conn(self) -> sqlite3.Connection:
        local = self._local
        conn: sqlite3.Connection | None = getattr(local, "conn", None)
        if conn is None or local.pid != os.getpid():
            # A connection inherited through fork must never be used by the child: open a new one.
            if self._closed:
                raise StorageError(f"store {self.path} is closed", path=self.path)
            if not os.path.isdir(self.path):
                raise StoreMoved(
                    f"store directory {self.path} no longer exists; was it moved or deleted?", path=self.path
                )
            conn = self._connect()
            local.conn, local.pid = conn, os.getpid()
        return conn

    def _translate(self, exc: BaseException, waited: float, where: str = "") -> StorageError:
        """Map a sqlite3 or OS error to the liteq error that says what to do (``where``: the file)."""
        if isinstance(exc, StorageError):
            return exc
        code = getattr(exc, "sqlite_errorcode", None)
        primary = code & 0xFF if isinstance(code, int) else None
        text = str(exc).lower()
        where = where or self.db_path
        if not os.path.isdir(self.path):
            return StoreMoved(f"store directory {self.path} no longer exists; was it moved or deleted?", path=self.path)
        if primary in (5, 6) or "locked" in text or "busy" in text:
            return StoreBusy(
                f"store {where} stayed locked by another process for {waited:.2f}s (busy_timeout="
                f"{self.busy_timeout}s); find the process holding it or raise busy_timeout",
                path=self.path,
                waited=waited,
            )
        if primary == 13 or "disk is full" in text or "no space" in text or getattr(exc, "errno", None) == 28:
            return StoreFull(
                f"disk full writing store {where}; free space and retry (nothing was written)", path=self.path
            )
        if primary in (11, 26) or "malformed" in text or "not a database" in text:
            return StoreCorrupt(
                f"store {where} is corrupt ({exc}); move it aside and restore a backup, or run "
                "`sqlite3 liteq.sqlite3 .recover` to salvage rows",
                path=self.path,
            )
        if primary == 8 or "readonly" in text or "read-only" in text or isinstance(exc, PermissionError):
            return StoreReadOnly(
                f"store {where} is read-only for this process ({exc}); fix the permissions of {self.path}",
                path=self.path,
            )
        if primary == 10 and self._disk_full():
            return StoreFull(
                f"disk full writing store {where}; free space and retry (nothing was written)", path=self.path
            )
        if primary == 14:
            return StoreReadOnly(
                f"cannot open store {where} ({exc}); check the directory's permissions", path=self.path
            )
        return StorageError(f"store {where}: {exc}", path=self.path)

    def _disk_full(self) -> bool:
        try:
            st = os.statvfs(self.path)
        except OSError:
            return False
        return st.f_bavail * st.f_frsize < 64 * 1024

    def _write(self, fn: Callable[[sqlite3.Connection], T], wake: bytes = b"") -> T:
        """Run ``fn`` in one ``BEGIN IMMEDIATE`` transaction; roll back and translate on error.

        After the commit, ``wake`` (``wake.WORK`` and/or ``wake.DONE``) is sent to the processes
        waiting on this store (see :mod:`liteq.wake`).
        """
        conn = self._conn
        started = time.monotonic()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise self._translate(exc, time.monotonic() - started) from exc
        try:
            out = fn(conn)
            conn.execute("COMMIT")
        except BaseException as exc:
            try:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            if isinstance(exc, (sqlite3.Error, OSError)):
                raise self._translate(exc, time.monotonic() - started) from exc
            raise
        self.notify()
        if wake:
            broadcast(self.wake_dir, wake, skip=getattr(self._local, "skip_wake", None))
        return out

    def _read(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[Any]:
        try:
            return self._conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise self._translate(exc, 0.0) from exc

    def _migrate(self) -> None:
        def run(conn: sqlite3.Connection) -> None:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise SchemaVersionError(
                    f"store {self.db_path} has schema version {version}, newer than this liteq "
                    f"understands ({SCHEMA_VERSION}); upgrade liteq (pip install -U pyliteq)"
                )
            while version < SCHEMA_VERSION:
                for statement in _statements(MIGRATIONS[version]):
                    conn.execute(statement)
                version += 1
                conn.execute(f"PRAGMA user_version={version}")

        version = self._read("PRAGMA user_version")[0][0]
        if version != SCHEMA_VERSION:
            self._write(run)

    def close(self) -> None:
        """Close every connection this object opened in this process, and the blob cache."""
        self._closed = True
        with self._conns_lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            try:
                conn.close()
            except sqlite3.Error:  # pragma: no cover - closing is best effort
                pass
        self._local = threading.local()
        if self._waker is not None:
            if self._waker.pid == os.getpid():
                self._waker.close()
            else:
                self._waker.forget()
        self._waker = None
        if self._blobs is not None and self._blobs_pid == os.getpid():
            self._blobs.close()
        self._blobs = None

    def listen(self) -> None:
        """Bind this process's wake-up socket so :meth:`wait` sees other processes' commits."""
        waker = self._waker
        if waker is None or waker.pid != os.getpid():
            if waker is not None:
                waker.forget()  # inherited through fork; the parent still owns its socket file
            self._waker = Waker(self.wake_dir)

    def wait(self, version: int, timeout: float) -> int:
        """Block until a commit that finishes or releases a task, or ``timeout``; see :meth:`Storage.wait`."""
        waker = self._waker
        if waker is None or waker.sock is None or waker.pid != os.getpid():
            return super().wait(version, timeout)
        if self._version == version:
            waker.wait(timeout)
        return self._version

    def skip_wake_in_this_thread(self, path: str) -> None:
        """Commits made by the calling thread do not wake the listener at ``path`` (a pool's own)."""
        self._local.skip_wake = path

    def checkpoint(self) -> None:
        """Copy committed WAL pages into the database file without blocking writers (PASSIVE)."""
        try:
            self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as exc:
            raise self._translate(exc, 0.0) from exc

    def integrity_check(self) -> list[str]:
        """Run ``PRAGMA integrity_check``; returns ``["ok"]`` for a healthy store."""
        return [row[0] for row in self._read("PRAGMA integrity_check")]

    # -- blobs -----------------------------------------------------------------------------------

    @property
    def blobs(self) -> Any:
        """The ``diskcache.Cache`` holding large payloads and results, opened on first use."""
        if self._blobs is None or self._blobs_pid != os.getpid():
            with self._blob_lock:
                if self._blobs is None or self._blobs_pid != os.getpid():
                    import diskcache

                    # Built in two steps so that a cache whose __init__ fails half-way (disk full)
                    # still has its connection closed instead of holding the file open.
                    cache = diskcache.Cache.__new__(diskcache.Cache)
                    directory = os.path.join(self.path, BLOB_DIRNAME)
                    try:
                        self._private_blob_dir(directory)
                        cache.__init__(
                            directory,
                            eviction_policy="none",
                            timeout=self.busy_timeout,
                            size_limit=2**62,
                        )
                    except (sqlite3.Error, OSError) as exc:
                        with contextlib.suppress(Exception):
                            cache.close()
                        raise self._translate(exc, 0.0, where=os.path.join(self.path, BLOB_DIRNAME)) from exc
                    self._blobs = cache
                    self._blobs_pid = os.getpid()
        return self._blobs

    def _private_blob_dir(self, directory: str) -> None:
        """Create the blob cache's directory and index with the store's permissions (diskcache
        would create them 0755/0644); the value files it writes inside are shielded by the directory."""
        if not os.path.isdir(directory):
            os.makedirs(directory, mode=self.mode, exist_ok=True)
            os.chmod(directory, self.mode)
        index = os.path.join(directory, "cache.db")
        try:
            fd = os.open(index, os.O_WRONLY | os.O_CREAT | os.O_EXCL, self.file_mode)
        except FileExistsError:
            return
        os.close(fd)
        os.chmod(index, self.file_mode)

    def _put_blob(self, key: str, value: bytes) -> None:
        try:
            self.blobs.set(key, value)
        except (sqlite3.Error, OSError) as exc:
            raise self._translate(exc, 0.0, where=os.path.join(self.path, BLOB_DIRNAME)) from exc

    @property
    def _value_threshold(self) -> float:
        """Size above which a value goes to the blob cache. Under ``durability="full"`` nothing
        does: a blob file is not fsynced with the row's commit, so a value kept beside its row
        could be lost on power loss while the row survives. In the database it is exactly as
        durable as the row."""
        return float("inf") if self.durability == "full" else self.blob_threshold

    def _get_blob(self, key: str) -> bytes | None:
        value = self.blobs.get(key)
        return bytes(value) if value is not None else None

    def _read_blob(self, key: str) -> tuple[bytes | None, str | None]:
        """``(value, None)``, or ``(None, problem)`` when the blob is missing or cannot be read."""
        where = os.path.join(self.path, BLOB_DIRNAME)
        try:
            value = self._get_blob(key)
        except Exception as exc:  # a damaged cache (sqlite3, OSError, unpickling): this value only
            return None, f"blob damaged: {key} in {where} cannot be read ({type(exc).__name__}: {exc})"
        if value is None:
            return None, f"blob missing: {key} is not in {where} (deleted or lost)"
        return value, None

    def _drop_blobs(self, keys: Iterable[str | None]) -> None:
        for key in keys:
            if key:
                try:
                    self.blobs.delete(key)
                except (sqlite3.Error, OSError):  # an orphan blob is harmless; prune retries later
                    pass
