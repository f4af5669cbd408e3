"""``Task``: a registered function, with the ways to queue runs of it (``Signature`` lives in
:mod:`liteq.canvas` and is re-exported here)."""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta, timezone
from typing import Any, Generic, ParamSpec, TypeVar

from .canvas import Signature, TaskHost, group
from .context import current
from .exceptions import ConfigurationError
from .inputs import now_plus, seconds, to_epoch
from .options import DEFAULT_LOST_RETRIES, PER_CALL, TaskOptions, check_call_options, options_doc
from .producer import Sendable
from .result import GroupResult, Result

__all__ = [
    "CHUNK_TASK",
    "DEFAULT_LOST_RETRIES",
    "Signature",
    "Task",
    "TaskHost",
    "TaskOptions",
    "now_plus",
    "run_chunk",
    "seconds",
]

P = ParamSpec("P")
R = TypeVar("R")

#: The built-in task that runs one chunk of ``Task.chunks``.
CHUNK_TASK = "liteq.chunks"


def run_chunk(name: str, items: list[Any], star: bool) -> list[Any]:
    """Run task ``name``'s function over each item of a chunk, in this worker; return the results."""
    host = current().app
    assert host is not None
    fn = host.get_task(name).fn
    return [fn(*item) if star else fn(item) for item in items]


class Task(Generic[P, R]):
    """A function registered with :meth:`LiteQ.task`. Calling it runs it here and now.

    ``delay(*args, **kwargs)`` queues a run and returns a :class:`~liteq.Result`.
    """

    def __init__(self, app: TaskHost, fn: Callable[P, R], name: str, options: TaskOptions) -> None:
        self.app = app
        self.fn = fn
        self.name = name
        self.options = options
        #: True for an ``async def`` task: a pool child runs it on its event loop, many at once.
        self.is_async = inspect.iscoroutinefunction(fn)
        # Name and docs of the function, but not its __dict__: a Task wrapping another app's Task
        # must keep its own app and name.
        functools.update_wrapper(self, fn, updated=())

    def __repr__(self) -> str:
        return f"<Task {self.name} queue={self.options.queue!r}>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(*args, **kwargs)

    def __reduce__(self) -> tuple[Any, ...]:
        # Tasks travel to other processes by name; the receiving side looks them up in its app.
        return (_task_by_name, (self.app, self.name))

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> Result:
        """Queue a run with these arguments; return its :class:`~liteq.Result` once it is stored."""
        return self.app.producer.send(self, args, kwargs)

    def apply_async(
        self, args: tuple[Any, ...] | list[Any] = (), kwargs: dict[str, Any] | None = None, **options: Any
    ) -> Result:
        """Queue a run with per-call options (each overrides the task's own); an unknown option raises
        :class:`~liteq.ConfigurationError`. ``countdown`` or ``eta`` delay the start; ``expires`` makes
        a task that has not started by then ``expired``; ``idempotency_key`` makes retried enqueues
        create one task only. The options (:data:`liteq.options.PER_CALL`):

        """
        return self.app.producer.send(self, tuple(args), dict(kwargs or {}), **options)

    async def adelay(self, *args: P.args, **kwargs: P.kwargs) -> Result:
        """:meth:`delay` from a coroutine: the store write runs off the event loop (see
        :mod:`liteq.aio`); concurrent calls share one transaction."""
        from . import aio  # here, not at the top: asyncio stays out of processes that never await

        producer = self.app.producer
        return Result(producer.owner, await aio.send(producer, self, args, kwargs, {}))

    async def aapply_async(
        self, args: tuple[Any, ...] | list[Any] = (), kwargs: dict[str, Any] | None = None, **options: Any
    ) -> Result:
        """:meth:`apply_async` from a coroutine; ``options`` are :meth:`apply_async`'s (``countdown``,
        ``eta``, ``priority``, ``queue``...). Never blocks the event loop."""
        from . import aio

        check_call_options(options)  # here, not in the executor: a misspelt option fails at once
        producer = self.app.producer
        return Result(producer.owner, await aio.send(producer, self, tuple(args), dict(kwargs or {}), options))

    def repeat(
        self,
        *args: Any,
        every: float | timedelta,
        times: int | None = None,
        until: datetime | None = None,
        start: datetime | None = None,
        **kwargs: Any,
    ) -> list[Result]:
        """Queue ``times`` runs (or runs up to ``until``), ``every`` apart, from ``start`` (default now).

        "Send this reminder 3 times, every hour": ``remind.repeat(user, every=3600, times=3)``.
        All runs are stored at once, in one transaction; cancel the ones left with ``Result.cancel()``.
        """
        step = seconds(every, "every")
        if not step:
            raise ConfigurationError("every must be a positive duration")
        first = to_epoch(start, "start") if start is not None else time.time()
        if times is None:
            if until is None:
                raise ConfigurationError("repeat() needs times=N or until=aware_datetime")
            times = int((to_epoch(until, "until") - first) // step) + 1
        if isinstance(times, bool) or not isinstance(times, int) or times < 1:
            raise ConfigurationError(f"times must be an integer >= 1, not {times!r}")
        calls = [
            self.s(*args, **kwargs).set(eta=datetime.fromtimestamp(first + i * step, timezone.utc))
            for i in range(times)
        ]
        return self.app.producer.send_many(calls)

    def map(self, items: Iterable[Any]) -> GroupResult:
        """Run the task once per item, in parallel: a group of ``task.s(item)``."""
        return group([self.s(item) for item in items]).apply_async(app=self.app)  # type: ignore[no-any-return]

    def starmap(self, items: Iterable[Iterable[Any]]) -> GroupResult:
        """Run the task once per argument tuple: a group of ``task.s(*item)``."""
        return group([self.s(*item) for item in items]).apply_async(app=self.app)  # type: ignore[no-any-return]

    def chunks(self, items: Iterable[Any], n: int, *, star: bool = False) -> GroupResult:
        """Run the task over many items in tasks of ``n`` items each (one task per chunk, not per
        item); ``get()`` returns one list of results per chunk. ``star`` unpacks each item."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigurationError(f"chunk size must be an integer >= 1, not {n!r}")
        self.app.get_task(CHUNK_TASK)  # registers the built-in runner where it is not yet
        batch = [list(item) if star else item for item in items]
        parts = [batch[i : i + n] for i in range(0, len(batch), n)]
        sigs = [
            Signature(CHUNK_TASK, (self.name, part, star), app=self.app).set(queue=self.options.queue) for part in parts
        ]
        return group(sigs).apply_async(app=self.app)  # type: ignore[no-any-return]

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        """A frozen call of this task, to enqueue later or to compose."""
        return Signature(self.name, args, kwargs, app=self.app)

    def si(self, *args: Any, **kwargs: Any) -> Signature:
        """An immutable signature: in a chain it does not receive the previous result."""
        return Signature(self.name, args, kwargs, app=self.app, immutable=True)


Task.apply_async.__doc__ = (Task.apply_async.__doc__ or "") + options_doc(PER_CALL.values())


def _task_by_name(app: TaskHost, name: str) -> Sendable:
    return app.get_task(name)
