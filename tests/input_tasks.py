"""Tasks of the input tests: each asks for something impossible from inside a running task."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from liteq import LiteQ, Retry


def retry_after(countdown: Any) -> None:
    """Ask to run again after ``countdown`` seconds (a bad value must fail the task, not strand it)."""
    raise Retry(countdown=countdown)


def retry_at(timestamp: float) -> None:
    """Ask to run again at an aware datetime ``timestamp`` seconds after the epoch."""
    from datetime import timezone

    raise Retry(eta=datetime.fromtimestamp(timestamp, timezone.utc))


def enqueue_later(store: str, countdown: Any) -> None:
    """Enqueue another task with a bad countdown from inside a task."""
    other = LiteQ(store)
    try:
        other.task(name="tests.input_tasks.noop")(noop).apply_async(countdown=countdown)
    finally:
        other.close()


def noop() -> None:
    """Do nothing."""
