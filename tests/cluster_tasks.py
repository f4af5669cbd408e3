"""Tasks and values for the cluster tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class Canary:
    """A value whose unpickling creates a file: proof that someone unpickled it."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (Path(self.path),))


def echo(value: Any) -> Any:
    """Return ``value``."""
    return value


def tick(log: str) -> None:
    """A periodic task: log this run's task id (one line per run)."""
    from liteq import current
    from tests.pool_tasks import append_line

    append_line(log, current().id)
