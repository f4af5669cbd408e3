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
import contextlib
import json
import os
import sqlite3
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

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
from ..ratelimit import admit
from ..wake import DONE, WORK, Waker, broadcast, wake_dir
from .base import (
    PENDING,
    SCHEDULED,
    ClaimedTask,
    NewTask,
    Outcome,
    ScheduleState,
    Storage,
    TaskRow,
    WorkerInfo,
)

__all__ = ["DB_FILENAME", "SCHEMA_VERSION", "SqliteStorage"]

T = TypeVar("T")

DB_FILENAME = "liteq.sqlite3"
BLOB_DIRNAME = "blobs"
SCHEMA_VERSION = 3
DEFAULT_BUSY_TIMEOUT = 5.0
WAL_AUTOCHECKPOINT_PAGES = 10_000
DEFAULT_BLOB_THRESHOLD = 64 * 1024
DEFAULT_RESULT_TTL = 24 * 3600.0
DURABILITY = {"normal": "NORMAL", "full": "FULL"}
# SQLite limits host parameters per statement; stay well under the lowest default (999).
_CHUNK = 500
_NETWORK_FS = {"nfs", "nfs4", "cifs", "smbfs", "smb3", "fuse.sshfs", "9p", "afs", "glusterfs", "ceph"}

# Version 1. Later versions append to MIGRATIONS; a store records its version in user_version.
_SCHEMA_V1 = """
CREATE TABLE tasks (
    seq               INTEGER PRIMARY KEY,
    id                TEXT NOT NULL UNIQUE,
    name              TEXT NOT NULL,
    queue             TEXT NOT NULL,
    priority          INTEGER NOT NULL DEFAULT 0,
    state             TEXT NOT NULL,
    run_at            REAL NOT NULL,
    expires_at        REAL,
    enqueued_at       REAL NOT NULL,
    started_at        REAL,
    finished_at       REAL,
    attempts          INTEGER NOT NULL DEFAULT 0,
    max_attempts      INTEGER NOT NULL DEFAULT 1,
    lease_owner       TEXT,
    lease_token       TEXT,
    lease_deadline    REAL,
    idempotency_key   TEXT,
    payload           BLOB,
    payload_ref       TEXT,
    result            BLOB,
    result_ref        TEXT,
    result_ttl        REAL,
    result_expires_at REAL,
    error             BLOB,
    reason            TEXT,
    progress          BLOB,
    cancel_requested  INTEGER NOT NULL DEFAULT 0,
    parent_id         TEXT
);
-- Partial, so the many tasks without a key cost no index write.
CREATE UNIQUE INDEX tasks_idempotency ON tasks(idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX tasks_pending   ON tasks(queue, priority DESC, seq) WHERE state = 'pending';
CREATE INDEX tasks_scheduled ON tasks(run_at, queue) WHERE state = 'scheduled';
CREATE INDEX tasks_running   ON tasks(lease_deadline) WHERE state = 'running';
CREATE INDEX tasks_owner     ON tasks(lease_owner) WHERE state = 'running';
CREATE INDEX tasks_finished  ON tasks(result_expires_at) WHERE result_expires_at IS NOT NULL;
CREATE INDEX tasks_parent    ON tasks(parent_id) WHERE parent_id IS NOT NULL;
CREATE TABLE task_errors (
    task_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    at      REAL NOT NULL,
    error   BLOB
);
CREATE INDEX task_errors_task ON task_errors(task_id);
CREATE TABLE workers (
    id           TEXT PRIMARY KEY,
    host         TEXT NOT NULL,
    pid          INTEGER NOT NULL,
    concurrency  INTEGER NOT NULL,
    queues       TEXT NOT NULL,
    started_at   REAL NOT NULL,
    heartbeat_at REAL NOT NULL,
    tasks_done   INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB);
"""

# Version 2: task controls (unique, lock, rate limit) and periodic schedules.
_SCHEMA_V2 = """
ALTER TABLE tasks ADD COLUMN unique_key TEXT;
ALTER TABLE tasks ADD COLUMN lock_key TEXT;
CREATE INDEX tasks_unique ON tasks(unique_key) WHERE unique_key IS NOT NULL AND state IN ('pending', 'scheduled');
CREATE INDEX tasks_lock   ON tasks(lock_key) WHERE lock_key IS NOT NULL AND state = 'running';
CREATE TABLE periodic_slots (
    schedule TEXT NOT NULL,
    slot     REAL NOT NULL,
    task_id  TEXT NOT NULL,
    fired_at REAL NOT NULL,
    PRIMARY KEY (schedule, slot)
) WITHOUT ROWID;
CREATE INDEX periodic_slots_fired ON periodic_slots(fired_at);
CREATE TABLE schedules (
    name          TEXT PRIMARY KEY,
    paused        INTEGER NOT NULL DEFAULT 0,
    last_slot     REAL,
    last_fired_at REAL,
    last_task_id  TEXT
);
CREATE TABLE rate_limits (name TEXT PRIMARY KEY, next_at REAL NOT NULL);
"""

