"""``LiteQ``: the application object — task registry, enqueue, results, and the store behind them."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, overload

from .bootstrap import RuntimeSpec, describe, find_owner, importable_tasks, runtime_from_spec
from .canvas import Signature
from .exceptions import ConfigurationError, ResultExpired
from .inputs import check_duration, seconds
from .options import DECLARED, TaskOptions, options_doc
from .producer import Producer
from .registry import Registry, checked_include, task_name
from .result import GroupResult, Result
from .runtime import Runtime
from .schedule import Schedule
from .scheduler import schedule_info
from .serializer import DEFAULT_MAX_SIZE, Serializer, get_serializer
from .signals import stopping_on_signals
from .storage import Storage, open_storage
from .task import Task
from .worker import DEFAULT_LEASE, Worker

if TYPE_CHECKING:
    from .pool import WorkerPool

__all__ = ["DEFAULT_QUEUE", "DEFAULT_RESULT_TTL", "DEFAULT_STORE", "LiteQ"]

P = ParamSpec("P")
R = TypeVar("R")

#: Where ``LiteQ()`` keeps its store when given no path: a directory under the working directory.
DEFAULT_STORE = "liteq-data"
#: The queue of tasks that name none.
DEFAULT_QUEUE = "default"
#: Seconds a finished task and its result stay readable (one day, like Celery's default).
DEFAULT_RESULT_TTL = 24 * 3600.0


class LiteQ:
    """A task queue on one store.

    ``store`` is a directory (created if missing), ``sqlite:///abs/dir``, ``memory://``, or a
    :class:`~liteq.storage.Storage`. Options are keyword-only:

    - ``serializer``: ``"msgpack"`` (default) or ``"pickle"`` (opt-in, trusted stores only).
    - ``durability``: ``"normal"`` (default; never corrupts, may lose the last commits on power
      loss) or ``"full"`` (``synchronous=FULL``: survives power loss, slower enqueue).
    - ``result_ttl``: seconds finished tasks and results are kept (default one day).
    - ``default_queue``: the queue of tasks that name none.
    - ``immediate``: run each task in the caller at ``delay()``, through the same store (tests).
    - ``busy_timeout``: seconds a write waits for another process's lock before ``StoreBusy``.
    - ``lease``: seconds a claimed task is leased (extended while it runs).
    - ``max_payload_size``: encoded arguments or results above this many bytes are refused.
    - ``blob_threshold``: values above this many bytes are kept outside the hot table.
    - ``include``: modules a worker may import to find a task that is not registered yet (what
      ``liteq worker STORE --include mod`` passes). A stored task name is only a string anyone
      with write access to the store chooses, so no other module is ever imported because of it:
      such a task fails as ``unknown task`` (payload kept, ``liteq retry`` runs it again).
    - ``token``: the shared secret of a cluster store (``liteq://host:port``); default ``LITEQ_TOKEN``.
    - ``mode``: permissions of a store directory this app creates (default ``0o700``: only this
      user); its files get the same bits without execute (``0o600``). ``0o770`` shares the store
      with the directory's group.
    """

    def __init__(
        self,
        store: str | os.PathLike[str] | Storage = DEFAULT_STORE,
        *,
        serializer: str | Serializer = "msgpack",
        durability: str = "normal",
        result_ttl: float | timedelta = DEFAULT_RESULT_TTL,
        default_queue: str = DEFAULT_QUEUE,
        immediate: bool = False,
        busy_timeout: float | None = None,
        lease: float = DEFAULT_LEASE,
        max_payload_size: int = DEFAULT_MAX_SIZE,
        blob_threshold: int | None = None,
        include: Iterable[str] = (),
        mode: int | None = None,
        token: str | None = None,
    ) -> None:
        ttl = seconds(result_ttl, "result_ttl")
        assert ttl is not None
        if not isinstance(default_queue, str) or not default_queue:
            raise ConfigurationError(f"default_queue must be a non-empty string, not {default_queue!r}")
        lease = check_duration(lease, "lease", positive=True)
        if max_payload_size < 1:
            raise ConfigurationError(f"max_payload_size must be a positive number of bytes, not {max_payload_size!r}")
        include = checked_include(include)
        self.serializer = get_serializer(serializer, max_size=max_payload_size)
        self.result_ttl = ttl
        self.default_queue = default_queue
        self.immediate = bool(immediate)
        self.lease = float(lease)
        self.durability = durability
        if durability not in ("normal", "full"):
            raise ConfigurationError(f"durability must be 'normal' or 'full', not {durability!r}")
        # Store options are passed only when given: the store has its own defaults (open_storage).
        remote_options: dict[str, Any] = {}
        if busy_timeout is not None:
            remote_options["busy_timeout"] = check_duration(busy_timeout, "busy_timeout")
        if blob_threshold is not None:
            remote_options["blob_threshold"] = blob_threshold
        if mode is not None:  # a local store's permissions
            remote_options["mode"] = mode
        if token is not None:
            # Only a cluster store (liteq://) takes a token; a local store refuses it below.
            if not isinstance(store, (str, os.PathLike)) or not os.fspath(store).startswith(("liteq://", "liteqs://")):
                raise ConfigurationError("token= is for a cluster store (liteq://host:port); a local store needs none")
            remote_options["token"] = token
        self.storage: Storage = open_storage(
            store,
            result_ttl=ttl,
            durability=durability,
            **remote_options,
        )
        self._options: dict[str, Any] = {
            "serializer": self.serializer.name,
            "durability": durability,
            "result_ttl": ttl,
            "default_queue": default_queue,
            "lease": self.lease,
            "max_payload_size": max_payload_size,
            **remote_options,
        }
        self.registry = Registry(self, default_queue=default_queue, include=include)
        #: What workers run tasks against. Its origin is the module that created the app, so a
        #: spawned child can find this very object there.
        self.runtime = Runtime(
            self.registry,
            self.serializer,
            self.storage,
            origin=sys._getframe(1).f_globals.get("__name__"),
            recipe=self._recipe,
        )
        self.producer = Producer(
            self, self.registry.get, self.serializer, self.storage, run_now=self._run_now if self.immediate else None
        )
        self._immediate_worker: Worker | None = None

    @property
    def tasks(self) -> dict[str, Task[Any, Any]]:
        """The registered tasks by name."""
        return self.registry.tasks

    @property
    def schedules(self) -> dict[str, Schedule]:
        """The periodic schedules by name."""
        return self.registry.schedules

    @property
    def include(self) -> tuple[str, ...]:
        """Modules a worker may import to find a task by name (see the class doc)."""
        return self.registry.include

    def __repr__(self) -> str:
        return f"LiteQ({self.storage.location!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        # An app travels to child processes as a recipe, never as open connections.
        return (_rebuild_app, (self.spec(),))

    def spec(self) -> RuntimeSpec:
        """A picklable recipe that rebuilds this app's runtime in another process (see :mod:`liteq.bootstrap`)."""
        return describe(self.runtime, self, {**self._options, "include": self.include})

    def _recipe(self) -> tuple[Any, ...]:
        return (runtime_from_spec, (self.spec(),))

    def close(self) -> None:
        """Close the store's connections. Idempotent."""
        if self._immediate_worker is not None:
            self._immediate_worker.close()
        self.storage.close()

    def __enter__(self) -> LiteQ:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- registry ----------------------------------------------------------------------------------

    @overload
    def task(self, fn: Callable[P, R], /) -> Task[P, R]: ...

    @overload
    def task(self, *, name: str | None = ..., **options: Any) -> Callable[[Callable[P, R]], Task[P, R]]: ...

    def task(  # type: ignore[misc]  # mypy reads **options of the overloads as a separate parameter
        self,
        fn: Callable[..., Any] | None = None,
        /,
        *,
        name: str | None = None,
        **options: Any,
    ) -> Any:
        """Register a function as a task: ``@app.task`` or ``@app.task(name=..., retries=3, ...)``.

        The name defaults to ``module.qualname``; two tasks with one name raise
        :class:`ConfigurationError`, and so does an unknown option. The options
        (:data:`liteq.options.DECLARED`):

        """

        def register(f: Callable[..., Any]) -> Task[Any, Any]:
            if not callable(f):
                raise ConfigurationError(f"@app.task needs a function, not {f!r}")
            if isinstance(f, Task):  # a task of another app: register its function here
                f = f.fn
            declared = dict(options)
            queue = declared.pop("queue", None)
            opts = TaskOptions.build(self.default_queue if queue is None else queue, **declared)
            return self.registry.register(f, name or task_name(f), opts)

        if fn is not None:
            return register(fn)
        return register

    def periodic(
        self,
        *,
        cron: str | None = None,
        every: float | timedelta | None = None,
        tz: str = "UTC",
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: dict[str, Any] | None = None,
        catch_up: str = "coalesce",
        name: str | None = None,
        **task_options: Any,
    ) -> Callable[[Callable[..., Any]], Task[Any, Any]]:
        """Run a task on a schedule: ``@app.periodic(cron="*/5 * * * *", tz="Europe/Paris")`` or
        ``@app.periodic(every=timedelta(seconds=30))``.

        Every running pool drives the schedules and each slot fires once however many pools run.
        ``args``/``kwargs`` are passed to each run; ``catch_up`` is ``"coalesce"`` (missed slots run
        once), ``"all"`` or ``"none"``. Other options are task options (``queue``, ``retries``...).
        Applied to an existing task, it adds a schedule (``name`` tells two schedules apart).
        An invalid cron expression or zone raises :class:`ConfigurationError` here.
        """
        interval = seconds(every, "every")
        # Checked before anything is registered, so a corrected declaration can simply be retried.
        Schedule(name or "periodic", "", cron, interval, tz, tuple(args), dict(kwargs or {}), catch_up)

        def register(fn: Callable[..., Any]) -> Task[Any, Any]:
            task = fn if isinstance(fn, Task) else self.task(**task_options)(fn)
            self.registry.add_schedule(
                Schedule(name or task.name, task.name, cron, interval, tz, tuple(args), dict(kwargs or {}), catch_up)
            )
            return task

        return register

    def pause_periodic(self, name: str) -> None:
        """Stop firing schedule ``name`` (in every pool, across restarts) until resumed."""
        self._schedule_op(name, True)

    def resume_periodic(self, name: str) -> None:
        """Fire schedule ``name`` again from its next slot (slots missed while paused are skipped)."""
        self._schedule_op(name, False)

    def _schedule_op(self, name: str, paused: bool) -> None:
        if name not in self.schedules and name not in self.storage.schedule_states([name]):
            raise ConfigurationError(f"no periodic schedule named {name!r}; known: {sorted(self.schedules)}")
        self.storage.register_schedules([name])
        self.storage.set_schedule_paused(name, paused)

    def periodic_info(self, now: float | None = None) -> list[dict[str, Any]]:
        """Each schedule with its task, timing, pause state, last and next fire times (epoch)."""
        return schedule_info(self.runtime, now)

    def include_modules(self, modules: Iterable[str]) -> None:
        """Add modules to ``include`` (what ``liteq worker APP --include MOD`` does)."""
        self.registry.include_modules(modules)

    def rate_limits(self) -> dict[str, float]:
        """``{task name: starts per second}`` for tasks with a ``rate_limit``."""
        return self.registry.rate_limits()

    def get_task(self, name: str) -> Task[Any, Any]:
        """The task registered as ``name``; if it is not registered yet, its module is imported first,
        but only when that module is listed in ``include`` (a stored name must not choose code)."""
        return self.registry.get(name)

    def queues(self) -> list[str]:
        """Every queue a registered task uses, the default queue first."""
        return self.registry.queues()

    # -- enqueue ----------------------------------------------------------------------------------

    def enqueue_many(
        self, calls: Iterable[Signature | tuple[Task[Any, Any], tuple[Any, ...], dict[str, Any]]]
    ) -> list[Result]:
        """Enqueue many calls in one transaction: signatures (``task.s(...)``) or ``(task, args, kwargs)``.

        Nothing is written unless every call encodes; the results come back in order.
        """
        return self.producer.send_many(calls)

    async def aenqueue_many(
        self, calls: Iterable[Signature | tuple[Task[Any, Any], tuple[Any, ...], dict[str, Any]]]
    ) -> list[Result]:
        """:meth:`enqueue_many` from a coroutine: one transaction, written off the event loop."""
        from . import aio  # here, not at the top: asyncio stays out of processes that never await

        return await aio.send_many(self.producer.send_many, calls)

    def _run_now(self, ids: Sequence[str]) -> None:
        # Immediate mode: run the task here, retries included, ignoring countdowns (like Celery's
        # eager mode), through the same claim/execute/complete path a worker takes.
        if self._immediate_worker is None:
            self._immediate_worker = Worker(self.runtime, worker_id=f"immediate:{os.getpid()}", lease=self.lease)
        worker = self._immediate_worker
        while worker.run_once(ids=ids):
            pass

    # -- workers -------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def workers(
        self, concurrency: int | None = None, *, queues: Sequence[str] | None = None, **options: Any
    ) -> Iterator[WorkerPool]:
        """Run a worker pool (child processes) while the ``with`` block runs.

        Returns once the children are ready; on exit it stops gracefully: running tasks finish
        (up to ``shutdown_timeout``), unstarted ones go back to the queue. Options are those of
        :class:`~liteq.pool.WorkerPool` (``start_method``, ``prefetch``, ``max_tasks_per_child``...).
        """
        from .pool import WorkerPool

        pool = WorkerPool(self, concurrency=concurrency, queues=queues, **options)
        pool.start_background()
        try:
            yield pool
        finally:
            pool.stop()
            pool.join()

    def run_worker(
        self, concurrency: int | None = None, *, queues: Sequence[str] | None = None, **options: Any
    ) -> None:
        """Run a worker pool in the foreground until SIGINT or SIGTERM (what ``liteq worker`` calls).

        The first signal stops gracefully, a second one stops at once.
        """
        from .pool import WorkerPool

        pool = WorkerPool(self, concurrency=concurrency, queues=queues, **options)
        with stopping_on_signals(pool):
            pool.start()
            pool.run()

    # -- results and inspection --------------------------------------------------------------------

    def group_result(self, group_id: str) -> GroupResult:
        """A :class:`GroupResult` for a group (or chord header) id, in any process."""
        ids = self.storage.group_members(group_id)
        if not ids:
            raise ResultExpired(
                f"no group {group_id} in store {self.storage.location}: its results outlived result_ttl, or the id is wrong"
            )
        return GroupResult(self, group_id, [Result(self, i) for i in ids])

    def result(self, task_id: str) -> Result:
        """A :class:`Result` handle for a task id, in any process that opens the same store."""
        return Result(self, task_id)

    def stats(self) -> dict[str, Any]:
        """``{"states": {state: n}, "queues": {queue: {state: n}}, "workers": [...]}``.

        Each worker is its :class:`~liteq.storage.records.WorkerInfo` as a dict, plus ``state_text``:
        ``ok`` or ``degraded: <reason> since <time>``."""
        queues = self.storage.counts()
        states: dict[str, int] = {}
        for by_state in queues.values():
            for state, n in by_state.items():
                states[state] = states.get(state, 0) + n
        workers = [{**dataclasses.asdict(w), "state_text": w.state_text()} for w in self.storage.workers()]
        return {"states": states, "queues": queues, "workers": workers}

    def purge(self, queue: str | None = None, states: Iterable[str] | None = None) -> int:
        """Delete tasks and their results (running ones only when ``states`` names ``running``)."""
        return self.storage.purge(queue=queue, states=states)

    def run_until_empty(self, queues: Sequence[str] | None = None, *, now: float | None = None) -> int:
        """Run every due task in this process until none is left; return how many ran (burst mode)."""
        worker = Worker(self.runtime, queues=queues, lease=self.lease, batch=16)
        try:
            return worker.run_until_empty(now=now)
        finally:
            worker.close()


_rebuilt: dict[tuple[Any, ...], LiteQ] = {}


def _rebuild_app(spec: RuntimeSpec) -> LiteQ:
    """Find or rebuild the app described by :meth:`LiteQ.spec` in this process: the very object
    when it is a module global, else a new app on the same store with its importable tasks."""
    app = _rebuilt.get(spec.key())
    if app is not None:
        return app
    found = find_owner(spec)
    if isinstance(found, LiteQ):
        app = found
    else:
        app = LiteQ(spec.location, **spec.options)
        for name, fn, options in importable_tasks(spec):
            if name not in app.tasks:
                app.task(name=name, **options)(fn)
    _rebuilt[spec.key()] = app
    return app


LiteQ.task.__doc__ = (LiteQ.task.__doc__ or "") + options_doc(DECLARED.values())
