"""The producer's asyncio face: enqueue and await results without blocking the event loop.

DESIGN NOTE. A store call blocks (SQLite's lock and fsync, or a cluster round trip), so from a
coroutine every store call goes to :func:`executor`, a small bounded thread pool shared by the
process (SQLite stores keep one connection per thread, so its threads never share one). Two
things keep the threads few and the loop free:

- Sending: ``adelay``/``aapply_async`` calls made while a write is in flight are gathered by the
  loop's :class:`_Sender`; the executor builds their rows (options checked, arguments
  serialized: a call that does not encode fails alone) and stores them in one transaction (group
  commit). The loop itself only queues the call and resolves its future, so a burst of calls
  costs it little work per turn.
- Waiting: no thread per waiter. One :class:`_Watch` per event loop and store keeps every awaited
  task id. It binds its own wake-up socket in the store's wake directory (see :mod:`liteq.wake`;
  a cluster store signals that directory on each server push) and watches it with
  ``loop.add_reader``, so the same notification that ends a blocked ``Result.get()`` makes it
  read, in the executor, the rows of *all* awaited tasks in one query, and resolve the futures of
  those that finished. Wake-ups that arrive while a read is running are folded into the next read.
  Where no wake-up can arrive (a store without a wake directory, or no ``AF_UNIX``) it re-reads on
  the same bounded back-off as ``get()``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from .exceptions import LiteQError
from .storage.contract import Storage
from .storage.records import NewTask, TaskRow
from .storage.states import FINISHED_STATES
from .wake import DONE, Waker

__all__ = ["MAX_THREADS", "Enqueuer", "executor", "run", "send", "send_many", "wait_finished"]

#: Threads of the shared executor: enough to overlap a send with a read, few enough that a burst
#: of coroutines cannot open a connection each.
MAX_THREADS = 4
#: Largest batch of sends written in one transaction.
MAX_BATCH = 1000
# Re-read interval where no wake-up can arrive: doubles from 1 ms up to this (as ``Result.get``).
MAX_POLL_INTERVAL = 0.05
#: Seconds the watcher keeps its wake-up socket after the last waiter left (sequential awaits
#: reuse it).
LINGER = 1.0

_executor: concurrent.futures.ThreadPoolExecutor | None = None
_executor_pid = 0
_executor_lock = threading.Lock()


def executor() -> concurrent.futures.ThreadPoolExecutor:
    """The process's bounded thread pool for store calls made on behalf of coroutines."""
    global _executor, _executor_pid
    ex = _executor
    if ex is not None and _executor_pid == os.getpid():
        return ex
    with _executor_lock:
        if _executor is None or _executor_pid != os.getpid():
            # A forked child inherits the object but not its threads: it makes its own.
            _executor = concurrent.futures.ThreadPoolExecutor(MAX_THREADS, thread_name_prefix="liteq-aio")
            _executor_pid = os.getpid()
        return _executor


async def run(fn: Any, *args: Any) -> Any:
    """Run the blocking ``fn(*args)`` in :func:`executor` and await its value."""
    return await asyncio.get_running_loop().run_in_executor(executor(), fn, *args)


# -- sending ---------------------------------------------------------------------------------------


class Enqueuer(Protocol):
    """What sending needs from a producer (:class:`liteq.producer.Producer`, which sits above)."""

    @property
    def build(self) -> Callable[..., NewTask]:
        """``build(task, args, kwargs, *, now, **options)``: the row of one call (options
        checked, arguments serialized)."""
        ...

    def enqueue(self, messages: list[NewTask], *, now: float) -> list[str]:
        """Store rows in one transaction (running them in immediate mode); their ids."""
        ...


#: One queued call: the task, its arguments and its per-call options.
Call = tuple[Any, tuple[Any, ...], dict[str, Any], dict[str, Any]]


