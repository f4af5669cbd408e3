"""The long-running commands that execute an app: ``worker`` (a pool) and ``scheduler``."""

from __future__ import annotations

import logging
import os

import click

from .exits import LOGLEVEL, guard
from .loading import Seconds, connected, load_app, parse_size


@click.command()
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
    "--spin",
    type=Seconds(),
    default=None,
    help="Seconds the supervisor polls before sleeping after activity, while a CPU is free [0.0003; 0: never].",
)
@click.option(
    "--worker-id",
    default=None,
    help="Stable id; a restart with the same id takes back its leases once the old heartbeat is stale.",
)
@LOGLEVEL
@click.option("--logfile", default=None, type=click.Path(dir_okay=False), help="Log to this file instead of stderr.")
@guard
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
    spin: float | None,
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
        app = connected(app, connect)
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
        spin=spin,
        worker_id=worker_id,
    )


@click.command()
@click.argument("app")
@LOGLEVEL
@guard
def scheduler(app: str, loglevel: str) -> None:
    """Only fire APP's periodic tasks (pools do this too; running both is safe)."""
    import signal
    import threading

    from ..scheduler import Scheduler

    logging.basicConfig(level=loglevel.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    the_app = load_app(app)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    click.echo(f"scheduler for {len(the_app.schedules)} schedule(s) on {the_app.storage.location}", err=True)
    Scheduler(the_app).run(stop)
    the_app.close()
