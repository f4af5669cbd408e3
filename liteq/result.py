"""``Result``: the caller's handle on a queued task."""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterator
from typing import Any, Protocol, TypeVar

from .exceptions import (
    ResultExpired,
    ResultTimeout,
    StoreCorrupt,
    TaskCancelled,
    TaskExpired,
    TaskFailed,
    TaskTimedOut,
)
from .message import ErrorInfo, Progress
from .serializer import Serializer
from .storage.contract import Storage
from .storage.records import TaskRow
from .storage.states import CANCELLED, EXPIRED, FINISHED_STATES, SUCCEEDED

__all__ = ["GroupResult", "Result", "ResultSource"]


class ResultSource(Protocol):
    """What a result handle reads through: the app, or a worker's :class:`~liteq.runtime.Runtime`."""

    @property
    def storage(self) -> Storage:
        """The store the task lives in."""
        ...

    @property
    def serializer(self) -> Serializer:
        """Decodes the stored result."""
        ...


# Waiting starts by re-checking every millisecond and backs off to this; a write by this process
# wakes the waiter at once.
MAX_POLL_INTERVAL = 0.05


def failure(row: TaskRow) -> TaskFailed:
    """The exception that describes a task that ended without success."""
    info = ErrorInfo.decode(row.error)
    reason = row.reason or row.state
    kwargs: dict[str, Any] = {
        "type": info.type if info else "",
        "message": info.message if info else _REASONS.get(reason, reason),
        "traceback": info.traceback if info else "",
        "reason": reason,
        "state": row.state,
    }
    if row.state == CANCELLED:
        return TaskCancelled(row.id, **kwargs)
    if row.state == EXPIRED:
        return TaskExpired(row.id, **kwargs)
    if reason == "timeout":
        return TaskTimedOut(row.id, **kwargs)
    return TaskFailed(row.id, **kwargs)


T = TypeVar("T")


def _wait_until(app: ResultSource, check: Callable[[], T | None], timeout: float | None, late: Callable[[], str]) -> T:
    """Re-run ``check`` after every write to the store until it returns a value, or raise
    :class:`ResultTimeout` with ``late()`` as the message. Writes by this process wake the waiter at
    once, other processes' through the store's wake-up socket; the re-check interval only bounds
    the wait where no wake-up can arrive."""
    storage = app.storage
    deadline = None if timeout is None else time.monotonic() + timeout
    interval = 0.001
    storage.listen()
    while True:
        version = storage.version
        out = check()
        if out is not None:
            return out
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            raise ResultTimeout(late())
        storage.wait(version, interval if left is None else min(interval, left))
        interval = min(interval * 2, MAX_POLL_INTERVAL)


_REASONS = {
    "worker lost": "the worker process running the task died (killed, crashed or out of memory) too many times",
    "cancelled": "the task was cancelled",
    "expired": "the task did not start before its expires deadline",
}


