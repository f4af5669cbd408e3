"""Periodic tasks: schedule maths (pure, tested with tables) and the ``Scheduler`` every pool runs.

Exactly once per slot, however many pools run: each firing is an enqueue whose transaction also
inserts the unique row ``(schedule, slot time)``; a second pool firing the same slot inserts
nothing. No ``beat`` process to keep single, nothing to configure per worker.

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
import logging
import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .exceptions import ConfigurationError
from .health import Health
from .message import new_id

if TYPE_CHECKING:
    from .app import LiteQ
    from .result import Result

__all__ = ["CATCH_UP", "MAX_CATCH_UP", "Schedule", "Scheduler", "due_slots"]

logger = logging.getLogger("liteq.scheduler")

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
    return _due_and_next(schedule, last_slot, now)[0]


def _due_and_next(schedule: Schedule, last_slot: float, now: float) -> tuple[list[float], float]:
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


class Scheduler:
    """Fires an app's periodic tasks. ``tick(now)`` is one iteration; ``next_due()`` says when
    the next one is needed. Every pool drives one; ``liteq scheduler`` runs one alone."""

    def __init__(self, app: LiteQ) -> None:
        self.app = app
        self._next: dict[str, float] = {}
        self._registered = False
        self._hold_until = -math.inf
        #: ``ok``, or ``degraded`` while :meth:`run` rides out store errors.
        self.health = Health("scheduler", logger)

    def postpone(self, until: float) -> None:
        """Tick no earlier than ``until`` (epoch seconds), e.g. after a failed tick, without
        touching any schedule's next slot: the slots due now are still due then, and fire once."""
        self._hold_until = until

    @property
    def schedules(self) -> dict[str, Schedule]:
        """The app's schedules by name."""
        return self.app.schedules

    def next_due(self) -> float | None:
        """Epoch time of the next slot of any schedule (None without schedules)."""
        if not self.schedules:
            return None
        # A schedule without a next time yet (never ticked, or its tick failed) is due now.
        due = min(self._next.get(name, -math.inf) for name in self.schedules) if self._registered else -math.inf
        return max(due, self._hold_until, time.time() if due == -math.inf else -math.inf)

    def tick(self, now: float | None = None) -> list[Result]:
        """Enqueue every due slot (each at most once across all pools); return the new Results.

        A schedule's next time advances only once the enqueue committed: when the store raises,
        nothing changes here, and the next tick fires the same slots (once, by their slot rows).
        """
        from .result import Result

        if not self.schedules:
            return []
        now = time.time() if now is None else now
        storage = self.app.storage
        if not self._registered:
            storage.register_schedules(list(self.schedules), now=now)
            self._registered = True
        due = [name for name in self.schedules if self._next.get(name, -math.inf) <= now]
        if not due:
            return []
        states = storage.schedule_states(due)
        messages = []
        advanced: dict[str, float] = {}
        for name in due:
            schedule = self.schedules[name]
            state = states.get(name)
            last = state.last_slot if state is not None and state.last_slot is not None else now
            if state is not None and state.paused:
                advanced[name] = schedule.next_after(now)
                continue
            task = self.app.get_task(schedule.task_name)
            known = self._next.get(name)
            if schedule.catch_up != "all" and known is not None and last < known <= now:
                # The usual tick: the slot it woke up for is known; only the next one is computed.
                following = schedule.next_after(known)
                if following > now and (schedule.catch_up == "coalesce" or now - known <= ON_TIME_GRACE):
                    slots = [known]
                else:
                    slots, following = _due_and_next(schedule, last, now)
            else:
                slots, following = _due_and_next(schedule, last, now)
            for slot in slots:
                message = self.app._message(
                    task, schedule.args, schedule.kwargs, now=now, task_id=new_id(), **schedule.options
                )
                message.slot = (name, slot)
                messages.append(message)
            # A capped catch-up continues on the very next tick (following == now).
            advanced[name] = following
        if messages:
            ids = storage.enqueue(messages, now=now)
        self._next.update(advanced)
        self._hold_until = -math.inf
        if not messages:
            return []
        fresh = [Result(self.app, i) for i, m in zip(ids, messages, strict=True) if i == m.id]
        if fresh:
            logger.info("fired %d periodic slot(s)", len(fresh))
        return fresh

    def run(self, stop: threading.Event, *, idle: float = 1.0) -> None:
        """Tick until ``stop`` is set (``liteq scheduler``): sleep until the next slot, at most ``idle``
        seconds so pause/resume from other processes is noticed.

        A store error that retrying may cure (busy, full, unreachable) makes it degraded, not
        dead: it logs once, retries with capped, jittered backoff, and fires the missed slot once
        when the store is back. Other errors (a corrupt store) end it."""
        health = self.health
        while not stop.is_set():
            with health.guard("periodic tick") as guard:
                self.tick()
            if guard.failed:
                self.postpone(time.time() + max(health.retry_at - time.monotonic(), 0.0))
            else:
                health.recovered()
            due = self.next_due()
            wait = idle if due is None else min(max(due - time.time(), 0.0), idle)
            stop.wait(wait)
