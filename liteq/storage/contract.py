"""The storage contract: a few queue-shaped, batched operations, bytes in and bytes out.

Everything above this layer (serialization, retry policy, result semantics) lives in the app and the
worker. Everything below it (SQLite, memory, a TCP server) only moves rows between the states of
:mod:`liteq.storage.states`, carrying the records of :mod:`liteq.storage.records`.

Rules every implementation keeps (the contract tests in ``tests/test_storage_contract.py`` check them):

- ``enqueue`` is atomic for the whole batch; an idempotency key that is already stored returns the
  existing task's id and writes nothing for that entry.
- ``claim`` moves due rows to ``running`` and hands each a fresh lease token and deadline, in one
  atomic step; two claimers never get the same row. A claimed row is never deleted.
- ``complete`` applies an outcome only while the lease token still matches; a stale token is refused
  (``False``) and changes nothing.
- Times are float seconds since the epoch and are always passed in (``now``), so tests drive the
  clock. ``None`` means the store's own clock.
"""

from __future__ import annotations

import abc
import builtins
import threading
import time
from collections.abc import Iterable, Mapping, Sequence

from .records import ClaimedTask, NewTask, Outcome, ScheduleState, StatsRow, TaskRow, WorkerInfo

__all__ = ["STATS_MEMORY", "Storage"]

#: How long every store keeps its per-minute statistics (:meth:`Storage.stats`), in seconds.
STATS_MEMORY = 8 * 86400.0


