"""``WorkerPool``: a supervisor that owns child processes and feeds them tasks over pipes.

Not ``multiprocessing.Pool`` or ``ProcessPoolExecutor``: both hang or break when a child dies. The
supervisor here is a single-threaded loop (:meth:`WorkerPool.run_once` is one iteration) that
waits on every child's pipe and process sentinel, the store's wake-up socket and its own
self-pipe, until the nearest of its timers: each of them (hard time limits and liveness pings
per child, lease extension, heartbeat, reaping, periodic ticks, the next claim, the end of a
graceful stop) is a named timer in one deadline heap (:mod:`liteq.deadlines`), kept by the part
that decides it, and the wait ends at the top of the heap.

This module is the loop and the pool's life cycle (start, run, background thread, requests); a
child that dies is replaced, and only the tasks it was running are retried (reason ``worker
lost``). Each policy has a module of its own:

- :mod:`liteq.dispatch`: claiming in batches, at most ``prefetch`` tasks beyond those the children
  hold, and handing each child up to ``child_depth`` tasks (more, in one pipe message, for short
  tasks while a backlog lasts);
- :mod:`liteq.child_reports`: what the children report (outcomes, progress, tasks handed back);
- :mod:`liteq.upkeep`: the store side: outcomes written together in one transaction guarded by
  lease tokens, lease extension every ``lease / 3`` seconds, heartbeats, reaping, periodic ticks,
  and the degraded state while the store fails (:mod:`liteq.health`);
- :mod:`liteq.liveness`: SIGKILL for a task past its hard ``timeout`` (works inside C code and
  with SIGTERM ignored), a cancel past its grace, a child that stopped answering;
- :mod:`liteq.recycling`: children retired after ``max_tasks_per_child`` tasks or
  ``max_memory_per_child`` bytes, one at a time and between tasks, or on a source change;
- :mod:`liteq.shutdown`: stop and drain requests, the graceful stop, the teardown;
- :mod:`liteq.pool_options`: the options, checked once.

Start methods. The default is ``forkserver`` on Linux and ``spawn`` on macOS and Windows: a pool
started with ``app.workers()`` lives beside the application's threads, and forking a
multi-threaded process can deadlock the child on a lock some other thread held. By default (no
``start_method`` given) the fork server is a zygote forked from the supervisor while it still has a
single thread (:mod:`liteq.zygote`): children then share liteq and the app with the supervisor
and no second interpreter starts; a process that already runs threads gets the standard fork
server. An explicit ``forkserver`` always means the standard one. ``fork`` is
available on request (fastest start-up) and then child logs go through multiprocessing-logging;
otherwise children send records to a ``QueueListener`` in the supervisor.
"""

from __future__ import annotations

import collections
import logging
import logging.handlers
import multiprocessing
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence

from .asyncrun import DEFAULT_ASYNC_CONCURRENCY
from .checkpoints import Checkpointer
from .child_reports import ChildReports
from .children import (
    Child,
    ChildLogs,
    ChildStarter,
    default_start_method,
    exit_text,
    lost_outcome,
)
from .coroutine_feed import CoroutineFeed
from .deadlines import Deadlines
from .dispatch import Dispatch
from .events import EventWait, Spinner
from .exceptions import LiteQError
from .health import PoolState
from .liveness import Watchdog
from .pool_options import default_spin, pool_options
from .reclaim import recover_local_leases
from .recycling import Recycler
from .runtime import HasRuntime, Runtime, runtime_of
from .scheduler import Scheduler
from .shutdown import Shutdown
from .storage.records import ClaimedTask, WorkerInfo
from .upkeep import Upkeep
from .wake import Waker
from .worker import DEFAULT_LEASE

__all__ = ["WorkerPool", "default_start_method"]

logger = logging.getLogger("liteq.pool")

#: Seconds between heartbeats recorded in the store (``liteq status`` shows live workers).
HEARTBEAT_INTERVAL = 5.0
#: Seconds running tasks get to finish after a stop request.
DEFAULT_SHUTDOWN_TIMEOUT = 30.0
#: Seconds to wait for children to start before giving up.
STARTUP_TIMEOUT = 60.0
#: How many times one child slot may be killed by a signal before it reports ready, while the pool
#: starts, before start-up gives up: a child killed from outside (an OOM killer, an operator) is
#: replaced, but one that dies at start every time must not be restarted forever.
STARTUP_RESPAWNS = 3
#: The next claim, as a timer in the pool's deadline heap.
CLAIM = "claim"


