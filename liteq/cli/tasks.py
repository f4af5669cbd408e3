"""The commands that change tasks and schedules: ``retry``, ``cancel``, ``purge``, ``enqueue`` and
``periodic``."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator

import click

from ..storage.states import STATES
from .exits import EXIT_NOT_FOUND, guard
from .format import progress, table, when
from .loading import Seconds, load_app


@click.command()
@click.argument("app_or_store")
@click.argument("task_ids", nargs=-1)
@click.option("--all-failed", is_flag=True, help="Retry every failed task (of --queue).")
@click.option("--queue", default=None)
@guard
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
        for chunk in _chunked(list(progress(ids, "retrying")), 500):
            done += sum(app.storage.retry(chunk))
        click.echo(f"retried {done} of {len(ids)} task(s)")
        if task_ids and done < len(ids):
            sys.exit(EXIT_NOT_FOUND)
    finally:
        app.close()


def _chunked(items: list[str], size: int) -> Iterator[list[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


@click.command()
@click.argument("app_or_store")
@click.argument("task_ids", nargs=-1, required=True)
@guard
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


@click.command()
@click.argument("app_or_store")
@click.option("--queue", default=None)
@click.option("--state", "states", multiple=True, type=click.Choice(STATES), help="Only this state (repeatable).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@guard
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


@click.command()
@click.argument("app")
@click.argument("task_name")
@click.option("--args", "args_json", default="[]", show_default=True, help="JSON list of positional arguments.")
@click.option("--kwargs", "kwargs_json", default="{}", show_default=True, help="JSON object of keyword arguments.")
@click.option("--countdown", type=Seconds(), default=None, help="Seconds before it may run.")
@click.option("--queue", default=None)
@click.option("--priority", type=int, default=None)
@guard
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


@click.command()
@click.argument("app")
@click.option(
    "--pause", "pause", default=None, metavar="NAME", help="Pause this schedule (in every pool, across restarts)."
)
@click.option("--resume", "resume", default=None, metavar="NAME", help="Resume this schedule from its next slot.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@guard
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
        table(
            ["name", "when", "tz", "paused", "last fired", "next slot"],
            [
                [i["name"], i["cron"] or f"every {i['every']}s", i["tz"], "yes" if i["paused"] else "no",
                 when(i["last_fired_at"]), when(i["next_slot"])]
                for i in info
            ],
        )  # fmt: skip
    finally:
        the_app.close()
