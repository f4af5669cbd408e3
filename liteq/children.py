"""The supervisor's side of its children: one child's record (process, pipe, queued tasks, why it
was killed), what to record when it dies, where child logs go, and the WAL checkpoints kept off
the task path."""

from __future__ import annotations

import collections
import logging
import logging.handlers
import multiprocessing
import os
import select
import signal
import socket
import sys
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from .child import ChildOptions, child_main
from .message import ErrorInfo
from .pool_protocol import FrameReader, KillReason
from .storage.records import ClaimedTask, Outcome
from .storage.states import CANCELLED, FAILED, PENDING
from .zygote import Zygote, ZygoteGone

__all__ = [
    "ChildStarter",
    "ChildLogs",
    "Child",
    "default_start_method",
    "lost_outcome",
]

logger = logging.getLogger("liteq.pool")


def default_start_method() -> str:
    """``forkserver`` where available (Linux, BSD), else ``spawn`` (macOS, Windows)."""
    methods = multiprocessing.get_all_start_methods()
    if sys.platform.startswith("linux") and "forkserver" in methods:
        return "forkserver"
    return "spawn"


class Child:
    """The supervisor's view of one child process."""

    __slots__ = (
        "answered",
        "async_limit",
        "cancel_deadline",
        "cancel_id",
        "cancels",
        "conn",
        "done",
        "frames",
        "index",
        "kill_reason",
        "kill_task",
        "last_run",
        "pid",
        "pinged",
        "process",
        "queue",
        "ready",
        "retiring",
        "revoking",
        "since",
        "started",
    )

    def __init__(self, index: int, process: Any, conn: Connection) -> None:
        self.index = index
        self.process = process
        self.conn = conn
        self.frames = FrameReader(conn)
        self.pid: int = process.pid or 0
        self.queue: collections.deque[ClaimedTask] = collections.deque()
        self.started = 0.0  # monotonic start of the head task
        self.ready = False
        self.retiring = False
        self.kill_reason = KillReason.NONE
        self.done = 0
        self.last_run = float("inf")  # seconds the last finished task took, as seen from here
        self.revoking: set[str] = set()  # queued task ids asked back, not answered yet
        self.cancel_id = ""  # the running task asked to stop (SIGUSR1), killed at cancel_deadline
        self.cancel_deadline = 0.0
        self.answered = 0.0  # monotonic time of the last message from the child (liveness)
        self.pinged = 0.0  # monotonic time of the last liveness ping sent
        # Coroutine tasks (liteq.coroutine_feed): the child runs up to async_limit of them at once.
        self.async_limit = 1  # told by the child's READY
        self.since: dict[str, float] = {}  # running coroutine task id -> monotonic start
        self.cancels: dict[str, float] = {}  # running coroutine task asked to stop -> kill deadline
        self.kill_task = ""  # the coroutine the child was killed for (those beside it are retried)

    @property
    def head(self) -> ClaimedTask | None:
        return self.queue[0] if self.queue else None


def lost_outcome(c: Child, task: ClaimedTask, code: int | None, limit: float | None) -> Outcome:
    """What to record for ``task`` whose child ``c`` exited with ``code`` while running it:
    timed out, cancelled, or lost (retried while attempts remain; at once if the pool killed it
    to stop, or for another coroutine task's limit)."""
    kill_reason = c.kill_reason
    if c.kill_task and c.kill_task != task.id and kill_reason:
        kill_reason = KillReason.STOP  # beside the coroutine it was killed for: not its fault
    if kill_reason is KillReason.TIMEOUT:
        info = ErrorInfo(
            "liteq.exceptions.TaskTimedOut",
            f"task ran past its hard timeout of {limit}s; its worker process was killed",
        )
        return Outcome(task.id, task.lease_token, FAILED, error=info.encode(), reason="timeout")
    if kill_reason is KillReason.UNRESPONSIVE:
        info = ErrorInfo(
            "liteq.exceptions.TaskTimedOut",
            f"worker process {c.pid} stopped answering the supervisor's liveness pings (stopped, or stuck in "
            f"code that holds the GIL) and was killed (attempt {task.attempt} of {task.max_attempts})",
        )
        if task.attempt < task.max_attempts:
            return Outcome(task.id, task.lease_token, PENDING, error=info.encode(), reason="unresponsive", run_at=0.0)
        return Outcome(task.id, task.lease_token, FAILED, error=info.encode(), reason="unresponsive")
    if kill_reason is KillReason.CANCELLED:
        info = ErrorInfo("liteq.exceptions.TaskCancelled", "cancelled while running; its worker process was killed")
        return Outcome(task.id, task.lease_token, CANCELLED, error=info.encode(), reason="cancelled")
    info = ErrorInfo(
        "liteq.WorkerLost",
        f"worker process {c.pid} {exit_text(code)} while running the task (attempt {task.attempt} of "
        f"{task.max_attempts})",
    )
    if kill_reason is KillReason.STOP or task.attempt < task.max_attempts:
        return Outcome(task.id, task.lease_token, PENDING, error=info.encode(), reason="worker lost", run_at=0.0)
    return Outcome(task.id, task.lease_token, FAILED, error=info.encode(), reason="worker lost")


def readable(conn: Connection) -> bool:
    """True when a message waits on ``conn`` (a zero-timeout select: Connection.poll() builds a
    selector per call, and this runs once per finished task)."""
    if sys.platform == "win32":
        return conn.poll()
    return bool(select.select([conn], [], [], 0)[0])