class Result:
    """A queued task's state and outcome, readable from any process that opens the same store.

    Results stay readable until the task's ``result_ttl`` passes; after that reading raises
    :class:`~liteq.ResultExpired` rather than returning ``None``.
    """

    __slots__ = ("app", "id", "parent")

    def __init__(self, app: ResultSource, id: str, parent: Result | GroupResult | None = None) -> None:
        self.app = app
        self.id = id
        #: The previous step's handle when this task is part of a chain (``None`` otherwise).
        self.parent = parent

    def __repr__(self) -> str:
        return f"<Result {self.id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Result) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def info(self) -> TaskRow:
        """Everything the store holds about the task (with every attempt's error)."""
        row = self.app.storage.get([self.id], history=True)[0]
        return self._check(row)

    def _row(self) -> TaskRow:
        return self._check(self.app.storage.get([self.id])[0])

    def _check(self, row: TaskRow | None, now: float | None = None) -> TaskRow:
        if row is None:
            raise ResultExpired(
                f"no task {self.id} in store {self.app.storage.location}: its result outlived result_ttl and "
                "was pruned, or the id is wrong"
            )
        if row.result_expires_at is not None and row.result_expires_at <= (time.time() if now is None else now):
            raise ResultExpired(
                f"the result of task {self.id} expired at {time.ctime(row.result_expires_at)} (result_ttl); "
                "raise result_ttl to keep results longer"
            )
        return row

    @property
    def state(self) -> str:
        """One of ``pending``, ``scheduled``, ``running``, ``succeeded``, ``failed``, ``cancelled``, ``expired``."""
        return self._row().state

    def ready(self) -> bool:
        """True once the task has finished, whatever the outcome."""
        return self._row().state in FINISHED_STATES

    def successful(self) -> bool:
        """True when the task finished and succeeded."""
        return self._row().state == SUCCEEDED

    def failed(self) -> bool:
        """True when the task finished without success (failed, cancelled or expired)."""
        return self._row().state in FINISHED_STATES - {SUCCEEDED}

    @property
    def progress(self) -> Progress | None:
        """The last progress the task reported with ``current().progress(...)``, or None."""
        return Progress.decode(self._row().progress)

    def cancel(self) -> bool:
        """Cancel the task: a waiting one never runs; a running one is asked to stop.

        Returns True when the task is (or will be) cancelled, False when it had already finished.
        """
        state = self.app.storage.cancel([self.id])[0]
        if state is None:
            self._check(None)
        return state in (CANCELLED, "running")

    def wait(self, timeout: float | None = None) -> TaskRow:
        """Block until the task finishes; return its row. Raises :class:`ResultTimeout`."""
        last: list[TaskRow] = []

        def finished() -> TaskRow | None:
            row = self._row()
            last[:] = [row]
            return row if row.state in FINISHED_STATES else None

        return _wait_until(
            self.app,
            finished,
            timeout,
            lambda: (
                f"task {self.id} is still {last[0].state} after {timeout}s; call get() again later, or raise timeout"
            ),
        )

    def get(self, timeout: float | None = None, *, propagate: bool = True) -> Any:
        """Wait for the task and return its value.

        Raises :class:`~liteq.TaskFailed` (or its subclasses ``TaskTimedOut``, ``TaskCancelled``,
        ``TaskExpired``) carrying the remote exception's type, message and traceback; with
        ``propagate=False`` returns that exception instead. Raises :class:`~liteq.ResultTimeout`
        when ``timeout`` seconds pass first.
        """
        return self._outcome(self.wait(timeout), propagate)

    def _outcome(self, row: TaskRow, propagate: bool) -> Any:
        """A finished row's value, or its failure raised (``propagate``) or returned."""
        if row.state != SUCCEEDED:
            exc = failure(row)
            if propagate:
                raise exc
            return exc
        return _value(self.app, row)

    async def aget(self, timeout: float | None = None, *, propagate: bool = True) -> Any:
        """:meth:`get` from a coroutine (also ``await result``): waits without blocking the event
        loop, woken by the same notification as :meth:`get` (see :mod:`liteq.aio`)."""
        return self._outcome(await self._await_row(timeout), propagate)

    def __await__(self) -> Generator[Any, None, Any]:
        return self.aget().__await__()

    async def _await_row(self, timeout: float | None = None) -> TaskRow:
        """:meth:`wait` from a coroutine: the finished task's row. Raises :class:`ResultTimeout`."""
        from . import aio  # here, not at the top: asyncio stays out of processes that never await

        done = await aio.wait_finished(self.app.storage, [self.id], timeout)
        if not done:
            rows = await aio.run(self.app.storage.get, [self.id])
            state = rows[0].state if rows[0] is not None else "unfinished"
            raise ResultTimeout(
                f"task {self.id} is still {state} after {timeout}s; await aget() again later, or raise timeout"
            )
        return self._check(done[0])


