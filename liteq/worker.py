"""Running tasks: :func:`execute` (one claimed task to one outcome) and :class:`Worker` (a loop in
this process).

``execute`` is the single place where a task's function is called; the in-process ``Worker``, the
pool's child processes and immediate mode all go through it, so retries, errors, results and
time limits behave the same everywhere.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any

from .asyncrun import CoroutineCall, run_blocking
from .context import TaskContext, _enter, _leave
from .exceptions import (
    ConfigurationError,
    LiteQError,
    ResultExpired,
    SerializationError,
    SoftTimeLimit,
    StoreCorrupt,
    UnknownTask,
)
from .health import degrades
from .message import ErrorInfo, Progress, decode_call, new_id
from .retries import Retry, backoff_delay
from .runtime import HasRuntime, Runtime, runtime_of
from .storage.records import ClaimedTask, Outcome, WorkerInfo
from .storage.states import FAILED, SCHEDULED, SUCCEEDED
from .task import Task

__all__ = [
    "DEFAULT_LEASE",
    "Prepared",
    "Worker",
    "coroutine_call",
    "execute",
    "prepare",
    "settle_error",
    "settle_value",
]

logger = logging.getLogger("liteq.worker")

#: Seconds a claim is leased for; running tasks get their lease extended long before it runs out.
DEFAULT_LEASE = 60.0
#: The longest a step waits before running again after the store failed to give its input (seconds).
STORE_RETRY_MAX = 30.0
#: How often a worker looks for expired leases and prunes expired results.
MAINTENANCE_INTERVAL = 30.0


def _fail(claimed: ClaimedTask, error: ErrorInfo, reason: str) -> Outcome:
    return Outcome(claimed.id, claimed.lease_token, FAILED, error=error.encode(), reason=reason)


class _SoftLimit:
    """Raise :class:`SoftTimeLimit` in the task after ``seconds`` (POSIX main thread only)."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self.armed = False
        self.previous: Any = None
        self.outer: tuple[float, float] = (0.0, 0.0)
        self.since = 0.0

    def _fire(self, signum: int, frame: FrameType | None) -> None:
        # An alarm that lands after the function returned (or before it was called) is late:
        # raising it in execute's own code would turn a success into a retry.
        if interrupting_task(frame):
            raise SoftTimeLimit(f"task ran past its soft_timeout of {self.seconds}s")

    def __enter__(self) -> _SoftLimit:
        if self.seconds and hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGALRM, self._fire)
            self.outer = signal.setitimer(signal.ITIMER_REAL, self.seconds)
            self.since = time.monotonic()
            self.armed = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self.armed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self.previous)
            delay, interval = self.outer
            if delay > 0:  # the caller had an alarm of its own running: put back what is left of it
                left = max(delay - (time.monotonic() - self.since), 1e-6)
                signal.setitimer(signal.ITIMER_REAL, left, interval)


class _Deferred:
    """A cancel signal that arrived while this process was not inside a task's function."""

    cancel = False


def _call_task(task_id: str, fn: Callable[..., Any], args: Any, kwargs: Any) -> Any:
    """The one frame between :func:`execute` and a task's function (see :func:`interrupting_task`)."""
    if _Deferred.cancel:  # cancelled between the task's set-up and here: it does not start
        from .exceptions import TaskCancelled

        raise TaskCancelled(task_id, message="cancelled before it started", reason="cancelled", state="cancelled")
    return fn(*args, **kwargs)


def interrupting_task(frame: FrameType | None) -> bool:
    """True when a signal that interrupted ``frame`` interrupted a task's own code.

    Signal handlers that raise into a task (cancel, soft time limit) call this first: raised
    anywhere else in :func:`execute` (before the ``try`` that records failures, or after the
    function returned) the exception would escape and the pool would count a success, or a cancel,
    as a lost worker. The task is running exactly while :func:`_call_task` has called it: its
    frame is on the stack *above* the interrupted one.
    """
    f = frame
    while f is not None:
        if f.f_code is _call_task.__code__:
            return f is not frame
        f = f.f_back
    return False


def defer_cancel() -> None:
    """Remember a cancel that arrived outside the task's code: the task will not start, and one
    that already returned keeps its outcome (the pool records it as cancelled)."""
    _Deferred.cancel = True


