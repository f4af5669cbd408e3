"""``Task`` (a registered function) and ``Signature`` (a frozen call of one)."""

from __future__ import annotations

import functools
import inspect
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from . import aio
from .exceptions import ConfigurationError
from .inputs import aware, now_plus, seconds
from .ratelimit import check_rate, parse_rate
from .retries import DEFAULT_BACKOFF, DEFAULT_BACKOFF_MAX

if TYPE_CHECKING:
    from .app import LiteQ
    from .result import GroupResult, Result

__all__ = ["DEFAULT_LOST_RETRIES", "Signature", "Task", "TaskOptions", "aware", "now_plus", "seconds"]

P = ParamSpec("P")
R = TypeVar("R")

#: Extra runs a task gets, beyond its ``retries``, when its worker dies under it (crash, OOM kill).
DEFAULT_LOST_RETRIES = 2
#: The built-in task that runs one chunk of ``Task.chunks``.
CHUNK_TASK = "liteq.chunks"


def run_chunk(name: str, items: list[Any], star: bool) -> list[Any]:
    """Run task ``name``'s function over each item of a chunk, in this worker; return the results."""
    from .context import current

    app = current().app
    assert app is not None
    fn = app.get_task(name).fn
    return [fn(*item) if star else fn(item) for item in items]


