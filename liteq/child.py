"""The pool's child process: receive claimed tasks over a pipe, run them, send outcomes back.

Module-level and with picklable arguments only, so it works under ``fork``, ``forkserver`` and
``spawn`` alike. The child never touches the store: the supervisor claims, extends and completes.
"""

from __future__ import annotations

import collections
import logging
import logging.handlers
import os
import signal
import threading
import time
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from .asyncrun import DEFAULT_ASYNC_CONCURRENCY, AsyncRunner, is_async_task
from .context import _current
from .pool_protocol import FrameReader, Kind, encode, outcome_fields, task_from
from .storage.records import ClaimedTask

if TYPE_CHECKING:
    from .runtime import Runtime

__all__ = ["ChildOptions", "child_main", "pid_alive"]

#: How often a child checks that its supervisor is still alive (seconds).
PARENT_CHECK_INTERVAL = 0.5
#: Exit code of a child whose supervisor died.
EXIT_ORPHANED = 70


class TaskLogFilter(logging.Filter):
    """Adds ``task_id`` and ``task_name`` (empty outside a task) to every record of a child."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Annotate ``record``; never drops it."""
        ctx = _current.get()
        record.task_id = ctx.id if ctx is not None else ""
        record.task_name = ctx.name if ctx is not None else ""
        return True


class ChildOptions:
    """What a child needs besides the app: the supervisor's pid and how to log."""

    def __init__(
        self,
        supervisor_pid: int,
        log_queue: Any = None,
        log_level: int = logging.WARNING,
        measure_memory: bool = False,
        async_concurrency: int = DEFAULT_ASYNC_CONCURRENCY,
    ) -> None:
        self.supervisor_pid = supervisor_pid
        self.async_concurrency = async_concurrency
        self.log_queue = log_queue
        self.log_level = log_level
        self.measure_memory = measure_memory


def _watch_parent(supervisor_pid: int, parent_pid: int) -> None:
    # Exit promptly once the supervisor is gone (SIGKILLed, crashed): an orphan must not keep
    # running tasks whose leases nobody extends. getppid() changes on reparenting (fork, spawn);
    # kill(pid, 0) covers forkserver, where the parent is the fork server, not the supervisor.
    while True:
        time.sleep(PARENT_CHECK_INTERVAL)
        if os.getppid() != parent_pid or not pid_alive(supervisor_pid):
            os._exit(EXIT_ORPHANED)


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (dead, not yet reaped by its parent) counts as dead."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            # The state letter follows the command name in parentheses, which may hold spaces.
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def _setup_logging(options: ChildOptions) -> None:
    root = logging.getLogger()
    task_filter = TaskLogFilter()
    if options.log_queue is not None:
        # spawn / forkserver: records travel to the supervisor's QueueListener.
        for handler in list(root.handlers):
            root.removeHandler(handler)
        handler = logging.handlers.QueueHandler(options.log_queue)
        handler.addFilter(task_filter)
        root.addHandler(handler)
        root.setLevel(options.log_level)
    else:
        # fork: the handlers inherited from the parent (wrapped by multiprocessing-logging).
        for handler in root.handlers:
            handler.addFilter(task_filter)


def _cancel_running_task(signum: int, frame: Any) -> None:
    """SIGUSR1 from the supervisor: the running task was cancelled. Raise inside it so it can clean
    up; the supervisor kills the child if the task does not stop within the grace."""
    from .exceptions import TaskCancelled
    from .worker import defer_cancel, interrupting_task

    ctx = _current.get()
    if ctx is None:
        return
    if interrupting_task(frame):
        raise TaskCancelled(ctx.id, message="cancelled while running", reason="cancelled", state="cancelled")
    defer_cancel()  # outside the task's code: raising here would escape execute() as a lost worker


def _rss() -> int:
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except Exception:  # memory limits are best effort where psutil cannot read
        return 0


