"""How the supervisor feeds ``async def`` tasks to its children (the child side is
:mod:`liteq.asyncrun`).

A child runs up to its async room (``async_concurrency``, told in its ``READY``) coroutine tasks at
once, and a sync task alone. The supervisor keeps each child's tasks in send order, and the child
starts them in that order, so both agree on what runs without a message per start:

- a sync task at the head of the queue runs alone; what follows it waits;
- else the leading coroutine tasks all run (up to the room); a sync task after them waits until
  they end.

Feeding follows the same model: a child that holds only coroutine tasks takes more of them up to
its free room, so claims are sized by free coroutine room, not by child count; a sync task, or
any task behind one, is fed as before (``child_depth``).

Limits and cancels of a running coroutine are enforced inside the child (the coroutine is
cancelled with the exception raised inside it); the supervisor kills the child only when one is
:data:`~liteq.liveness.CANCEL_GRACE` overdue, and then the coroutines beside the culprit are
retried as lost (not counted as timed out or cancelled themselves).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from .asyncrun import is_async_task
from .pool_protocol import KillReason
from .storage.records import ClaimedTask

if TYPE_CHECKING:
    from .children import Child
    from .registry import Registry

__all__ = ["CoroutineFeed"]

logger = logging.getLogger("liteq.pool")


class CoroutineFeed:
    """Which tasks are coroutines, what a child runs now and how much more it takes (module doc)."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._names: dict[str, bool] = {}
        self._any: tuple[int, bool] = (-1, False)  # (tasks registered, any async among them)

    def is_async(self, name: str) -> bool:
        """True for an ``async def`` task (cached per name)."""
        known = self._names.get(name)
        if known is None:
            known = self._names[name] = is_async_task(self.registry, name)
        return known

    def any_async(self) -> bool:
        """True when the app registers an ``async def`` task (claims are then sized by coroutine room)."""
        tasks = self.registry.tasks
        if self._any[0] != len(tasks):  # tasks are only ever added (registered, or adopted by name)
            self._any = (len(tasks), any(getattr(t, "is_async", False) for t in tasks.values()))
        return self._any[1]

    def running(self, c: Child) -> list[ClaimedTask]:
        """The tasks child ``c`` runs now (see the module doc)."""
        out: list[ClaimedTask] = []
        for t in c.queue:
            if not self.is_async(t.name):
                if not out:
                    out.append(t)
                break
            if len(out) >= c.async_limit:
                break
            out.append(t)
        return out

    def syncs(self, c: Child) -> int:
        """Sync tasks in ``c``'s queue."""
        return sum(1 for t in c.queue if not self.is_async(t.name))

    @staticmethod
    def depth(c: Child, base: int, coroutine: bool, syncs: int) -> int:
        """How many tasks ``c`` may hold when the next one is a coroutine (``coroutine``) or not:
        its async room while it holds only coroutines, else ``base`` (``child_depth`` rules)."""
        if coroutine and base and not syncs:
            return max(base, c.async_limit)
        return base

    def finished(self, c: Child, task_id: str) -> bool:
        """Take ``task_id`` out of ``c``'s queue when a coroutine task ends out of order; False if
        ``c`` did not hold it as one."""
        for i, t in enumerate(c.queue):
            if t.id == task_id and self.is_async(t.name):
                del c.queue[i]
                return True
        return False

    def verdict(
        self, c: Child, mono: float, time_limit: Callable[[ClaimedTask], float | None], grace: float
    ) -> KillReason:
        """Why to kill ``c`` for one of its running coroutines (``NONE``: no reason): a hard limit
        or a cancel ``grace`` seconds overdue, after the child cancelled it inside. Marks the
        culprit on the child."""
        for t in self.running(c):
            if not self.is_async(t.name):
                return KillReason.NONE
            started = c.since.setdefault(t.id, mono)
            limit = time_limit(t)
            if t.id in c.cancels and mono >= c.cancels[t.id]:
                logger.warning("cancelled task %s did not stop within %ss: killing child %s", t.id, grace, c.pid)
                c.kill_task = t.id
                return KillReason.CANCELLED
            if limit is not None and mono - started >= limit + grace:
                logger.error(
                    "task %s %s ran past its %ss timeout and did not stop when cancelled: killing child %s",
                    t.name, t.id, limit, c.pid,
                )  # fmt: skip
                c.kill_task = t.id
                return KillReason.TIMEOUT
        return KillReason.NONE

    def deadlines(self, c: Child, time_limit: Callable[[ClaimedTask], float | None], grace: float) -> list[float]:
        """When a verdict on ``c``'s coroutines may next be due (monotonic)."""
        out = list(c.cancels.values())
        for t in self.running(c):
            limit = time_limit(t)
            if limit is not None and t.id in c.since:
                out.append(c.since[t.id] + limit + grace)
        return out
