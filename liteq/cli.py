"""The ``liteq`` command (also ``python -m liteq``).

Every command takes ``APP_OR_STORE``: ``module:attribute`` naming a :class:`~liteq.LiteQ` (as in
Celery and Huey; the working directory is importable), or a store (a directory,
``sqlite:///abs/dir``, ``liteq://host:port``). Commands that list things take ``--json``.

Exit codes: 0 ok, 1 a liteq error (store busy, corrupt, missing...), 2 bad usage,
3 not found (an unknown task id), 130 interrupted.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib
import json
import logging
import math
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import click

from .app import LiteQ
from .dashboard.history import finished_recently
from .exceptions import ConfigurationError, LiteQError
from .inputs import check_duration
from .message import ErrorInfo, Progress
from .serializer import loads
from .storage.base import STATES, TaskRow
from .storage.sqlite import DB_FILENAME

__all__ = ["EXIT_ERROR", "EXIT_INTERRUPTED", "EXIT_NOT_FOUND", "EXIT_OK", "EXIT_USAGE", "load_app", "main"]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_INTERRUPTED = 130

F = TypeVar("F", bound=Callable[..., Any])
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_UNITS = {
    "": 1,
    "b": 1,
    "k": 1e3,
    "kb": 1e3,
    "kib": 2**10,
    "m": 1e6,
    "mb": 1e6,
    "mib": 2**20,
    "g": 1e9,
    "gb": 1e9,
    "gib": 2**30,
}


class NotFound(LiteQError):
    """A task id that the store does not hold."""


class Seconds(click.ParamType):  # type: ignore[type-arg,unused-ignore]
    """A duration flag: a finite number of seconds in [0, ten years] (NaN, inf and negatives are
    refused as usage errors naming the flag, before anything is stored)."""

    name = "seconds"

    def __init__(self, *, positive: bool = False) -> None:
        self.positive = positive

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        """Parse and check one value; a bad one fails with the flag's name and what to pass."""
        if isinstance(value, float):
            number: Any = value
        else:
            try:
                number = float(value)
            except (TypeError, ValueError):
                self.fail(f"{value!r} is not a number of seconds", param, ctx)
        try:
            return check_duration(number, param.opts[0] if param is not None else "value", positive=self.positive)
        except ConfigurationError as exc:
            self.fail(str(exc), param, ctx)


def load_app(target: str, *, must_exist: bool = False, include: Sequence[str] = ()) -> LiteQ:
    """Open ``module:attribute`` (an app) or a store path/URL as a :class:`LiteQ`.

    ``include`` names modules the app may import to find tasks (see ``LiteQ(include=...)``).
    """
    if ":" in target and "://" not in target and not os.path.exists(target):
        module_name, _, attr = target.partition(":")
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ConfigurationError(f"cannot import {module_name!r} from {target!r}: {exc}") from exc
        app = getattr(module, attr, None)
        if not isinstance(app, LiteQ):
            raise ConfigurationError(f"{target!r}: {module_name}.{attr} is not a LiteQ app")
        if include:
            app.include_modules(include)
        return app
    if must_exist and "://" not in target and not os.path.exists(os.path.join(target, DB_FILENAME)):
        raise ConfigurationError(f"no liteq store at {target!r}: expected {os.path.join(target, DB_FILENAME)}")
    if include and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    return LiteQ(target, include=include)


def parse_size(text: str | None) -> int | None:
    """``"200MB"``, ``"1.5GiB"``, ``"500000"`` → bytes."""
    if text is None:
        return None
    m = _SIZE.match(text)
    if not m or (m.group(2) or "").lower() not in _UNITS:
        raise click.BadParameter(f"{text!r} is not a size; use e.g. 500MB, 2GiB or a number of bytes")
    size = float(m.group(1)) * _UNITS[(m.group(2) or "").lower()]
    if not math.isfinite(size) or size < 1:
        raise click.BadParameter(f"{text!r} is not a usable size; use e.g. 500MB, 2GiB or a number of bytes")
    return int(size)


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _age(ts: float | None, now: float) -> str:
    if ts is None:
        return "-"
    s = max(now - ts, 0.0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s / size:.1f}{unit}"
    return f"{s:.1f}s"


