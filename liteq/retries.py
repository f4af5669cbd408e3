"""Retries: ``Retry`` (raised by a task to run again later) and the backoff timing, a pure function
tested with tables."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import datetime, timedelta

from .exceptions import ConfigurationError
from .inputs import seconds, to_epoch

__all__ = ["DEFAULT_BACKOFF", "DEFAULT_BACKOFF_MAX", "Retry", "backoff_delay"]

#: Seconds before the first retry.
DEFAULT_BACKOFF = 1.0
#: Retries never wait longer than this many seconds.
DEFAULT_BACKOFF_MAX = 600.0


def backoff_delay(
    attempt: int,
    *,
    base: float = DEFAULT_BACKOFF,
    cap: float = DEFAULT_BACKOFF_MAX,
    jitter: bool = True,
    rand: Callable[[], float] = random.random,
) -> float:
    """Seconds to wait before retrying after failed ``attempt`` (1-based).

    The delay doubles each attempt: ``base * 2 ** (attempt - 1)``, capped at ``cap``. With
    ``jitter`` it is drawn from ``[delay / 2, delay]`` ("equal jitter"), so retries of many tasks
    that failed together spread out but none retries at once.
    """
    if base <= 0:
        return 0.0
    exponent = min(max(attempt, 1) - 1, 64)
    delay = min(base * (2.0**exponent), cap)
    if jitter:
        delay = delay / 2 + rand() * delay / 2
    return delay


class Retry(Exception):
    """Raised by a task to run it again later.

    ``raise Retry(countdown=5)`` or ``raise Retry(eta=aware_datetime)``; without either the task's
    backoff decides the delay. ``exc`` is recorded as the attempt's error. Retries stop at the task's
    attempt limit; then the task fails with the last error.
    """

    def __init__(
        self,
        countdown: float | timedelta | None = None,
        *,
        eta: datetime | None = None,
        exc: BaseException | None = None,
    ) -> None:
        if eta is not None and (not isinstance(eta, datetime) or eta.tzinfo is None):
            raise ConfigurationError("Retry(eta=...) needs a timezone-aware datetime, e.g. datetime.now(timezone.utc)")
        if eta is not None:
            to_epoch(eta, "Retry(eta=...)")
        # Checked here so that a bad value fails the task with this message instead of storing a
        # retry time of NaN or +inf (a row that would never run, or a flush that would fail).
        self.countdown = seconds(countdown, "Retry(countdown=...)")
        self.eta = eta
        self.exc = exc
        super().__init__(f"retry requested (countdown={self.countdown}, eta={eta})")
