"""Wall-clock steps under running pools (issue 9, RELIABILITY.md "Clocks and liveness").

Leases and etas are stored as wall-clock instants, so an NTP step moves them all at once. The
pools' wall clock is injected (``WorkerPool(clock=...)``) and stepped by ±120 s while pool A runs
a task and pool B, with a short lease, reaps often: A's live lease must not be reaped (the task
starts once), a dead owner's lease still comes back, and an eta stored before the step fires
early by at most the step.

A store call that waits on another process's lock is no step: the pool compares the wall clock
with the monotonic clock read at the same moment, not with the one its iteration started at.
"""

from __future__ import annotations

import logging
import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from liteq import LiteQ
from liteq.health import PoolState
from liteq.pool import WorkerPool
from liteq.storage.sqlite import DB_FILENAME
from liteq.upkeep import CLOCK_STEP_TOLERANCE
from tests import pool_tasks
from tests.pool_support import Gate, RunLog, running_pool, wait_for

MakeApp = Callable[..., LiteQ]
STEP = 120.0


def _row(app: LiteQ, task_id: str) -> object:
    row = app.storage.get([task_id])[0]
    assert row is not None
    return row


@pytest.mark.timeout(120)
@pytest.mark.parametrize("step", [STEP, -STEP])
def test_a_clock_step_reaps_no_live_lease_and_fires_no_eta_early(
    make_app: MakeApp, runlog: RunLog, gate: Gate, step: float
) -> None:
    offset = [0.0]

    def clock() -> float:
        return time.time() + offset[0]

    # Given a task whose owner died (claimed by "ghost", lease 30 s), pool A (lease 60 s) running a
    # blocked task, and pool B (lease 2 s: it reaps every second; it serves another queue, so
    # every task here runs in A) on the same store and clock
    a_app = make_app(lease=60.0)
    b_app = make_app(lease=2.0)
    block, record = a_app.task(pool_tasks.block), a_app.task(pool_tasks.record)
    b_app.task(pool_tasks.block)
    b_app.task(pool_tasks.record)
    ghost = record.delay(runlog.path, "ghost")
    (claimed,) = a_app.storage.claim("ghost", ["default"], limit=1, lease=30.0)
    assert claimed.id == ghost.id
    with (
        running_pool(a_app, gate, concurrency=2, clock=clock) as a,
        running_pool(b_app, gate, concurrency=1, clock=clock, queues=["elsewhere"]),
    ):
        result = block.delay(runlog.path, gate.dir, "t")
        runlog.wait_started("t")
        token = a_app.storage.get([result.id])[0].lease_token  # type: ignore[union-attr]
        stored_at = time.time()
        eta_task = record.apply_async((runlog.path, "eta"), countdown=STEP + 4)

        # When the wall clock steps
        offset[0] = step

        # Then A re-bases its lease on the new clock
        wait_for(
            lambda: a_app.storage.get([result.id])[0].lease_deadline > clock() + 30,  # type: ignore[union-attr,operator]
            15,
            "A to re-extend its lease on the stepped clock",
        )
        if step > 0:
            # And once B reaps again (the ghost's lease, expired on the new clock, comes back and runs)...
            runlog.wait_started("ghost", attempt=2, timeout=40)
            # ...the eta stored before the step has fired early by at most the step
            runlog.wait_started("eta", timeout=30)
            started = a_app.storage.get([eta_task.id])[0].started_at  # type: ignore[union-attr]
            assert started is not None and started - step >= stored_at + STEP + 4 - step - 0.5
        else:
            # And after B's reaping rounds (its heartbeat advanced three times), nothing fired early
            beats: list[float] = []
            wait_for(
                lambda: beats.append(max(w.heartbeat_at for w in a_app.storage.workers())) or len(set(beats)) > 3,
                40,
                "several heartbeats to pass",
            )
            assert runlog.started("eta") is None and not runlog.starts("ghost")
        # And A's live task was never reaped: it started once and still holds its lease
        assert runlog.runs_per_key().get("t") == 1
        row = a_app.storage.get([result.id])[0]
        assert row is not None and (row.state, row.lease_token, row.attempts) == ("running", token, 1)
        assert a.state.value == "ok"
        gate.release_all()
        assert result.get(timeout=30) == "t.1"


def _in_store_call(pool: WorkerPool, name: str) -> bool:
    """True while the pool's loop thread is inside the store's ``name`` (waiting on a lock, here)."""
    assert pool._thread is not None
    frame = sys._current_frames().get(pool._thread.ident or 0)
    while frame is not None:
        if frame.f_code.co_name == name and "storage" in frame.f_code.co_filename:
            return True
        frame = frame.f_back
    return False


@pytest.mark.timeout(90)
def test_a_store_call_waiting_on_a_lock_is_no_clock_step(
    tmp_path: Path, make_app: MakeApp, runlog: RunLog, gate: Gate, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "liteq.pool")
    # Given a pool running a blocked task, on a store whose busy timeout outlasts the lock below
    app = make_app(busy_timeout=30.0)
    block = app.task(pool_tasks.block)
    with running_pool(app, gate, concurrency=1) as pool:
        result = block.delay(runlog.path, gate.dir, "t")
        runlog.wait_started("t")

        # When another connection holds BEGIN EXCLUSIVE while the pool writes the task's outcome,
        # for longer than a clock step's tolerance (and well under the busy timeout)
        holder = sqlite3.connect(tmp_path / "store" / DB_FILENAME, isolation_level=None, timeout=30)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            gate.release("t")
            wait_for(lambda: _in_store_call(pool, "complete"), 30, "the pool to wait on the lock to record the outcome")
            blocked_at = time.monotonic()
            hold = 2 * CLOCK_STEP_TOLERANCE + 0.5
            # the lock is the fault: it is held for a set time while the pool waits on it
            wait_for(
                lambda: time.monotonic() - blocked_at >= hold and _in_store_call(pool, "complete"),
                hold + 10,
                "the pool to stay blocked on the lock",
            )
        finally:
            holder.execute("ROLLBACK")
            holder.close()

        # Then the outcome lands, the task ran once, the pool stayed ok...
        assert result.get(timeout=30) == "t.1"
        assert runlog.runs_per_key() == {"t": 1}
        assert pool.state is PoolState.OK
    # ...and the pool, stopped (so the iteration that waited has finished), saw no wall-clock step
    steps = [r.getMessage() for r in caplog.records if "wall clock stepped" in r.getMessage()]
    assert not steps, steps
