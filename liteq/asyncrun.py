"""Running ``async def`` tasks: one coroutine to one outcome, and a child's event loop that runs
up to ``async_concurrency`` of them at once.

Where the loop runs. In a pool child the loop runs in a thread of its own (``liteq-aio``); the
child's main thread keeps reading its inbox and runs sync tasks, each of which takes the whole
child (it starts once no coroutine is in flight, as a sync task always had the child to itself).
The child's bookkeeping never runs on the tasks' loop: the pipe reader thread answers liveness
pings and takes cancels and revokes, and the supervisor extends every lease it holds, so a
coroutine that blocks the loop (``time.sleep``, CPU work) delays only the coroutines beside it,
never the leases nor the liveness answers of the child.

Time limits and cancels are delivered *inside* the coroutine: :func:`_drive` steps the task's
coroutine and, when the loop cancels the asyncio task on its behalf, throws the wanted exception
(:class:`SoftTimeLimit`, :class:`TaskTimedOut`, :class:`TaskCancelled`) at the ``await`` where the
coroutine waits, instead of a bare ``CancelledError``. A coroutine that swallows it and keeps
running is ended by the supervisor, which kills the child once the hard limit (or a cancel) is
:data:`~liteq.watchdog.CANCEL_GRACE` seconds overdue.

Outside a pool (``immediate=True``, ``run_until_empty()``, the in-process ``Worker``) a coroutine
task runs to its end on a fresh event loop (:func:`run_blocking`): in this thread when no loop
runs here, else in a helper thread, because sync code cannot wait on the loop that called it.

``asyncio`` is imported by the functions that start or run a loop, not by this module: the
supervisor (which imports it for :func:`is_async_task` and the default concurrency) and a child
whose tasks are all sync never load it, which keeps ``liteq worker`` start-up and the pool's
memory down.
"""

from __future__ import annotations

import collections
import logging
import threading
import types
from collections.abc import Callable, Coroutine, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from .context import TaskContext, _enter, _leave
from .exceptions import SoftTimeLimit, TaskCancelled, TaskTimedOut
from .message import ErrorInfo, Progress
from .storage.records import ClaimedTask, Outcome
from .storage.states import CANCELLED, FAILED

if TYPE_CHECKING:
    import asyncio

__all__ = [
    "DEFAULT_ASYNC_CONCURRENCY",
    "AsyncRunner",
    "CoroutineCall",
    "is_async_task",
    "run_blocking",
    "run_coroutine_task",
]

logger = logging.getLogger("liteq.worker")

#: Coroutines one child runs at once unless told otherwise.
DEFAULT_ASYNC_CONCURRENCY = 100


class _Tasks(Protocol):
    """What finds a task by name (a :class:`~liteq.registry.Registry`)."""

    tasks: Any

    def get(self, name: str) -> Any:
        """The task registered (or importable through ``include``) as ``name``."""


@dataclass
class CoroutineCall:
    """One ``async def`` task ready to run (built by :func:`liteq.worker.coroutine_call`): the
    function and its arguments, its context, its limits, and how its end becomes an outcome."""

    fn: Callable[..., Coroutine[Any, Any, Any]]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    ctx: TaskContext
    soft_timeout: float | None
    timeout: float | None
    on_error: Callable[[BaseException], Outcome]
    on_value: Callable[[Any], Outcome]


def is_async_task(registry: _Tasks, name: str) -> bool:
    """True when ``name`` is a registered ``async def`` task (unknown names: False)."""
    task = registry.tasks.get(name)
    if task is None:
        try:
            task = registry.get(name)  # a name found through ``include``
        except Exception:  # unknown or unimportable: execute() fails it as a sync task would
            return False
    return bool(getattr(task, "is_async", False))


class _Interrupt:
    """What to raise inside one running coroutine when the loop cancels it on liteq's behalf."""

    def __init__(self) -> None:
        self.pending: BaseException | None = None
        self.hard = False  # the hard limit fired: the outcome is a timeout whatever the task does
        self.cancelled = False  # cancelled while running: the outcome is cancelled

    def take(self) -> BaseException | None:
        exc, self.pending = self.pending, None
        return exc


