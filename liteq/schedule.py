"""Schedule maths: when a periodic task fires (pure; tested with tables).

Cron expressions (croniter) are evaluated on wall-clock time in the schedule's zone (zoneinfo)
and each match is converted to a UTC instant, the slot's identity:

- a wall time that does not exist (spring-forward gap) maps to the instant just after the gap,
  so ``30 2 * * *`` runs at 03:30 that day, once;
- a wall time that happens twice (fall-back) maps to its first occurrence, and the repeat maps to
  the same instant, so it runs once;
- slots are strictly increasing: a later wall time that maps to an instant already fired is skipped.

Missed slots (machine asleep, no pool running) are handled by ``catch_up``: ``"coalesce"`` (the
default) runs the latest missed slot once, ``"all"`` runs each (at most ``MAX_CATCH_UP`` per
tick, oldest first), ``"none"`` skips them and only fires slots reached on time.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .exceptions import ConfigurationError

__all__ = ["CATCH_UP", "MAX_CATCH_UP", "ON_TIME_GRACE", "Schedule", "due_and_next", "due_slots"]

CATCH_UP = ("coalesce", "all", "none")
#: With ``catch_up="all"``, slots fired per schedule per tick (the rest follow on the next ticks).
MAX_CATCH_UP = 1000
#: With ``catch_up="none"``, how late (seconds) a slot may still fire.
ON_TIME_GRACE = 5.0


@dataclass(frozen=True)
class Schedule:
    """When a periodic task fires: ``cron`` in zone ``tz``, or ``every`` seconds (epoch-aligned)."""

    name: str
    task_name: str
    cron: str | None = None
    every: float | None = None
    tz: str = "UTC"
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    catch_up: str = "coalesce"
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.cron is None) == (self.every is None):
            raise ConfigurationError(f"periodic {self.name!r}: pass exactly one of cron='...' or every=timedelta(...)")
        if self.catch_up not in CATCH_UP:
            raise ConfigurationError(
                f"periodic {self.name!r}: catch_up must be one of {CATCH_UP}, not {self.catch_up!r}"
            )
        try:
            ZoneInfo(self.tz)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ConfigurationError(f"periodic {self.name!r}: unknown time zone {self.tz!r} ({exc})") from None
        if self.cron is not None:
            from croniter import croniter

            # Five fields only: croniter would also take a sixth (seconds, last) that other cron
            # dialects put first, so a six-field line means different slots to different readers.
            fields = self.cron.split() if isinstance(self.cron, str) else []
            if len(fields) != 5 or not croniter.is_valid(self.cron):
                raise ConfigurationError(
                    f"periodic {self.name!r}: invalid cron expression {self.cron!r}; expected five fields "
                    "'minute hour day month weekday', e.g. '*/5 * * * *'"
                )
        elif self.every is not None and (not math.isfinite(self.every) or self.every <= 0):
            raise ConfigurationError(f"periodic {self.name!r}: every must be a positive duration, not {self.every!r}")

    def slots(self, after: float) -> Iterator[float]:
        """Slot instants (epoch seconds) strictly after ``after``, in increasing order, forever."""
        if self.every is not None:
            k = math.floor(after / self.every) + 1
            while True:
                yield k * self.every
                k += 1
        yield from self._cron_slots(after)

    def _cron_slots(self, after: float) -> Iterator[float]:
        zone = ZoneInfo(self.tz)
        local = datetime.fromtimestamp(after, zone)
        start = local.replace(tzinfo=None)
        if (local - timedelta(hours=1)).utcoffset() != local.utcoffset() or local.fold:
            # Just after a fall-back the same wall time was two instants: start an hour early in
            # wall time so the first occurrence is not skipped. Elsewhere (and always in UTC) start
            # where we are: each step of croniter costs, and a tick walks every due schedule.
            start -= timedelta(hours=1)
        assert self.cron is not None
        # Parsing the expression is most of croniter's cost: parse once, copy the parsed iterator.
        it = copy.copy(_parsed_cron(self.cron))
        it.set_current(start, force=True)
        last = after
        while True:
            wall: datetime = it.get_next(datetime)
            instant = wall.replace(tzinfo=zone).timestamp()  # fold=0: first occurrence; a gap maps past it
            if instant > last:
                last = instant
                yield instant

    def next_after(self, t: float) -> float:
        """The first slot strictly after ``t``."""
        return next(self.slots(t))

    def latest_at_or_before(self, now: float, after: float) -> float | None:
        """The latest slot in ``(after, now]``, or None; cheap even after a long sleep."""
        return self.around(now, after)[0]

    def around(self, now: float, after: float) -> tuple[float | None, float]:
        """``(latest slot in (after, now] or None, first slot after now)`` in one walk."""
        if self.every is not None:
            k = math.floor(now / self.every)
            slot = k * self.every
            return (slot if slot > after else None), (k + 1) * self.every
        # Step back in growing wall-time windows instead of walking forward over every missed slot;
        # the first (one minute, cron's resolution) usually holds it, so a tick costs a step or two.
        window = 60.0
        lo = max(after, now - window)
        while True:
            found = None
            for s in self.slots(lo):
                if s > now:
                    following = s
                    break
                found = s
            if found is not None or lo <= after:
                return found, following
            window *= 8
            lo = max(after, now - window)


@functools.lru_cache(maxsize=512)
def _parsed_cron(expr: str) -> Any:
    from croniter import croniter

    return croniter(expr, datetime(2000, 1, 1))


def due_slots(schedule: Schedule, last_slot: float, now: float) -> list[float]:
    """The slots to fire now, given the last slot fired (or the registration time)."""
    return due_and_next(schedule, last_slot, now)[0]


def due_and_next(schedule: Schedule, last_slot: float, now: float) -> tuple[list[float], float]:
    """:func:`due_slots`, and when to look again (the first slot not fired by this call)."""
    if schedule.catch_up == "all":
        out: list[float] = []
        for s in schedule.slots(last_slot):
            if s > now or len(out) >= MAX_CATCH_UP:
                return out, (now if len(out) >= MAX_CATCH_UP else s)
            out.append(s)
    latest, following = schedule.around(now, last_slot)
    if latest is None or (schedule.catch_up == "none" and now - latest > ON_TIME_GRACE):
        return [], following
    return [latest], following
