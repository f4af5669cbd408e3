"""The storage contract: a few queue-shaped, batched operations, bytes in and bytes out.

Everything above this layer (serialization, retry policy, result semantics) lives in the app and the
worker. Everything below it (SQLite, memory, a TCP server) only moves rows between states. A store
keeps one row per task and these states::

    scheduled ──(run_at passes)──► pending ──claim──► running ──complete──► succeeded | failed
        ▲                             ▲                  │                     cancelled | expired
        └──────── retry (run_at) ─────┴── lease lost ────┘

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
import datetime
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import TypedDict

from ..exceptions import ConfigurationError
from ..inputs import check_duration, check_time
from ..ratelimit import check_rate

__all__ = [
    "ACTIVE_STATES",
    "CASCADE_REASON",
    "FINISHED_STATES",
    "STATES",
    "ClaimedTask",
    "NewTask",
    "Outcome",
    "ScheduleState",
    "StatsRow",
    "Storage",
    "TaskRow",
    "TaskState",
    "WorkerInfo",
    "check_lease",
    "check_new_tasks",
    "checked_outcomes",
    "is_cascaded",
    "state_text",
]


class TaskState(str, Enum):
    """The state of a stored task. A ``str`` so that it equals, stores and encodes as its value."""

    PENDING = "pending"
    SCHEDULED = "scheduled"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"

    # Formatting gives the plain value, as the module constants always did (an f-string in a log line,
    # a CLI table or a SQL parameter must read "pending", not "TaskState.PENDING").
    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, format_spec: str) -> str:
        return format(str(self.value), format_spec)


PENDING = TaskState.PENDING
SCHEDULED = TaskState.SCHEDULED
RUNNING = TaskState.RUNNING
SUCCEEDED = TaskState.SUCCEEDED
FAILED = TaskState.FAILED
CANCELLED = TaskState.CANCELLED
EXPIRED = TaskState.EXPIRED

#: The reason of a task failed because a task it depends on (canvas) did not succeed, before its id.
CASCADE_REASON = "dependency failed: "


def is_cascaded(reason: str | None) -> bool:
    """Whether a task failed only because a task it depends on did not succeed (``reason``)."""
    return bool(reason and reason.startswith(CASCADE_REASON))


#: Every state a task can be in, in life-cycle order.
#: Plain strings, not the members: option parsers such as ``click.Choice`` match Enum choices by name.
STATES: tuple[str, ...] = tuple(state.value for state in TaskState)
#: States a task leaves by itself.
ACTIVE_STATES: frozenset[str] = frozenset({PENDING, SCHEDULED, RUNNING})
#: How long every store keeps its per-minute statistics (:meth:`Storage.stats`), in seconds.
STATS_MEMORY = 8 * 86400.0
#: States a task never leaves (except by a manual retry).
FINISHED_STATES: frozenset[str] = frozenset({SUCCEEDED, FAILED, CANCELLED, EXPIRED})


@dataclass(slots=True)
class NewTask:
    """One task to enqueue. ``payload`` is opaque bytes written by the app's serializer."""

    id: str
    name: str
    queue: str
    payload: bytes
    priority: int = 0
    run_at: float | None = None
    """When it may run; ``None`` or a past time means now (``pending``), later means ``scheduled``."""
    expires_at: float | None = None
    max_attempts: int = 1
    idempotency_key: str | None = None
    result_ttl: float | None = None
    """Seconds a finished task and its result are kept; ``None`` uses the store's default."""
    parent_id: str | None = None
    unique_key: str | None = None
    """While a task with this key is pending or scheduled, enqueueing another returns its id."""
    lock_key: str | None = None
    """At most one task holding this key runs at a time, across every worker of the store."""
    slot: tuple[str, float] | None = None
    """``(schedule, slot time)`` of a periodic firing: stored once; a second firing writes nothing."""
    depends_on: list[str] | None = None
    """Ids this task waits for (canvas). It stays ``scheduled`` until each has succeeded, then
    becomes ``pending``; if one ends otherwise, this task fails at once with that task's error."""
    release_delay: float = 0.0
    """With ``depends_on``: seconds to wait after the last dependency succeeded (a countdown on a
    later canvas step). An eta (``run_at``) is kept as the earliest start."""
    group_id: str | None = None
    group_index: int | None = None
    """Membership of a group (canvas), so ``group_members`` can list it in order."""
    timeout: float | None = None
    """Hard time limit (seconds), stored so a pool without the task's app enforces it."""
    soft_timeout: float | None = None
    """Soft time limit (seconds), stored with the task like ``timeout``."""
    rate_limit: float | None = None
    """Starts per second of this task's name across the store, stored with the task so a claim
    without the app (``liteq worker STORE``, a remote pool) still holds it back."""


@dataclass(slots=True)
class ScheduleState:
    """What the store remembers of a periodic schedule: pause state and the last slot fired."""

    name: str
    paused: bool
    last_slot: float | None
    last_fired_at: float | None = None
    last_task_id: str | None = None


@dataclass(slots=True)
class ClaimedTask:
    """A task handed to a worker under a lease."""

    id: str
    name: str
    queue: str
    payload: bytes
    attempt: int
    """1 for the first run; counts every claim, including ones whose worker was lost."""
    max_attempts: int
    lease_token: str
    lease_deadline: float
    enqueued_at: float
    expires_at: float | None = None
    priority: int = 0
    timeout: float | None = None
    """The hard time limit stored with the task (``None``: none stored; the app's option applies)."""
    soft_timeout: float | None = None
    """The soft time limit stored with the task (``None``: none stored; the app's option applies)."""


