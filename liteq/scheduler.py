"""The ``Scheduler`` every pool runs: fires periodic tasks (schedule maths in :mod:`liteq.schedule`).

Exactly once per slot, however many pools run: each firing is an enqueue whose transaction also
inserts the unique row ``(schedule, slot time)``; a second pool firing the same slot inserts
nothing. No ``beat`` process to keep single, nothing to configure per worker.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any

from .health import Health
from .message import new_id
from .result import Result
from .runtime import HasRuntime, Runtime, runtime_of
from .schedule import CATCH_UP, MAX_CATCH_UP, ON_TIME_GRACE, Schedule, due_and_next, due_slots

__all__ = ["CATCH_UP", "MAX_CATCH_UP", "ON_TIME_GRACE", "Schedule", "Scheduler", "due_slots", "schedule_info"]

logger = logging.getLogger("liteq.scheduler")


class Scheduler:
    """Fires an app's periodic tasks. ``tick(now)`` is one iteration; ``next_due()`` says when
    the next one is needed. Every pool drives one; ``liteq scheduler`` runs one alone."""

    def __init__(self, app: Runtime | HasRuntime) -> None:
        self.runtime = runtime_of(app)
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
        return self.runtime.registry.schedules

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
        if not self.schedules:
            return []
        now = time.time() if now is None else now
        storage = self.runtime.storage
        if not self._registered:
            storage.register_schedules(list(self.schedules), now=now)
            self._registered = True
        due = [name for name in self.schedules if self._next.get(name, -math.inf) <= now]
        if not due:
            return []
        states = storage.schedule_states(due)
        messages = []
        advanced: dict[str, float] = {}
        # Schedules that share an expression share their next slot: one croniter walk for each.
        following_of: dict[tuple[str | None, float | None, str, float], float] = {}
        for name in due:
            schedule = self.schedules[name]
            state = states.get(name)
            last = state.last_slot if state is not None and state.last_slot is not None else now
            if state is not None and state.paused:
                advanced[name] = schedule.next_after(now)
                continue
            task = self.runtime.registry.get(schedule.task_name)
            known = self._next.get(name)
            if last > now:
                # A slot fires only once due, so a last slot ahead of this clock was fired by a
                # scheduler whose clock runs ahead (another host's, or this one's before it
                # stepped back): it says nothing of the slots due here. Go on from the slot this
                # scheduler waited for; the slot rows still keep every slot to one firing.
                last = now if known is None else math.nextafter(known, -math.inf)
            if schedule.catch_up != "all" and known is not None and last < known <= now:
                # The usual tick: the slot it woke up for is known; only the next one is computed.
                timing = (schedule.cron, schedule.every, schedule.tz, known)
                following = following_of.get(timing)
                if following is None:
                    following = following_of[timing] = schedule.next_after(known)
                if following > now and (schedule.catch_up == "coalesce" or now - known <= ON_TIME_GRACE):
                    slots = [known]
                else:
                    slots, following = due_and_next(schedule, last, now)
            else:
                slots, following = due_and_next(schedule, last, now)
            for slot in slots:
                message = self.runtime.producer.build(
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
        fresh = [Result(self.runtime, i) for i, m in zip(ids, messages, strict=True) if i == m.id]
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


def schedule_info(runtime: Runtime, now: float | None = None) -> list[dict[str, Any]]:
    """Each schedule of ``runtime`` with its task, timing, pause state, last and next fire times (epoch)."""
    now = time.time() if now is None else now
    schedules = runtime.registry.schedules
    states = runtime.storage.schedule_states(list(schedules))
    out = []
    for name, s in sorted(schedules.items()):
        st = states.get(name)
        out.append(
            {
                "name": name,
                "task": s.task_name,
                "cron": s.cron,
                "every": s.every,
                "tz": s.tz,
                "catch_up": s.catch_up,
                "paused": bool(st and st.paused),
                "last_slot": st.last_slot if st else None,
                "last_fired_at": st.last_fired_at if st else None,
                "last_task_id": st.last_task_id if st else None,
                "next_slot": s.next_after(now),
            }
        )
    return out