def drain(sock: socket.socket) -> None:
    """Read and drop every byte waiting on a non-blocking socket."""
    try:
        while sock.recv(4096):
            pass
    except (BlockingIOError, InterruptedError, OSError):
        pass


def exit_text(code: int | None) -> str:
    """How a process ended, for messages: "was killed by SIGKILL", "exited with code 3"."""
    if code is None:
        return "vanished"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


class ChildLogs:
    """Where child log records go: the parent's handlers, through multiprocessing-logging when the
    children are forked, through a queue and a ``QueueListener`` otherwise.

    Children of a zygote (:mod:`liteq.zygote`) use a queue made by the ``fork`` context before the
    zygote forks (:meth:`prepare`): they inherit it instead of receiving it pickled, so its
    semaphores need no name and no resource tracker. Should the pool fall back to a spawned fork
    server, :meth:`switch` gives the later children a queue of that kind beside the first.
    """

    def __init__(self, ctx: Any, *, forked: bool) -> None:
        self.ctx = ctx
        self.forked = forked
        self.queue: Any = None
        self.listener: logging.handlers.QueueListener | None = None
        self.mp_logging = False
        self._retired: list[tuple[Any, logging.handlers.QueueListener]] = []

    def prepare(self, ctx: Any) -> None:
        """Make the queue with ``ctx`` now (before a zygote forks), its listener at :meth:`start`."""
        if not self.forked and self.listener is None:
            self.ctx = ctx
            self.queue = ctx.Queue()

    def switch(self, ctx: Any) -> None:
        """From now on children start with ``ctx``: a new queue and listener; the old ones keep
        delivering what the running children send until :meth:`stop`."""
        if self.forked or ctx is self.ctx:
            return
        if self.listener is not None:
            self._retired.append((self.queue, self.listener))
        self.ctx, self.queue, self.listener = ctx, None, None
        self.start()

    def start(self) -> None:
        """Install the forwarding before any child starts."""
        if self.forked:
            try:
                import multiprocessing_logging

                multiprocessing_logging.install_mp_handler()
                self.mp_logging = True
            except Exception:  # logging must never stop the pool from starting
                logger.exception("multiprocessing-logging is unavailable; child logs go to inherited handlers")
            return
        if self.queue is None:
            self.queue = self.ctx.Queue()
        self.listener = logging.handlers.QueueListener(
            self.queue, *logging.getLogger().handlers, respect_handler_level=True
        )
        self.listener.start()

    def stop(self) -> None:
        """Deliver what is queued and remove the forwarding."""
        for queue, listener in [*self._retired, (self.queue, self.listener)]:
            if listener is not None:
                listener.stop()
            if queue is not None:
                queue.close()
                queue.join_thread()
        self._retired = []
        self.queue, self.listener = None, None
        if self.mp_logging:
            import multiprocessing_logging

            multiprocessing_logging.uninstall_mp_handler()


class ChildStarter:
    """How the pool starts a child: forked by its zygote (:mod:`liteq.zygote`) when it has one,
    else with the start method's context.

    With ``zygote`` (the default start method on Linux), :meth:`fork_zygote` forks one while this
    process runs a single thread; otherwise, or once that zygote died, children come from
    ``ctx`` (the standard fork server).
    """

    def __init__(
        self,
        ctx: Any,
        runtime: Any,
        logs: ChildLogs,
        *,
        measure_memory: bool,
        async_concurrency: int,
        zygote: bool,
    ) -> None:
        self.ctx = ctx
        self.runtime = runtime
        self.logs = logs
        self.measure_memory = measure_memory
        self.async_concurrency = async_concurrency
        self.zygote: Zygote | None = None
        self._wanted = zygote

    def fork_zygote(self) -> None:
        """Fork the zygote, once, if wanted and this process runs one thread; before the pool
        starts a thread of its own, and before the child log queue's listener (the children
        inherit that queue, made here by the ``fork`` context, so it needs no resource tracker)."""
        if not self._wanted:
            return
        self._wanted = False
        self.logs.prepare(multiprocessing.get_context("fork"))
        supervisor, queue, runtime = os.getpid(), self.logs.queue, self.runtime
        measure, async_concurrency = self.measure_memory, self.async_concurrency

        def factory(index: int, conn: Connection, level: int) -> tuple[Callable[..., Any], tuple[Any, ...]]:
            return child_main, (runtime, conn, ChildOptions(supervisor, queue, level, measure, async_concurrency))

        self.zygote = Zygote.fork(factory)
        if self.zygote is None:
            self.logs.prepare(self.ctx)

    def start(self, index: int) -> tuple[Any, Connection]:
        """Start child ``index``: its process (what the pool uses of a ``Process``) and the
        supervisor's end of its pipe."""
        parent_conn, child_conn = self.ctx.Pipe(duplex=True)
        level = logging.getLogger().getEffectiveLevel()
        name = f"liteq-child-{index}"
        try:
            if self.zygote is not None:
                try:
                    return self.zygote.start(index, child_conn, level, name), parent_conn
                except ZygoteGone as exc:
                    logger.warning("the pool's zygote died; children start from a spawned fork server now (%s)", exc)
                    self.zygote.close()
                    self.zygote = None
                    self.logs.switch(self.ctx)
            options = ChildOptions(os.getpid(), self.logs.queue, level, self.measure_memory, self.async_concurrency)
            process = self.ctx.Process(
                target=child_main, args=(self.runtime, child_conn, options), name=name, daemon=True
            )
            process.start()
            return process, parent_conn
        finally:
            child_conn.close()

    def close(self) -> None:
        """Let the zygote exit, if one runs. Idempotent."""
        if self.zygote is not None:
            self.zygote.close()
