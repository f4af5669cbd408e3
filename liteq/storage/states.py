"""The states of a stored task, the sets of them every layer tests against, and the cascade reason.

A store keeps one row per task and moves it through these states::

    scheduled ──(run_at passes)──► pending ──claim──► running ──complete──► succeeded | failed
        ▲                             ▲                  │                     cancelled | expired
        └──────── retry (run_at) ─────┴── lease lost ────┘
"""

from __future__ import annotations

from enum import Enum

__all__ = [
    "ACTIVE_STATES",
    "CANCELLED",
    "CASCADE_REASON",
    "EXPIRED",
    "FAILED",
    "FINISHED_STATES",
    "PENDING",
    "RUNNING",
    "SCHEDULED",
    "STATES",
    "SUCCEEDED",
    "TaskState",
    "is_cascaded",
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
#: States a task never leaves (except by a manual retry).
FINISHED_STATES: frozenset[str] = frozenset({SUCCEEDED, FAILED, CANCELLED, EXPIRED})