class WorkerPool:
    """Runs tasks of ``app`` in ``concurrency`` child processes.

    Use ``app.workers(...)`` (a context manager, pool in a background thread) or
    ``app.run_worker(...)`` / ``liteq worker`` (blocking, with signal handling). Options:

    - ``concurrency``: child processes (default: CPU count).
    - ``queues``: queues to serve (default: every queue the app's tasks use).
    - ``start_method``: ``fork``, ``forkserver`` or ``spawn`` (default per platform, see module doc).
    - ``prefetch``: tasks claimed ahead beyond what the children hold (default: ``concurrency``).
    - ``child_depth``: tasks handed to one child at once (default 2, and up to ``liteq.dispatch.SHORT_TASK_DEPTH``
      for a child whose last task took under ``liteq.dispatch.SHORT_TASK`` while claims come back full; 1 with hard
      time limits in play keeps the next task from waiting behind a slow one).
    - ``shutdown_timeout``: seconds running tasks get to finish on a graceful stop.
    - ``max_tasks_per_child`` / ``max_memory_per_child`` (bytes): recycle children.
    - ``worker_id``: a stable id; a restarted pool with the same id takes back its old leases once
      the old pool's heartbeat is stale (a live pool with the same id keeps its tasks; see
      :mod:`liteq.reclaim`).
    - ``liveness_timeout``: seconds a busy child may stay silent (stopped, stuck holding the GIL)
      before it is killed and its task handled as a hard timeout (default: the lease; see
      :mod:`liteq.liveness`).
    - ``scheduler``: fire the app's periodic tasks from this pool (default True; safe in every pool).
    - ``async_concurrency``: ``async def`` tasks one child runs at once on its event loop (default
      100; a sync task still takes the whole child). Children are fed by their free coroutine
      room (see :mod:`liteq.coroutine_feed`).
    - ``clock``: the wall clock the pool passes to the store (default ``time.time``; injected by
      tests of clock steps, see :mod:`liteq.upkeep`).
    - ``spin``: seconds the supervisor keeps polling for its next event before it sleeps, right
      after activity, while its children leave a CPU free and while polling pays: a child's
      answer or the next task then finds it awake (see :mod:`liteq.events`). By default
      (:func:`~liteq.pool_options.default_spin`) :data:`~liteq.pool_options.SPIN` when the pool
      runs in a process of its own (``liteq worker``, ``app.run_worker()``) over a local store; 0
      in ``app.workers()``, whose loop shares the application's GIL, and over a cluster server.
      0: never spin.
    """

    def __init__(
        self,
        app: Runtime | HasRuntime,
        *,
        concurrency: int | None = None,
        queues: Sequence[str] | None = None,
        start_method: str | None = None,
        prefetch: int | None = None,
        child_depth: int | None = None,
        lease: float | None = None,
        shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT,
        max_tasks_per_child: int | None = None,
        max_memory_per_child: int | None = None,
        worker_id: str | None = None,
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
        reload: bool = False,
        scheduler: bool = True,
        liveness_timeout: float | None = None,
        clock: Callable[[], float] = time.time,
        async_concurrency: int = DEFAULT_ASYNC_CONCURRENCY,
        spin: float | None = None,
    ) -> None:
        runtime = runtime_of(app)
        o = self.options = pool_options(
            runtime,
            concurrency=concurrency,
            queues=queues,
            start_method=start_method,
            prefetch=prefetch,
            child_depth=child_depth,
            lease=lease if lease is not None else getattr(app, "lease", DEFAULT_LEASE),
            shutdown_timeout=shutdown_timeout,
            max_tasks_per_child=max_tasks_per_child,
            max_memory_per_child=max_memory_per_child,
            worker_id=worker_id,
            heartbeat_interval=heartbeat_interval,
            reload=reload,
            scheduler=scheduler,
            liveness_timeout=liveness_timeout,
            clock=clock,
            async_concurrency=async_concurrency,
            spin=spin,
        )
        self.app = app
        self.runtime = runtime
        self.storage = runtime.storage
        self.id, self.concurrency, self.queues, self.start_method = o.worker_id, o.concurrency, o.queues, o.start_method
        self.feed = CoroutineFeed(runtime.registry)
        self.ctx = multiprocessing.get_context(o.start_method)
        if o.start_method == "forkserver":
            # Children fork from a server that has already imported liteq: fast, thread-free starts.
            self.ctx.set_forkserver_preload(["liteq", "liteq.child", "liteq.worker"])
        self.watchdog = Watchdog(runtime, o.liveness_timeout, self.feed)
        self.scheduler = Scheduler(runtime) if scheduler and runtime.registry.schedules else None
        #: The loop's timers (see :mod:`liteq.deadlines`); the wait ends at the nearest one.
        self.timers = Deadlines()
        self.upkeep = Upkeep(
            self.id,
            self.storage,
            None,  # the dispatch, built on the upkeep, is its holder (below)
            lease=o.lease,
            heartbeat_interval=o.heartbeat_interval,
            scheduler=self.scheduler,
            clock=clock,
            deadlines=self.timers,
        )
        self.health = self.upkeep.health
        self.children: list[Child] = []
        self.dispatch = Dispatch(
            self.id,
            self.storage,
            self.upkeep,
            self.watchdog,
            self.children,
            concurrency=o.concurrency,
            queues=self.queues,
            lease=o.lease,
            limits=runtime.registry.rate_limits(),
            prefetch=o.prefetch,
            child_depth=o.child_depth,
            max_tasks_per_child=o.max_tasks_per_child,
            stopping=lambda: bool(self.shutdown.level),
        )
        self.upkeep.holder = self.dispatch  # it knows what the pool holds
        self.recycler = Recycler(
            self.children,
            self.dispatch,
            max_tasks_per_child=o.max_tasks_per_child,
            max_memory_per_child=o.max_memory_per_child,
        )
        self.reports = ChildReports(self.feed, self.upkeep, self.dispatch, self.recycler)
        self._starting = False
        self._startup_deaths: dict[int, int] = {}  # child index -> signal deaths before ready
        self._events = EventWait()
        self._checkpoints = Checkpointer(self.storage, inline=self.start_method == "fork")
        self._logs = ChildLogs(self.ctx, forked=self.start_method == "fork")
        #: Children fork from a zygote when the start method is the default fork server and this
        #: process has one thread when the pool starts (see :class:`~liteq.children.ChildStarter`).
        self.starter = ChildStarter(
            self.ctx,
            runtime,
            self._logs,
            measure_memory=o.max_memory_per_child is not None,
            async_concurrency=o.async_concurrency,
            zygote=start_method is None and o.start_method == "forkserver",
        )
        self.shutdown = Shutdown(
            self.id,
            children=self.children,
            dispatch=self.dispatch,
            upkeep=self.upkeep,
            deadlines=self.timers,
            events=self._events,
            storage=self.storage,
            checkpoints=self._checkpoints,
            logs=self._logs,
            timeout=o.shutdown_timeout,
        )
        self.shutdown.starter = self.starter
        self._active = False  # the last wait returned events: more may follow at once
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        self._spinner = Spinner(default_spin(self.storage, in_background=False) if o.spin is None else o.spin, cpus)
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._finished = threading.Event()
        self._error: BaseException | None = None

    def __repr__(self) -> str:
        return f"<WorkerPool {self.id} concurrency={self.concurrency} {self.start_method}>"

    @property
    def tasks_done(self) -> int:
        """Tasks this pool ran to an outcome."""
        return self.upkeep.tasks_done

    @property
    def spin(self) -> float:
        """Seconds the supervisor may poll for its next event before it sleeps (the ``spin``
        option, its default resolved where the loop runs; 0: never)."""
        return self._spinner.spin

    @property
    def state(self) -> PoolState:
        """``PoolState.OK``, or ``PoolState.DEGRADED`` while the pool rides out store errors
        (claiming nothing, running tasks go on, outcomes wait in memory; see :mod:`liteq.health`)."""
        return self.health.state

    @property
    def state_reason(self) -> str | None:
        """Why the pool is degraded (``"store busy during claim"``), or None."""
        return self.health.reason

    @property
    def state_since(self) -> float | None:
        """Since when (epoch seconds) the pool is degraded, or None."""
        return self.health.since

    # -- life cycle ----------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the children and return once every one is ready to run tasks.

        A child that exits with a status before it reports ready failed to import or rebuild the
        app: start-up stops with that error. A child killed by a signal then is replaced, up to
        :data:`STARTUP_RESPAWNS` times per child.
        """
        self._starting = True
        self.starter.fork_zygote()
        waker_dir = self.storage.wake_dir
        if waker_dir:
            waker = Waker(waker_dir)
            self._events.add_waker(waker)
            # This thread's own commits need not wake this pool: it knows what it just did.
            self.storage.skip_wake_in_this_thread(waker.path)
        self._logs.start()
        # A pool started while the store is locked (a backup) or full starts degraded: its
        # start-up writes are the first step of its retry rounds.
        self.upkeep.pending_startup = self._register
        with self.health.guard("start-up"):
            self._register()
        for i in range(self.concurrency):
            self.children.append(self._spawn(i))
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not all(c.ready for c in self.children):
            left = deadline - time.monotonic()
            if left <= 0:
                self._abort(f"children did not start within {STARTUP_TIMEOUT}s")
            self._poll(min(left, 0.5))
            for c in list(self.children):
                if not c.process.is_alive():  # died after the wait returned: as _poll would have
                    self.reports.receive(c)
                    self._buried(c)
        self._starting = False
        if self.options.reload:
            self.shutdown.observer = self.recycler.watch_sources(self.runtime.origin, self._events)
        self._checkpoints.start()
        self.upkeep.start(time.monotonic())
        how = f"{self.start_method} (zygote)" if self.starter.zygote is not None else self.start_method
        logger.info("worker %s started %d %s children on queues %s", self.id, self.concurrency, how, self.queues)

    def _register(self) -> None:
        recover_local_leases(self.storage, self.id, heartbeat_interval=self.options.heartbeat_interval)
        now = self.upkeep.clock()
        self.storage.register_worker(
            WorkerInfo(self.id, socket.gethostname(), os.getpid(), self.concurrency, self.queues, now, now)
        )
        self.upkeep.pending_startup = None

    def _abort(self, message: str) -> None:
        self.shutdown.kill_all()
        self.shutdown.teardown()
        raise LiteQError(message)

    def _spawn(self, index: int) -> Child:
        process, parent_conn = self.starter.start(index)
        c = Child(index, process, parent_conn)
        self._events.watch(c)
        return c

    def run(self) -> None:
        """Run until :meth:`stop` is called (or a signal, with ``install_signals``), then shut down."""
        try:
            while self.run_once():
                pass
        finally:
            self.shutdown.finish()

    def start_background(self) -> None:
        """Start the pool and run its loop in a daemon thread; returns when the children are ready."""

        def main() -> None:
            try:
                self.start()
            except BaseException as exc:
                self._error = exc
                self._started.set()
                self._finished.set()
                return
            self._started.set()
            try:
                self.run()
            except BaseException as exc:  # surfaced by join()
                self._error = exc
                logger.exception("worker pool %s stopped on an error", self.id)
            finally:
                self._finished.set()

        self.starter.fork_zygote()  # from the caller's thread, before this pool's own
        if self.options.spin is None:
            self._spinner.spin = default_spin(self.storage, in_background=True)
        self._thread = threading.Thread(target=main, name=f"liteq-pool-{self.id}", daemon=True)
        self._thread.start()
        self._started.wait()
        if self._error is not None:
            raise self._error

    def stop(self, *, now: bool = False) -> None:
        """Ask the pool to stop: gracefully (running tasks finish, unstarted ones go back at once),
        or with ``now`` (kill children; interrupted tasks are retried later). Thread- and
        signal-safe; a second call escalates to ``now``."""
        self.shutdown.request(now=now)

    def join(self, timeout: float | None = None) -> None:
        """Wait for a background pool to finish; re-raise the error that stopped it, if any."""
        self._finished.wait(timeout)
        if self._thread is not None:
            self._thread.join(timeout)
        if self._error is not None:
            raise self._error

    def install_signal_handlers(self) -> None:
        """SIGINT/SIGTERM: the first stops gracefully, the second stops now (main thread only)."""

        self.shutdown.install_signal_handlers()

    # -- one iteration -------------------------------------------------------------------------------

    def run_once(self) -> bool:
        """One supervisor iteration: handle messages and deaths, write outcomes, claim, assign,
        extend leases, wait for the next event. Returns False once the pool has stopped."""
        mono = time.monotonic()
        if not self.shutdown.level and self.health.ok and self.dispatch.buffer:
            self.dispatch.assign()  # children run their next tasks while the outcomes are written
        self.upkeep.flush_if_ok()  # a producer is waiting for these
        self.shutdown.obey(self.storage.pending_commands())
        if self.shutdown.level:
            if not self.shutdown.step(mono):
                return False
        elif self.health.ok:
            # Degraded, nothing new starts: a buffered task's lease cannot be extended now, and
            # running it after the lease ran out could run it twice.
            self.upkeep.confirm_leases(mono)
            self.dispatch.assign()
            if not self.shutdown.draining:
                self.dispatch.claim(mono)
            self.dispatch.assign()
            self.dispatch.look_ahead()
        self._timers(mono)
        if self.upkeep.more_work:
            self.upkeep.more_work = False
            self.dispatch.maybe_work = True
        now = time.monotonic()
        claiming = not self.shutdown.level and not self.shutdown.draining
        self.timers.schedule(CLAIM, self.dispatch.next_claim(now) if claiming else None)
        self.watchdog.arm(self.timers, self.children)
        self._poll(self.timers.next_timeout(now, idle=self.options.heartbeat_interval))
        return True

    def drain(self) -> None:
        """Claim nothing more; stop (exit 0) once every task in hand has finished."""
        self.shutdown.drain()

    def _poll(self, timeout: float) -> None:
        """Wait up to ``timeout`` for any event, then handle every one that is ready."""
        dead: list[Child] = []
        spinner = self._spinner
        spin = spinner.before(active=self._active and not self._starting, busy=sum(1 for c in self.children if c.queue))
        started = time.monotonic()
        events = self._events.wait(timeout, self.children, spin)
        spinner.after(time.monotonic() - started, bool(events))
        self._active = bool(events)
        for kind, c in events:
            if kind == "waker":
                self.dispatch.maybe_work = True
            elif kind == "conn":
                self.reports.receive(c, ready=True)
            elif c not in dead:
                dead.append(c)
        for c in dead:
            self.reports.receive(c)  # a child may have reported its last outcome before exiting
            self._buried(c)

    def _buried(self, c: Child) -> None:
        """A child process exited: record its running task's fate and start a replacement."""
        c.process.join(1)  # the sentinel can fire a moment before waitpid reports the exit code
        code = c.process.exitcode
        head = c.head
        # Every task it was running is lost (one sync task, or its coroutines); the rest never started.
        for task in self.feed.running(c):
            c.queue.remove(task)
            self.upkeep.outcomes.append(lost_outcome(c, task, code, self.watchdog.time_limit(task)))
        while c.queue:
            self.dispatch.buffer.appendleft(c.queue.pop())
        self._events.unwatch(c)
        c.conn.close()
        if c in self.children:
            i = self.children.index(c)
            if self.shutdown.level:
                self.children.pop(i)
            else:
                failure = self._died_starting(c, code) if self._starting and not c.ready else None
                if failure:
                    self.children.pop(i)  # gone and closed: nothing left to kill
                    self._abort(failure)
                if head is not None and not c.kill_reason:
                    logger.error("child %s died (%s) running task %s %s", c.pid, exit_text(code), head.name, head.id)
                self.children[i] = self._spawn(c.index)

    def _died_starting(self, c: Child, code: int | None) -> str | None:
        """Child ``c`` exited before it was ready while the pool starts: why start-up fails, or None
        when it is to be replaced."""
        if code is not None and code >= 0:
            # A child exits with a status of its own before ready only when it cannot import or rebuild the app.
            return (
                f"worker child exited with code {code} while starting; run the app module in a plain "
                "python process to see its import error"
            )
        deaths = self._startup_deaths[c.index] = self._startup_deaths.get(c.index, 0) + 1
        if deaths > STARTUP_RESPAWNS:
            return (
                f"worker child {c.index} {exit_text(code)} while starting, {deaths} times; "
                "see what kills it (memory limits, the system log)"
            )
        logger.warning("child %s %s while starting; starting another", c.index, exit_text(code))
        return None

    # -- timers ---------------------------------------------------------------------------------------

    def _timers(self, mono: float) -> None:
        """What is due each iteration besides claiming: kills and pings, an inline checkpoint, the
        upkeep's periodic store calls, recycling."""
        self.watchdog.enforce(self.children, mono)
        self._checkpoints.maybe_inline(mono, busy=self.dispatch.busy())
        self.upkeep.timers(mono)
        self.recycler.step()

    @property
    def buffer(self) -> collections.deque[ClaimedTask]:
        """Claimed tasks no child holds yet."""
        return self.dispatch.buffer

    def busy(self) -> bool:
        """True while any child holds a task."""
        return self.dispatch.busy()