class _Sender:
    """Gathers one loop's calls for one producer and stores them in as few transactions as possible."""

    def __init__(self, producer: Enqueuer) -> None:
        self.producer = producer
        self.queue: list[tuple[Call, asyncio.Future[str]]] = []
        self.busy = False
        # A reference to the running flush: the loop itself keeps only a weak one.
        self.flusher: asyncio.Task[None] | None = None

    def add(self, call: Call) -> asyncio.Future[str]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[str] = loop.create_future()
        self.queue.append((call, fut))
        if not self.busy:
            self.busy = True
            self.flusher = loop.create_task(self._flush())
        return fut

    async def _flush(self) -> None:
        try:
            while self.queue:
                batch, self.queue = self.queue[:MAX_BATCH], self.queue[MAX_BATCH:]
                # A caller cancelled while waiting still has its row written: it may already be.
                try:
                    outcomes = await run(self._write, [call for call, _ in batch])
                except Exception as exc:
                    # The store refused the transaction: nothing was written, every caller hears why.
                    outcomes = [exc] * len(batch)
                for (_, fut), outcome in zip(batch, outcomes, strict=True):
                    if fut.done():
                        continue
                    if isinstance(outcome, BaseException):
                        fut.set_exception(outcome)
                    else:
                        fut.set_result(outcome)
        finally:
            self.busy = False

    def _write(self, calls: list[Call]) -> list[str | Exception]:
        """In the executor: build each row (a call that does not encode fails alone), then store
        the others in one transaction."""
        now = time.time()
        outcomes: list[str | Exception] = []
        messages: list[NewTask] = []
        slots: list[int] = []
        for task, args, kwargs, options in calls:
            try:
                messages.append(self.producer.build(task, args, kwargs, now=now, **options))
            except Exception as exc:
                outcomes.append(exc)
                continue
            slots.append(len(outcomes))
            outcomes.append("")
        if messages:
            for slot, task_id in zip(slots, self.producer.enqueue(messages, now=now), strict=True):
                outcomes[slot] = task_id
        return outcomes


_senders: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[int, _Sender]] = weakref.WeakKeyDictionary()


async def send(
    producer: Enqueuer, task: Any, args: tuple[Any, ...], kwargs: dict[str, Any], options: dict[str, Any]
) -> str:
    """Store one call of ``task`` from a coroutine: built and written in the executor, together
    with the calls other coroutines of this loop make meanwhile; its id."""
    per_loop = _senders.setdefault(asyncio.get_running_loop(), {})
    sender = per_loop.get(id(producer))
    if sender is None or sender.producer is not producer:
        sender = per_loop[id(producer)] = _Sender(producer)
    return await sender.add((task, args, kwargs, options))


async def send_many(send_many: Callable[[list[Any]], list[Any]], calls: Iterable[Any]) -> list[Any]:
    """``send_many(calls)`` (a producer's) from a coroutine: one transaction, in the executor."""
    results: list[Any] = await run(send_many, list(calls))
    return results


# -- waiting ---------------------------------------------------------------------------------------


