"""What the supervisor does with what its children report: ready, progress, outcomes, and the
tasks they hand back.

Messages arrive on each child's pipe (:mod:`liteq.pool_protocol`); :class:`ChildReports` reads
every message waiting and acts on it: an outcome pops the child's running task (or one of its
coroutines, which end in any order), goes to the upkeep to be written, and may retire the child
(:mod:`liteq.recycling`); progress waits for the next flush; tasks handed back on ``REVOKE`` return
to the dispatch's buffer. Any message proves the child runs (:mod:`liteq.liveness`).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from .children import Child, readable
from .coroutine_feed import CoroutineFeed
from .dispatch import Dispatch
from .message import ErrorInfo
from .pool_protocol import Kind, outcome_from
from .recycling import Recycler
from .storage.records import Outcome
from .storage.states import CANCELLED
from .upkeep import Upkeep

__all__ = ["ChildReports"]

logger = logging.getLogger("liteq.pool")


class ChildReports:
    """The reading side of one pool's pipes (see the module doc)."""

    def __init__(self, feed: CoroutineFeed, upkeep: Upkeep, dispatch: Dispatch, recycler: Recycler) -> None:
        self.feed = feed
        self.upkeep = upkeep
        self.dispatch = dispatch
        self.recycler = recycler

    def receive(self, c: Child, ready: bool = False) -> None:
        """Handle the messages waiting from ``c``; ``ready`` when the wait just said its pipe is
        readable (else it is checked first: a dead child's pipe may be held open by a process it
        started, and a read would block)."""
        try:
            # Connection.poll() builds a selector per call; a zero-timeout select() on the one fd
            # tells the same for a fraction of the cost. Woken by the wait, the pipe is looked at
            # again only for the rest of a message cut at the read size: anything newer wakes the
            # next wait. A dead child's pipe is read to its end.
            first = ready
            while first or readable(c.conn):
                first = False
                messages = c.frames.read()
                if messages:
                    c.answered = time.monotonic()  # any message proves the child runs (liveness)
                for message in messages:
                    if message[0] == Kind.DONE:
                        self.done(c, outcome_from(message[1]), message[2])
                    else:
                        self.handle(c, message)
                if ready and not c.frames.buf:
                    return
        except (EOFError, OSError):
            pass

    def handle(self, c: Child, message: tuple[Any, ...]) -> None:
        """Act on one message from ``c`` (see :class:`~liteq.pool_protocol.Kind`)."""
        kind = message[0]
        if kind == Kind.DONE:
            self.done(c, outcome_from(message[1]), message[2])
        elif kind == Kind.PROGRESS:
            self.upkeep.progress[message[1]] = (message[2], message[3])
        elif kind == Kind.RETURNED:
            self.dispatch.returned(c, message[1])
        elif kind == Kind.READY:
            c.ready = True
            c.pid = message[1]
            c.async_limit = message[2]

    def done(self, c: Child, outcome: Outcome, rss: int) -> None:
        """``c`` finished a task with ``outcome`` and uses ``rss`` bytes: record it, move its queue on."""
        head = c.head
        if head is not None and head.id == outcome.id:
            c.queue.popleft()
        elif not self.feed.finished(c, outcome.id):  # coroutine tasks end in any order
            logger.error("child %s reported task %s it was not running", c.pid, outcome.id)
            return
        if c.since:
            c.since.pop(outcome.id, None)
        if c.cancels:
            c.cancels.pop(outcome.id, None)
        if c.cancel_id == outcome.id:
            # It stopped within the grace after being asked to: record the cancel, whatever it raised.
            c.cancel_id = ""
            info = ErrorInfo("liteq.exceptions.TaskCancelled", "cancelled while running; the task stopped")
            outcome = Outcome(outcome.id, outcome.lease_token, CANCELLED, error=info.encode(), reason="cancelled")
        mono = time.monotonic()
        c.last_run = mono - c.started
        c.started = mono  # the next queued task starts now
        c.done += 1
        self.upkeep.tasks_done += 1
        self.upkeep.outcomes.append(outcome)
        self.recycler.finished(c, rss)
