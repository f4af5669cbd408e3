"""When a child makes way for a fresh one: after ``max_tasks_per_child`` tasks, past
``max_memory_per_child`` bytes, or, under ``--reload``, once the app's source changed.

Recycling happens between tasks and, for the limits, one child at a time (the others are checked
again after their next task): a retiring child gets no new task, hands back the tasks queued in
its pipe (``REVOKE``, see :mod:`liteq.dispatch`), and is asked to exit (``STOP``) once its running
task is done; the pool starts its replacement when it sees the exit. A reload retires every child
that way. The source watcher (:mod:`liteq.reload`) runs in a thread of its own, so it only sets a
flag that the loop reads and pokes the loop.
"""

from __future__ import annotations

import logging
from typing import Any

from .children import Child
from .dispatch import Dispatch
from .events import EventWait
from .pool_protocol import KillReason, Kind, send

__all__ = ["Recycler"]

logger = logging.getLogger("liteq.pool")


class Recycler:
    """The recycling decisions of one pool (see the module doc)."""

    def __init__(
        self,
        children: list[Child],
        dispatch: Dispatch,
        *,
        max_tasks_per_child: int | None,
        max_memory_per_child: int | None,
    ) -> None:
        self.children = children  # the pool's list, changed in place as children come and go
        self.dispatch = dispatch
        self.max_tasks_per_child = max_tasks_per_child
        self.max_memory_per_child = max_memory_per_child
        self._reload_pending = False

    def finished(self, c: Child, rss: int) -> None:
        """Child ``c`` finished a task and uses ``rss`` bytes: retire it if it reached a limit."""
        if self.max_tasks_per_child and c.done >= self.max_tasks_per_child:
            self.retire(c, f"ran {c.done} tasks")
        elif self.max_memory_per_child and rss > self.max_memory_per_child:
            self.retire(c, f"uses {rss / 2**20:.0f} MiB")

    def retire(self, c: Child, why: str) -> None:
        """Retire ``c`` unless another child is retiring (one at a time)."""
        if c.retiring or any(o.retiring for o in self.children):
            return  # one child at a time; the others are checked again after their next task
        logger.info("recycling child %s: it %s", c.pid, why)
        c.retiring = True
        self.dispatch.requeue_unstarted(c)

    def step(self) -> None:
        """Once per loop iteration: retire every child after a source change, retire a child whose
        retirement was postponed, and ask retiring children with no task left to exit."""
        if self._reload_pending:
            self._reload_pending = False
            for c in self.children:
                c.retiring = True
                self.dispatch.requeue_unstarted(c)
        for c in self.children:
            if self.max_tasks_per_child and c.done >= self.max_tasks_per_child and not c.retiring:
                self.retire(c, f"ran {c.done} tasks")  # postponed while another child retired
            if c.retiring and not c.queue and not c.kill_reason:
                c.kill_reason = KillReason.RETIRE
                send(c.conn, Kind.STOP)

    def watch_sources(self, origin: str | None, events: EventWait) -> Any:
        """Start the ``--reload`` source watcher of module ``origin``; return it (stop it at teardown)."""
        from .reload import start_reloader

        def changed() -> None:
            self._reload_pending = True
            events.poke(b"r")

        return start_reloader(origin, changed)