def _positive(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or not math.isfinite(value):
        raise ConfigurationError(f"{what} must be a positive, finite number, not {value!r}")
    return check_rate(float(value), what)


def _int(value: Any, what: str, low: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or (low is not None and value < low):
        bound = f" >= {low}" if low is not None else ""
        raise ConfigurationError(f"{what} must be an integer{bound}, not {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class TaskOptions:
    """A task's options, checked when the task is declared. Durations are float seconds."""

    queue: str
    priority: int = 0
    retries: int = 0
    retry_backoff: float = DEFAULT_BACKOFF
    retry_backoff_max: float = DEFAULT_BACKOFF_MAX
    retry_jitter: bool = True
    timeout: float | None = None
    soft_timeout: float | None = None
    expires: float | None = None
    result_ttl: float | None = None
    ignore_result: bool = False
    max_attempts: int | None = None
    unique: bool | Callable[..., Any] = False
    """True: one waiting copy per (name, arguments); a function of the arguments: one per key."""
    lock: str | bool | None = None
    """True: one run of this task at a time; a template (``"report-{0}"``, ``"user-{user_id}"``)
    formatted with the arguments names the lock, shared by any task using the same key."""
    rate_limit: float | None = None
    """Starts per second across every worker of the store (given as ``"100/m"``)."""

    @classmethod
    def build(cls, queue: str, **opts: Any) -> TaskOptions:
        """Check and normalise user options; raises :class:`ConfigurationError` naming the bad one."""
        if not isinstance(queue, str) or not queue:
            raise ConfigurationError(f"queue must be a non-empty string, not {queue!r}")
        out: dict[str, Any] = {"queue": queue}
        for key, value in opts.items():
            if value is None:
                continue
            if key in ("priority",):
                out[key] = _int(value, key)
            elif key == "retries":
                out[key] = _int(value, key, 0)
            elif key == "max_attempts":
                out[key] = _int(value, key, 1)
            elif key in ("retry_backoff", "retry_backoff_max", "timeout", "soft_timeout", "expires", "result_ttl"):
                if key == "retry_backoff" and isinstance(value, bool):
                    value = DEFAULT_BACKOFF if value else 0.0
                out[key] = seconds(value, key)
            elif key in ("retry_jitter", "ignore_result"):
                out[key] = bool(value)
            elif key == "unique":
                if not (isinstance(value, bool) or callable(value)):
                    raise ConfigurationError(f"unique must be True/False or a function of the arguments, not {value!r}")
                out[key] = value
            elif key == "lock":
                if not isinstance(value, (bool, str)) or value == "":
                    raise ConfigurationError(f"lock must be True or a key template such as 'user-{{0}}', not {value!r}")
                out[key] = value
            elif key == "rate_limit":
                out[key] = parse_rate(value) if isinstance(value, str) else _positive(value, key)
            else:
                raise ConfigurationError(f"unknown task option {key!r}")
        o = cls(**out)
        if o.timeout is not None and o.timeout <= 0:
            raise ConfigurationError(f"timeout must be > 0 seconds, not {o.timeout}")
        if o.soft_timeout is not None and o.timeout is not None and o.soft_timeout >= o.timeout:
            raise ConfigurationError(
                f"soft_timeout ({o.soft_timeout}s) must be shorter than timeout ({o.timeout}s) to run first"
            )
        return o

    def attempts_for(self, retries: int | None = None) -> int:
        """The stored attempt cap: explicit ``max_attempts``, else retries + 1 + lost-worker allowance."""
        if self.max_attempts is not None:
            return self.max_attempts
        return (self.retries if retries is None else retries) + 1 + DEFAULT_LOST_RETRIES


class Task(Generic[P, R]):
    """A function registered with :meth:`LiteQ.task`. Calling it runs it here and now.

    ``delay(*args, **kwargs)`` queues a run and returns a :class:`~liteq.Result`.
    """

    def __init__(self, app: LiteQ, fn: Callable[P, R], name: str, options: TaskOptions) -> None:
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
        return self.app._send(self, args, kwargs)

    def apply_async(
        self,
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        countdown: float | timedelta | None = None,
        eta: datetime | None = None,
        expires: float | timedelta | datetime | None = None,
        priority: int | None = None,
        queue: str | None = None,
        retries: int | None = None,
        idempotency_key: str | None = None,
        result_ttl: float | timedelta | None = None,
        task_id: str | None = None,
    ) -> Result:
        """Queue a run with per-call options (each overrides the task's own).

        ``countdown`` (seconds) or ``eta`` (a timezone-aware datetime) delay the start; ``expires``
        (seconds from now, or an aware datetime) makes a task that has not started by then
        ``expired``; ``idempotency_key`` makes retried enqueues create one task only.
        """
        return self.app._send(
            self,
            tuple(args),
            dict(kwargs or {}),
            countdown=countdown,
            eta=eta,
            expires=expires,
            priority=priority,
            queue=queue,
            retries=retries,
            idempotency_key=idempotency_key,
            result_ttl=result_ttl,
            task_id=task_id,
        )

    async def adelay(self, *args: P.args, **kwargs: P.kwargs) -> Result:
        """:meth:`delay` from a coroutine: the store write runs off the event loop (see
        :mod:`liteq.aio`); concurrent calls share one transaction."""
        result: Result = await aio.send(self, args, kwargs, {})
        return result

    async def aapply_async(
        self, args: tuple[Any, ...] | list[Any] = (), kwargs: dict[str, Any] | None = None, **options: Any
    ) -> Result:
        """:meth:`apply_async` from a coroutine; ``options`` are :meth:`apply_async`'s (``countdown``,
        ``eta``, ``priority``, ``queue``...). Never blocks the event loop."""
        unknown = sorted(set(options) - _call_options())
        if unknown:
            raise ConfigurationError(
                f"aapply_async() got unknown option(s) {unknown}; it takes {sorted(_call_options())}"
            )
        result: Result = await aio.send(self, tuple(args), dict(kwargs or {}), options)
        return result

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
        first = aware(start, "start") if start is not None else time.time()
        if times is None:
            if until is None:
                raise ConfigurationError("repeat() needs times=N or until=aware_datetime")
            times = int((aware(until, "until") - first) // step) + 1
        if isinstance(times, bool) or not isinstance(times, int) or times < 1:
            raise ConfigurationError(f"times must be an integer >= 1, not {times!r}")
        from datetime import timezone

        calls = [
            self.s(*args, **kwargs).set(eta=datetime.fromtimestamp(first + i * step, timezone.utc))
            for i in range(times)
        ]
        return self.app.enqueue_many(calls)

    def map(self, items: Iterable[Any]) -> GroupResult:
        """Run the task once per item, in parallel: a group of ``task.s(item)``."""
        from .canvas import group

        return group([self.s(item) for item in items]).apply_async(app=self.app)  # type: ignore[no-any-return]

    def starmap(self, items: Iterable[Iterable[Any]]) -> GroupResult:
        """Run the task once per argument tuple: a group of ``task.s(*item)``."""
        from .canvas import group

        return group([self.s(*item) for item in items]).apply_async(app=self.app)  # type: ignore[no-any-return]

    def chunks(self, items: Iterable[Any], n: int, *, star: bool = False) -> GroupResult:
        """Run the task over many items in tasks of ``n`` items each (one task per chunk, not per
        item); ``get()`` returns one list of results per chunk. ``star`` unpacks each item."""
        from .canvas import group

        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigurationError(f"chunk size must be an integer >= 1, not {n!r}")
        runner = self.app.get_task(CHUNK_TASK)
        batch = [list(item) if star else item for item in items]
        parts = [batch[i : i + n] for i in range(0, len(batch), n)]
        sigs = [runner.s(self.name, part, star).set(queue=self.options.queue) for part in parts]
        return group(sigs).apply_async(app=self.app)  # type: ignore[no-any-return]

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        """A frozen call of this task, to enqueue later or to compose."""
        return Signature(self.name, args, kwargs, app=self.app)

    def si(self, *args: Any, **kwargs: Any) -> Signature:
        """An immutable signature: in a chain it does not receive the previous result."""
        return Signature(self.name, args, kwargs, app=self.app, immutable=True)


@functools.cache
def _call_options() -> frozenset[str]:
    """The per-call option names of :meth:`Task.apply_async` (what ``aapply_async`` accepts)."""
    params = inspect.signature(Task.apply_async).parameters.values()
    return frozenset(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY)


def _task_by_name(app: LiteQ, name: str) -> Task[Any, Any]:
    return app.get_task(name)


@dataclass(frozen=True)
class Signature:
    """A task name with arguments and call options, ready to send (``sig.delay()``)."""

    name: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    app: LiteQ | None = field(default=None, compare=False, repr=False)
    immutable: bool = False

    def __or__(self, other: Any) -> Any:
        from .canvas import chain

        return chain(self, other)

    def set(self, **options: Any) -> Signature:
        """A copy with call options (``queue=``, ``priority=``, ``countdown=``...) added."""
        return replace(self, options={**self.options, **options})

    def _task(self) -> Task[Any, Any]:
        if self.app is None:
            raise ConfigurationError(f"signature of {self.name!r} is not bound to an app")
        return self.app.get_task(self.name)

    def delay(self, *args: Any, **kwargs: Any) -> Result:
        """Send it, with extra arguments appended."""
        return self.apply_async(args, kwargs)

    def apply_async(self, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None, **options: Any) -> Result:
        """Send it, with extra arguments and options."""
        return self._task().apply_async(
            (*self.args, *args), {**self.kwargs, **(kwargs or {})}, **{**self.options, **options}
        )