class GroupResult:
    """The handle of a group (or a chord's header): member results in order.

    ``app.group_result(id)`` rebuilds it from its id in any process, for as long as the members'
    results are kept.
    """

    def __init__(
        self, app: ResultSource, id: str, results: list[Result], parent: Result | GroupResult | None = None
    ) -> None:
        self.app = app
        self.id = id
        self.results = results
        #: The previous step's handle when this group is part of a chain.
        self.parent = parent

    def __repr__(self) -> str:
        return f"<GroupResult {self.id} of {len(self.results)}>"

    def __len__(self) -> int:
        return len(self.results)

    def __iter__(self) -> Iterator[Result]:
        return iter(self.results)

    def __getitem__(self, i: int) -> Result:
        return self.results[i]

    def _rows(self) -> list[TaskRow]:
        rows = self.app.storage.get([r.id for r in self.results])
        return [r._check(row) for r, row in zip(self.results, rows, strict=True)]

    def completed_count(self) -> int:
        """How many members finished successfully."""
        return sum(1 for row in self._rows() if row.state == SUCCEEDED)

    def finished_count(self) -> int:
        """How many members finished, whatever the outcome."""
        return sum(1 for row in self._rows() if row.state in FINISHED_STATES)

    @property
    def progress(self) -> float:
        """Fraction of members finished, for a progress bar (1.0 for an empty group)."""
        return self.finished_count() / len(self.results) if self.results else 1.0

    def ready(self) -> bool:
        """True once every member finished."""
        return all(row.state in FINISHED_STATES for row in self._rows())

    def successful(self) -> bool:
        """True once every member succeeded."""
        return all(row.state == SUCCEEDED for row in self._rows())

    def failed(self) -> bool:
        """True when any member finished without success."""
        return any(row.state in FINISHED_STATES - {SUCCEEDED} for row in self._rows())

    def cancel(self) -> int:
        """Cancel every member not finished yet; returns how many were (or will be) cancelled."""
        states = self.app.storage.cancel([r.id for r in self.results])
        return sum(1 for s in states if s in (CANCELLED, "running"))

    def get(self, timeout: float | None = None, *, propagate: bool = True) -> list[Any]:
        """Wait for every member; return their values in order.

        The first failed member (in order) raises its :class:`~liteq.TaskFailed` (with
        ``propagate=False`` the exception takes its place in the list).
        """
        unfinished = [0]

        def finished() -> list[TaskRow] | None:
            rows = self._rows()
            failed = next((row for row in rows if row.state in FINISHED_STATES - {SUCCEEDED}), None)
            if failed is not None and propagate:
                raise failure(failed)
            unfinished[0] = sum(1 for row in rows if row.state not in FINISHED_STATES)
            return None if unfinished[0] else rows

        rows = _wait_until(
            self.app,
            finished,
            timeout,
            lambda: (
                f"group {self.id}: {unfinished[0]} of {len(self.results)} member(s) still unfinished after {timeout}s"
            ),
        )
        return [_value(self.app, row) if row.state == SUCCEEDED else failure(row) for row in rows]

    async def aget(self, timeout: float | None = None, *, propagate: bool = True) -> list[Any]:
        """:meth:`get` from a coroutine (also ``await group_result``): values in order, without
        blocking the event loop."""
        from . import aio

        members = self.results

        def failed(done: dict[int, TaskRow | None]) -> bool:
            return propagate and any(row is None or row.state != SUCCEEDED for row in done.values())

        done = await aio.wait_finished(self.app.storage, [r.id for r in members], timeout, failed)
        if propagate:
            # As get(): the first failed member in order, among those finished so far.
            for n in sorted(done):
                row = members[n]._check(done[n])
                if row.state != SUCCEEDED:
                    raise failure(row)
        if len(done) < len(members):
            raise ResultTimeout(
                f"group {self.id}: {len(members) - len(done)} of {len(members)} member(s) still unfinished "
                f"after {timeout}s"
            )
        rows = [r._check(done[n]) for n, r in enumerate(members)]
        return [_value(self.app, row) if row.state == SUCCEEDED else failure(row) for row in rows]

    def __await__(self) -> Generator[Any, None, list[Any]]:
        return self.aget().__await__()


def _value(app: ResultSource, row: TaskRow) -> Any:
    """The decoded result of a succeeded row; a result blob that is missing or damaged raises
    :class:`~liteq.StoreCorrupt` for this task only (never a silent ``None``)."""
    if row.damaged is not None:
        raise StoreCorrupt(f"the result of task {row.id} is lost: {row.damaged}", path=app.storage.location)
    if row.result is None:
        return None
    return app.serializer.loads(row.result)
