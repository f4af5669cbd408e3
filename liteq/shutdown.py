"""How a pool stops: stop and drain requests, the steps of a stop in progress, and the last writes
and teardown once the children are gone.

A stop has levels (:class:`~liteq.pool_protocol.StopLevel`). ``GRACEFUL``: unstarted tasks go back
to the store at once (uncounted) so another pool can take them, idle children are asked to exit,
and running tasks get up to ``shutdown_timeout`` seconds to finish; past that, or at ``NOW`` (a
second request, ``stop(now=True)``), children still running a task are killed and those tasks run
again elsewhere once their lease runs out. A drain (``liteq control drain``) claims nothing more
and becomes a graceful stop once no task is in hand.

Requests come from any thread or a signal handler: they only set the level and poke the loop. The
loop's thread does the rest: :meth:`Shutdown.step` on each iteration of a stop in progress (the
end of the grace is a timer in the pool's deadline heap), :meth:`Shutdown.finish` once it is over.
"""

from __future__ import annotations

import logging
import signal
from types import FrameType
from typing import Any

from .checkpoints import Checkpointer
from .children import Child, ChildLogs
from .deadlines import Deadlines
from .dispatch import Dispatch
from .events import EventWait
from .exceptions import LiteQError
from .liveness import kill, sigkill
from .pool_protocol import KillReason, Kind, StopLevel, send
from .storage.contract import Storage
from .upkeep import Upkeep

__all__ = ["STOP", "Shutdown"]

logger = logging.getLogger("liteq.pool")

#: The end of a graceful stop's grace, as a timer in the pool's deadline heap.
STOP = "stop deadline"


class Shutdown:
    """The stop side of one pool (see the module doc). ``level`` and ``draining`` are what the
    requests set; the pool's loop reads them."""

    def __init__(
        self,
        worker_id: str,
        *,
        children: list[Child],
        dispatch: Dispatch,
        upkeep: Upkeep,
        deadlines: Deadlines,
        events: EventWait,
        storage: Storage,
        checkpoints: Checkpointer,
        logs: ChildLogs,
        timeout: float,
    ) -> None:
        self.id = worker_id
        self.children = children  # the pool's list, changed in place as children come and go
        self.dispatch = dispatch
        self.upkeep = upkeep
        self.deadlines = deadlines
        self.events = events
        self.storage = storage
        self.checkpoints = checkpoints
        self.logs = logs
        self.timeout = timeout
        self.level = StopLevel.RUNNING
        self.draining = False  # an operator's drain: claim nothing more, stop once idle
        #: The source watcher of ``--reload`` (stopped at teardown), if one runs.
        self.observer: Any = None
        #: How the children start (:class:`~liteq.children.ChildStarter`): its zygote, if one runs,
        #: is closed at teardown.
        self.starter: Any = None
        self._deadline = 0.0
        self._closed = False

    # -- requests (any thread, signal handlers) ------------------------------------------------------

    def request(self, *, now: bool = False) -> None:
        """Stop gracefully, or ``now``; a second request escalates to ``now``."""
        level = StopLevel.NOW if now or self.level >= StopLevel.GRACEFUL else StopLevel.GRACEFUL
        self.level = max(self.level, level)
        self.upkeep.stopping = True
        self.events.poke(b"s")

    def drain(self) -> None:
        """Claim nothing more; stop once every task in hand has finished."""
        self.draining = True
        self.events.poke(b"s")

    def install_signal_handlers(self) -> None:
        """SIGINT/SIGTERM: the first stops gracefully, the second stops now (main thread only)."""

        def handler(signum: int, frame: FrameType | None) -> None:
            logger.warning(
                "received %s: %s",
                signal.Signals(signum).name,
                "stopping now" if self.level else "stopping gracefully",
            )
            self.request()

        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)

    # -- the loop's side ----------------------------------------------------------------------------

    def obey(self, commands: list[str]) -> None:
        """Act on the commands an operator sent through the store (``liteq control``, cluster
        stores only), and turn a drain with nothing left in hand into a stop."""
        for command in commands:
            logger.warning("worker %s received %r from the store", self.id, command)
            if command == "drain":
                self.drain()
            elif command == "stop":
                self.request()
        if self.draining and not self.level and not self.dispatch.buffer and not any(c.queue for c in self.children):
            self.request()

    def step(self, mono: float) -> bool:
        """One iteration of a stop in progress; False once every child is gone."""
        if not self._deadline:
            self._deadline = mono + self.timeout
            self.deadlines.schedule(STOP, self._deadline)
            logger.info("worker %s stopping: waiting up to %ss for running tasks", self.id, self.timeout)
        # Unstarted tasks go back at once, uncounted, so another pool can take them.
        for c in self.children:
            self.dispatch.requeue_unstarted(c)
        if self.dispatch.buffer and self.upkeep.release(list(self.dispatch.buffer)):
            self.dispatch.buffer.clear()
        force = self.level >= StopLevel.NOW or mono >= self._deadline
        if force:
            self.deadlines.cancel(STOP)  # the kills are sent; the children's exits wake the loop
        for c in list(self.children):
            if c.head is None and not c.kill_reason:
                c.kill_reason = KillReason.STOP
                send(c.conn, Kind.STOP)
            elif c.head is not None and force and c.kill_reason in (KillReason.NONE, KillReason.RETIRE):
                logger.warning("stopping now: killing child %s running task %s", c.pid, c.head.id)
                kill(c, KillReason.STOP)
        return bool(self.children)

    def finish(self) -> None:
        """The stop is over (or the loop ended on an error): record the last outcomes, hand back
        what is held, kill what is left and release every resource."""
        try:
            level = self.level
            # Ride out store errors for up to the timeout more, or until a second stop request.
            if self.upkeep.final_writes(self.timeout, gave_up=lambda: self.level > level):
                self.dispatch.buffer.clear()
        finally:
            self.kill_all()
            self.teardown()

    def kill_all(self) -> None:
        """SIGKILL every child left and forget it."""
        for c in self.children:
            if c.process.is_alive():
                sigkill(c)
            c.process.join(5)
            self.events.unwatch(c)
            c.conn.close()
        self.children.clear()

    def teardown(self) -> None:
        """Stop the reloader, unregister the worker, stop the checkpoints, the wait and the log
        listener. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self.observer is not None:
            self.observer.stop()
            self.observer.join()
        try:
            self.storage.unregister_worker(self.id)
        except LiteQError:
            logger.exception("could not unregister worker %s", self.id)
        self.checkpoints.stop()
        self.events.close()
        if self.starter is not None:
            self.starter.close()
        self.logs.stop()
        logger.info("worker %s stopped after %d task(s)", self.id, self.upkeep.tasks_done)
