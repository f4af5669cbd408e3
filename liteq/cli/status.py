"""The commands that read a store: ``status`` (counts and workers), ``tasks`` (one line per task)
and ``show`` (everything about one task)."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click

from ..app import LiteQ
from ..storage.states import STATES
from .exits import EXIT_INTERRUPTED, NotFound, guard
from .format import age, row_dict, short_error, table, when
from .loading import load_app


@click.command()
@click.argument("app_or_store")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--watch", is_flag=True, help="Refresh every second until Ctrl-C.")
@guard
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
    # Imported here: the dashboard package is not loaded by commands that do not show history.
    from ..dashboard.history import finished_recently

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
    table(header, rows)
    oldest = report["oldest_pending_age"]
    click.echo(
        f"\nfinished in the last minute: {report['throughput_last_minute']}   failed: {report['failed']}   "
        f"oldest pending: {'-' if oldest is None else f'{oldest:.1f}s'}"
    )
    click.echo("\nworkers:" if report["workers"] else "\nworkers: none")
    if report["workers"]:
        table(
            ["id", "host", "pid", "concurrency", "queues", "last heartbeat", "tasks done", "state"],
            [
                [w["id"], w["host"], str(w["pid"]), str(w["concurrency"]), ",".join(w["queues"]),
                 age(w["heartbeat_at"], now) + (" ago" if w["alive"] else " ago (stale)"), str(w["tasks_done"]),
                 w["state_text"]]
                for w in report["workers"]
            ],
        )  # fmt: skip


@click.command()
@click.argument("app_or_store")
@click.option(
    "--state", "states", multiple=True, type=click.Choice(STATES), help="Only tasks in this state (repeatable)."
)
@click.option("--queue", default=None, help="Only this queue.")
@click.option("--name", default=None, help="Only tasks of this name.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@guard
def tasks(
    app_or_store: str, states: tuple[str, ...], queue: str | None, name: str | None, limit: int, as_json: bool
) -> None:
    """One line per task: id, name, state, attempts, age, short error."""
    app = load_app(app_or_store, must_exist=True)
    try:
        rows = app.storage.list(states=states or None, queue=queue, name=name, limit=limit)
        if as_json:
            click.echo(json.dumps([row_dict(r) for r in rows], indent=2))
            return
        now = time.time()
        table(
            ["id", "name", "state", "attempts", "age", "error"],
            [
                [r.id, r.name, r.state, f"{r.attempts}/{r.max_attempts}", age(r.enqueued_at, now), short_error(r)]
                for r in rows
            ],
        )
    finally:
        app.close()


@click.command()
@click.argument("app_or_store")
@click.argument("task_id")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@guard
def show(app_or_store: str, task_id: str, as_json: bool) -> None:
    """Everything about one task: arguments, attempts and errors, result, timings, lease."""
    app = load_app(app_or_store, must_exist=True)
    try:
        row = app.storage.get([task_id], history=True)[0]
        if row is None:
            raise NotFound(f"no task {task_id} in {app.storage.location} (wrong id, or pruned after its result_ttl)")
        info = row_dict(row, full=True)
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
            click.echo(f"{key:>16}: {when(info[key])}")
        click.echo(f"{'lease_owner':>16}: {info['lease_owner'] or '-'}")
        click.echo(f"{'progress':>16}: {info['progress']}")
        click.echo(f"{'result':>16}: {info['result']!r}")
        for i, err in enumerate(info["errors"], 1):
            click.echo(f"\n--- error {i}: {err['type']}: {err['message']}")
            if err["traceback"]:
                click.echo(err["traceback"].rstrip())
    finally:
        app.close()
