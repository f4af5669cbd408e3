"""Which running child to kill, and when: hard time limits, the grace of a cancelled task, and
the liveness ping that finds a child that stopped answering.

Hard limits and cancels are measured on the supervisor's monotonic clock from the moment the
child started the task; SIGKILL works inside C code and on a stopped process alike.

Liveness. A child that is stopped (SIGSTOP, a debugger) or stuck in C code that holds the GIL
runs no Python at all, so it never finishes its task nor dies, and without a check the
supervisor would extend its task's lease forever. The child's pipe reader is a thread of its
own, separate from the task: it answers ``("ping",)`` with ``("pong",)`` whatever the task does,
as long as the process runs Python. Answers are read only while the supervisor's loop runs, so a
gap in the loop itself (the supervisor stopped too, or blocked) restarts the count. The supervisor pings each busy child after a quarter of
``liveness_timeout`` of silence (any message counts as an answer), and a child silent for the
whole timeout is killed and its task handled as a hard timeout: retried while attempts remain,
else failed (see :func:`liteq.slots.lost_outcome`). A child sleeping or waiting on I/O answers,
so only real stalls are caught; a task with a shorter hard limit is caught by that limit first.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from .slots import ChildSlot
from .storage.base import ClaimedTask

if TYPE_CHECKING:
    from .app import LiteQ

__all__ = ["CANCEL_GRACE", "Watchdog"]

logger = logging.getLogger("liteq.pool")

#: Seconds a cancelled running task gets to stop by itself before its child is killed.
CANCEL_GRACE = 3.0
#: Pings are sent after this fraction of the liveness timeout without a message from the child.
PING_FRACTION = 0.25


class Watchdog:
    """The kill decisions of one pool (see the module doc)."""

    def __init__(
        self, app: LiteQ, liveness_timeout: float, is_async: Callable[[str], bool] = lambda name: False
    ) -> None:
        self.app = app
        self.is_async = is_async
        self.liveness_timeout = liveness_timeout
        self.ping_interval = liveness_timeout * PING_FRACTION
        self._checked = 0.0  # monotonic time of the last verdicts

    def time_limit(self, task: ClaimedTask) -> float | None:
        """The hard limit of ``task`` in seconds, or None."""
        if task.timeout is not None:  # stored with the task: holds without the app (liteq worker STORE)
            return task.timeout
        t = self.app.tasks.get(task.name)
        return t.options.timeout if t is not None else None

    @staticmethod
    def _busy(children: Iterable[ChildSlot]) -> list[ChildSlot]:
        return [c for c in children if c.head is not None and not c.kill_reason]

    def verdicts(self, children: Iterable[ChildSlot], mono: float) -> list[tuple[ChildSlot, str]]:
        """Children to kill now, each with the reason (``cancelled``, ``timeout``, ``unresponsive``)."""
        if mono - self._checked > 2 * self.ping_interval:
            # The supervisor itself did not run for a while (stopped with its children, starved,
            # blocked on the store): answers were not read meanwhile. Silence counts from now.
            for c in self._busy(children):
                c.answered = max(c.answered, mono)
        self._checked = mono
        out = []
        for c in self._busy(children):
            head = c.head
            assert head is not None
            limit = self.time_limit(head)
            culprit = self._coroutine_verdict(c, mono)
            if culprit is not None:
                out.append(culprit)
            elif self.is_async(head.name):
                pass  # coroutines: their limits are above; liveness below
            elif c.cancel_id and c.cancel_id == head.id and mono >= c.cancel_deadline:
                logger.warning(
                    "cancelled task %s did not stop within %ss: killing child %s", head.id, CANCEL_GRACE, c.pid
                )
                out.append((c, "cancelled"))
            elif limit is not None and mono - c.started >= limit:
                logger.error("task %s %s ran past its %ss timeout: killing child %s", head.name, head.id, limit, c.pid)
                out.append((c, "timeout"))
            if (not out or out[-1][0] is not c) and c.ready and mono - c.answered >= self.liveness_timeout:
                logger.error(
                    "child %s running task %s stopped answering for %ss: killing it",
                    c.pid,
                    head.id,
                    self.liveness_timeout,
                )
                out.append((c, "unresponsive"))
        return out

    def _coroutine_verdict(self, c: ChildSlot, mono: float) -> tuple[ChildSlot, str] | None:
        """A running coroutine task whose hard limit, or cancel, is CANCEL_GRACE overdue: the child
        cancelled it inside at the limit, and it did not end. Marks the culprit on the slot."""
        for t in c.running(self.is_async):
            if not self.is_async(t.name):
                return None
            started = c.since.setdefault(t.id, mono)
            limit = self.time_limit(t)
            if t.id in c.cancels and mono >= c.cancels[t.id]:
                logger.warning("cancelled task %s did not stop within %ss: killing child %s", t.id, CANCEL_GRACE, c.pid)
                c.kill_task = t.id
                return c, "cancelled"
            if limit is not None and mono - started >= limit + CANCEL_GRACE:
                logger.error(
                    "task %s %s ran past its %ss timeout and did not stop when cancelled: killing child %s",
                    t.name, t.id, limit, c.pid,
                )  # fmt: skip
                c.kill_task = t.id
                return c, "timeout"
        return None

    def to_ping(self, children: Iterable[ChildSlot], mono: float) -> list[ChildSlot]:
        """Busy children silent for a ping interval and not pinged since; marks them pinged."""
        out = []
        for c in self._busy(children):
            if c.ready and mono - max(c.answered, c.pinged) >= self.ping_interval:
                c.pinged = mono
                out.append(c)
        return out

    def deadlines(self, children: Iterable[ChildSlot]) -> list[float]:
        """When the next kill decision or ping may be due (monotonic)."""
        out = []
        for c in self._busy(children):
            head = c.head
            assert head is not None
            limit = self.time_limit(head)
            if self.is_async(head.name):
                for t in c.running(self.is_async):
                    t_limit = self.time_limit(t)
                    if t_limit is not None and t.id in c.since:
                        out.append(c.since[t.id] + t_limit + CANCEL_GRACE)
                out += list(c.cancels.values())
            elif limit is not None:
                out.append(c.started + limit)
            if c.cancel_id:
                out.append(c.cancel_deadline)
            if c.ready:
                out += [max(c.answered, c.pinged) + self.ping_interval, c.answered + self.liveness_timeout]
        return out