def _short_error(row: TaskRow) -> str:
    info = ErrorInfo.decode(row.error)
    if info is None:
        return row.reason or ""
    text = f"{info.type.rsplit('.', 1)[-1]}: {info.message}".replace("\n", " ")
    return text if len(text) <= 60 else text[:57] + "..."


def _decode(data: bytes | None) -> Any:
    if data is None:
        return None
    try:
        return loads(data, allow_pickle=False)
    except LiteQError as exc:
        return f"<undecodable: {exc}>"


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=repr))


def _progress(items: Sequence[str], label: str) -> Iterator[str]:
    """A progress bar on a terminal, plain lines otherwise."""
    if sys.stderr.isatty():
        with click.progressbar(items, label=label, file=sys.stderr) as bar:
            yield from bar
    else:
        total = len(items)
        for i, item in enumerate(items, 1):
            if i == total or i % 1000 == 0:
                click.echo(f"{label}: {i}/{total}", err=True)
            yield item


def _guard(fn: F) -> F:
    """Turn liteq errors into a one-line message and a named exit code, never a traceback."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except NotFound as exc:
            click.echo(f"liteq: {exc}", err=True)
            sys.exit(EXIT_NOT_FOUND)
        except LiteQError as exc:
            click.echo(f"liteq: {exc}", err=True)
            sys.exit(EXIT_ERROR)

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper  # type: ignore[return-value]


#: The ``--loglevel/-l`` option every long-running command takes.
_LOGLEVEL = click.option(
    "--loglevel",
    "-l",
    default="INFO",
    show_default=True,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="pyliteq", prog_name="liteq")
def cli() -> None:
    """liteq: a task queue that needs no infrastructure."""


@cli.command()
@click.argument("app_or_store")
@click.option("-c", "--concurrency", type=click.IntRange(min=1), default=None, help="Child processes [CPU count].")
@click.option("-Q", "--queues", default=None, help="Comma-separated queues to serve [all the app's queues].")
@click.option("--connect", default=None, help="Serve tasks of a cluster server: liteq://host:port.")
@click.option(
    "--tls-ca", default=None, type=click.Path(dir_okay=False), help="CA file that signed a liteqs:// server's cert."
)
@click.option("--reload", is_flag=True, help="Replace children when the app's .py files change.")
@click.option("--max-tasks-per-child", type=click.IntRange(min=1), default=None, help="Recycle a child after N tasks.")
@click.option("--max-memory-per-child", default=None, help="Recycle a child above this memory, e.g. 500MB.")
@click.option(
    "--start-method", type=click.Choice(["fork", "forkserver", "spawn"]), default=None, help="How children start."
)
@click.option("--prefetch", type=click.IntRange(min=0), default=None, help="Tasks claimed ahead [concurrency].")
@click.option(
    "--async-concurrency",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="async def tasks one child runs at once on its event loop.",
)
@click.option(
    "--include",
    "include",
    multiple=True,
    metavar="MODULE",
    help="A module whose tasks this worker may import by name (repeatable); no other module is imported.",
)
@click.option(
    "--shutdown-timeout",
    type=Seconds(),
    default=30.0,
    show_default=True,
    help="Seconds running tasks get on stop.",
)
@click.option(
    "--worker-id",
    default=None,
    help="Stable id; a restart with the same id takes back its leases once the old heartbeat is stale.",
)
@_LOGLEVEL
@click.option("--logfile", default=None, type=click.Path(dir_okay=False), help="Log to this file instead of stderr.")
@_guard
def worker(
    app_or_store: str,
    concurrency: int | None,
    queues: str | None,
    connect: str | None,
    tls_ca: str | None,
    reload: bool,
    max_tasks_per_child: int | None,
    max_memory_per_child: str | None,
    start_method: str | None,
    prefetch: int | None,
    async_concurrency: int,
    include: tuple[str, ...],
    shutdown_timeout: float,
    worker_id: str | None,
    loglevel: str,
    logfile: str | None,
) -> None:
    """Run a worker pool for APP_OR_STORE until SIGINT/SIGTERM (twice: stop now)."""
    handler: logging.Handler = logging.FileHandler(logfile) if logfile else logging.StreamHandler()
    handler.setFormatter(
        logging.Formatter(
            "%(asctime)s %(levelname)s %(processName)s %(name)s %(task_name)s %(task_id)s: %(message)s",
            defaults={"task_id": "", "task_name": ""},
        )
    )
    logging.basicConfig(level=loglevel.upper(), handlers=[handler], force=True)
    if tls_ca is not None:
        # Through the environment, so the pool's children verify the server with the same CA.
        os.environ["LITEQ_TLS_CA"] = tls_ca
    app = load_app(app_or_store, include=include)
    if connect is not None:
        app = _connected(app, connect)
    app.run_worker(
        concurrency,
        queues=[q.strip() for q in queues.split(",") if q.strip()] if queues else None,
        reload=reload,
        max_tasks_per_child=max_tasks_per_child,
        max_memory_per_child=parse_size(max_memory_per_child),
        start_method=start_method,
        prefetch=prefetch,
        async_concurrency=async_concurrency,
        shutdown_timeout=shutdown_timeout,
        worker_id=worker_id,
    )


def _connected(app: LiteQ, url: str) -> LiteQ:
    """The same tasks, served from a cluster store."""
    remote = LiteQ(url, include=app.include)
    for name, task in app.tasks.items():
        remote.task(name=name, **task.options.as_dict())(task.fn)
    return remote


@cli.command()
@click.argument("app_or_store")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--watch", is_flag=True, help="Refresh every second until Ctrl-C.")
@_guard
def status(app_or_store: str, as_json: bool, watch: bool) -> None:
    """Tasks by queue and state, and live workers."""
    app = load_app(app_or_store, must_exist=True)
    try:
        while True:
            report = _status(app)
            if as_json:
                click.echo(json.dumps(report, indent=2))
            else:
                if watch:
                    click.clear()
                _print_status(report)
            if not watch:
                return
            time.sleep(1.0)
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)
    finally:
        app.close()


def _status(app: LiteQ) -> dict[str, Any]:
    now = time.time()
    stats = app.stats()
    oldest = sorted(app.storage.oldest_pending().values(), key=lambda r: r.enqueued_at)[:1]
    # The store's per-minute history, as the dashboard's charts: no scan of finished tasks.
    done_recently = finished_recently(app.storage, now=now)
    workers = []
    for w in stats["workers"]:
        w = dict(w)
        w["alive"] = now - w["heartbeat_at"] < 30
        workers.append(w)
    return {
        "store": app.storage.location,
        "states": stats["states"],
        "queues": stats["queues"],
        "workers": workers,
        "throughput_last_minute": done_recently,
        "oldest_pending_age": (now - oldest[0].enqueued_at) if oldest else None,
        "failed": stats["states"].get("failed", 0),
    }


def _print_status(report: dict[str, Any]) -> None:
    now = time.time()
    click.echo(f"store {report['store']}")
    header = ["queue", *STATES]
    rows = [[q, *(str(by.get(s, 0)) for s in STATES)] for q, by in sorted(report["queues"].items())]
    _table(header, rows)
    oldest = report["oldest_pending_age"]
    click.echo(
        f"\nfinished in the last minute: {report['throughput_last_minute']}   failed: {report['failed']}   "
        f"oldest pending: {'-' if oldest is None else f'{oldest:.1f}s'}"
    )
    click.echo("\nworkers:" if report["workers"] else "\nworkers: none")
    if report["workers"]:
        _table(
            ["id", "host", "pid", "concurrency", "queues", "last heartbeat", "tasks done", "state"],
            [
                [w["id"], w["host"], str(w["pid"]), str(w["concurrency"]), ",".join(w["queues"]),
                 _age(w["heartbeat_at"], now) + (" ago" if w["alive"] else " ago (stale)"), str(w["tasks_done"]),
                 w["state_text"]]
                for w in report["workers"]
            ],
        )  # fmt: skip


def _table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]
    for row in [header, *rows]:
        click.echo("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=False)).rstrip())


@cli.command()
@click.argument("app_or_store")
@click.option(
    "--state", "states", multiple=True, type=click.Choice(STATES), help="Only tasks in this state (repeatable)."
)
@click.option("--queue", default=None, help="Only this queue.")
@click.option("--name", default=None, help="Only tasks of this name.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_guard
def tasks(
    app_or_store: str, states: tuple[str, ...], queue: str | None, name: str | None, limit: int, as_json: bool
) -> None:
    """One line per task: id, name, state, attempts, age, short error."""
    app = load_app(app_or_store, must_exist=True)
    try:
        rows = app.storage.list(states=states or None, queue=queue, name=name, limit=limit)
        if as_json:
            click.echo(json.dumps([_row_dict(r) for r in rows], indent=2))
            return
        now = time.time()
        _table(
            ["id", "name", "state", "attempts", "age", "error"],
            [
                [r.id, r.name, r.state, f"{r.attempts}/{r.max_attempts}", _age(r.enqueued_at, now), _short_error(r)]
                for r in rows
            ],
        )
    finally:
        app.close()


def _row_dict(row: TaskRow, full: bool = False) -> dict[str, Any]:
    out = {
        k: v
        for k, v in dataclasses.asdict(row).items()
        if k not in ("payload", "result", "error", "progress", "errors")
    }
    if full:
        call = _decode(row.payload)
        out["args"] = _jsonable(call.get("a")) if isinstance(call, dict) else call
        out["kwargs"] = _jsonable(call.get("k")) if isinstance(call, dict) else None
        out["result"] = _jsonable(_decode(row.result))
        out["progress"] = dataclasses.asdict(p) if (p := Progress.decode(row.progress)) else None
        out["errors"] = [dataclasses.asdict(e) for e in (ErrorInfo.decode(b) for b in row.errors) if e is not None]
        last = ErrorInfo.decode(row.error)
        out["error"] = dataclasses.asdict(last) if last else None
    return out


@cli.command()
@click.argument("app_or_store")
@click.argument("task_id")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_guard
def show(app_or_store: str, task_id: str, as_json: bool) -> None:
    """Everything about one task: arguments, attempts and errors, result, timings, lease."""
    app = load_app(app_or_store, must_exist=True)
    try:
        row = app.storage.get([task_id], history=True)[0]
        if row is None:
            raise NotFound(f"no task {task_id} in {app.storage.location} (wrong id, or pruned after its result_ttl)")
        info = _row_dict(row, full=True)
        if as_json:
            click.echo(json.dumps(info, indent=2, default=repr))
            return
        for key in ("id", "name", "queue", "state", "reason", "priority", "attempts", "max_attempts", "args", "kwargs"):
            click.echo(f"{key:>16}: {info[key]}")
        for key in (
            "enqueued_at",
            "run_at",
            "started_at",
            "finished_at",
            "expires_at",
            "result_expires_at",
            "lease_deadline",
        ):
            click.echo(f"{key:>16}: {_when(info[key])}")
        click.echo(f"{'lease_owner':>16}: {info['lease_owner'] or '-'}")
        click.echo(f"{'progress':>16}: {info['progress']}")
        click.echo(f"{'result':>16}: {info['result']!r}")
        for i, err in enumerate(info["errors"], 1):
            click.echo(f"\n--- error {i}: {err['type']}: {err['message']}")
            if err["traceback"]:
                click.echo(err["traceback"].rstrip())
    finally:
        app.close()


@cli.command()
@click.argument("app_or_store")
@click.argument("task_ids", nargs=-1)
@click.option("--all-failed", is_flag=True, help="Retry every failed task (of --queue).")
@click.option("--queue", default=None)
@_guard
def retry(app_or_store: str, task_ids: tuple[str, ...], all_failed: bool, queue: str | None) -> None:
    """Put failed, cancelled or expired tasks back in the queue."""
    if not task_ids and not all_failed:
        raise click.UsageError("name task ids, or pass --all-failed")
    app = load_app(app_or_store, must_exist=True)
    try:
        ids = list(task_ids)
        if all_failed:
            ids += [r.id for r in app.storage.list(states=["failed"], queue=queue, limit=10**9)]
        done = 0
        for chunk in _chunked(list(_progress(ids, "retrying")), 500):
            done += sum(app.storage.retry(chunk))
        click.echo(f"retried {done} of {len(ids)} task(s)")
        if task_ids and done < len(ids):
            sys.exit(EXIT_NOT_FOUND)
    finally:
        app.close()


def _chunked(items: list[str], size: int) -> Iterator[list[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


@cli.command()
@click.argument("app_or_store")
@click.argument("task_ids", nargs=-1, required=True)
@_guard
def cancel(app_or_store: str, task_ids: tuple[str, ...]) -> None:
    """Cancel tasks: waiting ones never run; running ones are stopped by their worker."""
    app = load_app(app_or_store, must_exist=True)
    try:
        states = app.storage.cancel(list(task_ids))
        for task_id, state in zip(task_ids, states, strict=True):
            click.echo(f"{task_id}: {state or 'not found'}")
        if any(s is None for s in states):
            sys.exit(EXIT_NOT_FOUND)
    finally:
        app.close()


@cli.command()
@click.argument("app_or_store")
@click.option("--queue", default=None)
@click.option("--state", "states", multiple=True, type=click.Choice(STATES), help="Only this state (repeatable).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@_guard
def purge(app_or_store: str, queue: str | None, states: tuple[str, ...], yes: bool) -> None:
    """Delete tasks and their results (running ones only with --state running)."""
    app = load_app(app_or_store, must_exist=True)
    try:
        what = f"{'/'.join(states) or 'all non-running'} tasks" + (f" in queue {queue!r}" if queue else "")
        if not yes and not click.confirm(f"Delete {what} from {app.storage.location}?"):
            click.echo("nothing deleted")
            return
        n = app.purge(queue=queue, states=states or None)
        click.echo(f"deleted {n} task(s)")
    finally:
        app.close()


@cli.command()
@click.argument("app")
@click.argument("task_name")
@click.option("--args", "args_json", default="[]", show_default=True, help="JSON list of positional arguments.")
@click.option("--kwargs", "kwargs_json", default="{}", show_default=True, help="JSON object of keyword arguments.")
@click.option("--countdown", type=Seconds(), default=None, help="Seconds before it may run.")
@click.option("--queue", default=None)
@click.option("--priority", type=int, default=None)
@_guard
def enqueue(
    app: str,
    task_name: str,
    args_json: str,
    kwargs_json: str,
    countdown: float | None,
    queue: str | None,
    priority: int | None,
) -> None:
    """Queue TASK_NAME of APP (module:app) with JSON arguments; prints the task id."""
    try:
        args = json.loads(args_json)
        kwargs = json.loads(kwargs_json)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}") from exc
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise click.BadParameter("--args takes a JSON list and --kwargs a JSON object")
    the_app = load_app(app)
    task = the_app.get_task(task_name)
    result = task.apply_async(args, kwargs, countdown=countdown, queue=queue, priority=priority)
    click.echo(result.id)


@cli.command()
@click.argument("app")
@click.option(
    "--pause", "pause", default=None, metavar="NAME", help="Pause this schedule (in every pool, across restarts)."
)
@click.option("--resume", "resume", default=None, metavar="NAME", help="Resume this schedule from its next slot.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_guard
def periodic(app: str, pause: str | None, resume: str | None, as_json: bool) -> None:
    """List APP's periodic schedules with last and next fire times; pause or resume one."""
    the_app = load_app(app)
    try:
        if pause:
            the_app.pause_periodic(pause)
            click.echo(f"paused {pause}")
        if resume:
            the_app.resume_periodic(resume)
            click.echo(f"resumed {resume}")
        info = the_app.periodic_info()
        if as_json:
            click.echo(json.dumps(info, indent=2))
            return
        if not info:
            click.echo("no periodic schedules")
            return
        _table(
            ["name", "when", "tz", "paused", "last fired", "next slot"],
            [
                [i["name"], i["cron"] or f"every {i['every']}s", i["tz"], "yes" if i["paused"] else "no",
                 _when(i["last_fired_at"]), _when(i["next_slot"])]
                for i in info
            ],
        )  # fmt: skip
    finally:
        the_app.close()


