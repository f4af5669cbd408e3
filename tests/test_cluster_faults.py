"""Cluster fault tests (RELIABILITY.md, Cluster): real ``liteq serve`` and remote pool processes on
127.0.0.1, killed and stopped by pid; every wait has a deadline, none is a fixed sleep."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from liteq.cluster.remote import RemoteStorage

from liteq import LiteQ, chord
from tests import canvas_tasks, cluster_tasks, pool_tasks
from tests.cluster_support import (
    TOKEN,
    ServerProcess,
    served,
    server_fixture,  # noqa: F401  (the server fixture)
    start_server,
)
from tests.pool_support import ROOT, Gate, Reaper, RunLog, registered
from tests.support import wait_for

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]


@pytest.fixture
def producer(server: ServerProcess) -> Iterator[LiteQ]:
    app = LiteQ(server.url, token=TOKEN)
    for fn in (pool_tasks.block, pool_tasks.record, canvas_tasks.square, canvas_tasks.total):
        app.task(fn)
    try:
        yield app
    finally:
        app.close()


def _env(url: str, lease: float, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(LITEQ_TEST_STORE=url, LITEQ_TEST_LEASE=str(lease), LITEQ_TOKEN=TOKEN, **extra)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _remote_pool(
    reaper: Reaper,
    app: LiteQ,
    url: str,
    name: str,
    *,
    lease: float = 60.0,
    concurrency: int = 1,
    **extra: str,
) -> subprocess.Popen[bytes]:
    import json

    options: dict[str, object] = {"concurrency": concurrency, "shutdown_timeout": 5}
    cmd = [sys.executable, "-m", "tests.cluster_app", json.dumps(options)]
    proc = reaper.popen(cmd, name=name, env=_env(url, lease, **extra))
    wait_for(lambda: registered(app, proc.pid) or proc.poll() is not None, 60, f"pool {name} to register")
    assert proc.poll() is None, reaper.stderr(name)
    return proc


def test_a_worker_that_vanishes_without_closing_its_socket_loses_its_leases(
    server: ServerProcess, producer: LiteQ, reaper: Reaper, runlog: RunLog
) -> None:
    # Given a task claimed by a "worker" that then goes silent with its socket still open
    result = producer.tasks["tests.pool_tasks.record"].delay(runlog.path, "k")
    with RemoteStorage(server.url, token=TOKEN) as vanished:
        (claimed,) = vanished.claim("vanished-worker", ["default"], lease=2.0)
        assert claimed.id == result.id
        # When a real remote worker runs beside it
        _remote_pool(reaper, producer, server.url, "other")
        # Then after the lease time the server frees the lease and the other worker runs the task
        assert result.get(timeout=60) == "k"
        assert runlog.runs_per_key() == {"k": 1}
        row = producer.storage.get([result.id])[0]
        assert row is not None and row.attempts == 2
        # And the silent worker's late completion is refused
        from liteq.storage.records import Outcome

        assert vanished.complete([Outcome(claimed.id, claimed.lease_token, "succeeded", result=b"M\xc0")]) == [False]


def _check_late_run_refused(producer: LiteQ, runlog: RunLog, late_pid: int, task_id: str) -> None:
    """Once the late pool's run of ``k`` (attempt 1) has ended and the pool has been heard from
    since (it hands in outcomes before it heartbeats), the second attempt's result still stands."""
    wait_for(lambda: any(e.kind == "end" and e.attempt == 1 for e in runlog.events()), 60, "the late run to end")
    ended = time.time()
    wait_for(
        lambda: any(w.pid == late_pid and w.heartbeat_at > ended + 0.5 for w in producer.storage.workers()),
        90,
        "the late pool to be heard again",
    )
    row = producer.storage.get([task_id])[0]
    assert row is not None and row.state == "succeeded" and row.attempts == 2
    assert producer.result(task_id).get(timeout=5) == "k.2"