@types.coroutine
def _drive(coro: Coroutine[Any, Any, Any], box: _Interrupt) -> Generator[Any, Any, Any]:
    """Step ``coro`` as the asyncio task would, but turn a cancel that liteq asked for into the
    exception in ``box``, thrown at the ``await`` where the coroutine waits."""
    import asyncio  # loaded by then: this runs on a loop

    to_send: Any = None
    to_throw: BaseException | None = None
    try:
        while True:
            try:
                if to_throw is not None:
                    exc, to_throw = to_throw, None
                    yielded = coro.throw(exc)
                else:
                    yielded = coro.send(to_send)
            except StopIteration as stop:
                return stop.value
            to_send = None
            try:
                to_send = yield yielded
            except GeneratorExit:
                raise
            except asyncio.CancelledError as cancel:
                wanted = box.take()
                if wanted is not None:
                    uncancel = getattr(asyncio.current_task(), "uncancel", None)
                    if uncancel is not None:  # 3.11+: ours, not a cancel the coroutine's own timeouts count
                        uncancel()
                    to_throw = wanted
                else:
                    to_throw = cancel
            except BaseException as exc:
                to_throw = exc
    finally:
        coro.close()


async def run_coroutine_task(
    claimed: ClaimedTask,
    call: CoroutineCall,
    *,
    box: _Interrupt | None = None,
    started: Callable[[asyncio.Task[Any], _Interrupt], None] | None = None,
) -> Outcome:
    """Run one ``async def`` task on the running loop and return its outcome.

    Its soft limit raises :class:`SoftTimeLimit` inside it; its hard limit raises
    :class:`TaskTimedOut` inside it (and the outcome is ``failed``/``timeout`` however it ends).
    ``started`` receives the asyncio task and its interrupt box (a child cancels through them).
    """
    import asyncio  # loaded by then: this runs on a loop

    box = box if box is not None else _Interrupt()
    loop = asyncio.get_running_loop()
    token = _enter(call.ctx)  # this asyncio task's own context: current() sees this task only
    try:
        inner = asyncio.current_task()
        assert inner is not None
        if started is not None:
            started(inner, box)
        timers = []
        soft, hard = call.soft_timeout, call.timeout
        if soft:
            error = SoftTimeLimit(f"task ran past its soft_timeout of {soft}s")
            timers.append(loop.call_later(soft, _interrupt, inner, box, error))
        if hard:
            timers.append(loop.call_later(hard, _hard_limit, inner, box, claimed.id, hard))
        try:
            value = await _drive(call.fn(*call.args, **call.kwargs), box)
        except (Exception, asyncio.CancelledError) as exc:
            outcome = _special(claimed, box)
            return outcome if outcome is not None else call.on_error(exc)
        finally:
            for t in timers:
                t.cancel()
        outcome = _special(claimed, box)
        return outcome if outcome is not None else call.on_value(value)
    finally:
        _leave(token)


def _special(claimed: ClaimedTask, box: _Interrupt) -> Outcome | None:
    """The outcome imposed by liteq (cancelled, hard limit) whatever the coroutine did, or None."""
    if box.cancelled:
        info = ErrorInfo("liteq.exceptions.TaskCancelled", "cancelled while running; the task stopped")
        return Outcome(claimed.id, claimed.lease_token, CANCELLED, error=info.encode(), reason="cancelled")
    if box.hard:
        info = ErrorInfo(
            "liteq.exceptions.TaskTimedOut", f"task ran past its hard timeout of {claimed.timeout}s; it was cancelled"
        )
        return Outcome(claimed.id, claimed.lease_token, FAILED, error=info.encode(), reason="timeout")
    return None


def _interrupt(task: asyncio.Task[Any], box: _Interrupt, exc: BaseException) -> None:
    if not task.done():
        box.pending = exc
        task.cancel()


def _hard_limit(task: asyncio.Task[Any], box: _Interrupt, task_id: str, limit: float) -> None:
    box.hard = True
    _interrupt(
        task,
        box,
        TaskTimedOut(task_id, message=f"task ran past its hard timeout of {limit}s", reason="timeout", state="failed"),
    )


def run_blocking(claimed: ClaimedTask, call: CoroutineCall) -> Outcome:
    """Run an ``async def`` task to its end from sync code and return its outcome.

    A fresh event loop runs it: in this thread when no loop runs here; in a helper thread when
    this thread is itself inside a running loop (``immediate=True`` from a coroutine), since the
    calling loop cannot run while sync code waits on it. Only that one task runs meanwhile.
    """
    import asyncio
    import concurrent.futures

    coro = run_coroutine_task(claimed, call)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="liteq-aio-immediate") as pool:
        return pool.submit(asyncio.run, coro).result()