@dataclass(slots=True)
class Outcome:
    """What a worker reports for one claimed task.

    ``state`` is the new state: ``succeeded`` or ``failed`` (finished, with ``result`` or ``error``),
    ``scheduled`` (retry at ``run_at``; ``pending`` when ``run_at`` has passed), ``cancelled``
    or ``expired``. ``error`` is opaque bytes (the app encodes type, message and traceback).
    """

    id: str
    lease_token: str
    state: str
    result: bytes | None = None
    error: bytes | None = None
    reason: str | None = None
    run_at: float | None = None
    result_ttl: float | None = None


@dataclass(slots=True)
class TaskRow:
    """Everything a store keeps about one task, for inspection."""

    id: str
    name: str
    queue: str
    state: str
    priority: int
    payload: bytes | None
    run_at: float
    enqueued_at: float
    attempts: int
    max_attempts: int
    expires_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    lease_owner: str | None = None
    lease_token: str | None = None
    lease_deadline: float | None = None
    idempotency_key: str | None = None
    result: bytes | None = None
    result_expires_at: float | None = None
    error: bytes | None = None
    reason: str | None = None
    progress: bytes | None = None
    cancel_requested: bool = False
    parent_id: str | None = None
    unique_key: str | None = None
    lock_key: str | None = None
    errors: list[bytes] = field(default_factory=list)
    """Errors of earlier attempts, oldest first (``get(..., history=True)`` only)."""
    damaged: str | None = None
    """Why the payload or result of this row could not be read (a missing or damaged blob), or None."""


@dataclass(slots=True)
class WorkerInfo:
    """A live worker process (a pool supervisor or an in-process worker) as recorded in the store."""

    id: str
    host: str
    pid: int
    concurrency: int
    queues: list[str]
    started_at: float
    heartbeat_at: float
    tasks_done: int = 0
    state: str = "ok"
    """``"ok"``, or ``"degraded"`` while the worker rides out store errors (it claims nothing then)."""
    state_reason: str | None = None
    """Why it is degraded (``"store busy during claim"``); None when ok."""
    state_since: float | None = None
    """Epoch seconds since when it is degraded; None when ok."""

    def state_text(self) -> str:
        """The display form: ``ok`` or ``degraded: <reason> since <UTC time>``."""
        return state_text(self.state, self.state_reason, self.state_since)


def state_text(state: str, reason: str | None, since: float | None) -> str:
    """``ok`` or ``degraded: <reason> since <UTC time>`` (what ``liteq status`` shows)."""
    if state == "ok":
        return "ok"
    when = (
        "?"
        if since is None
        else datetime.datetime.fromtimestamp(since, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
    )
    return f"{state}: {reason or 'unknown reason'} since {when}"


class StatsRow(TypedDict):
    """Finishes of one task name in one queue and final state during one minute (the store's history).

    A plain dict, so it crosses the network as it is. ``latency`` is end to end: from enqueue to
    the finish, retries and waiting included.
    """

    minute: float
    """Start of the minute, seconds since the epoch."""
    queue: str
    name: str
    state: str
    count: int
    latency_sum: float
    latency_max: float


def check_new_tasks(tasks: Sequence[NewTask], now: float) -> None:
    """Refuse a batch holding a time or count no store can keep (NaN, infinite, negative, > 10 years).

    Stores call it before writing anything, so a bad entry refuses the whole batch with a
    :class:`ConfigurationError` naming the task and field, instead of storing a row that never runs.
    """
    for t in tasks:
        what = f"task {t.id} ({t.name})"
        if t.run_at is not None:
            check_time(t.run_at, f"run_at of {what}", now=now)
        if t.expires_at is not None:
            check_time(t.expires_at, f"expires_at of {what}", now=now)
        if t.result_ttl is not None:
            check_duration(t.result_ttl, f"result_ttl of {what}")
        check_duration(t.release_delay, f"release_delay of {what}")
        for name in ("timeout", "soft_timeout"):
            value = getattr(t, name)
            if value is not None:
                check_duration(value, f"{name} of {what}", positive=True)
        if t.rate_limit is not None:
            check_rate(t.rate_limit, f"rate_limit of {what}")
        if isinstance(t.max_attempts, bool) or not isinstance(t.max_attempts, int) or t.max_attempts < 1:
            raise ConfigurationError(f"max_attempts of {what} must be an integer >= 1, not {t.max_attempts!r}")
        if isinstance(t.priority, bool) or not isinstance(t.priority, int):
            raise ConfigurationError(f"priority of {what} must be an integer, not {t.priority!r}")


def checked_outcomes(outcomes: Sequence[Outcome], now: float) -> builtins.list[Outcome]:
    """Outcomes as given, except that one carrying an impossible retry time or result TTL becomes a
    ``failed`` outcome saying so: one bad outcome must neither strand its task at ``+inf`` nor make
    the batch it is flushed with fail."""
    out = []
    for o in outcomes:
        try:
            if o.state in (SCHEDULED, PENDING) and o.run_at is not None:
                check_time(o.run_at, f"retry time of task {o.id}", now=now)
            if o.result_ttl is not None:
                check_duration(o.result_ttl, f"result_ttl of task {o.id}")
        except ConfigurationError as exc:
            o = replace(o, state=FAILED, run_at=None, result_ttl=None, reason=f"invalid outcome: {exc}")
        out.append(o)
    return out


def check_lease(lease: float) -> float:
    """A lease length in seconds: finite, > 0 and at most ten years."""
    return check_duration(lease, "lease", positive=True)


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
