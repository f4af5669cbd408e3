"""Decisions every store makes the same way, as pure functions (no storage, no clock).

The SQLite store and the memory store both call these, so a rule such as "a retried canvas step
waits again for the steps retried with it" has one spelling however the store keeps its rows.
"""

from __future__ import annotations

from collections.abc import Iterable

from .states import CASCADE_REASON, FINISHED_STATES, PENDING, SCHEDULED, SUCCEEDED, TaskState, is_cascaded

__all__ = [
    "FAILED_STATES",
    "cascade_reason",
    "open_dependencies",
    "result_expiry",
    "retry_blocked",
    "state_for_run_at",
]

#: Finished states other than success: what a manual retry accepts and what a dependent fails on.
FAILED_STATES: frozenset[str] = FINISHED_STATES - {SUCCEEDED}


def state_for_run_at(run_at: float, now: float) -> TaskState:
    """``pending`` when a task is due at ``now``, else ``scheduled``."""
    return SCHEDULED if run_at > now else PENDING


def result_expiry(now: float, ttl: float | None, task_ttl: float | None, default_ttl: float) -> float:
    """When a task finished at ``now`` is pruned: the outcome's TTL, else the task's, else the store's."""
    return now + (ttl if ttl is not None else task_ttl if task_ttl is not None else default_ttl)


def cascade_reason(failed_id: str, failed_reason: str | None) -> str:
    """The reason of a dependent failed because ``failed_id`` did not succeed: it names the root cause."""
    reason = failed_reason or ""
    root = reason[len(CASCADE_REASON) :] if is_cascaded(reason) else failed_id
    return CASCADE_REASON + root


def retry_blocked(deps: Iterable[tuple[str, str]], chosen: set[str]) -> bool:
    """Whether a cascaded step cannot be retried: a ``(id, state)`` it depends on stays failed."""
    return any(d not in chosen and state in FAILED_STATES for d, state in deps)


def open_dependencies(deps: Iterable[tuple[str, str]], chosen: set[str]) -> list[str]:
    """The dependencies a retried step waits for again: those retried with it or not yet succeeded."""
    return [d for d, state in deps if d in chosen or state != SUCCEEDED]
