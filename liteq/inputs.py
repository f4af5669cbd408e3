"""Checks of the times and durations that enter liteq: from the API, the CLI, stored rows and frames.

A NaN or infinite time stored in a row would strand the task (``run_at = +inf`` never comes) or
poison the batch it travels in (a flush of outcomes that fails as a whole). So every duration and
every absolute time is checked where it enters, and refused with a :class:`ConfigurationError`
that names the argument and says what to pass instead. "Absurd" is negative or further than
:data:`MAX_DELAY` away: nothing a queue does is meant to happen ten years from now, and such a
value is almost always a unit mistake (milliseconds for seconds, an epoch for a duration).
"""

from __future__ import annotations

import math
import time
from datetime import datetime, timedelta
from typing import Any

from .exceptions import ConfigurationError

__all__ = ["MAX_DELAY", "check_duration", "check_time", "now_plus", "seconds", "to_epoch"]

#: The longest duration (and the furthest future time) liteq accepts anywhere: ten years, in seconds.
MAX_DELAY = 10 * 365.25 * 86400.0


def check_duration(value: Any, what: str, *, positive: bool = False) -> float:
    """``value`` as float seconds: a finite number in ``[0, MAX_DELAY]`` (``> 0`` with ``positive``).

    ``timedelta`` is accepted. Anything else raises :class:`ConfigurationError` naming ``what``.
    """
    if isinstance(value, timedelta):
        value = value.total_seconds()
    low = "> 0" if positive else ">= 0"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigurationError(f"{what} must be a number of seconds {low} or a timedelta, not {value!r}")
    number = float(value)
    if math.isnan(number) or math.isinf(number) or number < 0 or (positive and number == 0):
        raise ConfigurationError(
            f"{what} must be a number of seconds {low}, finite and at most ten years, not {value!r}"
        )
    if number > MAX_DELAY:
        raise ConfigurationError(
            f"{what}={value!r} seconds is more than ten years; pass seconds (not milliseconds or an epoch time)"
        )
    return number


def seconds(value: float | timedelta | None, what: str) -> float | None:
    """A duration option as float seconds (``None`` stays ``None``); see :func:`check_duration`."""
    if value is None:
        return None
    return check_duration(value, what)


def check_time(value: Any, what: str, *, now: float | None = None) -> float:
    """An absolute epoch time that is finite and at most :data:`MAX_DELAY` after ``now``.

    A past time is fine (it means "at once"); NaN, infinities and far-future times are refused.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigurationError(f"{what} must be a finite epoch time in seconds, not {value!r}")
    now = time.time() if now is None else now
    if value - now > MAX_DELAY:
        raise ConfigurationError(f"{what} is more than ten years ahead ({value!r}); pass a nearer time")
    return float(value)


def to_epoch(when: datetime, what: str, *, now: float | None = None) -> float:
    """Epoch seconds of a timezone-aware datetime at most ten years ahead; a naive one is refused."""
    if not isinstance(when, datetime):
        raise ConfigurationError(f"{what} must be a timezone-aware datetime, not {type(when).__name__}")
    if when.tzinfo is None or when.utcoffset() is None:
        raise ConfigurationError(
            f"{what}={when!r} is a naive datetime; pass a timezone-aware one, e.g. "
            "datetime.now(timezone.utc) + timedelta(minutes=5)"
        )
    return check_time(when.timestamp(), what, now=now)


def now_plus(value: float | timedelta | datetime | None, what: str, now: float | None = None) -> float | None:
    """An absolute epoch time from seconds-from-now, a timedelta or an aware datetime."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return to_epoch(value, what, now=now)
    delta = check_duration(value, what)
    return (time.time() if now is None else now) + delta