def execute(
    runtime: Runtime,
    claimed: ClaimedTask,
    *,
    report: Callable[[Progress], None] | None = None,
    now: Callable[[], float] = time.time,
) -> Outcome:
    """Run one claimed task in this thread and return the outcome to record. Never raises for the
    task's sake: unknown names, undecodable payloads, exceptions and unserializable results all
    become outcomes with a reason.

    An ``async def`` task runs to its end on an event loop of its own here (see
    :func:`liteq.asyncrun.run_blocking`); pool children run many of them on one loop instead.
    """
    prepared = prepare(runtime, claimed, report=report, now=now)
    if isinstance(prepared, Outcome):
        return prepared
    if prepared.task.is_async:
        return run_blocking(claimed, _coroutine(runtime, claimed, prepared, now))
    _Deferred.cancel = False
    token = _enter(prepared.ctx)
    try:
        with _SoftLimit(prepared.soft_timeout):
            value = _call_task(claimed.id, prepared.task.fn, prepared.call.args, prepared.call.kwargs)
    except (KeyboardInterrupt, SystemExit) as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        return settle_error(claimed, prepared, exc, now())
    except Exception as exc:
        return settle_error(claimed, prepared, exc, now())
    finally:
        _leave(token)
    return settle_value(runtime, claimed, prepared, value)


def coroutine_call(
    runtime: Runtime, claimed: ClaimedTask, report: Callable[[Progress], None] | None = None
) -> Outcome | CoroutineCall:
    """An ``async def`` task ready for an event loop (:mod:`liteq.asyncrun`), or its outcome when
    it cannot start (unknown, undecodable, input missing)."""
    prepared = prepare(runtime, claimed, report=report)
    if isinstance(prepared, Outcome):
        return prepared
    return _coroutine(runtime, claimed, prepared, time.time)


def _coroutine(runtime: Runtime, claimed: ClaimedTask, prepared: Prepared, now: Callable[[], float]) -> CoroutineCall:
    hard = claimed.timeout if claimed.timeout is not None else prepared.task.options.timeout
    return CoroutineCall(
        prepared.task.fn, tuple(prepared.call.args), dict(prepared.call.kwargs), prepared.ctx,
        prepared.soft_timeout, hard,
        on_error=lambda exc: settle_error(claimed, prepared, exc, now()),
        on_value=lambda value: settle_value(runtime, claimed, prepared, value),
    )  # fmt: skip


@dataclass
class Prepared:
    """A claimed task ready to call: its registered task, decoded call, context and soft limit."""

    task: Task[Any, Any]
    call: Any
    ctx: TaskContext
    soft_timeout: float | None


def prepare(
    runtime: Runtime,
    claimed: ClaimedTask,
    *,
    report: Callable[[Progress], None] | None = None,
    now: Callable[[], float] = time.time,
) -> Prepared | Outcome:
    """Everything before the call: find the task, decode the call, fetch canvas inputs, build the
    context. Returns the outcome instead when the task cannot be called (unknown, undecodable,
    input missing)."""
    try:
        task = runtime.registry.get(claimed.name)
    except UnknownTask as exc:
        return _fail(claimed, ErrorInfo.from_exception(exc), "unknown task")
    try:
        call = decode_call(claimed.payload, allow_pickle=runtime.serializer.name == "pickle")
    except SerializationError as exc:
        return _fail(claimed, ErrorInfo.from_exception(exc), "undecodable payload")
    opts = task.options
    if "prev" in call.meta or "chord" in call.meta:
        try:
            call.args = (_inputs(runtime, call.meta), *call.args)
        except LiteQError as exc:
            if degrades(exc):
                # The store did not answer (busy, unreachable): the input is not missing. Run
                # again later, as a retry would, within the task's attempt cap.
                delay = backoff_delay(claimed.attempt, base=1.0, cap=STORE_RETRY_MAX, jitter=True)
                info = ErrorInfo.from_exception(exc)
                if claimed.attempt < claimed.max_attempts:
                    return Outcome(
                        claimed.id, claimed.lease_token, SCHEDULED, error=info.encode(), reason="store error",
                        run_at=now() + delay,
                    )  # fmt: skip
                return _fail(claimed, info, "store error")
            return _fail(claimed, ErrorInfo.from_exception(exc), "dependency result missing")
    retries = call.meta.get("retries", opts.retries)
    retries_left = max(0, min(retries - claimed.attempt + 1, claimed.max_attempts - claimed.attempt))
    ctx = TaskContext(claimed.id, claimed.name, claimed.queue, claimed.attempt, retries_left, report, runtime)
    soft = claimed.soft_timeout if claimed.soft_timeout is not None else opts.soft_timeout
    return Prepared(task, call, ctx, soft)


