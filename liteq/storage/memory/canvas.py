"""Canvas in the memory store: dependencies between tasks, and what a finish does to dependents."""

from __future__ import annotations

from collections.abc import Sequence

from ..policy import FAILED_STATES, cascade_reason, state_for_run_at
from ..states import FAILED, SCHEDULED, SUCCEEDED
from .state import Entry, MemoryState

__all__ = ["finish", "group_members", "rewait", "wait_for"]


def finish(s: MemoryState, e: Entry, state: str, now: float, ttl: float | None = None) -> None:
    """Finish ``e`` in ``state`` and move its dependents on in the same step (under ``s.lock``)."""
    s.settle(e, state, now, ttl)
    # Dependents move on in the same step: one more success counted, or a failure passed on.
    # The links stay (not popped) so that a manual retry of a failed chain can wait again.
    for dep_id in list(s.dependents.get(e.row.id, ())):
        d = s.tasks.get(dep_id)
        if d is None or d.row.state != SCHEDULED or s.waiting.get(dep_id, 0) <= 0:
            continue
        if state == SUCCEEDED:
            s.waiting[dep_id] -= 1
            if not s.waiting[dep_id]:
                del s.waiting[dep_id]
                delay, not_before = s.holds.pop(dep_id, (0.0, None))
                d.row.run_at = max(now + delay, not_before or 0.0)
                d.row.state = state_for_run_at(d.row.run_at, now)
        else:
            s.waiting.pop(dep_id, None)
            s.holds.pop(dep_id, None)
            d.row.error = e.row.error
            d.row.reason = cascade_reason(e.row.id, e.row.reason)
            finish(s, d, FAILED, now)


def wait_for(s: MemoryState, e: Entry, deps: Sequence[str], now: float, delay: float = 0.0) -> None:
    """Make ``e`` wait for ``deps``, or fail it at once if one already failed (under ``s.lock``)."""
    deps = s.requires[e.row.id] = list(dict.fromkeys(deps))
    waiting = 0
    for dep_id in deps:
        d = s.tasks.get(dep_id)
        if d is not None and d.row.state in FAILED_STATES:
            e.row.error, e.row.reason = d.row.error, cascade_reason(dep_id, None)
            finish(s, e, FAILED, now)
            return
        # A dependency already gone (pruned after it finished) or succeeded is not waited for.
        if d is not None and d.row.state != SUCCEEDED:
            waiting += 1
            if e.row.id not in s.dependents.setdefault(dep_id, []):
                s.dependents[dep_id].append(e.row.id)
    if waiting:
        s.waiting[e.row.id] = waiting
        not_before = e.row.run_at if e.row.run_at > e.row.enqueued_at else None
        s.holds[e.row.id] = (delay, not_before)
        e.row.state, e.row.run_at = SCHEDULED, float("inf")


def rewait(s: MemoryState, e: Entry, open_deps: Sequence[str]) -> None:
    """Make a retried step wait again for ``open_deps`` (under ``s.lock``)."""
    task_id = e.row.id
    s.waiting[task_id] = len(open_deps)
    s.holds[task_id] = (0.0, None)
    e.row.state, e.row.run_at = SCHEDULED, float("inf")
    for d in open_deps:
        if task_id not in s.dependents.setdefault(d, []):
            s.dependents[d].append(task_id)


def group_members(s: MemoryState, group_id: str) -> list[str]:
    """Member ids in order; see :meth:`Storage.group_members`."""
    with s.lock:
        members = s.groups.get(group_id, {})
        return [members[i] for i in sorted(members) if members[i] in s.tasks]
