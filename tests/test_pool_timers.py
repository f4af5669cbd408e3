"""The pool's loop waits on its deadline heap (liteq.deadlines): the wait ends at the nearest timer,
and a pool with nothing to do soon does not spin.

The loop is driven here one iteration at a time (``run_once``) from the test, with the pool's
wait recorded, so what is asserted is the timeout the loop chose, not how long anything took.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from liteq import LiteQ
from liteq.pool import WorkerPool
from tests import pool_tasks
from tests.pool_support import Gate, RunLog, wait_for

pytestmark = pytest.mark.timeout(120)

MakeApp = Callable[..., LiteQ]


@contextmanager
def stepped_pool(app: LiteQ, gate: Gate, **options: object) -> Iterator[tuple[WorkerPool, list[float]]]:
    """A started pool whose loop the test drives (``pool.run_once()``), with the timeout of each of
    its waits recorded; stopped at once (its blocked tasks released) at the end."""
    pool = WorkerPool(app, shutdown_timeout=10.0, **options)  # type: ignore[arg-type]
    waits: list[float] = []
    poll = pool._poll

    def recording(timeout: float) -> None:
        waits.append(timeout)
        poll(timeout)

    pool._poll = recording  # type: ignore[method-assign]
    pool.start()
    try:
        yield pool, waits
    finally:
        gate.release_all()
        pool.stop(now=True)
        pool.run()


def test_a_draining_pool_that_was_woken_waits_instead_of_spinning(
    make_app: MakeApp, runlog: RunLog, gate: Gate
) -> None:
    # Given a pool of two children running one blocked task
    app = make_app()
    block = app.task(pool_tasks.block)
    with stepped_pool(app, gate, concurrency=2) as (pool, waits):
        block.delay(runlog.path, gate.dir, "held")
        wait_for(lambda: pool.run_once() and runlog.starts(), 30, "the task to start")
        # When it is drained and then a producer's commit wakes it (a task it must not claim)
        pool.drain()
        block.delay(runlog.path, gate.dir, "late")
        for _ in range(4):
            assert pool.run_once()
        # Then after the wake-ups are handled its waits are not zero: it claims nothing, so
        # nothing is due at once while its task runs
        assert min(waits[-2:]) > 0, waits
        assert [e.key for e in runlog.starts()] == ["held"]


def test_an_idle_pool_waits_for_the_next_claim_poll_at_most(make_app: MakeApp, gate: Gate) -> None:
    # Given a started pool with nothing to do
    app = make_app()
    app.task(pool_tasks.block)
    with stepped_pool(app, gate, concurrency=1) as (pool, waits):
        # When its loop runs a few iterations
        for _ in range(3):
            assert pool.run_once()
        # Then each wait ends by the idle claim poll (a second), and none of the later ones is zero
        assert all(w <= 1.0 for w in waits), waits
        assert min(waits[-2:]) > 0, waits