# Version 3: canvas. A task waiting for others is 'scheduled' at run_at = +inf with ``waiting``
# dependencies left; ``dependents`` says whether completing a task has anything to update.
_SCHEMA_V3 = """
ALTER TABLE tasks ADD COLUMN waiting INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN dependents INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN release_delay REAL NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN not_before REAL;
CREATE TABLE task_deps (task_id TEXT NOT NULL, dependent_id TEXT NOT NULL);
CREATE INDEX task_deps_task ON task_deps(task_id);
CREATE TABLE task_groups (
    group_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    task_id  TEXT NOT NULL,
    PRIMARY KEY (group_id, position)
) WITHOUT ROWID;
CREATE INDEX task_groups_task ON task_groups(task_id);
"""

#: ``MIGRATIONS[v]`` upgrades a store from version ``v`` to ``v + 1``.
MIGRATIONS: dict[int, str] = {0: _SCHEMA_V1, 1: _SCHEMA_V2, 2: _SCHEMA_V3}
#: How long fired periodic slots are remembered (a slot older than this can no longer race).
SLOT_MEMORY = 7 * 86400.0

_CLAIM_COLUMNS = (
    "id, name, queue, payload, payload_ref, attempts, max_attempts, lease_token, lease_deadline, "
    "enqueued_at, expires_at, priority, seq, lock_key"
)
# A pending task whose lock is held by a running task stays where it is.
_UNLOCKED = (
    "AND (lock_key IS NULL OR lock_key NOT IN "
    "(SELECT lock_key FROM tasks WHERE state = 'running' AND lock_key IS NOT NULL))"
)
_ROW_COLUMNS = (
    "id, name, queue, state, priority, run_at, enqueued_at, attempts, max_attempts, expires_at, "
    "started_at, finished_at, lease_owner, lease_token, lease_deadline, idempotency_key, "
    "result_expires_at, reason, cancel_requested, parent_id, unique_key, lock_key"
)
_CLEAR_LEASE = "lease_owner = NULL, lease_token = NULL, lease_deadline = NULL"
_FINISH = "finished_at = :now, result_expires_at = :now + COALESCE(:ttl, result_ttl, :default_ttl), " + _CLEAR_LEASE