def settle_error(claimed: ClaimedTask, prepared: Prepared, exc: BaseException, now: float) -> Outcome:
    """The outcome of a call that raised ``exc``: a retry while the budget allows, else failed."""
    opts, ctx = prepared.task.options, prepared.ctx
    if isinstance(exc, Retry):
        return _retry(claimed, opts, exc.exc or exc, ctx, exc, now)
    if isinstance(exc, SoftTimeLimit):
        return _retry(claimed, opts, exc, ctx, None, now, reason="soft timeout")
    if isinstance(exc, ConfigurationError):  # bad input (e.g. Retry(countdown=nan)): retrying cannot fix it
        return _fail(claimed, ErrorInfo.from_exception(exc), "invalid input")
    return _retry(claimed, opts, exc, ctx, None, now)


def settle_value(runtime: Runtime, claimed: ClaimedTask, prepared: Prepared, value: Any) -> Outcome:
    """The outcome of a call that returned ``value``: succeeded with the encoded result."""
    if prepared.task.options.ignore_result:
        return Outcome(claimed.id, claimed.lease_token, SUCCEEDED)
    try:
        data = runtime.serializer.dumps(value, what=f"result of {claimed.name}")
    except SerializationError as exc:
        error = ErrorInfo("liteq.exceptions.SerializationError", f"{exc} (value: {_safe_repr(value)})")
        return _fail(claimed, error, "unserializable result")
    return Outcome(claimed.id, claimed.lease_token, SUCCEEDED, result=data)


def _inputs(runtime: Runtime, meta: dict[str, Any]) -> Any:
    """The result a canvas step receives: its parent's (``prev``) or its group's list (``chord``)."""
    storage = runtime.storage
    ids = [meta["prev"]] if "prev" in meta else storage.group_members(meta["chord"])
    rows = storage.get(ids)
    values = []
    for task_id, row in zip(ids, rows, strict=True):
        if row is None or row.state != SUCCEEDED:
            raise ResultExpired(
                f"the result of task {task_id}, which this task takes as input, is gone ("
                f"{'pruned' if row is None else row.state}); raise result_ttl above the workflow's duration"
            )
        if row.damaged is not None:  # a lost result blob fails this step, not the worker
            raise StoreCorrupt(f"the result of task {task_id}, this task's input, is lost: {row.damaged}")
        values.append(runtime.serializer.loads(row.result) if row.result is not None else None)
    return values[0] if "prev" in meta else values


