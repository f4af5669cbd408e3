"""Input checks every store runs before writing: a time, count or lease no store can keep is
refused (or, for an outcome, turned into a failure) before it reaches a row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from ..exceptions import ConfigurationError
from ..inputs import check_duration, check_time
from ..ratelimit import check_rate
from .records import NewTask, Outcome
from .states import FAILED, PENDING, SCHEDULED

__all__ = ["check_lease", "check_new_tasks", "checked_outcomes"]


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


def checked_outcomes(outcomes: Sequence[Outcome], now: float) -> list[Outcome]:
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
