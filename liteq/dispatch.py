"""Which task runs where: the tasks a pool holds, how many it claims, and how they are handed
to its children.

A :class:`Dispatch` owns the buffer of claimed tasks no child holds yet and the claim policy:
at most ``prefetch`` tasks beyond what the children hold, in batches that grow while claims come
back full (a backlog) and shrink back when they do not. It hands tasks level by level (every idle
child gets one before any gets a second), all of one child's new tasks in one pipe message. A
child whose last task ran in a blink gets a deeper queue while a backlog lasts, so that a drain of
short tasks is not paid for in pipe round trips.

Tasks queued in a child's pipe are taken back only through the child (``REVOKE``): each comes back
or has started by the time the child answers, never both (see :mod:`liteq.pool_protocol`).
"""

from __future__ import annotations

import collections
import logging
import os
import signal
import time
from collections.abc import Callable
from typing import Any

from .children import Child
from .health import Health
from .liveness import CANCEL_GRACE, Watchdog
from .message import ErrorInfo
from .pool_protocol import Kind, send, task_fields
from .storage.contract import Storage
from .storage.records import ClaimedTask, Outcome
from .storage.states import CANCELLED
from .upkeep import Upkeep

__all__ = ["DEFAULT_CHILD_DEPTH", "Dispatch"]

logger = logging.getLogger("liteq.pool")

#: An idle pool looks at the store at least this often even without a wake-up (the fallback).
IDLE_POLL_INTERVAL = 1.0
#: Prefetch grows up to this many tasks per child while claims keep coming back full.
MAX_PREFETCH_PER_CHILD = 64
#: Tasks handed to one child at once unless the user says otherwise.
DEFAULT_CHILD_DEPTH = 2
#: A task that ran shorter than this many seconds (as seen by the supervisor) is short: while a
#: backlog lasts, its child gets up to SHORT_TASK_DEPTH tasks at once. Deep enough that a child
#: does not run dry while the supervisor writes a batch of outcomes, and that each message (and
#: the wake-up of the child's reader it costs) carries many tasks.
SHORT_TASK = 0.002
SHORT_TASK_DEPTH = 64


