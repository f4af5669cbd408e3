"""Retry timing: exponential backoff with jitter, as a pure function tested with tables."""

from __future__ import annotations

import random
from collections.abc import Callable

__all__ = ["DEFAULT_BACKOFF", "DEFAULT_BACKOFF_MAX", "backoff_delay"]

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
