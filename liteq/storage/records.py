"""The records that cross the storage contract: what is enqueued, claimed, reported and read back.

Named fields, built with keywords; ``payload``, ``result`` and ``error`` are opaque bytes written
by the app's serializer. A record's ``state`` holds a :class:`~liteq.storage.states.TaskState` value.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import TypedDict

__all__ = [
    "ClaimedTask",
    "NewTask",
    "Outcome",
    "ScheduleState",
    "StatsRow",
    "TaskRow",
    "WorkerInfo",
    "state_text",
]


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
