"""Which running child to kill, and when: hard time limits, the grace of a cancelled task, and
the liveness ping that finds a child that stopped answering.

Hard limits and cancels are measured on the supervisor's monotonic clock from the moment the
child started the task; SIGKILL works inside C code and on a stopped process alike.

Liveness. A child that is stopped (SIGSTOP, a debugger) or stuck in C code that holds the GIL
runs no Python at all, so it never finishes its task nor dies, and without a check the
supervisor would extend its task's lease forever. The child's pipe reader is a thread of its
own, separate from the task: it answers ``PING`` with ``PONG`` whatever the task does,
as long as the process runs Python. Answers are read only while the supervisor's loop runs, so a
gap in the loop itself (the supervisor stopped too, or blocked) restarts the count. The supervisor pings each busy child after a quarter of
``liveness_timeout`` of silence (any message counts as an answer), and a child silent for the
whole timeout is killed and its task handled as a hard timeout: retried while attempts remain,
else failed (see :func:`liteq.children.lost_outcome`). A child sleeping or waiting on I/O answers,
so only real stalls are caught; a task with a shorter hard limit is caught by that limit first.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterable
from typing import TYPE_CHECKING

from .children import Child
from .coroutine_feed import CoroutineFeed
from .deadlines import Deadlines
from .pool_protocol import KillReason, Kind, send
from .storage.records import ClaimedTask

if TYPE_CHECKING:
    from .runtime import Runtime

__all__ = ["CANCEL_GRACE", "Watchdog", "kill", "sigkill"]

logger = logging.getLogger("liteq.pool")

#: Seconds a cancelled running task gets to stop by itself before its child is killed.
CANCEL_GRACE = 3.0
#: Pings are sent after this fraction of the liveness timeout without a message from the child.
PING_FRACTION = 0.25


def sigkill(c: Child) -> None:
    """SIGKILL child ``c``'s process, if it still exists (a child that never started has no pid)."""
    try:
        os.kill(c.process.pid, signal.SIGKILL)
    except (ProcessLookupError, TypeError):
        pass


def kill(c: Child, reason: KillReason) -> None:
    """SIGKILL child ``c``, recording why; its tasks are handled when its exit is seen."""
    # Its queued tasks come back when the child is buried; killed, it cannot start them.
    c.kill_reason = reason
    sigkill(c)


class Watchdog:
    """The kill decisions of one pool (see the module doc)."""

    def __init__(self, runtime: Runtime, liveness_timeout: float, feed: CoroutineFeed | None = None) -> None:
        self.runtime = runtime
        self.feed = feed if feed is not None else CoroutineFeed(runtime.registry)
        self.liveness_timeout = liveness_timeout
        self.ping_interval = liveness_timeout * PING_FRACTION
        self._checked = 0.0  # monotonic time of the last verdicts
        self._armed: set[int] = set()  # children whose timer is set in the deadline heap

    def time_limit(self, task: ClaimedTask) -> float | None:
        """The hard limit of ``task`` in seconds, or None."""
        if task.timeout is not None:  # stored with the task: holds without the app (liteq worker STORE)
            return task.timeout
        t = self.runtime.registry.tasks.get(task.name)
        return t.options.timeout if t is not None else None

    @staticmethod
    def _busy(children: Iterable[Child]) -> list[Child]:
        return [c for c in children if c.head is not None and not c.kill_reason]

    def verdicts(self, children: Iterable[Child], mono: float) -> list[tuple[Child, KillReason]]:
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
            coroutines = self.feed.is_async(head.name)
            culprit = self.feed.verdict(c, mono, self.time_limit, CANCEL_GRACE) if coroutines else KillReason.NONE
            if culprit:
                out.append((c, culprit))
            elif coroutines:
                pass  # their limits are enforced inside the child first (liteq.coroutine_feed)
            elif c.cancel_id and c.cancel_id == head.id and mono >= c.cancel_deadline:
                logger.warning(
                    "cancelled task %s did not stop within %ss: killing child %s", head.id, CANCEL_GRACE, c.pid
                )
                out.append((c, KillReason.CANCELLED))
            elif limit is not None and mono - c.started >= limit:
                logger.error("task %s %s ran past its %ss timeout: killing child %s", head.name, head.id, limit, c.pid)
                out.append((c, KillReason.TIMEOUT))
            if (not out or out[-1][0] is not c) and c.ready and mono - c.answered >= self.liveness_timeout:
                logger.error(
                    "child %s running task %s stopped answering for %ss: killing it",
                    c.pid,
                    head.id,
                    self.liveness_timeout,
                )
                out.append((c, KillReason.UNRESPONSIVE))
        return out

    def enforce(self, children: Iterable[Child], mono: float) -> None:
        """Kill the children that :meth:`verdicts` condemns and ping those :meth:`to_ping` names."""
        for c, reason in self.verdicts(children, mono):
            kill(c, reason)
        for c in self.to_ping(children, mono):
            send(c.conn, Kind.PING)  # a dead child: its sentinel says so

    def to_ping(self, children: Iterable[Child], mono: float) -> list[Child]:
        """Busy children silent for a ping interval and not pinged since; marks them pinged."""
        out = []
        for c in self._busy(children):
            if c.ready and mono - max(c.answered, c.pinged) >= self.ping_interval:
                c.pinged = mono
                out.append(c)
        return out

    def arm(self, deadlines: Deadlines, children: Iterable[Child]) -> None:
        """Set each child's timer (named ``("child", index)``) in the pool's deadline heap to when
        its next kill decision or ping may be due, or clear it when none can be."""
        armed = set()
        for c in self._busy(children):
            at = self._next_check(c)
            if at is not None:
                deadlines.schedule(("child", c.index), at)
                armed.add(c.index)
        for index in self._armed - armed:
            deadlines.cancel(("child", index))
        self._armed = armed

    def _next_check(self, c: Child) -> float | None:
        head = c.head
        assert head is not None
        out = []
        limit = self.time_limit(head)
        if self.feed.is_async(head.name):
            out += self.feed.deadlines(c, self.time_limit, CANCEL_GRACE)
        elif limit is not None:
            out.append(c.started + limit)
        if c.cancel_id:
            out.append(c.cancel_deadline)
        if c.ready:
            out += [max(c.answered, c.pinged) + self.ping_interval, c.answered + self.liveness_timeout]
        return min(out) if out else None
