"""The default store: one directory holding a SQLite database in WAL mode and a blob cache.

Why it is shaped this way:

The store is composed of one module per policy over a shared :class:`.connection.Database`:
:mod:`.queue` (a task's states), :mod:`.canvas`, :mod:`.controls` (unique keys, locks, rate
limits), :mod:`.schedules`, :mod:`.workers`, :mod:`.history` (reads), :mod:`.retention`,
:mod:`.blobs` and :mod:`.schema`. :class:`SqliteStorage` only wires them to the contract.

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
import threading
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ...exceptions import ConfigurationError, StorageError, StoreReadOnly
from ...inputs import check_duration
from ...wake import Waker
from ..contract import Storage
from ..records import ClaimedTask, NewTask, Outcome, ScheduleState, StatsRow, TaskRow, WorkerInfo
from . import canvas, schedules
from . import workers as registry
from .blobs import BLOB_MIN_AGE, Blobs
from .connection import Database
from .history import History
from .intake import Intake
from .queue import Queue
from .retention import Retention
from .schema import (
    DEFAULT_BLOB_THRESHOLD,
    DEFAULT_BUSY_TIMEOUT,
    DEFAULT_MODE,
    DEFAULT_RESULT_TTL,
    DURABILITY,
    NETWORK_FS,
    SCHEMA_VERSION,
    filesystem_type,
    migrate,
)

__all__ = ["SqliteStorage"]


def _reopen(cls: type[SqliteStorage], path: str, options: dict[str, Any]) -> SqliteStorage:
    return cls(path, **options)


class SqliteStorage(Storage):
    """Tasks, results and workers in ``<path>/liteq.sqlite3``; large values in ``<path>/blobs``.

    ``durability="full"`` (``synchronous=FULL``) survives power loss; ``"normal"`` (the default)
    never corrupts but may lose the last commits on power loss. ``busy_timeout`` is how long a
    write waits for another process's lock before raising :class:`StoreBusy`.
    """

    supports_cross_process_wakeup = True
    supports_checkpoint = True
    shared_between_processes = True

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
        self.location = self.path
        self.local_path = self.path
        self.durability = durability
        self.busy_timeout = float(busy_timeout)
        self.blob_threshold = int(blob_threshold)
        self.result_ttl = float(result_ttl)
        self.mode = mode
        self.db = Database(
            self.path, durability=durability, busy_timeout=self.busy_timeout, mode=mode, on_commit=self.notify
        )
        self.db_path = self.db.db_path
        self._blobs = Blobs(self.db, size_threshold=self.blob_threshold)
        self.intake = Intake(self.db, self._blobs, result_ttl=self.result_ttl)
        self.queue = Queue(self.db, self._blobs, result_ttl=self.result_ttl)
        self.history = History(self.db, self._blobs)
        self.retention = Retention(self.db, self._blobs)
        self._waker: Waker | None = None
        self._waker_lock = threading.Lock()
        self._blocked = 0  # threads of this process in wait(), on the waker
        try:
            self.db.create_private()
        except PermissionError as exc:
            raise StoreReadOnly(f"cannot create store directory {self.path}: {exc}", path=self.path) from exc
        except OSError as exc:
            raise StorageError(f"cannot create store directory {self.path}: {exc}", path=self.path) from exc
        fstype = filesystem_type(self.path)
        if fstype in NETWORK_FS:
            warnings.warn(
                f"liteq store {self.path} is on a network filesystem ({fstype}); SQLite locking is not "
                "reliable there. Put the store on a local disk, or serve it with `liteq serve`.",
                RuntimeWarning,
                stacklevel=2,
            )
        if self.db.read("PRAGMA user_version")[0]["user_version"] != SCHEMA_VERSION:
            self.db.write(lambda conn: migrate(conn, self.db_path))

    def __repr__(self) -> str:
        return f"SqliteStorage({self.path!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        options = {
            "durability": self.durability,
            "busy_timeout": self.busy_timeout,
            "blob_threshold": self.blob_threshold,
            "result_ttl": self.result_ttl,
            "mode": self.mode,
        }
        return (_reopen, (type(self), self.path, options))

    # -- capabilities and plumbing ------------------------------------------------------------------

    @property
    def wake_dir(self) -> str:
        """The directory of the wake-up sockets of the processes using this store."""
        return self.db.wake_dir

    @property
    def blobs(self) -> Any:
        """The ``diskcache.Cache`` holding large payloads and results, opened on first use."""
        return self._blobs.cache

    def close(self) -> None:
        """Close every connection this object opened in this process, and the blob cache."""
        self.db.close()
        self.db.skip_wake_in_this_process(None)
        if self._waker is not None:
            if self._waker.pid == os.getpid():
                self._waker.close()
            else:
                self._waker.forget()
        self._waker = None
        self._blobs.close()

    def listen(self) -> None:
        """Bind this process's wake-up socket so :meth:`wait` sees other processes' commits."""
        waker = self._waker
        if waker is None or waker.pid != os.getpid():
            if waker is not None:
                waker.forget()  # inherited through fork; the parent still owns its socket file
            self._waker = waker = Waker(self.db.wake_dir)
            # This process's own commits reach its waiters through notify(), and only while one
            # waits: the producer's own enqueue must not wake the get() that follows it.
            self.db.skip_wake_in_this_process(waker.path)

    def notify(self) -> None:
        """Wake every waiter in this process (called after each write), those blocked on the
        wake-up socket included."""
        super().notify()
        if self._blocked:
            waker = self._waker
            if waker is not None and waker.pid == os.getpid():
                waker.poke()

    def wait(self, version: int, timeout: float) -> int:
        """Block until a commit that finishes or releases a task, or ``timeout``; see :meth:`Storage.wait`."""
        waker = self._waker
        if waker is None or waker.sock is None or waker.pid != os.getpid():
            return super().wait(version, timeout)
        with self._waker_lock:
            self._blocked += 1  # before the check: a commit after it pokes the socket
        try:
            if self._version == version:
                waker.wait(timeout)
        finally:
            with self._waker_lock:
                self._blocked -= 1
        return self._version

    def skip_wake_in_this_thread(self, path: str) -> None:
        """Commits made by the calling thread do not wake the listener at ``path`` (a pool's own)."""
        self.db.skip_wake_in_this_thread(path)

    def checkpoint(self) -> None:
        """Copy committed WAL pages into the database file without blocking writers (PASSIVE)."""
        self.db.checkpoint()

    def integrity_check(self) -> builtins.list[str]:
        """Run ``PRAGMA integrity_check``; returns ``["ok"]`` for a healthy store."""
        return [row["integrity_check"] for row in self.db.read("PRAGMA integrity_check")]

    # -- the queue -----------------------------------------------------------------------------------

    def enqueue(self, tasks: Sequence[NewTask], *, now: float | None = None) -> builtins.list[str]:
        """Store a batch atomically; see :meth:`Storage.enqueue`."""
        return self.intake.enqueue(tasks, now=now)

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
    ) -> builtins.list[ClaimedTask]:
        """Lease due tasks in one ``UPDATE ... RETURNING``; see :meth:`Storage.claim`."""
        return self.queue.claim(owner, queues, limit=limit, lease=lease, now=now, ids=ids, limits=limits)

    def extend(
        self, owner: str, leases: Sequence[tuple[str, str]], *, lease: float, now: float | None = None
    ) -> builtins.list[bool]:
        """Push lease deadlines; see :meth:`Storage.extend`."""
        return self.queue.extend(owner, leases, lease=lease, now=now)

    def complete(self, outcomes: Sequence[Outcome], *, now: float | None = None) -> builtins.list[bool]:
        """Apply outcomes under their lease tokens; see :meth:`Storage.complete`."""
        return self.queue.complete(outcomes, now=now)

    def release(self, leases: Sequence[tuple[str, str]], *, uncount: bool = True) -> int:
        """Hand leased tasks back to ``pending``; see :meth:`Storage.release`."""
        return self.queue.release(leases, uncount=uncount)

    def reap(self, *, now: float | None = None, owner: str | None = None) -> builtins.list[str]:
        """Recover lost leases; see :meth:`Storage.reap`."""
        return self.queue.reap(now=now, owner=owner)

    def set_progress(self, id: str, lease_token: str, progress: bytes) -> bool:
        """Record progress of a running task; see :meth:`Storage.set_progress`."""
        return self.queue.set_progress(id, lease_token, progress)

    def cancel(self, ids: Sequence[str], *, now: float | None = None) -> builtins.list[str | None]:
        """Cancel waiting tasks and flag running ones; see :meth:`Storage.cancel`."""
        return self.queue.cancel(ids, now=now)

    def retry(self, ids: Sequence[str], *, now: float | None = None) -> builtins.list[bool]:
        """Re-run finished tasks by hand; see :meth:`Storage.retry`."""
        return self.queue.retry(ids, now=now)

    def group_members(self, group_id: str) -> builtins.list[str]:
        """Member ids in order; see :meth:`Storage.group_members`."""
        return canvas.group_members(self.db, group_id)

    # -- retention -----------------------------------------------------------------------------------

    def purge(
        self, *, queue: str | None = None, states: Iterable[str] | None = None, ids: Sequence[str] | None = None
    ) -> int:
        """Delete matching tasks; see :meth:`Storage.purge`."""
        return self.retention.purge(queue=queue, states=states, ids=ids)

    def prune(self, *, now: float | None = None, limit: int = 10_000) -> int:
        """Delete finished tasks past their TTL; see :meth:`Storage.prune`. Now and then (every
        ``BLOB_MIN_AGE``) it also collects orphaned blobs (:meth:`collect_blobs`)."""
        return self.retention.prune(now=now, limit=limit)

    def collect_blobs(self, *, now: float | None = None, min_age: float = BLOB_MIN_AGE) -> int:
        """Delete blobs that no task refers to and that were written over ``min_age`` seconds ago;
        return how many.

        Rows drop their blobs when deleted, and a refused write drops its own; what is left are
        blobs of a process killed between writing a blob and committing its row. ``min_age``
        keeps the blob of a write still in flight.
        """
        return self._blobs.collect(now=time.time() if now is None else now, min_age=min_age)

    # -- reads ---------------------------------------------------------------------------------------

    def get(self, ids: Sequence[str], *, history: bool = False) -> builtins.list[TaskRow | None]:
        """Full rows by id; see :meth:`Storage.get`."""
        return self.history.get(ids, history=history)

    def list(
        self,
        *,
        states: Iterable[str] | None = None,
        queue: str | None = None,
        name: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> builtins.list[TaskRow]:
        """Rows matching filters, oldest first; see :meth:`Storage.list`."""
        return self.history.select(states=states, queue=queue, name=name, limit=limit, offset=offset)

    def counts(self) -> dict[str, dict[str, int]]:
        """``{queue: {state: n}}``; see :meth:`Storage.counts`."""
        return self.history.counts()

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
        return self.history.page(
            states=states, queue=queue, name=name, since=since, until=until, parent=parent, before=before, limit=limit
        )

    def oldest_pending(self) -> dict[str, TaskRow]:
        """The first-stored pending task per queue; see :meth:`Storage.oldest_pending`."""
        return self.history.oldest_pending()

    def stats(self, *, since: float, until: float | None = None, bucket: int = 60) -> builtins.list[StatsRow]:
        """Finish statistics per minute (or ``bucket``); see :meth:`Storage.stats`."""
        return self.history.stats(since=since, until=until, bucket=bucket)

    def next_run_at(self, queues: Sequence[str]) -> float | None:
        """Earliest scheduled ``run_at`` in ``queues``; see :meth:`Storage.next_run_at`."""
        return self.history.next_run_at(queues)

    # -- periodic schedules --------------------------------------------------------------------------

    def register_schedules(self, names: Sequence[str], *, now: float | None = None) -> None:
        """Record new schedules; see :meth:`Storage.register_schedules`."""
        schedules.register_schedules(self.db, names, now=now)

    def schedule_states(self, names: Sequence[str] | None = None) -> dict[str, ScheduleState]:
        """Schedule states; see :meth:`Storage.schedule_states`."""
        return schedules.schedule_states(self.db, names)

    def set_schedule_paused(self, name: str, paused: bool, *, now: float | None = None) -> bool:
        """Pause or resume; see :meth:`Storage.set_schedule_paused`."""
        return schedules.set_schedule_paused(self.db, name, paused, now=now)

    # -- workers -------------------------------------------------------------------------------------

    def register_worker(self, info: WorkerInfo) -> None:
        """Record a live worker; see :meth:`Storage.register_worker`."""
        registry.register_worker(self.db, info)

    def heartbeat(
        self,
        worker_id: str,
        *,
        tasks_done: int = 0,
        now: float | None = None,
        state: str = "ok",
        state_reason: str | None = None,
        state_since: float | None = None,
    ) -> None:
        """Refresh a worker's heartbeat and state; see :meth:`Storage.heartbeat`."""
        registry.heartbeat(
            self.db,
            worker_id,
            tasks_done=tasks_done,
            now=now,
            state=state,
            state_reason=state_reason,
            state_since=state_since,
        )

    def unregister_worker(self, worker_id: str) -> None:
        """Forget a worker; see :meth:`Storage.unregister_worker`."""
        registry.unregister_worker(self.db, worker_id)

    def workers(self, *, stale_after: float | None = None, now: float | None = None) -> builtins.list[WorkerInfo]:
        """Recorded workers; see :meth:`Storage.workers`."""
        return registry.workers(self.db, stale_after=stale_after, now=now)
