"""Retry timing: ``backoff_delay`` is pure, so it is tested with tables and an injected ``rand``."""

from __future__ import annotations

import pytest

from liteq.retries import DEFAULT_BACKOFF, DEFAULT_BACKOFF_MAX, backoff_delay

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize(
    ("attempt", "base", "cap", "expected"),
    [
        (1, 1.0, 600.0, 1.0),
        (2, 1.0, 600.0, 2.0),
        (3, 1.0, 600.0, 4.0),
        (4, 1.0, 600.0, 8.0),
        (10, 1.0, 600.0, 512.0),
        (11, 1.0, 600.0, 600.0),  # 1024 capped
        (1, 0.5, 600.0, 0.5),
        (3, 0.5, 600.0, 2.0),
        (3, 10.0, 30.0, 30.0),
        (0, 2.0, 600.0, 2.0),  # attempt below 1 counts as the first
        (-5, 2.0, 600.0, 2.0),
        (1000, 1.0, 600.0, 600.0),  # huge attempt: no overflow
        (10**9, 1.0, 600.0, 600.0),
        (5, 0.0, 600.0, 0.0),  # no backoff: retry at once
        (5, -1.0, 600.0, 0.0),
    ],
)
def test_backoff_without_jitter(attempt: int, base: float, cap: float, expected: float) -> None:
    # Given a failed attempt and a backoff base and cap, without jitter
    # When the delay is computed
    delay = backoff_delay(attempt, base=base, cap=cap, jitter=False)
    # Then it doubles per attempt from base, and never passes the cap
    assert delay == pytest.approx(expected)


@pytest.mark.parametrize(
    ("attempt", "rand", "expected"),
    [
        (1, 0.0, 0.5),  # the lowest draw is half the delay
        (1, 1.0, 1.0),  # the highest draw is the full delay
        (1, 0.5, 0.75),
        (3, 0.0, 2.0),
        (3, 0.25, 2.5),
        (3, 0.999, 3.998),
        (11, 0.0, 300.0),  # jitter applies after the cap
        (11, 1.0, 600.0),
    ],
)
def test_backoff_with_equal_jitter(attempt: int, rand: float, expected: float) -> None:
    # Given an injected random draw
    # When the delay is computed with jitter (base 1 s, cap 600 s)
    delay = backoff_delay(attempt, base=1.0, cap=600.0, jitter=True, rand=lambda: rand)
    # Then it lies in [delay / 2, delay], where the draw puts it
    assert delay == pytest.approx(expected)


def test_jitter_never_retries_at_once() -> None:
    # Given many draws across the whole [0, 1) range
    draws = [i / 100 for i in range(100)]
    # When delays are computed for attempt 4 (8 s without jitter)
    delays = [backoff_delay(4, base=1.0, jitter=True, rand=lambda d=d: d) for d in draws]
    # Then every one is between 4 and 8 seconds, and they spread out
    assert all(4.0 <= d <= 8.0 for d in delays)
    assert len(set(delays)) == len(delays)


def test_zero_base_ignores_jitter() -> None:
    # Given a zero base and a draw that would add time
    # When the delay is computed with jitter
    # Then it is still zero
    assert backoff_delay(3, base=0.0, jitter=True, rand=lambda: 1.0) == 0.0


def test_defaults() -> None:
    # Given / When the documented defaults
    # Then the first retry waits one second and none waits more than ten minutes
    assert DEFAULT_BACKOFF == 1.0
    assert DEFAULT_BACKOFF_MAX == 600.0
    assert backoff_delay(1, jitter=False) == 1.0
    assert backoff_delay(50, jitter=False) == 600.0
    assert 0.5 <= backoff_delay(1) <= 1.0
