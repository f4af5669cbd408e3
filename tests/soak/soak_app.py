"""The app every process of the soak loads: ``liteq worker tests.soak.soak_app:app``, the pool host,
the scheduler and the producers.

Configured by the environment (set by the test for every process it starts):
``LITEQ_SOAK_STORE`` (the store), ``LITEQ_SOAK_ORACLE`` (the directory of the append-only logs),
``LITEQ_SOAK_LEASE`` and ``LITEQ_SOAK_BUSY`` (seconds).

Every task body writes to the oracle, outside the store, one line when it starts and one when it
ends (see :mod:`tests.soak.oracle` for the format), to a file of its own process, each line with
one ``O_APPEND`` write. Every task takes its producer's ``key`` as a keyword argument, so a stored
row and a logged run both say which producer call they belong to.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from liteq import LiteQ, current
from tests.soak import oracle
from tests.soak.config import BUSY_TIMEOUT, LEASE, SCHEDULES

app = LiteQ(
    os.environ["LITEQ_SOAK_STORE"],
    lease=float(os.environ.get("LITEQ_SOAK_LEASE", LEASE)),
    busy_timeout=float(os.environ.get("LITEQ_SOAK_BUSY", BUSY_TIMEOUT)),
)


def _run(kind: str, key: str, body: Callable[[], Any]) -> list[Any]:
    """Log the start of this run, run ``body``, log the end. Every task returns ``[value, run]``
    where ``run`` (``attempt:pid``) names the run whose outcome the store recorded."""
    ctx = current()
    run = oracle.Run.begin(ctx, kind, key)
    try:
        value = body()
    except BaseException as exc:
        run.finish(f"raised:{type(exc).__name__}")
        raise
    run.finish("ok")
    return [value, f"{ctx.attempt}:{os.getpid()}"]


@app.task(retries=2, retry_backoff=0.2, retry_jitter=False)
def work(ms: int, fail_first: bool, *, key: str) -> list[Any]:
    """A plain task: sleep ``ms`` milliseconds; fail its first attempt when ``fail_first`` (a retry
    the test planned, not a duplicate)."""

    def body() -> str:
        time.sleep(ms / 1000)
        if fail_first and current().attempt == 1:
            raise RuntimeError(f"planned failure of {key} attempt 1")
        return "w"

    return _run("work", key, body)


@app.task
def square(i: int, *, key: str) -> list[Any]:
    """A chord member: ``i * i``."""
    return _run("member", key, lambda: i * i)


@app.task
def total(values: list[list[Any]], *, key: str) -> list[Any]:
    """A chord callback: the sum of its members' values."""
    return _run("callback", key, lambda: sum(v[0] for v in values))


@app.task
def first(start: int, *, key: str) -> list[Any]:
    """The first step of a chain."""
    return _run("step", key, lambda: start)


@app.task
def step(prev: list[Any], add: int, *, key: str) -> list[Any]:
    """A later chain step: its input's value plus ``add``."""
    return _run("step", key, lambda: prev[0] + add)


@app.task
def beat(schedule: str, *, key: str) -> list[Any]:
    """The periodic task; ``schedule`` says which schedule fired it."""
    return _run("periodic", key, lambda: schedule)


for _name, _every in SCHEDULES.items():
    app.periodic(every=_every, name=_name, args=(_name,), kwargs={"key": _name})(beat)