class Storage(abc.ABC):
    """Base class of every store. Subclasses implement the abstract batched operations.

    Instances are safe to share between threads. ``location`` is what a store pickles as, so a
    child process reopens the same store instead of inheriting a connection.
    """

    #: The URL or path that reopens this store in another process.
    location: str

    # -- declared capabilities: what differs between stores is stated here, never detected --------

    #: Other processes can open this store from :attr:`location` (a worker pool needs it; a store
    #: living in one process's memory cannot be shared).
    shared_between_processes: bool = False
    #: A commit in another process wakes :meth:`wait` here at once (a wake-up socket directory,
    #: :attr:`wake_dir`, or a server's push); without it, waiters poll.
    supports_cross_process_wakeup: bool = False
    #: :meth:`checkpoint` does useful work (a write-ahead log to fold back into the database file),
    #: worth calling from a background thread so that no commit a producer waits on pays for it.
    supports_checkpoint: bool = False
    #: The directory holding the store on this machine, or None (in memory, or on a server).
    local_path: str | None = None
    #: Answers and other processes' wake-ups reach this process through a reader thread of its
    #: own (a server connection), not straight from the kernel to the waiting thread. A pool over
    #: such a store must not busy-poll: the poll would hold the GIL that thread needs to deliver
    #: the very event it waits for (see :mod:`liteq.events`).
    events_through_a_thread: bool = False

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._version = 0

    # -- writes -------------------------------------------------------------------------------

    @abc.abstractmethod
    def enqueue(self, tasks: Sequence[NewTask], *, now: float | None = None) -> list[str]:
        """Store a batch atomically; return each task's id (the existing id for a known idempotency key)."""

    @abc.abstractmethod
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
        """Lease up to ``limit`` due tasks from ``queues`` (highest priority, then oldest first).

        A task whose ``lock_key`` is held by a running task is left waiting. ``limits`` maps task
        names to a rate (tasks per second) shared by every worker of the store: a task over its
        rate goes back to ``scheduled`` at the time its turn comes, without counting an attempt.

        Scheduled tasks whose ``run_at`` has passed become due first. A claimed task whose
        ``expires_at`` has passed is marked ``expired`` instead of being returned. ``ids`` restricts
        the claim to those tasks, due or not, in any queue (immediate mode runs them at once).
        """

    @abc.abstractmethod
    def extend(
        self, owner: str, leases: Sequence[tuple[str, str]], *, lease: float, now: float | None = None
    ) -> list[bool]:
        """Push the deadline of each ``(id, token)`` lease to ``now + lease``; False where it was lost."""

    @abc.abstractmethod
    def complete(self, outcomes: Sequence[Outcome], *, now: float | None = None) -> list[bool]:
        """Apply outcomes in one transaction; each is applied only while its lease token matches."""

    @abc.abstractmethod
    def release(self, leases: Sequence[tuple[str, str]], *, uncount: bool = True) -> int:
        """Hand leased tasks back to ``pending`` at once (a worker shutting down).

        With ``uncount`` the claim does not count as an attempt (the task never started). A task
        with a pending cancel request ends ``cancelled`` instead.
        """

    @abc.abstractmethod
    def reap(self, *, now: float | None = None, owner: str | None = None) -> list[str]:
        """Return tasks whose lease expired (or, with ``owner``, every lease of that owner) to
        ``pending``; those at ``max_attempts`` end ``failed`` with reason ``worker lost``.
        A task with a pending cancel request ends ``cancelled`` instead. Returns the ids touched.
        Tasks that depend on one that ends here fail with it (see ``NewTask.depends_on``)."""

    @abc.abstractmethod
    def set_progress(self, id: str, lease_token: str, progress: bytes) -> bool:
        """Record a running task's progress; False when the lease was lost."""

    @abc.abstractmethod
    def cancel(self, ids: Sequence[str], *, now: float | None = None) -> list[str | None]:
        """Cancel tasks: waiting ones become ``cancelled`` at once; running ones get a cancel request.

        Returns the state of each task after the call (``None`` for an unknown id).
        """

    @abc.abstractmethod
    def retry(self, ids: Sequence[str], *, now: float | None = None) -> list[bool]:
        """Put finished tasks (failed, cancelled, expired) back to ``pending`` with a fresh attempt budget."""

    @abc.abstractmethod
    def purge(
        self, *, queue: str | None = None, states: Iterable[str] | None = None, ids: Sequence[str] | None = None
    ) -> int:
        """Delete tasks (and their results) matching every filter given; running tasks are kept
        unless ``states`` names ``running``. Returns the number deleted."""

    @abc.abstractmethod
    def prune(self, *, now: float | None = None, limit: int = 10_000) -> int:
        """Delete finished tasks whose ``result_ttl`` has passed, at most ``limit``; return how many."""

    # -- reads --------------------------------------------------------------------------------

    @abc.abstractmethod
    def get(self, ids: Sequence[str], *, history: bool = False) -> list[TaskRow | None]:
        """Rows for ids, ``None`` for unknown ones (results are returned even when expired)."""

    @abc.abstractmethod
    def list(
        self,
        *,
        states: Iterable[str] | None = None,
        queue: str | None = None,
        name: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[TaskRow]:
        """Rows matching the filters, oldest first, without payloads or results."""

    @abc.abstractmethod
    def counts(self) -> dict[str, dict[str, int]]:
        """``{queue: {state: n}}`` for every queue with at least one task."""

    @abc.abstractmethod
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
        """Rows matching every filter given, newest first, without payloads or results (keyset paging).

        ``since``/``until`` bound ``enqueued_at`` (``since <= t < until``); ``parent`` selects the
        tasks whose ``parent_id`` it is (a canvas step's successors). ``before`` is the id of
        the last row of the previous page: only rows stored before it are returned (none when that
        task no longer exists). The cost does not grow with the number of tasks stored.
        """

    @abc.abstractmethod
    def oldest_pending(self) -> dict[str, TaskRow]:
        """The pending task stored first in each queue that has one (without payload or result)."""

    @abc.abstractmethod
    def stats(self, *, since: float, until: float | None = None, bucket: int = 60) -> builtins.list[StatsRow]:
        """Finish statistics for the minutes starting in ``[since, until)``, oldest first.

        ``bucket`` (seconds, a multiple of 60) adds the minutes up into longer spans: ``minute`` is
        then the start of each span (a multiple of ``bucket`` since the epoch).

        Every task that reaches a finished state counts once in the minute it finished (again if
        retried by hand and finished again). Kept for days, whatever the tasks' own ``result_ttl``.
        """

    @abc.abstractmethod
    def next_run_at(self, queues: Sequence[str]) -> float | None:
        """The earliest ``run_at`` of a scheduled task in ``queues``, so idle workers know when to wake."""

    @abc.abstractmethod
    def group_members(self, group_id: str) -> builtins.list[str]:
        """Task ids of a group in order (empty for an unknown or pruned group)."""

    # -- periodic schedules --------------------------------------------------------------------

    @abc.abstractmethod
    def register_schedules(self, names: Sequence[str], *, now: float | None = None) -> None:
        """Record schedules not seen before, with ``now`` as their last slot (nothing older fires)."""

    @abc.abstractmethod
    def schedule_states(self, names: Sequence[str] | None = None) -> dict[str, ScheduleState]:
        """The recorded state of the named schedules (all of them with ``None``)."""

    @abc.abstractmethod
    def set_schedule_paused(self, name: str, paused: bool, *, now: float | None = None) -> bool:
        """Pause or resume a schedule; resuming skips the slots missed while paused. False if unknown."""

    # -- workers ------------------------------------------------------------------------------

    @abc.abstractmethod
    def register_worker(self, info: WorkerInfo) -> None:
        """Record (or refresh) a live worker."""

    @abc.abstractmethod
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
        """Refresh a worker's heartbeat, add ``tasks_done`` and record its health ``state``
        (``"ok"`` or ``"degraded"``, with the reason and since when; see :class:`WorkerInfo`).

        A store whose writes can be blocked by another process should still make a degraded
        state visible to :meth:`workers` while that lasts (the SQLite store keeps it in a side
        file when the row cannot be written); the heartbeat itself may then raise."""

    @abc.abstractmethod
    def unregister_worker(self, worker_id: str) -> None:
        """Forget a worker that stopped."""

    @abc.abstractmethod
    def workers(self, *, stale_after: float | None = None, now: float | None = None) -> builtins.list[WorkerInfo]:
        """Recorded workers; with ``stale_after``, only those heard from within that many seconds."""

    def pending_commands(self) -> builtins.list[str]:
        """Commands an operator sent this process's worker through the store (``"drain"``: stop
        claiming and exit once the tasks in hand are done; ``"stop"``: stop gracefully), oldest
        first; each is returned once. Only a cluster store carries them (``liteq control``); the
        default has none."""
        return []

    # -- life cycle and change notification ------------------------------------------------------

    def close(self) -> None:
        """Release connections and files. Idempotent."""

    def listen(self) -> None:
        """Prepare to :meth:`wait` for writes by other processes (call before checking state)."""

    @property
    def wake_dir(self) -> str | None:
        """The directory of the wake-up sockets of the processes using this store (see
        :mod:`liteq.wake`), or None when commits are not announced there."""
        return None

    def skip_wake_in_this_thread(self, path: str) -> None:
        """Commits made by the calling thread need not wake the listener at ``path`` (a pool's own
        socket: it knows what it just did). Stores that announce no commits ignore it."""

    def checkpoint(self) -> None:
        """Fold the write-ahead log back into the database (see :attr:`supports_checkpoint`);
        nothing to do for a store without one."""

    def notify(self) -> None:
        """Wake every waiter in this process (called after each write)."""
        with self._changed:
            self._version += 1
            self._changed.notify_all()

    def wait(self, version: int, timeout: float) -> int:
        """Block until a write newer than ``version`` or ``timeout`` seconds; return the new version.

        In-process writes wake waiters at once. Writes from other processes are seen by polling
        (subclasses with a cross-process signal override :meth:`wait`).
        """
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._version == version:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(left)
            return self._version

    @property
    def version(self) -> int:
        """A counter bumped by every write through this object."""
        return self._version

    def __enter__(self) -> Storage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
