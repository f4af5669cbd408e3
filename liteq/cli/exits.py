"""The CLI's exit codes and the guard that turns liteq errors into them, shared by every command."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from ..exceptions import LiteQError

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_INTERRUPTED = 130

F = TypeVar("F", bound=Callable[..., Any])


class NotFound(LiteQError):
    """A task id that the store does not hold."""


def guard(fn: F) -> F:
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
LOGLEVEL = click.option(
    "--loglevel",
    "-l",
    default="INFO",
    show_default=True,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
)