def _safe_repr(value: Any, limit: int = 300) -> str:
    try:
        text = repr(value)
    except Exception:
        text = object.__repr__(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _retry(
    claimed: ClaimedTask,
    opts: Any,
    error: BaseException,
    ctx: TaskContext,
    request: Retry | None,
    now: float,
    reason: str = "error",
) -> Outcome:
    """Schedule another attempt if the budget allows, else fail with the last error."""
    info = ErrorInfo.from_exception(error)
    if ctx.retries_left <= 0:
        if request is not None:
            reason = "retries exhausted"
        return _fail(claimed, info, reason)
    if request is not None and request.eta is not None:
        run_at = request.eta.timestamp()
    elif request is not None and request.countdown is not None:
        run_at = now + request.countdown
    else:
        run_at = now + backoff_delay(
            claimed.attempt, base=opts.retry_backoff, cap=opts.retry_backoff_max, jitter=opts.retry_jitter
        )
    logger.info("task %s %s attempt %d failed (%s); retrying", claimed.name, claimed.id, claimed.attempt, info.type)
    return Outcome(claimed.id, claimed.lease_token, SCHEDULED, error=info.encode(), reason=reason, run_at=run_at)


class Worker:
    """Runs tasks in the current process, one at a time: ``run_once()`` is one iteration.

    The pool's supervisor builds on the same operations; in-process use is for scripts, tests
    (``app.run_until_empty()``) and immediate mode. ``batch`` tasks are claimed per iteration and
    their outcomes written in one transaction.
    """

    def __init__(
        self,
        app: Runtime | HasRuntime,
        *,
        queues: Sequence[str] | None = None,
        worker_id: str | None = None,
        batch: int = 1,
        lease: float = DEFAULT_LEASE,
    ) -> None:
        if batch < 1:
            raise ConfigurationError(f"batch must be >= 1, not {batch!r}")
        if lease <= 0:
            raise ConfigurationError(f"lease must be > 0 seconds, not {lease!r}")
        self.app = app
        self.runtime = runtime_of(app)
        self.queues = list(queues) if queues else self.runtime.registry.queues()
        self.id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{new_id()[-8:]}"
        self.batch = batch
        self.lease = lease
        self.tasks_done = 0
        self._last_maintenance = float("-inf")
        self._running: dict[str, str] = {}
        self._keeper: threading.Thread | None = None
        self._keeper_stop = threading.Event()
        self._lock = threading.Lock()

    def info(self) -> WorkerInfo:
        """This worker as recorded in the store."""
        now = time.time()
        return WorkerInfo(self.id, socket.gethostname(), os.getpid(), 1, self.queues, now, now, self.tasks_done)

    def maintain(self, now: float | None = None) -> None:
        """Recover expired leases and prune expired results (at most every MAINTENANCE_INTERVAL)."""
        mono = time.monotonic()
        if now is None and mono - self._last_maintenance < MAINTENANCE_INTERVAL:
            return
        self._last_maintenance = mono
        storage = self.runtime.storage
        lost = storage.reap(now=now)
        if lost:
            logger.warning("returned %d task(s) with expired leases to the queue", len(lost))
        storage.prune(now=now)

    def _keep_leases(self) -> None:
        # Runs beside long tasks so their leases do not run out while they work.
        while not self._keeper_stop.wait(self.lease / 3):
            with self._lock:
                leases = list(self._running.items())
            if leases:
                try:
                    self.runtime.storage.extend(self.id, leases, lease=self.lease)
                except Exception:  # the next round tries again; the lease has slack
                    logger.exception("could not extend leases")

    def _start_keeper(self) -> None:
        if self._keeper is None or not self._keeper.is_alive():
            self._keeper_stop.clear()
            self._keeper = threading.Thread(target=self._keep_leases, name="liteq-lease-keeper", daemon=True)
            self._keeper.start()

    def close(self) -> None:
        """Stop the lease keeper thread."""
        self._keeper_stop.set()
        if self._keeper is not None:
            self._keeper.join()
            self._keeper = None

    def run_once(self, now: float | None = None, *, ids: Sequence[str] | None = None) -> int:
        """Claim up to ``batch`` due tasks, run them here, record the outcomes; return how many ran."""
        self.maintain(now)
        storage = self.runtime.storage
        limits = self.runtime.registry.rate_limits() if ids is None else None
        claimed = storage.claim(
            self.id, self.queues, limit=self.batch, lease=self.lease, now=now, ids=ids, limits=limits or None
        )
        if not claimed:
            return 0
        with self._lock:
            self._running.update((c.id, c.lease_token) for c in claimed)
        self._start_keeper()
        clock = (lambda: now) if now is not None else time.time
        outcomes = []
        try:
            for c in claimed:

                def report(progress: Progress, c: ClaimedTask = c) -> None:
                    storage.set_progress(c.id, c.lease_token, progress.encode())

                outcomes.append(execute(self.runtime, c, report=report, now=clock))
        finally:
            if len(outcomes) < len(claimed):  # interrupted: hand back what never ran
                storage.release([(c.id, c.lease_token) for c in claimed[len(outcomes) + 1 :]])
            applied = storage.complete(outcomes, now=now)
            with self._lock:
                for c in claimed:
                    self._running.pop(c.id, None)
        for o, ok in zip(outcomes, applied, strict=True):
            if not ok:
                logger.warning("outcome of task %s rejected: its lease was lost to another worker", o.id)
        self.tasks_done += len(outcomes)
        return len(outcomes)

    def run_until_empty(self, *, now: float | None = None, max_tasks: int | None = None) -> int:
        """Run due tasks until none is left (scheduled ones in the future stay); return how many ran."""
        total = 0
        self._last_maintenance = float("-inf")
        while max_tasks is None or total < max_tasks:
            n = self.run_once(now)
            if not n:
                break
            total += n
        return total
