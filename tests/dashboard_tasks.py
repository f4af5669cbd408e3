"""Task functions and an app factory for the dashboard tests (importable by pool children)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from liteq import LiteQ


def add(x: int, y: int) -> int:
    """Return ``x + y``."""
    return x + y


def unless_flag(path: str) -> str:
    """Fail until the file ``path`` exists (a failure the test repairs before a retry)."""
    if not os.path.exists(path):
        raise RuntimeError(f"flag {path} is missing")
    return "repaired"


def slow(seconds: float) -> float:
    """Sleep ``seconds`` (keeps a task running while the page looks at it)."""
    time.sleep(seconds)
    return seconds


def make_app(store: Path | str, **options: object) -> LiteQ:
    """An app on ``store`` with this module's tasks and a periodic schedule registered."""
    app = LiteQ(store, **options)  # type: ignore[arg-type]
    app.periodic(every=3600, args=(1, 1), name="hourly-add")(app.task(add))
    app.task(unless_flag)
    app.task(slow)
    return app
