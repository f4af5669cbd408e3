"""The SQLite store's connection policy: one connection per thread and per process (never one
inherited through ``fork``), the pragmas, ``BEGIN IMMEDIATE`` write transactions, and the
translation of SQLite and OS errors into the liteq errors that say what to do
(:class:`StoreBusy`, :class:`StoreFull`, :class:`StoreReadOnly`, :class:`StoreCorrupt`,
:class:`StoreMoved`). Every domain module of the store works through one :class:`Database`."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from ...exceptions import (
    StorageError,
    StoreBusy,
    StoreCorrupt,
    StoreFull,
    StoreMoved,
    StoreReadOnly,
)
from ...wake import broadcast, wake_dir
from .schema import DB_FILENAME, DURABILITY, WAL_AUTOCHECKPOINT_PAGES, T

__all__ = ["Database"]


class Database:
    """Connections to ``<path>/liteq.sqlite3`` and the transactions run on them.

    ``on_commit`` is called after every committed write (the store's in-process wake-up).
    """

    def __init__(
        self, path: str, *, durability: str, busy_timeout: float, mode: int, on_commit: Callable[[], None]
    ) -> None:
        self.path = path
        self.db_path = os.path.join(path, DB_FILENAME)
        self.durability = durability
        self.busy_timeout = busy_timeout
        self.mode = mode
        self.file_mode = mode & 0o666
        self.wake_dir = wake_dir(path)
        self.closed = False
        self._on_commit = on_commit
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        self._listener: tuple[int, str] | None = None  # this process's own listener: (pid, path)

    def create_private(self) -> None:
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

    # -- connections and transactions -------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.db_path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False)
        # Rows are read by column name (``row["priority"]``), never by position.
        conn.row_factory = sqlite3.Row
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
            raise self.translate(exc, 0.0) from exc
        with self._conns_lock:
            self._conns.append(conn)
        return conn

    @property
    def conn(self) -> sqlite3.Connection:
        """This thread's connection in this process, opened on first use."""
        local = self._local
        conn: sqlite3.Connection | None = getattr(local, "conn", None)
        if conn is None or local.pid != os.getpid():
            # A connection inherited through fork must never be used by the child: open a new one.
            if self.closed:
                raise StorageError(f"store {self.path} is closed", path=self.path)
            if not os.path.isdir(self.path):
                raise StoreMoved(
                    f"store directory {self.path} no longer exists; was it moved or deleted?", path=self.path
                )
            conn = self._connect()
            local.conn, local.pid = conn, os.getpid()
        return conn

    def translate(self, exc: BaseException, waited: float, where: str = "") -> StorageError:
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

    def write(self, fn: Callable[[sqlite3.Connection], T], wake: bytes = b"") -> T:
        """Run ``fn`` in one ``BEGIN IMMEDIATE`` transaction; roll back and translate on error.

        After the commit, ``wake`` (``wake.WORK`` and/or ``wake.DONE``) is sent to the processes
        waiting on this store (see :mod:`liteq.wake`).
        """
        conn = self.conn
        started = time.monotonic()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise self.translate(exc, time.monotonic() - started) from exc
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
                raise self.translate(exc, time.monotonic() - started) from exc
            raise
        self._on_commit()
        if wake:
            skip = [path for path in (getattr(self._local, "skip_wake", None), self._own_listener()) if path]
            broadcast(self.wake_dir, wake, skip=skip)
        return out

    def read(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[sqlite3.Row]:
        """Run one read statement outside a write transaction; rows are read by column name."""
        try:
            return self.conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise self.translate(exc, 0.0) from exc

    def close(self) -> None:
        """Close every connection opened in this process; later use raises :class:`StorageError`."""
        self.closed = True
        with self._conns_lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            try:
                conn.close()
            except sqlite3.Error:  # pragma: no cover - closing is best effort
                pass
        self._local = threading.local()

    def skip_wake_in_this_process(self, path: str | None) -> None:
        """Commits made by this process do not wake the listener at ``path`` (its own: ``on_commit``
        wakes it when one of its threads waits), or every listener again with None."""
        self._listener = (os.getpid(), path) if path else None

    def _own_listener(self) -> str | None:
        listener = self._listener
        return listener[1] if listener is not None and listener[0] == os.getpid() else None

    def skip_wake_in_this_thread(self, path: str) -> None:
        """Commits made by the calling thread do not wake the listener at ``path`` (a pool's own)."""
        self._local.skip_wake = path

    def wake_others(self, wake: bytes) -> None:
        """Send ``wake`` to the processes waiting on this store, outside a write (see :mod:`liteq.wake`)."""
        broadcast(self.wake_dir, wake)

    def checkpoint(self) -> None:
        """Copy committed WAL pages into the database file without blocking writers (PASSIVE)."""
        try:
            self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as exc:
            raise self.translate(exc, 0.0) from exc