def _chunks(items: Sequence[T], size: int = _CHUNK) -> Iterator[Sequence[T]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _marks(n: int) -> str:
    return ",".join("?" * n)


def _filesystem_type(path: str) -> str | None:
    """The type of the mounted filesystem holding ``path`` (Linux only; None elsewhere)."""
    try:
        with open("/proc/mounts", encoding="utf-8") as f:
            mounts = [line.split()[1:3] for line in f if len(line.split()) >= 3]
    except OSError:
        return None
    real = os.path.realpath(path)
    best, fstype = "", None
    for point, kind in mounts:
        point = point.replace("\\040", " ")
        if (real == point or real.startswith(point.rstrip("/") + "/")) and len(point) > len(best):
            best, fstype = point, kind
    return fstype


def _reopen(cls: type[SqliteStorage], path: str, options: dict[str, Any]) -> SqliteStorage:
    return cls(path, **options)


class SqliteStorage(Storage):
    """Tasks, results and workers in ``<path>/liteq.sqlite3``; large values in ``<path>/blobs``.

    ``durability="full"`` (``synchronous=FULL``) survives power loss; ``"normal"`` (the default)
    never corrupts but may lose the last commits on power loss. ``busy_timeout`` is how long a
    write waits for another process's lock before raising :class:`StoreBusy`.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        durability: str = "normal",
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        blob_threshold: int = DEFAULT_BLOB_THRESHOLD,
        result_ttl: float = DEFAULT_RESULT_TTL,
    ) -> None:
        super().__init__()
        if durability not in DURABILITY:
            raise ConfigurationError(f"durability must be 'normal' or 'full', not {durability!r}")
        if busy_timeout < 0:
            raise ConfigurationError(f"busy_timeout must be >= 0 seconds, not {busy_timeout!r}")
        if blob_threshold < 1:
            raise ConfigurationError(f"blob_threshold must be a positive number of bytes, not {blob_threshold!r}")
        self.path = os.path.abspath(os.fspath(path))
        self.db_path = os.path.join(self.path, DB_FILENAME)
        self.location = self.path
        self.durability = durability
        self.busy_timeout = float(busy_timeout)
        self.blob_threshold = int(blob_threshold)
        self.result_ttl = float(result_ttl)
        self._local = threading.local()
        self._blobs: Any = None
        self._blobs_pid = 0
        self._blob_lock = threading.Lock()
        self._closed = False
        self.wake_dir = wake_dir(self.path)
        self._waker: Waker | None = None
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        try:
            os.makedirs(self.path, exist_ok=True)
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

    def __reduce__(self) -> tuple[Any, ...]:
        options = {
            "durability": self.durability,
            "busy_timeout": self.busy_timeout,
            "blob_threshold": self.blob_threshold,
            "result_ttl": self.result_ttl,
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
                    f"understands ({SCHEMA_VERSION}); upgrade liteq (pip install -U liteq)"
                )
            while version < SCHEMA_VERSION:
                for statement in MIGRATIONS[version].split(";"):
                    if statement.strip():
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
                    try:
                        cache.__init__(
                            os.path.join(self.path, BLOB_DIRNAME),
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

    def _put_blob(self, key: str, value: bytes) -> None:
        try:
            self.blobs.set(key, value)
        except (sqlite3.Error, OSError) as exc:
            raise self._translate(exc, 0.0, where=os.path.join(self.path, BLOB_DIRNAME)) from exc

    def _get_blob(self, key: str) -> bytes | None:
        value = self.blobs.get(key)
        return bytes(value) if value is not None else None

    def _drop_blobs(self, keys: Iterable[str | None]) -> None:
        for key in keys:
            if key:
                try:
                    self.blobs.delete(key)
                except (sqlite3.Error, OSError):  # an orphan blob is harmless; prune retries later
                    pass

    # -- writes ------------------------------------------------------------------------------------

    def enqueue(self, tasks: Sequence[NewTask], *, now: float | None = None) -> list[str]:
        """Store a batch atomically; see :meth:`Storage.enqueue`."""
        if not tasks:
            return []
        now = time.time() if now is None else now
        rows = []
        refs: list[str] = []
        keys = [t.idempotency_key for t in tasks if t.idempotency_key is not None]
        threshold = self.blob_threshold
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
                )
            )
        sql = (
            "INSERT INTO tasks (id, name, queue, priority, state, run_at, expires_at, enqueued_at, "
            "max_attempts, idempotency_key, payload, payload_ref, result_ttl, parent_id, unique_key, lock_key) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
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
        if not any(r[13] is not None for r in rows) and not (limits and any(r[1] in limits for r in rows)):
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
        if limits:
            names = sorted({r[1] for r in keep if r[1] in limits})
            next_at = dict(
                conn.execute(
                    f"SELECT name, next_at FROM rate_limits WHERE name IN ({_marks(len(names))})", names
                ).fetchall()
            )
            admitted = []
            for r in keep:
                rate = limits.get(r[1])
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
        for r in rows:
            if r[10] is not None and r[10] <= now:
                continue
            payload = r[3]
            if r[4]:
                payload = self._get_blob(r[4])
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
                )
            )
        return claimed

    def extend(
        self, owner: str, leases: Sequence[tuple[str, str]], *, lease: float, now: float | None = None
    ) -> list[bool]:
        """Push lease deadlines; see :meth:`Storage.extend`."""
        if not leases:
            return []
        deadline = (time.time() if now is None else now) + lease

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
        refs: list[str | None] = []
        for o in outcomes:
            ref = None
            if o.result is not None and len(o.result) > self.blob_threshold:
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
            return sum(
                conn.execute(
                    "UPDATE tasks SET state = CASE WHEN cancel_requested THEN 'cancelled' ELSE 'pending' END, "
                    "reason = CASE WHEN cancel_requested THEN 'cancelled' ELSE reason END, "
                    "finished_at = CASE WHEN cancel_requested THEN :now END, "
                    "result_expires_at = CASE WHEN cancel_requested THEN :now + COALESCE(result_ttl, :ttl) END, "
                    "attempts = max(attempts - :back, 0), started_at = NULL, "
                    + _CLEAR_LEASE
                    + " WHERE id = :id AND lease_token = :token AND state = 'running'",
                    {"back": back, "id": id_, "token": token, "now": now, "ttl": self.result_ttl},
                ).rowcount
                for id_, token in leases
            )

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

        def run(conn: sqlite3.Connection) -> list[bool]:
            return [
                conn.execute(
                    "UPDATE tasks SET state = 'pending', run_at = ?, attempts = 0, reason = NULL, result = NULL, "
                    "result_ref = NULL, finished_at = NULL, started_at = NULL, result_expires_at = NULL, "
                    "expires_at = NULL, cancel_requested = 0 "
                    "WHERE id = ? AND state IN ('failed', 'cancelled', 'expired')",
                    (now, id_),
                ).rowcount
                == 1
                for id_ in ids
            ]

        return self._write(run, WORK)

    def _delete(self, where: str, params: Sequence[Any]) -> int:
        def run(conn: sqlite3.Connection) -> list[Any]:
            rows = conn.execute(
                f"DELETE FROM tasks WHERE {where} RETURNING id, payload_ref, result_ref", params
            ).fetchall()
            for chunk in _chunks([r[0] for r in rows]):
                marks = _marks(len(chunk))
                conn.execute(f"DELETE FROM task_errors WHERE task_id IN ({marks})", chunk)
                conn.execute(f"DELETE FROM task_deps WHERE task_id IN ({marks})", chunk)
                conn.execute(f"DELETE FROM task_groups WHERE task_id IN ({marks})", chunk)
            return rows

        rows = self._write(run)
        refs = [ref for r in rows for ref in (r[1], r[2]) if ref]
        if refs:
            self._drop_blobs(refs)
        return len(rows)

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

    def prune(self, *, now: float | None = None, limit: int = 10_000) -> int:
        """Delete finished tasks past their TTL; see :meth:`Storage.prune`."""
        now = time.time() if now is None else now
        if self._read("SELECT 1 FROM periodic_slots WHERE fired_at <= ? LIMIT 1", (now - SLOT_MEMORY,)):
            self._write(
                lambda conn: conn.execute("DELETE FROM periodic_slots WHERE fired_at <= ?", (now - SLOT_MEMORY,))
            )
        if not self._read("SELECT 1 FROM tasks WHERE result_expires_at <= ? LIMIT 1", (now,)):
            return 0
        return self._delete(
            "seq IN (SELECT seq FROM tasks WHERE result_expires_at <= ? ORDER BY result_expires_at LIMIT ?)",
            (now, limit),
        )

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
            row.payload = self._get_blob(payload_ref) if payload_ref else (None if payload is None else bytes(payload))
            row.result = self._get_blob(result_ref) if result_ref else (None if result is None else bytes(result))
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
        for queue, state, n in self._read("SELECT queue, state, count(*) FROM tasks GROUP BY queue, state"):
            out.setdefault(queue, {})[state] = n
        return out

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
                "tasks_done) VALUES (?,?,?,?,?,?,?,?)",
                (
                    info.id,
                    info.host,
                    info.pid,
                    info.concurrency,
                    json.dumps(list(info.queues)),
                    info.started_at,
                    info.heartbeat_at,
                    info.tasks_done,
                ),
            )
        )

    def heartbeat(self, worker_id: str, *, tasks_done: int = 0, now: float | None = None) -> None:
        """Refresh a worker's heartbeat; see :meth:`Storage.heartbeat`."""
        now = time.time() if now is None else now
        self._write(
            lambda conn: conn.execute(
                "UPDATE workers SET heartbeat_at = ?, tasks_done = tasks_done + ? WHERE id = ?",
                (now, tasks_done, worker_id),
            )
        )

    def unregister_worker(self, worker_id: str) -> None:
        """Forget a worker; see :meth:`Storage.unregister_worker`."""
        self._write(lambda conn: conn.execute("DELETE FROM workers WHERE id = ?", (worker_id,)))

    def workers(self, *, stale_after: float | None = None, now: float | None = None) -> builtins.list[WorkerInfo]:
        """Recorded workers; see :meth:`Storage.workers`."""
        now = time.time() if now is None else now
        sql = "SELECT id, host, pid, concurrency, queues, started_at, heartbeat_at, tasks_done FROM workers"
        params: list[Any] = []
        if stale_after is not None:
            sql += " WHERE heartbeat_at >= ?"
            params.append(now - stale_after)
        return [
            WorkerInfo(
                id=r[0],
                host=r[1],
                pid=r[2],
                concurrency=r[3],
                queues=json.loads(r[4]),
                started_at=r[5],
                heartbeat_at=r[6],
                tasks_done=r[7],
            )
            for r in self._read(sql + " ORDER BY started_at", params)
        ]
