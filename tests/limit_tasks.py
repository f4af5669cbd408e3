"""Tasks registered here *without* limits; producers register them with limits under the same
names. A pool that imports this module (``liteq worker STORE --include tests.limit_tasks``) only
knows the limits if they travel with the stored task."""

from __future__ import annotations

import time

from liteq import LiteQ, SoftTimeLimit

app = LiteQ("memory://")


@app.task
def sleep_for(seconds: float) -> str:
    """Sleep, then say so (a hard time limit must kill it first)."""
    time.sleep(seconds)
    return "slept"


@app.task
def soft_sleep(seconds: float) -> str:
    """Sleep; return ``"soft"`` when a soft time limit interrupts it."""
    try:
        time.sleep(seconds)
    except SoftTimeLimit:
        return "soft"
    return "slept"


@app.task
def stamp() -> float:
    """The time it started."""
    return time.time()
