"""Wall-clock steps under running pools (issue 9, RELIABILITY.md "Clocks and liveness").

Leases and etas are stored as wall-clock instants, so an NTP step moves them all at once. The
pools' wall clock is injected (``WorkerPool(clock=...)``) and stepped by ±120 s while pool A runs
a task and pool B, with a short lease, reaps often: A's live lease must not be reaped (the task
starts once), a dead owner's lease still comes back, and an eta stored before the step fires
early by at most the step.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from liteq import LiteQ
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
