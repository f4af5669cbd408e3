"""A pool's health: ``ok``, or ``degraded`` while it rides out store errors.

A store that is locked by another process (a backup, a ``sqlite3`` shell), full, read-only,
failing with I/O errors or (cluster) unreachable is a passing condition, not a reason to stop
every worker on it. Any such error from any store call of a supervisor loop moves the loop's
:class:`Health` to ``DEGRADED``; from then on the loop claims nothing, lets running children
finish, keeps their outcomes in memory, and retries its writes (heartbeat, outcome flush, lease
extension) at :attr:`Health.retry_at`, a capped, jittered backoff. The first retry round that
gets through moves it back to ``OK``. Entering and leaving are logged once each; the errors in
between are counted, not logged.

Errors that retrying cannot fix (a corrupt store, a store whose directory vanished, a schema
from a newer liteq) are not degrading: they still stop the loop, loudly.
"""

from __future__ import annotations

import enum
import logging
import time
from types import TracebackType

from .exceptions import (
    StorageError,
    StoreBusy,
    StoreCorrupt,
    StoreFull,
    StoreMoved,
    StoreReadOnly,
    StoreUnavailable,
)
from .retries import backoff_delay

__all__ = ["DEGRADED_RETRY_BASE", "DEGRADED_RETRY_MAX", "Health", "PoolState", "degrades"]

#: First retry delay (seconds) once degraded; it doubles per failed round, with jitter.
DEGRADED_RETRY_BASE = 0.2
#: The longest wait between two retry rounds (seconds).
DEGRADED_RETRY_MAX = 5.0

#: Errors that mean "not now", with the words ``liteq status`` shows for them.
_REASONS: tuple[tuple[type[BaseException], str], ...] = (
    (StoreBusy, "store busy"),
    (StoreFull, "store full"),
    (StoreReadOnly, "store read-only"),
    (StoreUnavailable, "store unavailable"),
    (StorageError, "store error"),
    (OSError, "I/O error"),
)


class PoolState(str, enum.Enum):
    """What a supervisor loop can do now. The value is what the store records."""

    OK = "ok"
    """Claiming and running normally."""
    DEGRADED = "degraded"
    """Store calls fail: no claims; running tasks finish; outcomes wait in memory."""


def degrades(exc: BaseException) -> bool:
    """True for a store error that retrying may cure (busy, full, read-only, unreachable, I/O);
    False for corruption, a vanished store, and anything that is not a store error."""
    if isinstance(exc, (StoreCorrupt, StoreMoved)):
        return False
    return isinstance(exc, (StorageError, OSError))


def _reason(exc: BaseException) -> str:
    for kind, words in _REASONS:
        if isinstance(exc, kind):
            return words
    return type(exc).__name__


class Health:
    """The health state machine of one supervisor loop (a pool, ``liteq scheduler``).

    ``guard(what)`` wraps one store call: a degrading error is swallowed and recorded (the
    caller checks ``.failed``), anything else propagates. ``recovered()`` is called by the loop
    once a whole retry round went through.
    """

    def __init__(
        self,
        name: str,
        logger: logging.Logger,
        *,
        base: float = DEGRADED_RETRY_BASE,
        cap: float = DEGRADED_RETRY_MAX,
    ) -> None:
        self.name = name
        self.logger = logger
        self.base = base
        self.cap = cap
        self.state = PoolState.OK
        self.reason: str | None = None
        self.since: float | None = None  # wall clock: shown to people
        self.failures = 0  # failed rounds since degraded: drives the backoff
        self.errors = 0  # every error swallowed since degraded, for the leaving log line
        self.retry_at = 0.0  # monotonic
        self._degraded_mono = 0.0

    @property
    def ok(self) -> bool:
        """True in state ``OK``."""
        return self.state is PoolState.OK

    def retry_due(self, mono: float) -> bool:
        """True when a degraded loop should try its writes again."""
        return not self.ok and mono >= self.retry_at

    def failed(self, what: str, exc: BaseException, mono: float | None = None) -> None:
        """Record a degrading error of the store call ``what``; schedule the next retry round."""
        mono = time.monotonic() if mono is None else mono
        self.errors += 1
        self.failures += 1
        # Equal jitter: pools that failed together spread their retries, none retries at once.
        self.retry_at = mono + backoff_delay(self.failures, base=self.base, cap=self.cap, jitter=True)
        if self.ok:
            self.state = PoolState.DEGRADED
            self.reason = f"{_reason(exc)} during {what}"
            self.since = time.time()
            self._degraded_mono = mono
            self.logger.warning(
                "%s degraded: %s (%s); claiming nothing, running tasks go on, retrying with backoff",
                self.name,
                self.reason,
                exc,
            )

    def recovered(self, mono: float | None = None) -> None:
        """A retry round went through: back to ``OK`` (logged once)."""
        if self.ok:
            self.failures = 0
            return
        mono = time.monotonic() if mono is None else mono
        self.logger.warning(
            "%s back to ok after %.1fs degraded (%s; %d store error(s) ridden out)",
            self.name,
            mono - self._degraded_mono,
            self.reason,
            self.errors,
        )
        self.state = PoolState.OK
        self.reason = self.since = None
        self.failures = self.errors = 0
        self.retry_at = 0.0

    def guard(self, what: str) -> Guard:
        """A context manager around one store call named ``what`` (see the class doc)."""
        return Guard(self, what)


class Guard:
    """One guarded store call: ``with health.guard("claim") as g: ...``; then ``g.failed``."""

    __slots__ = ("failed", "health", "what")

    def __init__(self, health: Health, what: str) -> None:
        self.health = health
        self.what = what
        self.failed = False

    def __enter__(self) -> Guard:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> bool:
        if exc is None or not degrades(exc):
            return False
        self.failed = True
        self.health.failed(self.what, exc)
        return True
