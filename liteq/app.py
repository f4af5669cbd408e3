"""``LiteQ``: the application object — task registry, enqueue, results, and the store behind them."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, overload

from . import aio
from .exceptions import ConfigurationError, ResultExpired, UnknownTask
from .inputs import check_duration
from .message import encode_call, new_id
from .result import GroupResult, Result
from .scheduler import Schedule
from .serializer import DEFAULT_MAX_SIZE, Serializer, get_serializer
from .storage import Storage, open_storage
from .storage.base import NewTask
from .storage.sqlite import DEFAULT_BLOB_THRESHOLD, DEFAULT_BUSY_TIMEOUT
from .task import CHUNK_TASK, Signature, Task, TaskOptions, aware, now_plus, run_chunk, seconds
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


def _task_name(fn: Callable[..., Any]) -> str:
    module = getattr(fn, "__module__", None) or "__main__"
    # A script run as __main__ is imported as __mp_main__ in spawned children: keep one name.
    if module == "__mp_main__":
        module = "__main__"
    return f"{module}.{fn.__qualname__}"


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
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        lease: float = DEFAULT_LEASE,
        max_payload_size: int = DEFAULT_MAX_SIZE,
        blob_threshold: int = DEFAULT_BLOB_THRESHOLD,
        include: Iterable[str] = (),
        mode: int | None = None,
        token: str | None = None,
    ) -> None:
        ttl = seconds(result_ttl, "result_ttl")
        assert ttl is not None
        if not isinstance(default_queue, str) or not default_queue:
            raise ConfigurationError(f"default_queue must be a non-empty string, not {default_queue!r}")
        lease = check_duration(lease, "lease", positive=True)
        busy_timeout = check_duration(busy_timeout, "busy_timeout")
        if max_payload_size < 1:
            raise ConfigurationError(f"max_payload_size must be a positive number of bytes, not {max_payload_size!r}")
        self.include: tuple[str, ...] = LiteQ._checked_include(include)
        self.serializer = get_serializer(serializer, max_size=max_payload_size)
        self.result_ttl = ttl
        self.default_queue = default_queue
        self.immediate = bool(immediate)
        self.lease = float(lease)
        self.durability = durability
        if durability not in ("normal", "full"):
            raise ConfigurationError(f"durability must be 'normal' or 'full', not {durability!r}")
        remote_options: dict[str, Any] = {}
        if mode is not None:  # a local store's permissions; only passed when given
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
            busy_timeout=busy_timeout,
            blob_threshold=blob_threshold,
            **remote_options,
        )
        self.tasks: dict[str, Task[Any, Any]] = {}
        self.schedules: dict[str, Schedule] = {}
        self._options: dict[str, Any] = {
            "serializer": self.serializer.name,
            "durability": durability,
            "result_ttl": ttl,
            "default_queue": default_queue,
            "busy_timeout": busy_timeout,
            "lease": self.lease,
            "max_payload_size": max_payload_size,
            "blob_threshold": blob_threshold,
            "include": self.include,
            **remote_options,
        }
        # The module that created the app, so a spawned child can find this very object there.
        self._origin: str | None = sys._getframe(1).f_globals.get("__name__")
        self._immediate_worker: Worker | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"LiteQ({self.storage.location!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        # An app travels to child processes as a recipe, never as open connections.
        return (_rebuild_app, (self.spec(),))

    def spec(self) -> dict[str, Any]:
        """A picklable recipe that rebuilds this app in another process (see :func:`_rebuild_app`)."""
        ref = None
        module = sys.modules.get(self._origin or "")
        if module is not None:
            for attr, value in vars(module).items():
                if value is self:
                    ref = (self._origin, attr)
                    break
        tasks = {
            name: (
                getattr(t.fn, "__module__", None),
                getattr(t.fn, "__qualname__", None),
                dataclasses.asdict(t.options),
            )
            for name, t in self.tasks.items()
        }
        return {"location": self.storage.location, "options": self._options, "ref": ref, "tasks": tasks}

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
    def task(
        self,
        *,
        name: str | None = ...,
        queue: str | None = ...,
        priority: int | None = ...,
        retries: int | None = ...,
        retry_backoff: float | bool | None = ...,
        retry_backoff_max: float | None = ...,
        retry_jitter: bool | None = ...,
        timeout: float | timedelta | None = ...,
        soft_timeout: float | timedelta | None = ...,
        expires: float | timedelta | None = ...,
        result_ttl: float | timedelta | None = ...,
        ignore_result: bool | None = ...,
        max_attempts: int | None = ...,
        unique: bool | Callable[..., Any] | None = ...,
        lock: str | bool | None = ...,
        rate_limit: str | float | None = ...,
    ) -> Callable[[Callable[P, R]], Task[P, R]]: ...

    def task(  # type: ignore[misc]  # options are spelled out in the overload, taken as **options here
        self,
        fn: Callable[..., Any] | None = None,
        /,
        *,
        name: str | None = None,
        queue: str | None = None,
        **options: Any,
    ) -> Any:
        """Register a function as a task: ``@app.task`` or ``@app.task(name=..., retries=3, ...)``.

        Options: ``queue``, ``priority`` (higher runs first), ``retries`` (re-runs after an
        exception), ``retry_backoff`` (first delay, doubling), ``retry_backoff_max``,
        ``retry_jitter``, ``timeout`` (hard limit; the pool kills the run), ``soft_timeout``
        (raises ``SoftTimeLimit`` inside), ``expires`` (seconds after enqueue it may still start),
        ``result_ttl``, ``ignore_result``, ``max_attempts`` (cap on runs of any kind, including
        ones whose worker died; default ``retries + 3``), ``unique`` (True, or a function of the
        arguments giving a key: while a copy waits, ``delay()`` returns it), ``lock`` (True, or a key
        template formatted with the arguments: one run at a time across all pools), ``rate_limit``
        (``"100/m"``: starts across all pools; early tasks wait as scheduled). The name defaults to
        ``module.qualname``; two tasks with one name raise :class:`ConfigurationError`.
        """

        def register(f: Callable[..., Any]) -> Task[Any, Any]:
            if not callable(f):
                raise ConfigurationError(f"@app.task needs a function, not {f!r}")
            if isinstance(f, Task):  # a task of another app: register its function here
                f = f.fn
            task_name = name or _task_name(f)
            opts = TaskOptions.build(self.default_queue if queue is None else queue, **options)
            with self._lock:
                if task_name in self.tasks:
                    raise ConfigurationError(
                        f"two tasks are named {task_name!r}; give one of them another name with @app.task(name=...)"
                    )
                task: Task[Any, Any] = Task(self, f, task_name, opts)
                self.tasks[task_name] = task
            return task

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
            schedule_name = name or task.name
            if schedule_name in self.schedules:
                raise ConfigurationError(
                    f"two schedules are named {schedule_name!r}; pass name=... to @app.periodic to tell them apart"
                )
            self.schedules[schedule_name] = Schedule(
                schedule_name, task.name, cron, interval, tz, tuple(args), dict(kwargs or {}), catch_up
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
        now = time.time() if now is None else now
        states = self.storage.schedule_states(list(self.schedules))
        out = []
        for name, s in sorted(self.schedules.items()):
            st = states.get(name)
            out.append(
                {
                    "name": name,
                    "task": s.task_name,
                    "cron": s.cron,
                    "every": s.every,
                    "tz": s.tz,
                    "catch_up": s.catch_up,
                    "paused": bool(st and st.paused),
                    "last_slot": st.last_slot if st else None,
                    "last_fired_at": st.last_fired_at if st else None,
                    "last_task_id": st.last_task_id if st else None,
                    "next_slot": s.next_after(now),
                }
            )
        return out

    def include_modules(self, modules: Iterable[str]) -> None:
        """Add modules to ``include`` (what ``liteq worker APP --include MOD`` does)."""
        extra = LiteQ._checked_include(modules)
        self.include = tuple(dict.fromkeys((*self.include, *extra)))
        self._options["include"] = self.include

    @staticmethod
    def _checked_include(modules: Iterable[str]) -> tuple[str, ...]:
        names = (modules,) if isinstance(modules, str) else tuple(modules)
        for module in names:
            if not isinstance(module, str) or not all(part.isidentifier() for part in module.split(".")):
                raise ConfigurationError(f"include takes module names such as 'myapp.tasks', not {module!r}")
        return names

    def rate_limits(self) -> dict[str, float]:
        """``{task name: starts per second}`` for tasks with a ``rate_limit``."""
        return {n: t.options.rate_limit for n, t in self.tasks.items() if t.options.rate_limit}

    def get_task(self, name: str) -> Task[Any, Any]:
        """The task registered as ``name``; if it is not registered yet, its module is imported first,
        but only when that module is listed in ``include`` (a stored name must not choose code)."""
        task = self.tasks.get(name)
        if task is not None:
            return task
        if name == CHUNK_TASK:  # built in, registered on first use
            return self.task(name=CHUNK_TASK)(run_chunk)
        module = name.rpartition(".")[0]
        problem = ""
        if module and module != "__main__" and module in self.include:
            try:
                importlib.import_module(module)
            except ImportError as exc:
                problem = f" (importing {module!r} failed: {exc})"
            except Exception as exc:  # a module that raises on import is reported, not propagated
                problem = f" (importing {module!r} raised {type(exc).__name__}: {exc})"
        elif module and module not in sys.modules:
            problem = (
                f" (module {module!r} is not imported: a worker imports a task's module only when it is listed "
                f"in LiteQ(include=[...]) or `liteq worker --include {module}`)"
            )
        # A task its (already imported) module registered on another app object is adopted.
        task = self.tasks.get(name) or (self._adopt(name) if module else None)
        if task is not None:
            return task
        where = f"module {module!r}" if module else "the app's modules"
        raise UnknownTask(
            f"no task named {name!r} is registered in this process; make sure {where} is importable here and "
            f"registers it with this app{problem}"
        )

    def _adopt(self, name: str) -> Task[Any, Any] | None:
        """Register here a task that its module registered on another app (``liteq worker STORE``)."""
        parts = name.split(".")
        for cut in range(len(parts) - 1, 0, -1):
            module = sys.modules.get(".".join(parts[:cut]))
            if module is None:
                continue
            obj: Any = module
            try:
                for part in parts[cut:]:
                    obj = getattr(obj, part)
            except AttributeError:
                continue
            if isinstance(obj, Task) and obj.name == name:
                opts = dataclasses.asdict(obj.options)
                return self.task(name=name, **opts)(obj.fn)
        return None

    def queues(self) -> list[str]:
        """Every queue a registered task uses, the default queue first."""
        found = [self.default_queue]
        for task in self.tasks.values():
            if task.options.queue not in found:
                found.append(task.options.queue)
        return found

    # -- enqueue ----------------------------------------------------------------------------------

    def _message(
        self,
        task: Task[Any, Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        now: float,
        countdown: float | timedelta | None = None,
        eta: datetime | None = None,
        expires: float | timedelta | datetime | None = None,
        priority: int | None = None,
        queue: str | None = None,
        retries: int | None = None,
        idempotency_key: str | None = None,
        result_ttl: float | timedelta | None = None,
        task_id: str | None = None,
        parent_id: str | None = None,
        meta: dict[str, Any] | None = None,
    ) -> NewTask:
        opts = task.options
        meta = dict(meta or {})
        if retries is not None:
            if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
                raise ConfigurationError(f"retries must be an integer >= 0, not {retries!r}")
            meta["retries"] = retries
        run_at = None
        if eta is not None:
            if countdown is not None:
                raise ConfigurationError("pass countdown or eta, not both")
            run_at = aware(eta, "eta", now=now)
        elif countdown is not None:
            run_at = now + (seconds(countdown, "countdown") or 0.0)
        if expires is None and opts.expires is not None:
            expires = opts.expires
        if priority is not None and (isinstance(priority, bool) or not isinstance(priority, int)):
            raise ConfigurationError(f"priority must be an integer, not {priority!r}")
        if queue is not None and (not isinstance(queue, str) or not queue):
            raise ConfigurationError(f"queue must be a non-empty string, not {queue!r}")
        if idempotency_key is not None and not isinstance(idempotency_key, str):
            raise ConfigurationError(f"idempotency_key must be a string, not {idempotency_key!r}")
        ttl = seconds(result_ttl, "result_ttl") if result_ttl is not None else opts.result_ttl
        payload = encode_call(self.serializer, args, kwargs, meta)
        return NewTask(
            id=task_id or new_id(),
            name=task.name,
            queue=queue or opts.queue,
            payload=payload,
            priority=opts.priority if priority is None else priority,
            run_at=run_at,
            expires_at=now_plus(expires, "expires", now),
            max_attempts=opts.attempts_for(retries),
            idempotency_key=idempotency_key,
            result_ttl=ttl,
            parent_id=parent_id,
            unique_key=_unique_key(task, args, kwargs, payload) if opts.unique else None,
            lock_key=_lock_key(task, args, kwargs) if opts.lock else None,
            timeout=opts.timeout,
            soft_timeout=opts.soft_timeout,
            rate_limit=opts.rate_limit,
        )

    def _send(self, task: Task[Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any], **options: Any) -> Result:
        now = time.time()
        message = self._message(task, args, kwargs, now=now, **options)
        task_id = self.storage.enqueue([message], now=now)[0]
        if self.immediate:
            self._run_now([task_id])
        return Result(self, task_id)

    def enqueue_many(
        self, calls: Iterable[Signature | tuple[Task[Any, Any], tuple[Any, ...], dict[str, Any]]]
    ) -> list[Result]:
        """Enqueue many calls in one transaction: signatures (``task.s(...)``) or ``(task, args, kwargs)``.

        Nothing is written unless every call encodes; the results come back in order.
        """
        now = time.time()
        messages = []
        tasks: dict[str, Task[Any, Any]] = {}
        plain: dict[str, tuple[Any, ...] | None] = {}
        serializer = self.serializer
        for call in calls:
            if isinstance(call, Signature):
                name, args, kwargs, options = call.name, call.args, call.kwargs, call.options
                task = tasks.get(name) or tasks.setdefault(name, self.get_task(name))
            else:
                task, args, kwargs = call
                name, options = task.name, {}
            if options:
                messages.append(self._message(task, tuple(args), dict(kwargs), now=now, **options))
                continue
            # The common case (a plain call, a task without unique/lock): everything but the id and
            # the arguments is the same for every call of the task, so it is worked out once.
            if name not in plain:
                o = task.options
                simple = not o.unique and not o.lock
                plain[name] = (
                    (o.queue, o.priority, now_plus(o.expires, "expires", now), o.attempts_for(), o.result_ttl)
                    if simple
                    else None
                )
            base = plain[name]
            if base is None:
                messages.append(self._message(task, tuple(args), dict(kwargs), now=now))
                continue
            queue, priority, expires_at, max_attempts, ttl = base
            payload = encode_call(serializer, tuple(args), dict(kwargs), {})
            o = task.options
            new = NewTask(new_id(now), name, queue, payload, priority, None, expires_at, max_attempts, None, ttl)
            new.timeout, new.soft_timeout, new.rate_limit = o.timeout, o.soft_timeout, o.rate_limit
            messages.append(new)
        ids = self.storage.enqueue(messages, now=now)
        if self.immediate:
            self._run_now(ids)
        return [Result(self, i) for i in ids]

    async def aenqueue_many(
        self, calls: Iterable[Signature | tuple[Task[Any, Any], tuple[Any, ...], dict[str, Any]]]
    ) -> list[Result]:
        """:meth:`enqueue_many` from a coroutine: one transaction, written off the event loop."""
        return await aio.send_many(self, calls)

    def _run_now(self, ids: Sequence[str]) -> None:
        # Immediate mode: run the task here, retries included, ignoring countdowns (like Celery's
        # eager mode), through the same claim/execute/complete path a worker takes.
        if self._immediate_worker is None:
            self._immediate_worker = Worker(self, worker_id=f"immediate:{os.getpid()}", lease=self.lease)
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
        in_main = threading.current_thread() is threading.main_thread()
        previous = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) if in_main else None
        try:
            if in_main:
                pool.install_signal_handlers()
            pool.start()
            pool.run()
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous[0])
                signal.signal(signal.SIGTERM, previous[1])

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

        Each worker is its :class:`~liteq.storage.base.WorkerInfo` as a dict, plus ``state_text``:
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
        worker = Worker(self, queues=queues, lease=self.lease, batch=16)
        try:
            return worker.run_until_empty(now=now)
        finally:
            worker.close()


def _unique_key(task: Task[Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any], payload: bytes) -> str:
    unique = task.options.unique
    if callable(unique) and not isinstance(unique, bool):
        return f"{task.name}:{unique(*args, **kwargs)}"
    return f"{task.name}:{hashlib.sha1(payload).hexdigest()}"


def _lock_key(task: Task[Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    lock = task.options.lock
    if lock is True:
        return task.name
    try:
        return str(lock).format(*args, **kwargs)
    except (IndexError, KeyError) as exc:
        raise ConfigurationError(
            f"lock template {lock!r} of task {task.name!r} names {exc} that this call does not pass"
        ) from None


_rebuilt: dict[tuple[Any, ...], LiteQ] = {}


def _resolve(module_name: str, qualname: str) -> Any:
    if module_name == "__main__":
        # A script run as __main__ is re-imported as __mp_main__ in spawned children.
        module = sys.modules.get("__mp_main__") or sys.modules["__main__"]
    else:
        module = importlib.import_module(module_name)
    obj: Any = module
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _rebuild_app(spec: dict[str, Any]) -> LiteQ:
    """Find or rebuild the app described by :meth:`LiteQ.spec` in this process.

    First the very object, by module and attribute (``module:app``, including a ``__main__``
    script under spawn). Failing that (an app made inside a function, as tests do), a new app on the
    same store with each task re-registered from its importable function; a task whose function
    is not importable stays unknown here and fails with a message naming its module.
    """
    key = (spec["location"], spec["ref"], tuple(sorted(spec["tasks"])))
    app = _rebuilt.get(key)
    if app is not None:
        return app
    if spec["ref"] is not None:
        try:
            found = _resolve(*spec["ref"])
        except (ImportError, AttributeError, KeyError):
            found = None
        if isinstance(found, LiteQ) and found.storage.location == spec["location"]:
            _rebuilt[key] = found
            return found
    app = LiteQ(spec["location"], **spec["options"])
    for name, (module_name, qualname, options) in spec["tasks"].items():
        if not module_name or not qualname or "<locals>" in qualname:
            continue
        try:
            fn = _resolve(module_name, qualname)
        except (ImportError, AttributeError, KeyError):
            continue
        fn = getattr(fn, "fn", fn)  # a Task registered on another app: take its function
        if callable(fn) and name not in app.tasks:
            app.task(name=name, **options)(fn)
    _rebuilt[key] = app
    return app