@cli.command()
@click.argument("app")
@_LOGLEVEL
@_guard
def scheduler(app: str, loglevel: str) -> None:
    """Only fire APP's periodic tasks (pools do this too; running both is safe)."""
    import signal
    import threading

    from .scheduler import Scheduler

    logging.basicConfig(level=loglevel.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    the_app = load_app(app)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    click.echo(f"scheduler for {len(the_app.schedules)} schedule(s) on {the_app.storage.location}", err=True)
    Scheduler(the_app).run(stop)
    the_app.close()


@cli.command()
@click.argument("store")
@click.option("--bind", default="127.0.0.1:7777", show_default=True, help="HOST:PORT to listen on (port 0: any).")
@click.option(
    "--token-file", default=None, type=click.Path(dir_okay=False), help="File holding the token [LITEQ_TOKEN]."
)
@click.option("--tls-cert", default=None, type=click.Path(dir_okay=False), help="Serve TLS (liteqs://) with this cert.")
@click.option("--tls-key", default=None, type=click.Path(dir_okay=False), help="The TLS certificate's private key.")
@click.option(
    "--allow-pickle", is_flag=True, help="Accept pickle-encoded payloads (trusts every client with the token)."
)
@click.option("--max-connections", type=click.IntRange(min=1), default=1024, show_default=True)
@click.option("--max-in-flight", type=click.IntRange(min=1), default=64, show_default=True, help="Per connection.")
@click.option("--max-batch", type=click.IntRange(min=1), default=50_000, show_default=True, help="Items per request.")
@click.option("--test-mode", is_flag=True, hidden=True)
@_LOGLEVEL
@_guard
def serve(
    store: str,
    bind: str,
    token_file: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    allow_pickle: bool,
    max_connections: int,
    max_in_flight: int,
    max_batch: int,
    test_mode: bool,
    loglevel: str,
) -> None:
    """Serve STORE to remote workers and producers (cluster mode) until SIGINT/SIGTERM."""
    from liteq.cluster import serve as cluster_serve  # type: ignore[import-not-found,unused-ignore]

    logging.basicConfig(level=loglevel.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cluster_serve.run(
        store,
        bind=bind,
        token_file=token_file,
        tls_cert=tls_cert,
        tls_key=tls_key,
        allow_pickle=allow_pickle,
        max_connections=max_connections,
        max_in_flight=max_in_flight,
        max_batch=max_batch,
        test_mode=test_mode,
    )


@cli.command()
@click.argument("command", type=click.Choice(["drain", "stop"]))
@click.argument("url")
@click.argument("worker_ids", nargs=-1)
@click.option("--all", "all_workers", is_flag=True, help="Every live worker of the server.")
@click.option(
    "--token-file", default=None, type=click.Path(dir_okay=False), help="File holding the token [LITEQ_TOKEN]."
)
@click.option(
    "--tls-ca", default=None, type=click.Path(dir_okay=False), help="CA file that signed a liteqs:// server's cert."
)
@_guard
def control(
    command: str, url: str, worker_ids: tuple[str, ...], all_workers: bool, token_file: str | None, tls_ca: str | None
) -> None:
    """Send COMMAND to workers of the cluster server at URL: ``drain`` (claim nothing more, exit
    once the tasks in hand are done) or ``stop`` (stop gracefully, as SIGTERM)."""
    from liteq.cluster import control as cluster_control  # type: ignore[import-not-found,unused-ignore]

    sent = cluster_control.run(command, url, worker_ids, all_workers=all_workers, token_file=token_file, tls_ca=tls_ca)
    click.echo(f"{command} sent to {len(sent)} worker(s){': ' + ', '.join(sent) if sent else ''}")


@cli.command()
@click.argument("app_or_store_or_url")
@click.option(
    "--bind",
    default="127.0.0.1:8777",
    show_default=True,
    help="HOST:PORT to listen on; beyond loopback a token is needed.",
)
@click.option("--read-only", is_flag=True, help="Hide and refuse every action (retry, cancel, purge, pause).")
@click.option(
    "--token-file", default=None, type=click.Path(dir_okay=False), help="File holding the token [LITEQ_TOKEN]."
)
@_guard
def dashboard(app_or_store_or_url: str, bind: str, read_only: bool, token_file: str | None) -> None:
    """Serve the web dashboard of APP_OR_STORE_OR_URL until Ctrl-C."""
    from liteq.cluster.auth import read_token  # type: ignore[import-not-found,unused-ignore]

    from .dashboard import Dashboard

    token: str | None = read_token(token_file)
    app = load_app(app_or_store_or_url, must_exist=True)
    try:
        server = Dashboard(app, bind=bind, read_only=read_only, token=token)
        # Scripts and tests read this line to learn the port chosen for --bind HOST:0.
        click.echo(f"serving {server.url}" + ("  (read-only)" if read_only else ""))
        sys.stdout.flush()
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.close()
    finally:
        app.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code instead of exiting (for tests and ``python -m liteq``)."""
    try:
        cli.main(args=list(argv) if argv is not None else None, prog_name="liteq", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return EXIT_INTERRUPTED
    except click.ClickException as exc:
        exc.show()
        return EXIT_USAGE
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return EXIT_OK
