"""``liteq control drain|stop``: an operator's command travels through the cluster server to a
remote ``liteq worker`` process, which acts on it (drain: claim nothing more, finish, exit 0;
stop: a graceful stop, as SIGTERM)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from liteq import LiteQ
from tests import pool_tasks
from tests.cluster_support import (
    TOKEN,
    ServerProcess,
    server_fixture,  # noqa: F401  (the server fixture)
)
from tests.pool_support import ROOT, Gate, Reaper, RunLog, registered
from tests.support import wait_for

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]


@pytest.fixture
def producer(server: ServerProcess) -> Iterator[LiteQ]:
    """An app on the server that enqueues :func:`tests.pool_tasks.block` (and reads the store)."""
    with LiteQ(server.url, token=TOKEN) as app:
        app.task(pool_tasks.block)
        yield app


def _env(url: str) -> dict[str, str]:
    import os

    env = dict(os.environ)
    env.update(LITEQ_TEST_STORE=url, LITEQ_TOKEN=TOKEN)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _worker(reaper: Reaper, producer: LiteQ, url: str, worker_id: str) -> subprocess.Popen[bytes]:
    """A real ``liteq worker`` (2 children, 2 tasks claimed ahead) serving the cluster store."""
    cmd = [sys.executable, "-m", "liteq", "worker", "tests.cluster_app:app", "-c", "2", "--prefetch", "2"]
    cmd += ["--worker-id", worker_id, "--shutdown-timeout", "60"]
    proc = reaper.popen(cmd, name=worker_id, env=_env(url))
    wait_for(lambda: registered(producer, proc.pid) or proc.poll() is not None, 60, f"worker {worker_id} to register")
    assert proc.poll() is None, reaper.stderr(worker_id)
    return proc


def _control(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "liteq", "control", *args[:1], url, *args[1:]],
        env=_env(url),
        capture_output=True,
        text=True,
        timeout=60,
    )


def _four_held(producer: LiteQ, runlog: RunLog, gate: Gate) -> list[str]:
    """Four blocking tasks: two running in the worker's children, two claimed into its buffer."""
    ids = [producer.tasks["tests.pool_tasks.block"].delay(runlog.path, gate.dir, f"k{i}").id for i in range(4)]
    wait_for(lambda: len({e.key for e in runlog.starts()}) == 2, 60, "two tasks to start")
    wait_for(
        lambda: all(r is not None and r.state == "running" for r in producer.storage.get(ids)), 60, "all four claimed"
    )
    return ids


def test_a_drained_remote_worker_finishes_its_tasks_claims_nothing_more_and_exits_0(
    server: ServerProcess, producer: LiteQ, reaper: Reaper, runlog: RunLog, gate: Gate
) -> None:
    # Given a remote worker in the middle of a batch (two tasks running, two claimed ahead)
    proc = _worker(reaper, producer, server.url, "drained")
    held = _four_held(producer, runlog, gate)
    # When the operator drains it through the server
    sent = _control(server.url, "drain", "drained")
    assert sent.returncode == 0, sent.stderr
    assert "drain sent to 1 worker(s): drained" in sent.stdout
    wait_for(lambda: "received 'drain'" in reaper.stderr("drained"), 30, "the worker to receive the drain")
    # and a task arrives after the drain
    late = producer.tasks["tests.pool_tasks.block"].delay(runlog.path, gate.dir, "late")
    gate.release_all()
    # Then the worker finishes every task it held, exits 0, and leaves the new task to others
    assert proc.wait(timeout=120) == 0, reaper.stderr("drained")
    assert [producer.result(i).get(timeout=10) for i in held] == ["k0.1", "k1.1", "k2.1", "k3.1"]
    assert runlog.runs_per_key() == {"k0": 1, "k1": 1, "k2": 1, "k3": 1}
    row = producer.storage.get([late.id])[0]
    assert row is not None and row.state == "pending"


def test_a_stopped_remote_worker_stops_gracefully_and_exits_0(
    server: ServerProcess, producer: LiteQ, reaper: Reaper, runlog: RunLog, gate: Gate
) -> None:
    # Given a remote worker with two tasks running and two claimed ahead
    proc = _worker(reaper, producer, server.url, "stopped")
    held = _four_held(producer, runlog, gate)
    running = sorted(e.key for e in runlog.starts())
    # When the operator stops every live worker through the server
    sent = _control(server.url, "stop", "--all")
    assert sent.returncode == 0, sent.stderr
    assert "stop sent to 1 worker(s): stopped" in sent.stdout
    wait_for(lambda: "received 'stop'" in reaper.stderr("stopped"), 30, "the worker to receive the stop")
    # Then (as with SIGTERM) the unstarted tasks go back at once, the running ones finish, exit 0
    unstarted = [i for i, k in zip(held, ["k0", "k1", "k2", "k3"], strict=True) if k not in running]
    wait_for(
        lambda: all(r is not None and r.state == "pending" for r in producer.storage.get(unstarted)),
        30,
        "the unstarted tasks to go back",
    )
    gate.release_all()
    assert proc.wait(timeout=120) == 0, reaper.stderr("stopped")
    assert runlog.runs_per_key() == {k: 1 for k in running}


def test_control_refuses_an_unknown_worker_and_a_missing_target(server: ServerProcess) -> None:
    unknown = _control(server.url, "drain", "nobody")
    assert unknown.returncode != 0 and "no live worker nobody" in unknown.stderr
    neither = _control(server.url, "stop")
    assert neither.returncode != 0 and "name worker ids or pass --all" in neither.stderr
