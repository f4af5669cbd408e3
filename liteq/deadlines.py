"""One loop's timers as a deadline heap: named timers at monotonic instants, the nearest on top.

A supervisor loop waits on pipes and sockets with a timeout; the timeout is the time left until
the nearest timer (:meth:`Deadlines.next_timeout`), and after the wait the loop runs what is due
(:meth:`Deadlines.due`). Each owner of a timer keeps it current itself: a periodic job reschedules
itself when it runs, a state-derived deadline (a child's hard limit, the next claim) is set by the
code that decides it. So the wait never has to mirror what the jobs decide.

Design. A timer is a name (any hashable: a string, or a tuple such as ``("child", 3)``) with one
instant; scheduling a name again moves it. The heap (:mod:`heapq`) holds ``(at, generation,
name)`` entries and a dict maps each live name to the generation of its current entry; moving or
cancelling a timer only changes the dict, and the entry left behind is dropped when it comes to
the top (lazy deletion). Generations rise monotonically, so equal instants keep their scheduling
order and an old entry is never taken for the current one. When stale entries outnumber the live
ones the heap is rebuilt, so a loop that moves a timer on every iteration keeps a small heap.
Not thread-safe: one loop owns it (other threads poke the loop, which then schedules).
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Hashable, Iterator

__all__ = ["AT_ONCE", "Deadlines"]

#: The instant of a timer that is due at once, whatever the clock says.
AT_ONCE = -math.inf

#: The heap is rebuilt when it holds more than this many entries per live timer (and a few).
_SLACK = 2
_MIN_REBUILD = 16


class Deadlines:
    """Named timers at monotonic instants; the nearest one is the top (see the module doc)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Hashable]] = []
        self._live: dict[Hashable, tuple[float, int]] = {}  # name -> (instant, generation)
        self._generation = itertools.count()

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, name: object) -> bool:
        return name in self._live

    def __iter__(self) -> Iterator[Hashable]:
        return iter(list(self._live))

    def __repr__(self) -> str:
        timers = ", ".join(f"{name!r}@{at:.3f}" for name, (at, _) in sorted(self._live.items(), key=lambda i: i[1]))
        return f"<Deadlines {timers}>"

    def schedule(self, name: Hashable, at: float | None) -> None:
        """Set timer ``name`` to fire at ``at`` (monotonic seconds), moving it if it is set;
        ``None`` cancels it."""
        if at is None:
            self._live.pop(name, None)
            return
        current = self._live.get(name)
        if current is not None and current[0] == at:
            return  # unchanged: no new entry (a loop re-arms the same instant on every iteration)
        generation = next(self._generation)
        self._live[name] = (at, generation)
        heapq.heappush(self._heap, (at, generation, name))
        if len(self._heap) > _SLACK * len(self._live) + _MIN_REBUILD:
            self._rebuild()

    def cancel(self, name: Hashable) -> float | None:
        """Remove timer ``name``; return the instant it was set to, or None if it was not set."""
        current = self._live.pop(name, None)
        return None if current is None else current[0]

    def at(self, name: Hashable) -> float | None:
        """The instant timer ``name`` fires at, or None if it is not set."""
        current = self._live.get(name)
        return None if current is None else current[0]

    def is_due(self, name: Hashable, now: float) -> bool:
        """True when timer ``name`` is set and its instant is ``now`` or earlier."""
        current = self._live.get(name)
        return current is not None and current[0] <= now

    def next_at(self) -> float | None:
        """The instant of the nearest timer, or None when none is set."""
        heap = self._heap
        while heap:
            at, generation, name = heap[0]
            if self._live.get(name) == (at, generation):
                return at
            heapq.heappop(heap)  # moved or cancelled since it was pushed
        return None

    def next_timeout(self, now: float, idle: float = math.inf) -> float:
        """Seconds from ``now`` until the nearest timer (0 when one is due), for a wait; ``idle``
        when no timer is set."""
        at = self.next_at()
        if at is None:
            return idle
        return max(at - now, 0.0)

    def due(self, now: float) -> list[Hashable]:
        """Remove and return the timers due at ``now``, earliest first (ties in scheduling order).
        Their owners reschedule them as they run them."""
        out: list[Hashable] = []
        while True:
            at = self.next_at()
            if at is None or at > now:
                return out
            _, _, name = heapq.heappop(self._heap)
            del self._live[name]
            out.append(name)

    def clear(self) -> None:
        """Cancel every timer."""
        self._heap.clear()
        self._live.clear()

    def _rebuild(self) -> None:
        self._heap = [(at, generation, name) for name, (at, generation) in self._live.items()]
        heapq.heapify(self._heap)