class AsyncRunner:
    """A pool child's event loop, in a thread of its own, running up to ``limit`` coroutine tasks.

    ``plan`` turns a claimed task into a :class:`CoroutineCall` (or the outcome when it cannot
    start). The child's main thread calls :meth:`submit` (blocks while the loop is full), :meth:`wait_idle`
    before a sync task, and the pipe reader calls :meth:`cancel`. ``send_outcome`` is called on the
    loop's thread with each outcome.
    """

    def __init__(
        self,
        limit: int,
        plan: Callable[[ClaimedTask, Callable[[Progress], None]], Outcome | CoroutineCall],
        send_outcome: Callable[[Outcome], None],
        report_for: Callable[[ClaimedTask], Callable[[Progress], None]],
    ) -> None:
        self.plan = plan
        self.limit = max(1, limit)
        self.send_outcome = send_outcome
        self.report_for = report_for
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None
        self.cond = threading.Condition()
        self.running: dict[str, tuple[asyncio.Task[Any], _Interrupt] | None] = {}
        self.early_cancels: collections.deque[str] = collections.deque(maxlen=1024)

    def _start(self) -> asyncio.AbstractEventLoop:
        if self.loop is None:
            import asyncio

            loop = asyncio.new_event_loop()
            ready = threading.Event()

            def main() -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(ready.set)
                loop.run_forever()

            self.thread = threading.Thread(target=main, name="liteq-aio", daemon=True)
            self.thread.start()
            ready.wait()
            self.loop = loop
        return self.loop

    def in_flight(self) -> int:
        """Coroutine tasks submitted and not finished."""
        with self.cond:
            return len(self.running)

    def submit(self, claimed: ClaimedTask) -> None:
        """Start ``claimed`` (an async task) on the loop once fewer than ``limit`` run."""
        loop = self._start()
        with self.cond:
            while len(self.running) >= self.limit:
                self.cond.wait()
            self.running[claimed.id] = None
        call = self.plan(claimed, self.report_for(claimed))
        if isinstance(call, Outcome):  # unknown, undecodable, input missing: never started
            self._finished(claimed.id, call)
            return
        coro = run_coroutine_task(claimed, call, started=lambda t, b: self._started(claimed.id, t, b))

        def create() -> None:
            task = loop.create_task(coro)
            task.add_done_callback(lambda t: self._done(claimed, t))

        loop.call_soon_threadsafe(create)

    def _started(self, task_id: str, task: asyncio.Task[Any], box: _Interrupt) -> None:
        with self.cond:
            self.running[task_id] = (task, box)
            early = task_id in self.early_cancels
        if early:
            self._cancel_now(task_id)

    def _done(self, claimed: ClaimedTask, task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            info = ErrorInfo("liteq.exceptions.TaskCancelled", "cancelled while running; the task stopped")
            outcome = Outcome(claimed.id, claimed.lease_token, CANCELLED, error=info.encode(), reason="cancelled")
        else:
            exc = task.exception()
            if exc is not None:  # liteq's own code failed: never lose the task for it
                logger.error("running async task %s failed", claimed.id, exc_info=exc)
                info = ErrorInfo.from_exception(exc)
                outcome = Outcome(claimed.id, claimed.lease_token, FAILED, error=info.encode(), reason="error")
            else:
                outcome = task.result()
        self._finished(claimed.id, outcome)

    def _finished(self, task_id: str, outcome: Outcome) -> None:
        try:
            self.send_outcome(outcome)
        finally:
            with self.cond:
                self.running.pop(task_id, None)
                self.cond.notify_all()

    def cancel(self, task_id: str) -> None:
        """Raise :class:`TaskCancelled` inside the running coroutine ``task_id`` (thread-safe)."""
        with self.cond:
            if task_id not in self.running:
                return
            if self.running[task_id] is None:  # not created on the loop yet
                self.early_cancels.append(task_id)
                return
        self._cancel_now(task_id)

    def _cancel_now(self, task_id: str) -> None:
        loop = self.loop
        if loop is None:
            return

        def go() -> None:
            entry = self.running.get(task_id)
            if entry is None:
                return
            task, box = entry
            box.cancelled = True
            _interrupt(
                task,
                box,
                TaskCancelled(task_id, message="cancelled while running", reason="cancelled", state="cancelled"),
            )

        loop.call_soon_threadsafe(go)

    def wait_idle(self) -> None:
        """Block until no coroutine task is in flight (a sync task takes the whole child)."""
        with self.cond:
            while self.running:
                self.cond.wait()
