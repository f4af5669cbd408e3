"""Periodic schedules in the memory store: registered names, pause state and the last fired slot."""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence

from ..records import ScheduleState
from .state import MemoryState

__all__ = ["register_schedules", "schedule_states", "set_schedule_paused"]


def register_schedules(s: MemoryState, names: Sequence[str], *, now: float | None = None) -> None:
    """Record new schedules; see :meth:`Storage.register_schedules`."""
    now = time.time() if now is None else now
    with s.lock:
        for name in names:
            s.schedules.setdefault(name, ScheduleState(name, False, now))


def schedule_states(s: MemoryState, names: Sequence[str] | None = None) -> dict[str, ScheduleState]:
    """Schedule states; see :meth:`Storage.schedule_states`."""
    with s.lock:
        wanted = s.schedules if names is None else {n: s.schedules[n] for n in names if n in s.schedules}
        return {n: copy.copy(st) for n, st in wanted.items()}


def set_schedule_paused(s: MemoryState, name: str, paused: bool, *, now: float | None = None) -> bool:
    """Pause or resume; see :meth:`Storage.set_schedule_paused`."""
    now = time.time() if now is None else now
    with s.lock:
        st = s.schedules.get(name)
        if st is None:
            return False
        if st.paused and not paused:
            st.last_slot = max(st.last_slot or now, now)
        st.paused = paused
        return True
