"""Rate limits shared by every worker of a store: ``"100/m"`` is at most 100 starts a minute.

The store keeps, per task name, the earliest time the next run may start (``next_at``); a claim
that finds a task early puts it back as ``scheduled`` at its turn instead of running it. Runs are
spread evenly (one every ``1 / rate`` seconds), like Celery's limit, but counted across all pools
rather than per worker.
"""

from __future__ import annotations

import math
import re

from .exceptions import ConfigurationError
from .inputs import MAX_DELAY

__all__ = ["admit", "check_rate", "parse_rate"]

_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(\d+(?:\.\d+)?)?\s*(s|sec|second|m|min|minute|h|hour|d|day)s?\s*$")
_UNIT = {
    "s": 1,
    "sec": 1,
    "second": 1,
    "m": 60,
    "min": 60,
    "minute": 60,
    "h": 3600,
    "hour": 3600,
    "d": 86400,
    "day": 86400,
}


def parse_rate(text: str) -> float:
    """``"100/m"``, ``"10/s"``, ``"5/10s"``, ``"1000/h"`` → runs per second."""
    m = _RATE.match(text) if isinstance(text, str) else None
    if not m:
        raise ConfigurationError(f"rate_limit {text!r} is not a rate; write it like '100/m', '10/s' or '1000/h'")
    count, span, unit = float(m.group(1)), float(m.group(2) or 1), _UNIT[m.group(3)]
    if count <= 0 or span <= 0:
        raise ConfigurationError(f"rate_limit {text!r} must be positive")
    return check_rate(count / (span * unit), f"rate_limit {text!r}")


def check_rate(rate: float, what: str = "rate_limit") -> float:
    """A rate in starts per second that is finite and allows at least one start in ten years.

    A stored NaN or infinite rate would make every claim of the task fail or stall; refuse it here.
    """
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not math.isfinite(rate) or rate <= 0:
        raise ConfigurationError(f"{what} must be a positive, finite rate such as '100/m', not {rate!r}")
    if 1.0 / rate > MAX_DELAY:
        raise ConfigurationError(f"{what} allows fewer than one start in ten years; write it like '1/d'")
    return float(rate)


def admit(next_at: float | None, now: float, rate: float) -> tuple[bool, float, float]:
    """Decide one start at ``now``: ``(allowed, when, new_next_at)``.

    ``when`` is the start time granted (``now`` if allowed, else when to come back);
    ``new_next_at`` is what the store keeps for the next caller. A refused task reserves nothing:
    all waiting tasks come back at the next free time and the oldest due one takes it.
    """
    interval = 1.0 / rate
    if next_at is None or next_at <= now:
        return True, now, now + interval
    return False, next_at, next_at