def test_a_sigstopped_remote_worker_past_its_lease_has_its_late_outcome_rejected(
    server: ServerProcess, producer: LiteQ, reaper: Reaper, runlog: RunLog, gate: Gate
) -> None:
    # Given a remote pool with a short lease running a blocked task
    first = _remote_pool(reaper, producer, server.url, "first", lease=2.0)
    result = producer.tasks["tests.pool_tasks.block"].delay(runlog.path, gate.dir, "k")
    started = runlog.wait_started("k", 1, timeout=60)
    stopped = [psutil.Process(first.pid), *reaper.descendants(first.pid)]
    assert started.pid in {p.pid for p in stopped}
    # When the whole pool is SIGSTOPped past its lease
    for p in stopped:
        p.send_signal(signal.SIGSTOP)
    try:
        # Then another remote worker gets the task after the lease and finishes it
        _remote_pool(reaper, producer, server.url, "second", lease=30.0)
        runlog.wait_started("k", 2, timeout=60)
        gate.release("k", 2)
        assert result.get(timeout=60) == "k.2"
    finally:
        gate.release("k", 1)
        for p in stopped:
            p.send_signal(signal.SIGCONT)
    # And when the stopped worker wakes and finishes its run, its outcome is refused
    _check_late_run_refused(producer, runlog, first.pid, result.id)


def test_sigkill_of_the_server_while_workers_hold_leases_loses_nothing(
    server: ServerProcess, producer: LiteQ, reaper: Reaper, runlog: RunLog, gate: Gate, tmp_path: Path
) -> None:
    # Given two remote pools of two children holding the leases of four blocked tasks (at least two
    # running; how the pools share the claims is theirs to decide)
    for name in ("a", "b"):
        _remote_pool(reaper, producer, server.url, name, lease=20.0, concurrency=2)
    results = [producer.tasks["tests.pool_tasks.block"].delay(runlog.path, gate.dir, f"k{i}") for i in range(4)]
    wait_for(lambda: len(runlog.starts()) >= 2, 60, "two tasks to start")
    # When the server is SIGKILLed and a new one starts on the same store and port
    server.stop(signal.SIGKILL)
    gate.release_all()  # the running tasks finish while the server is down
    restarted = start_server(server.store, bind=f"127.0.0.1:{server.port}", env={"LITEQ_TOKEN": TOKEN})
    try:
        # Then the workers reconnect by themselves, report, and every task finishes
        assert sorted(r.get(timeout=60) for r in results) == [f"k{i}.1" for i in range(4)]
        runs = runlog.runs_per_key()
        assert set(runs) == {f"k{i}" for i in range(4)}
        # A task ran twice only if its lease really ran out while the server was down
        assert all(n == 1 for n in runs.values()), runs
    finally:
        restarted.stop(signal.SIGKILL)


def test_two_remote_workers_and_a_local_pool_share_a_thousand_member_chord(
    server: ServerProcess, producer: LiteQ, reaper: Reaper
) -> None:
    # Given two remote pools and one local pool on the served store's directory
    remotes = [_remote_pool(reaper, producer, server.url, name, concurrency=2) for name in ("r1", "r2")]
    local = LiteQ(server.store)
    for fn in (canvas_tasks.square, canvas_tasks.total):
        local.task(fn)
    try:
        # When a 1,000-member chord is sent through the server, and the local pool joins once the
        # remote pools are at work (started together, a pool that claims straight from the database
        # can drain every member before a loaded machine lets a remote one claim)
        r = chord(
            (producer.tasks["tests.canvas_tasks.square"].s(i) for i in range(1000)),
            producer.tasks["tests.canvas_tasks.total"].s(),
        )
        result = r.delay()
        wait_for(lambda: producer.stats()["states"].get("succeeded", 0) > 0, 60, "the remote pools to start")
        with local.workers(concurrency=2, shutdown_timeout=10.0) as pool:
            # Then the callback gets every member's result once
            assert result.get(timeout=150) == sum(i * i for i in range(1000))
            # And the members were spread over the pools (counted as each pool heartbeats; under load
            # one pool may be left out, so at least two of the three)
            pids = (remotes[0].pid, remotes[1].pid, os.getpid())

            def busy() -> list[int]:
                done = {w["pid"]: w["tasks_done"] for w in producer.stats()["workers"]}
                return [p for p in pids if done.get(p, 0) > 0]

            wait_for(lambda: len(busy()) >= 2, 60, "members to be reported by two pools or more")
            assert pool is not None
    finally:
        local.close()