class _Inbox:
    """Tasks sent to this child and not started yet, filled by a reader thread.

    The reader keeps reading the pipe while a task runs, so a ``REVOKE`` from the supervisor
    (stopping, recycling, reloading) takes back queued tasks at once, with an atomic answer: each
    id is either handed back (``RETURNED``, it will not run here) or already started (its ``DONE``
    follows).
    """

    def __init__(self, conn: Connection, send: Any, cancel: Any = None) -> None:
        self.conn = conn
        self.send = send
        self.cancel = cancel
        self.tasks: collections.deque[Any] = collections.deque()
        self.closed = False
        self.cond = threading.Condition()

    def read(self) -> None:
        # Every message waiting is taken with one read (recv_bytes would read each one twice:
        # its length, then its body).
        frames = FrameReader(self.conn)
        while True:
            try:
                messages = frames.read()
            except (EOFError, OSError):
                messages = [(Kind.STOP,)]
            for message in messages:
                if self.handle(message):
                    return

    def handle(self, message: tuple[Any, ...]) -> bool:
        """Act on one message from the supervisor; True once told to stop (or it is gone)."""
        kind = message[0]
        if kind == Kind.PING:  # liveness: answered by this thread, whatever the task does
            self.send(Kind.PONG)
            return False
        if kind == Kind.CANCEL:  # a running coroutine task: raised inside it on the loop
            if self.cancel is not None:
                self.cancel(message[1])
            return False
        with self.cond:
            if kind == Kind.RUN:
                self.tasks.extend(task_from(fields) for fields in message[1])
            elif kind == Kind.REVOKE:
                wanted = set(message[1])
                back = [t.id for t in self.tasks if t.id in wanted]
                self.tasks = collections.deque(t for t in self.tasks if t.id not in wanted)
                self.send(Kind.RETURNED, back)
            else:  # stop, or the supervisor is gone: finish what is queued, then exit
                self.closed = True
            self.cond.notify()
            return self.closed

    def next(self) -> Any:
        """The next task to run, or None once stopped and empty."""
        with self.cond:
            while not self.tasks and not self.closed:
                self.cond.wait()
            return self.tasks.popleft() if self.tasks else None


def child_main(runtime: Runtime, conn: Connection, options: ChildOptions) -> None:
    """Serve tasks until told to stop or the pipe closes.

    The messages in and out are those of :mod:`liteq.pool_protocol`.
    """
    from .worker import coroutine_call, execute

    # Ctrl-C reaches the whole process group; only the supervisor decides how to stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGUSR1, _cancel_running_task)
    _setup_logging(options)
    watcher = threading.Thread(
        target=_watch_parent, args=(options.supervisor_pid, os.getppid()), name="liteq-parent-watch", daemon=True
    )
    watcher.start()
    send_lock = threading.Lock()

    def send(kind: Kind, *body: Any) -> None:
        data = encode(kind, *body)
        with send_lock:
            conn.send_bytes(data)

    def report_for(c: ClaimedTask) -> Any:
        def report(progress: Any) -> None:
            send(Kind.PROGRESS, c.id, c.lease_token, progress.encode())

        return report

    def send_outcome(outcome: Any) -> None:
        send(Kind.DONE, outcome_fields(outcome), _rss() if options.measure_memory else 0)

    # async def tasks run on an event loop in a thread of its own, up to async_concurrency at once;
    # a sync task waits until none is in flight, then has the child to itself (see liteq.asyncrun).
    runner = AsyncRunner(
        options.async_concurrency, lambda c, report: coroutine_call(runtime, c, report), send_outcome, report_for
    )
    inbox = _Inbox(conn, send, runner.cancel)
    reader = threading.Thread(target=inbox.read, name="liteq-child-inbox", daemon=True)
    send(Kind.READY, os.getpid(), runner.limit)
    reader.start()
    while True:
        claimed = inbox.next()
        if claimed is None:
            runner.wait_idle()
            return
        if is_async_task(runtime.registry, claimed.name):
            runner.submit(claimed)
            continue
        runner.wait_idle()
        send_outcome(execute(runtime, claimed, report=report_for(claimed)))