class Dispatch:
    """The claiming and handing-out side of one pool (see the module doc)."""

    def __init__(
        self,
        worker_id: str,
        storage: Storage,
        upkeep: Upkeep,
        watchdog: Watchdog,
        children: list[Child],
        *,
        concurrency: int,
        queues: list[str],
        lease: float,
        limits: dict[str, Any],
        prefetch: int,
        child_depth: int | None,
        max_tasks_per_child: int | None,
        stopping: Callable[[], bool],
    ) -> None:
        self.id = worker_id
        self.storage = storage
        self.upkeep = upkeep
        self.health: Health = upkeep.health
        self.watchdog = watchdog
        self.children = children  # the pool's list, changed in place as children come and go
        self.queues = queues
        self.lease = lease
        self.limits = limits
        self.concurrency = concurrency
        self.prefetch = prefetch
        self.prefetch_now = prefetch
        self.child_depth = child_depth or DEFAULT_CHILD_DEPTH
        # Deeper queues only for short tasks, and only if the user left the depth to us.
        self.short_depth = SHORT_TASK_DEPTH if child_depth is None else self.child_depth
        self.max_tasks_per_child = max_tasks_per_child
        self.stopping = stopping
        self.buffer: collections.deque[ClaimedTask] = collections.deque()
        self.cancelled: set[str] = set()  # held, unstarted tasks whose cancel was requested
        self.lost: set[tuple[str, str]] = set()  # (id, lease token) asked back from a child: drop on return
        self.maybe_work = True
        self.next_scheduled: float | None = None
        self.look_ahead_due = False  # a claim came back short: read when the next scheduled task is due
        self.last_claim = 0.0

    def next_claim(self, mono: float) -> float | None:
        """When :meth:`claim` has something to do (``mono`` or earlier: now), or None: the one
        decision both the claim and the pool's wait (its timer in the deadline heap) follow."""
        return self._plan(mono)[1]

    def _plan(self, mono: float) -> tuple[int, float | None]:
        """How many tasks a claim would ask for, and when it is due (see :meth:`next_claim`)."""
        if not self.health.ok:
            return 0, None
        room = self.capacity()
        want = room + self.prefetch_now - len(self.buffer)
        if want <= 0:
            return 0, None
        if room <= len(self.buffer) and len(self.buffer) > self.prefetch_now // 2:
            return 0, None  # enough in hand: refill in batches when half is used, not one task at a time
        if self.maybe_work:
            return want, mono
        at = self.last_claim + IDLE_POLL_INTERVAL
        if self.next_scheduled is not None:
            at = min(at, mono + max(self.next_scheduled - self.upkeep.clock(), 0.0))
        return want, at

    def requeue_unstarted(self, c: Child, only: set[str] | None = None) -> None:
        """Ask a live child for the tasks queued in its pipe behind the running one (or those of
        them in ``only``).

        They stay in ``c.queue`` until the child answers: each comes back (``returned``) or has
        started by then (its ``done`` follows). Taking them back without asking would let the
        child run a task that another worker also runs.
        """
        ids = [t.id for t in list(c.queue)[1:] if t.id not in c.revoking and (only is None or t.id in only)]
        if not ids:
            return
        c.revoking.update(ids)
        send(c.conn, Kind.REVOKE, ids)  # if the child is gone, _buried takes its queue back

    def returned(self, c: Child, ids: list[str]) -> None:
        back = set(ids)
        kept: collections.deque[ClaimedTask] = collections.deque()
        for t in c.queue:
            if t.id not in back:
                kept.append(t)
            elif (t.id, t.lease_token) in self.lost:
                self.lost.discard((t.id, t.lease_token))
            else:
                self.buffer.appendleft(t)
        c.queue = kept
        c.revoking.difference_update(ids)

    def capacity(self) -> int:
        # A child holding only coroutine tasks has room for its free coroutine room.
        feed = self.watchdog.feed
        coroutines = feed.any_async()
        return sum(
            # (sync tasks held count only where a coroutine could join them)
            max(0, feed.depth(c, self.depth_for(c), coroutines, feed.syncs(c) if coroutines else 0) - len(c.queue))
            for c in self.children
            if c.ready and not c.retiring and not c.kill_reason
        )

    def claim(self, mono: float) -> None:
        want, at = self._plan(mono)
        if at is None or at > mono:
            return
        self.last_claim = mono
        claimed: list[ClaimedTask] = []
        with self.health.guard("claim") as guard:
            claimed = self.storage.claim(
                self.id, self.queues, limit=want, lease=self.lease, now=self.upkeep.clock(), limits=self.limits or None
            )
        if guard.failed:
            self.maybe_work = True  # look again as soon as the store is back
            return
        self.maybe_work = False
        self.buffer.extend(claimed)
        if len(claimed) == want:
            self.maybe_work = True  # probably more where these came from
            self.next_scheduled = None
            self.look_ahead_due = False
            # A backlog: claim bigger batches (fewer transactions per task), up to a bound.
            self.prefetch_now = min(max(self.prefetch_now * 2, 1), MAX_PREFETCH_PER_CHILD * self.concurrency)
        else:
            self.prefetch_now = self.prefetch
            self.look_ahead_due = True

    def look_ahead(self) -> None:
        """After a short claim, read when the next scheduled task is due (the claim wakes then).
        Called once the claimed tasks are handed out: a task waiting for its child does not wait
        for this read too."""
        if self.look_ahead_due:
            self.look_ahead_due = False
            with self.health.guard("claim"):
                self.next_scheduled = self.storage.next_run_at(self.queues)

    def assign(self) -> None:
        self.drop_cancelled()
        if not self.buffer:
            return
        # Level by level: every idle child gets a task before any child gets a second one.
        open_ = [c for c in self.children if c.ready and not c.retiring and not c.kill_reason]
        if not open_:
            return
        depth = {id(c): self.depth_for(c) for c in open_}
        # Coroutine tasks join a child that runs only coroutines, up to its room (coroutine_feed).
        feed = self.watchdog.feed
        coroutines = feed.any_async()
        # (sync tasks held matter only where a coroutine could join them: feed.depth)
        syncs = {id(c): feed.syncs(c) if coroutines else 0 for c in self.children}
        levels = max([self.short_depth, *(c.async_limit for c in self.children if coroutines)])
        handed: dict[int, tuple[Child, list[ClaimedTask]]] = {}
        buffer = self.buffer
        # Levels every open child already fills hand nothing: start above the shortest queue.
        for level in range(1 + min(len(c.queue) for c in open_), levels + 1):
            if not buffer:
                break
            for c in self.children:
                if not buffer:
                    break
                key = id(c)
                coroutine = coroutines and feed.is_async(buffer[0].name)
                queue = c.queue
                if len(queue) >= min(level, feed.depth(c, depth.get(key, 0), coroutine, syncs[key])):
                    continue
                task = buffer.popleft()
                if not queue:
                    c.started = c.answered = time.monotonic()
                queue.append(task)
                syncs[key] += not coroutine
                mine = handed.get(key)
                if mine is None:
                    handed[key] = (c, [task])
                else:
                    mine[1].append(task)
                if len(queue) == 1 or self.max_tasks_per_child:
                    # A new head with a hard limit caps the queue; so does a retirement count. Nothing
                    # else depth_for() reads changes here.
                    depth[key] = self.depth_for(c)
        # One message per child, whatever it was handed.
        for c, tasks in handed.values():
            if not send(c.conn, Kind.RUN, [task_fields(t) for t in tasks]):
                for t in reversed(tasks):
                    c.queue.remove(t)
                    self.buffer.appendleft(t)

    def depth_for(self, c: Child) -> int:
        if c.cancel_id:
            return 0
        if self.max_tasks_per_child and c.done + len(c.queue) >= self.max_tasks_per_child:
            return 0  # it retires after the tasks it has
        # A task behind one with a hard limit would wait out that limit: queue only one then.
        head = c.head
        if head is not None and self.watchdog.time_limit(head) is not None:
            return 1
        if c.last_run < SHORT_TASK and self.prefetch_now > self.prefetch:
            return self.short_depth  # a backlog of short tasks: batch them
        return self.child_depth

    def drop_lost(self, ids: set[str]) -> int:
        """Forget buffered (unstarted) tasks whose lease passed to another pool; return how many.

        Those queued in a child's pipe behind a running one are asked back and forgotten when they
        come back (one the child started meanwhile runs, its outcome fenced off by its token)."""
        kept = collections.deque(t for t in self.buffer if t.id not in ids)
        dropped = len(self.buffer) - len(kept)
        self.buffer = kept
        self.lost &= {(t.id, t.lease_token) for c in self.children for t in c.queue}
        for c in self.children:
            queued = [t for t in list(c.queue)[1:] if t.id in ids]
            if queued:
                self.lost.update((t.id, t.lease_token) for t in queued)
                self.requeue_unstarted(c, only={t.id for t in queued})
        return dropped

    def probe(self) -> None:
        """Claim what there is room for (a degraded pool's last retry step); a read when full."""
        room = self.capacity() + self.prefetch_now - len(self.buffer)
        if room > 0 and not self.stopping():
            self.buffer.extend(
                self.storage.claim(
                    self.id, self.queues, limit=room, lease=self.lease, now=self.upkeep.clock(),
                    limits=self.limits or None,
                )
            )  # fmt: skip
        else:
            self.storage.next_run_at(self.queues)

    def check_cancels(self) -> None:
        """Stop running tasks whose cancel was requested, and drop such tasks not started yet."""
        feed = self.watchdog.feed
        running = {
            t.id: c
            for c in self.children
            if not c.kill_reason and not c.cancel_id
            for t in feed.running(c)
            if t.id not in c.cancels
        }
        # Tasks held but not started (in the buffer, or queued in a child's pipe) are checked too:
        # a cancel that arrives after the claim must stop them from starting at all.
        held = self.held()
        self.cancelled &= {t.id for t in held}  # forget those that ended meanwhile
        heads = {t.id for c in self.children for t in feed.running(c)}
        waiting = [t.id for t in held if t.id not in heads and t.id not in self.cancelled]
        if not running and not waiting:
            return
        for row in self.storage.get([*running, *waiting]):
            if row is None or not row.cancel_requested:
                continue
            if row.id not in running:
                self.cancelled.add(row.id)
                continue
            c = running[row.id]
            if feed.is_async(row.name):
                # A coroutine: TaskCancelled is raised inside it on the child's loop; the child is
                # killed (its other coroutines retried) only if it does not stop within the grace.
                logger.warning("task %s cancelled while running: stopping it in child %s", row.id, c.pid)
                c.cancels[row.id] = time.monotonic() + CANCEL_GRACE
                send(c.conn, Kind.CANCEL, row.id)
                continue
            # Ask first (TaskCancelled is raised inside the task, which may clean up), kill after a grace.
            logger.warning("task %s cancelled while running: stopping it in child %s", row.id, c.pid)
            c.cancel_id, c.cancel_deadline = row.id, time.monotonic() + CANCEL_GRACE
            self.requeue_unstarted(c)
            try:
                os.kill(c.process.pid, signal.SIGUSR1)
            except (ProcessLookupError, TypeError):
                pass
        if self.cancelled:
            for c in self.children:
                self.requeue_unstarted(c, only=self.cancelled)  # back to the buffer, then dropped
            self.drop_cancelled()

    def drop_cancelled(self) -> None:
        """Record unstarted tasks whose cancel was requested as cancelled instead of running them."""
        if not self.cancelled or not self.buffer:
            return
        kept: collections.deque[ClaimedTask] = collections.deque()
        for t in self.buffer:
            if t.id in self.cancelled:
                self.cancelled.discard(t.id)
                info = ErrorInfo("liteq.exceptions.TaskCancelled", "cancelled before it started")
                self.upkeep.outcomes.append(
                    Outcome(t.id, t.lease_token, CANCELLED, error=info.encode(), reason="cancelled")
                )
                logger.info("task %s cancelled before it started: not running it", t.id)
            else:
                kept.append(t)
        self.buffer = kept

    def busy(self) -> bool:
        """True while any child holds a task."""
        return any(c.queue for c in self.children)

    def held(self) -> list[ClaimedTask]:
        """Every task this pool holds a lease on: buffered, queued in a child, running."""
        return [*self.buffer, *(t for c in self.children for t in c.queue)]