def test_periodic_slots_fire_once_with_remote_and_local_schedulers(
    server: ServerProcess, producer: LiteQ, reaper: Reaper, tmp_path: Path
) -> None:
    from tests.test_scheduler import slot_rows_if_any

    # Given a remote pool and a local pool that both drive the same every-second schedule
    ticks = tmp_path / "ticks.log"
    _remote_pool(reaper, producer, server.url, "remote-scheduler", LITEQ_TEST_TICK_LOG=str(ticks))
    local = LiteQ(server.store)
    local.periodic(every=1.0, args=(str(ticks),))(cluster_tasks.tick)
    try:
        with local.workers(concurrency=1, shutdown_timeout=10.0):
            # When several slots pass
            wait_for(lambda: len(slot_rows_if_any(server.store)) >= 4, 60, "four slots to fire")
        # Then each slot fired once: one task per slot, and each of those tasks ran once
        rows = slot_rows_if_any(server.store)
        slots = [(s, t) for s, t, _ in rows]
        assert len(slots) == len(set(slots))
        ran = wait_for(
            lambda: (lines := ticks.read_text().split()) and len(lines) >= len(rows) and lines,
            60,
            "every fired slot to run",
        )
        assert len(ran) == len(set(ran)), "a slot's task ran twice"
        assert {task_id for *_, task_id in rows} <= set(ran) | {
            r.id for r in local.storage.list(states=["pending", "running"])
        }
    finally:
        local.close()


@pytest.fixture
def netns(tmp_path: Path) -> Iterator[tuple[str, str, str]]:
    """A network namespace joined to this one by a veth pair: ``(namespace, host-side link, host ip)``.
    Removed afterwards. Skipped without root or the ``ip`` command."""
    import shutil

    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("a network partition needs root and the ip command (network namespaces)")
    tag = uuid.uuid4().hex[:6]
    ns, host_link, ns_link = f"lq-{tag}", f"lqh{tag}", f"lqn{tag}"
    subnet = 10 + int(tag[:2], 16) % 200
    host_ip, ns_ip = f"10.213.{subnet}.1", f"10.213.{subnet}.2"

    def ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)

    ip("netns", "add", ns)
    try:
        ip("link", "add", host_link, "type", "veth", "peer", "name", ns_link)
        ip("link", "set", ns_link, "netns", ns)
        ip("addr", "add", f"{host_ip}/30", "dev", host_link)
        ip("link", "set", host_link, "up")
        ip("-n", ns, "addr", "add", f"{ns_ip}/30", "dev", ns_link)
        ip("-n", ns, "link", "set", ns_link, "up")
        ip("-n", ns, "link", "set", "lo", "up")
        yield ns, host_link, host_ip
    finally:
        subprocess.run(["ip", "link", "del", host_link], capture_output=True, timeout=30)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


@pytest.mark.root
def test_a_partitioned_remote_worker_loses_its_task_and_its_late_completion_is_refused(
    netns: tuple[str, str, str], reaper: Reaper, runlog: RunLog, gate: Gate, tmp_path: Path
) -> None:
    import json

    ns, host_link, host_ip = netns
    # Given a server on the namespace link (a token: not loopback) and a remote pool inside the namespace
    with served(tmp_path / "served", "--bind", f"{host_ip}:0", kill=True) as linked:
        producer = LiteQ(linked.url, token=TOKEN)
        block = producer.task(pool_tasks.block)
        try:
            cmd = ["ip", "netns", "exec", ns, sys.executable, "-m", "tests.cluster_app"]
            cut_off = reaper.popen(
                [*cmd, json.dumps({"concurrency": 1, "shutdown_timeout": 5})],
                name="partitioned",
                env=_env(linked.url, 2.0),
            )
            wait_for(lambda: producer.stats()["workers"], 60, "the partitioned pool to register")
            result = block.delay(runlog.path, gate.dir, "k")
            runlog.wait_started("k", 1, timeout=60)
            # When its link is cut (packets dropped, no connection closed) past its lease
            subprocess.run(["ip", "link", "set", host_link, "down"], check=True, timeout=30)
            try:
                # Then a worker on this side runs the task after the lease, and its result stands
                _remote_pool(reaper, producer, linked.url, "healthy", lease=30.0)
                runlog.wait_started("k", 2, timeout=60)
                gate.release("k", 2)
                assert result.get(timeout=60) == "k.2"
            finally:
                gate.release("k", 1)
                subprocess.run(["ip", "link", "set", host_link, "up"], check=True, timeout=30)
            # And when the link heals, the cut-off worker finishes its run but its completion is refused
            _check_late_run_refused(producer, runlog, cut_off.pid, result.id)
        finally:
            producer.close()
