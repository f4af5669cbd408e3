"""A supervisor polls for a moment before it sleeps, right after activity and while a CPU is free
of children (liteq.events): never while idle, never in an application's thread by default, never
past its wait's timeout, and a bad ``spin`` is refused where it enters.
"""

from __future__ import annotations

import math
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from liteq import LiteQ
from liteq.events import SPIN_PROBE, EventWait, Spinner
from liteq.exceptions import ConfigurationError
from liteq.pool import WorkerPool
from liteq.pool_options import MAX_SPIN, SPIN, default_spin
from liteq.storage.contract import Storage
from liteq.wake import Waker
from tests import pool_tasks
from tests.pool_support import ROOT, Reaper, pool_env, wait_for, worker_cmd

pytestmark = pytest.mark.timeout(120)

MakeApp = Callable[..., LiteQ]


@pytest.mark.parametrize("bad", [-0.001, math.nan, math.inf, MAX_SPIN * 2, "fast", True])
def test_a_bad_spin_is_refused_naming_the_option(make_app: MakeApp, bad: object) -> None:
    app = make_app()
    app.task(pool_tasks.add)
    with pytest.raises(ConfigurationError, match="spin"):
        WorkerPool(app, concurrency=1, spin=bad)  # type: ignore[arg-type]


def test_the_cli_refuses_a_bad_spin_naming_the_flag(tmp_path: Path) -> None:
    out = subprocess.run(
        [*worker_cmd("-c", "1", "--spin", "-1")],
        cwd=ROOT,
        env=pool_env(tmp_path / "store"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert "--spin" in out.stderr


def test_only_a_pool_in_a_process_of_its_own_spins_by_default(make_app: MakeApp) -> None:
    app = make_app()
    add = app.task(pool_tasks.add)
    for asked, expected in ((None, SPIN), (0.0, 0.0)):  # a loop run by the caller: liteq worker, app.run_worker()
        foreground = WorkerPool(app, concurrency=1, spin=asked)
        foreground.start()
        try:
            assert foreground.spin == expected
        finally:
            foreground.stop()
            foreground.run()
    with app.workers(concurrency=1) as pool:  # its loop shares this process's GIL
        assert pool.spin == 0
        assert add.delay(1, 2).get(timeout=30) == 3
    with app.workers(concurrency=1, spin=0.0002) as pool:  # asked for: granted
        assert pool.spin == 0.0002
        assert add.delay(2, 3).get(timeout=30) == 5


def test_a_pool_over_a_cluster_server_does_not_spin_by_default(storage: Storage) -> None:
    # Over a server, replies and pushes reach the pool through the client's reader thread, which
    # a polling loop would keep waiting for the GIL.
    remote = type(storage).__name__ == "RemoteStorage"
    assert storage.events_through_a_thread is remote
    assert default_spin(storage, in_background=False) == (0.0 if remote else SPIN)
    assert default_spin(storage, in_background=True) == 0.0


@pytest.mark.parametrize(
    ("active", "busy", "cpus", "expected"),
    [
        (False, 0, 2, 0.0),  # idle: sleep at once
        (True, 0, 2, SPIN),  # just handled an event, nothing running
        (True, 1, 2, SPIN),  # one child runs, a CPU is free for the supervisor
        (True, 2, 2, 0.0),  # children take every CPU: polling would take one from a task
        (True, 3, 2, 0.0),
    ],
)
def test_the_spin_is_granted_only_after_activity_while_a_cpu_is_free(
    active: bool, busy: int, cpus: int, expected: float
) -> None:
    assert Spinner(SPIN, cpus).before(active=active, busy=busy) == expected
    assert Spinner(0.0, cpus).before(active=active, busy=busy) == 0.0  # spin=0: never


def test_the_spin_stops_where_polling_does_not_pay_and_comes_back_where_it_does() -> None:
    spinner = Spinner(SPIN, 2)
    # Given waits with no task running that keep ending later than the spin (tasks arriving at
    # random, a millisecond apart)
    for _ in range(20):
        spinner.before(active=True, busy=0)
        spinner.after(0.002, True)
    # Then such waits poll only now and then (to see whether it would pay again), while waits for
    # a running child's answer still poll
    polled = [spinner.before(active=True, busy=0) for _ in range(SPIN_PROBE * 4)]
    assert polled.count(SPIN) == 4 and polled.count(0.0) == SPIN_PROBE * 4 - 4
    assert spinner.before(active=True, busy=1) == SPIN
    # And when events come within the spin again, polling comes back
    for _ in range(20):
        spinner.before(active=True, busy=0)
        spinner.after(SPIN / 3, True)
    assert spinner.before(active=True, busy=0) == SPIN
    # A wait that ended without an event (a timer) counts as polling that did not pay
    for _ in range(20):
        spinner.before(active=True, busy=1)
        spinner.after(SPIN / 3, False)
    assert spinner.before(active=True, busy=1) == 0.0


def test_a_wake_up_that_comes_while_the_wait_spins_is_returned(tmp_path: Path) -> None:
    events = EventWait()
    waker = Waker(str(tmp_path / "wake"))
    events.add_waker(waker)
    try:
        sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        started = threading.Event()

        def send() -> None:
            started.wait(10)
            sender.sendto(b"w", waker.path)

        thread = threading.Thread(target=send)
        thread.start()
        started.set()
        # A spin longer than the test's own deadline: the wake-up must end it, whether it comes
        # while the wait polls or after.
        assert events.wait(30.0, [], spin=30.0) == [("waker", None)]
        thread.join(10)
        sender.close()
    finally:
        events.close()


def test_a_spin_never_outlasts_the_wait_timeout() -> None:
    events = EventWait()
    try:
        started = time.monotonic()
        assert events.wait(0.2, [], spin=60.0) == []
        assert time.monotonic() - started < 30.0  # the timeout ended it, not the spin
    finally:
        events.close()


def _cpu(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


def test_an_idle_liteq_worker_sleeps_after_a_burst(
    make_app: MakeApp, reaper: Reaper, tmp_path: Path
) -> None:
    # Given a real `liteq worker` (which spins by default) that just ran a burst of tasks
    store = tmp_path / "store"
    producer = make_app(store)
    add = producer.task(pool_tasks.add)
    proc = reaper.popen(worker_cmd("-c", "1"), name="worker", env=pool_env(store))
    for i in range(50):
        assert add.delay(i, 1).get(timeout=60) == i + 1
    supervisor = psutil.Process(proc.pid)
    # When it has nothing to do for a while
    wait_for(lambda: supervisor.status() == psutil.STATUS_SLEEPING, 30, "the supervisor to sleep")
    before, started = _cpu(supervisor), time.monotonic()
    wait_for(lambda: time.monotonic() - started >= 2.0, 30, "two idle seconds to pass")
    used = _cpu(supervisor) - before
    # Then it sleeps: a spin that outlasted its wait (or one repeated without an event) would use
    # the whole window
    assert used < 0.5, f"an idle supervisor used {used:.2f} CPU-s in 2 s"
    assert proc.poll() is None
