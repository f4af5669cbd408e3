"""The ``liteq`` command (also ``python -m liteq``).

Every command takes ``APP_OR_STORE``: ``module:attribute`` naming a :class:`~liteq.LiteQ` (as in
Celery and Huey; the working directory is importable), or a store (a directory,
``sqlite:///abs/dir``, ``liteq://host:port``). Commands that list things take ``--json``.

Exit codes: 0 ok, 1 a liteq error (store busy, corrupt, missing...), 2 bad usage,
3 not found (an unknown task id), 130 interrupted.

Each command lives in the module of its responsibility and is imported only when it runs (or when
help lists it), so starting a worker does not load the dashboard or the cluster package.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

import click

from .exits import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_NOT_FOUND, EXIT_OK, EXIT_USAGE
from .loading import load_app, parse_size

__all__ = [
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_USAGE",
    "load_app",
    "main",
    "parse_size",
]

#: Command name → the module of this package that defines it (as a function of the same name).
COMMANDS = {
    "worker": "worker",
    "scheduler": "worker",
    "status": "status",
    "tasks": "status",
    "show": "status",
    "retry": "tasks",
    "cancel": "tasks",
    "purge": "tasks",
    "enqueue": "tasks",
    "periodic": "tasks",
    "serve": "cluster",
    "control": "cluster",
    "dashboard": "dashboard",
}


class LazyGroup(click.Group):
    """A command group that imports a command's module only when the command is looked up."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        """Every command's name, sorted (as click lists them)."""
        return sorted({*super().list_commands(ctx), *COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        """The command named ``cmd_name``, importing its module on first use."""
        module = COMMANDS.get(cmd_name)
        if module is None:
            return super().get_command(ctx, cmd_name)
        command: Any = getattr(importlib.import_module(f"{__name__}.{module}"), cmd_name)
        if not isinstance(command, click.Command):
            raise TypeError(f"liteq.cli.{module}.{cmd_name} is not a click command")
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="pyliteq", prog_name="liteq")
def cli() -> None:
    """liteq: a task queue that needs no infrastructure."""


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