class _Watch:
    """Every task id awaited on one event loop from one store, resolved from one read per wake-up."""

    def __init__(self, loop: asyncio.AbstractEventLoop, storage: Storage) -> None:
        self.loop = loop
        self.storage = storage
        self.waiting: dict[str, list[asyncio.Future[TaskRow | None]]] = {}
        self.woken = asyncio.Event()
        self.pump: asyncio.Task[None] | None = None
        self.waker: Waker | None = None

    def add(self, task_id: str) -> asyncio.Future[TaskRow | None]:
        fut: asyncio.Future[TaskRow | None] = self.loop.create_future()
        self.waiting.setdefault(task_id, []).append(fut)
        self.woken.set()  # a new id: read it now, not after the current back-off
        if self.pump is None or self.pump.done():
            self.pump = self.loop.create_task(self._run())
        return fut

    def _bind(self) -> Waker | None:
        """In the executor (a cluster store subscribes to pushes on first use of its wake dir)."""
        directory = self.storage.wake_dir
        if directory is None:
            return None
        try:
            waker = Waker(directory)
        except (OSError, LiteQError):
            return None  # no socket: the bounded re-read interval still finds the outcome
        if waker.sock is None:
            return None
        return waker

    def _readable(self) -> None:
        # Only a finished task can resolve a waiter: enqueues (b"w" alone) cost no read.
        if self.waker is not None and DONE in self.waker.drain():
            self.woken.set()

    def _unlisten(self) -> None:
        waker, self.waker = self.waker, None
        if waker is not None:
            self.loop.remove_reader(waker.fileno())
            waker.close()

    async def _run(self) -> None:
        interval = 0.001
        try:
            # Bound before the first read: a task that finishes after the read still wakes us.
            waker = await run(self._bind)
            if waker is not None:
                try:
                    self.loop.add_reader(waker.fileno(), self._readable)
                except NotImplementedError:
                    waker.close()  # a loop without add_reader (Windows' proactor): re-read on the interval
                else:
                    self.waker = waker
            while True:
                self._prune()
                if not self.waiting:
                    if not await self._linger():
                        return
                    interval = 0.001
                self.woken.clear()
                ids = list(self.waiting)
                try:
                    rows = await run(self.storage.get, ids)
                except Exception as exc:
                    # The store could not be read: every waiter of this round hears why.
                    for task_id in ids:
                        for fut in self.waiting.pop(task_id, []):
                            if not fut.done():
                                fut.set_exception(exc)
                    continue
                for task_id, row in zip(ids, rows, strict=True):
                    if row is None or row.state in FINISHED_STATES:
                        for fut in self.waiting.pop(task_id, []):
                            if not fut.done():
                                fut.set_result(row)
                if not self.waiting:
                    continue
                try:
                    await asyncio.wait_for(self.woken.wait(), interval)
                except asyncio.TimeoutError:
                    interval = min(interval * 2, MAX_POLL_INTERVAL)
        finally:
            self._unlisten()

    async def _linger(self) -> bool:
        """With nobody waiting, keep the socket bound a moment for the next await (binding costs a
        directory change every sender notices); True when a new waiter came meanwhile."""
        deadline = self.loop.time() + LINGER
        while not self.waiting:
            left = deadline - self.loop.time()
            if left <= 0:
                return False
            self.woken.clear()
            try:
                await asyncio.wait_for(self.woken.wait(), left)
            except asyncio.TimeoutError:
                return False
            self._prune()
        return True

    def _prune(self) -> None:
        """Forget waiters that timed out or were cancelled."""
        for task_id in [t for t, futs in self.waiting.items() if all(f.done() for f in futs)]:
            del self.waiting[task_id]


_watches: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[int, _Watch]] = weakref.WeakKeyDictionary()


def _watch(storage: Storage) -> _Watch:
    loop = asyncio.get_running_loop()
    per_loop = _watches.setdefault(loop, {})
    watch = per_loop.get(id(storage))
    if watch is None or watch.storage is not storage:
        watch = per_loop[id(storage)] = _Watch(loop, storage)
    return watch


async def wait_finished(
    storage: Storage,
    ids: Sequence[str],
    timeout: float | None,
    until: Callable[[dict[int, TaskRow | None]], bool] | None = None,
) -> dict[int, TaskRow | None]:
    """The rows of the tasks ``ids`` that finished, by position (``None`` for a task no longer
    stored), once all did, or once ``until(finished)`` is true, or when ``timeout`` seconds pass
    (the caller sees fewer rows than ids)."""
    finished: dict[int, TaskRow | None] = {}
    if not ids:
        return finished
    watch = _watch(storage)
    futs = [watch.add(i) for i in ids]
    index = {fut: n for n, fut in enumerate(futs)}
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        pending: set[asyncio.Future[TaskRow | None]] = set(futs)
        while pending:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            done, pending = await asyncio.wait(pending, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            for fut in done:
                finished[index[fut]] = fut.result()  # a store error is raised here
            if until is not None and done and until(finished):
                break
        return finished
    finally:
        for fut in futs:
            fut.cancel()
