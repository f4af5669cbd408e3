"""Stalled children and shared worker ids (issue 9, RELIABILITY.md "Clocks and liveness").

A SIGSTOPped child runs no Python: it never finishes, never dies, and used to keep its task's
lease extended forever. Two pools started with one ``--worker-id`` used to take each other's
running tasks at start. Real pools, real signals, the run log of :mod:`tests.pool_tasks` as oracle.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from liteq import LiteQ, TaskTimedOut
from liteq.message import ErrorInfo
from tests import pool_tasks
from tests.pool_support import Gate, Reaper, RunLog, gone, pool_env, registered, running_pool, wait_for, worker_cmd

MakeApp = Callable[..., LiteQ]


def _errors(app: LiteQ, task_id: str) -> list[ErrorInfo]:
    row = app.storage.get([task_id], history=True)[0]
    assert row is not None
    return [e for e in (ErrorInfo.decode(b) for b in [*row.errors]) if e is not None]


# -- a child that stops answering ---------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_sigstopped_child_without_a_limit_is_killed_and_its_task_retried(
    make_app: MakeApp, runlog: RunLog, gate: Gate
) -> None:
    # Given a pool whose lease is 3 s (the default liveness timeout), running a task with no time limit
    app = make_app(lease=3.0)
    block = app.task(pool_tasks.block)
    add = app.task(pool_tasks.add)
    with running_pool(app, gate, concurrency=1) as pool:
        result = block.delay(runlog.path, gate.dir, "t")
        run1 = runlog.wait_started("t")
        # When the child running it is stopped (SIGSTOP) for longer than the lease
        os.kill(run1.pid, signal.SIGSTOP)
        try:
            # Then the supervisor finds it silent, kills it, and the task runs again in a new child
            wait_for(lambda: gone(run1.pid), 30, "the stopped child to be killed")
            run2 = runlog.wait_started("t", attempt=2, timeout=30)
            assert run2.pid != run1.pid
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(run1.pid, signal.SIGCONT)
        gate.release("t", 2)
        assert result.get(timeout=30) == "t.2"
        # And the pool goes on
        assert add.delay(2, 3).get(timeout=20) == 5
        assert pool.state.value == "ok"
    (lost,) = _errors(app, result.id)
    assert lost.type == "liteq.exceptions.TaskTimedOut" and "stopped answering" in lost.message
    assert runlog.runs_per_key() == {"t": 2}


@pytest.mark.timeout(90)
def test_sigstopped_child_with_a_limit_is_killed_at_the_limit(make_app: MakeApp, runlog: RunLog, gate: Gate) -> None:
    # Given a task with a 2 s hard limit, in a pool whose lease (and liveness timeout) is far longer
    app = make_app(lease=60.0)
    block = app.task(pool_tasks.block, timeout=2.0)
    with running_pool(app, gate, concurrency=1):
        result = block.delay(runlog.path, gate.dir, "t")
        run1 = runlog.wait_started("t")
        # When its child is stopped
        os.kill(run1.pid, signal.SIGSTOP)
        try:
            # Then it is killed at the limit and the task fails as timed out
            with pytest.raises(TaskTimedOut):
                result.get(timeout=30)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(run1.pid, signal.SIGCONT)
        assert gone(run1.pid)
    assert result.state == "failed"


# -- two pools with one worker id ---------------------------------------------------------------------


def _start(reaper: Reaper, app: LiteQ, store: Path, name: str, *args: str) -> subprocess.Popen[bytes]:
    proc = reaper.popen(worker_cmd(*args), name=name, env=pool_env(store, lease=60.0))
    wait_for(lambda: registered(app, proc.pid), 40, f"pool {name} to register")
    return proc


@pytest.mark.timeout(120)
def test_a_second_pool_with_the_same_worker_id_leaves_the_first_ones_tasks_alone(
    tmp_path: Path, make_app: MakeApp, reaper: Reaper, runlog: RunLog, gate: Gate
) -> None:
    # Given pool A (worker id "same") running a blocked task
    store = tmp_path / "store"
    app = make_app(store)
    block = app.task(pool_tasks.block)
    a = _start(reaper, app, store, "a", "-c", "1", "--worker-id", "same")
    result = block.delay(runlog.path, gate.dir, "t")
    runlog.wait_started("t")
    before = app.storage.get([result.id])[0]
    assert before is not None and before.state == "running"

    # When pool B starts on the same store with the same worker id while A is alive
    b = _start(reaper, app, store, "b", "-c", "1", "--worker-id", "same")

    # Then B took nothing from A: the task still runs under A's lease, and never started twice
    after = app.storage.get([result.id])[0]
    assert after is not None and (after.state, after.lease_token) == ("running", before.lease_token)
    assert runlog.runs_per_key() == {"t": 1}
    assert "another pool" in reaper.stderr("b")
    # And A's outcome is accepted when the task ends
    gate.release("t")
    assert result.get(timeout=30) == "t.1"
    assert runlog.runs_per_key() == {"t": 1}
    for proc in (a, b):
        assert proc.poll() is None
        proc.terminate()
        assert proc.wait(30) == 0


# -- a cancelled task already handed to the pool --------------------------------------------------------


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    ("where", "options"),
    [("pipe", {"child_depth": 2, "prefetch": 0}), ("buffer", {"child_depth": 1, "prefetch": 2})],
)
def test_a_cancelled_prefetched_task_never_starts(
    make_app: MakeApp, runlog: RunLog, gate: Gate, where: str, options: dict[str, object]
) -> None:
    # Given one child running a blocked task, with the next one already claimed behind it
    # (queued in the child's pipe, or in the supervisor's buffer)
    app = make_app()
    block = app.task(pool_tasks.block)
    with running_pool(app, gate, concurrency=1, **options) as pool:
        first = block.delay(runlog.path, gate.dir, "a")
        runlog.wait_started("a")
        second = block.delay(runlog.path, gate.dir, "b")

        def held_where() -> bool:
            queued = [t.id for c in list(pool.children) for t in list(c.queue)[1:]]
            return second.id in (queued if where == "pipe" else [t.id for t in list(pool.buffer)])

        wait_for(held_where, 20, f"the second task to wait in the {where}")
        # When it is cancelled
        assert second.cancel()
        # Then it ends cancelled while the first still runs, and never starts
        wait_for(lambda: second.state == "cancelled", 20, "the second task to be cancelled")
        gate.release_all()
        assert first.get(timeout=30) == "a.1"
    assert runlog.runs_per_key() == {"a": 1}
    assert second.state == "cancelled"
