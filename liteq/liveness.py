"""The supervisor's liveness ping: finding a child that stopped answering.

A child that is stopped (SIGSTOP, a debugger) or stuck in C code that holds the GIL runs no
Python at all, so it never finishes its task nor dies, and without a check the supervisor would
extend its task's lease forever. The child's pipe reader is a thread of its own, separate from the
task: it answers ``("ping",)`` with ``("pong",)`` whatever the task does, as long as the process
runs Python. The supervisor pings each busy child every ``timeout / 4`` seconds of silence (any
message counts as an answer), and a child silent for ``timeout`` seconds is killed and its task
handled as a hard timeout: retried while attempts remain, else failed (see
:func:`liteq.slots.lost_outcome`). A child sleeping or waiting on I/O answers, so only real stalls
are caught; a task with a hard limit shorter than ``timeout`` is caught by that limit first.
"""

from __future__ import annotations

from collections.abc import Iterable

from .slots import ChildSlot

__all__ = ["Liveness"]

#: Pings are sent after this fraction of the timeout without a message from the child.
PING_FRACTION = 0.25


class Liveness:
    """Which busy children to ping now, and which stopped answering (see the module doc)."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.interval = timeout * PING_FRACTION

    @staticmethod
    def _busy(children: Iterable[ChildSlot]) -> list[ChildSlot]:
        return [c for c in children if c.head is not None and c.ready and not c.kill_reason]

    def to_ping(self, children: Iterable[ChildSlot], mono: float) -> list[ChildSlot]:
        """Busy children silent for a ping interval and not pinged since; marks them pinged."""
        out = []
        for c in self._busy(children):
            if mono - max(c.answered, c.pinged) >= self.interval:
                c.pinged = mono
                out.append(c)
        return out

    def silent(self, children: Iterable[ChildSlot], mono: float) -> list[ChildSlot]:
        """Busy children that answered nothing for ``timeout`` seconds."""
        return [c for c in self._busy(children) if mono - c.answered >= self.timeout]

    def deadlines(self, children: Iterable[ChildSlot]) -> list[float]:
        """When the next ping or the next verdict is due (monotonic)."""
        out = []
        for c in self._busy(children):
            out += [max(c.answered, c.pinged) + self.interval, c.answered + self.timeout]
        return out
