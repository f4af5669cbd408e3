"""Canvas crash safety (issue 5, DESIGN.md §6) with real pools, real processes and SIGKILL.

A 1,000-member chord runs on a pool of two children. One member is held (it waits for a release
file) so that the test knows which process runs it and that the chord cannot have finished when
the fault strikes. The oracle is the run log the tasks of :mod:`tests.canvas_tasks` append to,
outside the store: the callback must run exactly once, with one result per member in order, and
every duplicate member run must be explained by the fault (a start in a process that was killed).
Every wait polls observed state with a deadline; processes are killed by pid, only ours.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from liteq import GroupResult, LiteQ, Result, TaskFailed, chord
from tests import canvas_tasks as ct
from tests.pool_support import ROOT, Gate, Reaper, RunLog, child_pids, full_pool, gone, registered, wait_for

pytestmark = pytest.mark.timeout(120)

#: Members of the chord.
N = 1000
#: The members that are held until the fault has struck (when the two children take one each,
#: nothing else runs before the fault, so most of the chord is left to run after it).
HELD = 400
HOLD = [HELD, HELD + 1]
#: What the callback returns when every member's value arrived, in place.
EXPECTED = {"n": N, "sum": sum(i * i for i in range(N)), "in_place": True}
#: Seconds a killed process's family gets to go away (orphans check their parent every 0.5 s).
EXIT_WITHIN = 10.0


def _register(app: LiteQ) -> LiteQ:
    """Register the chord's tasks (before a pool starts: its children learn the tasks at start)."""
    app.task(ct.member)
    app.task(ct.gather)
    return app


def _send(app: LiteQ, runlog: RunLog, gate: Gate) -> Result:
    member, gather = app.get_task("tests.canvas_tasks.member"), app.get_task("tests.canvas_tasks.gather")
    header = [member.s(runlog.path, gate.dir, i, HOLD) for i in range(N)]
    result: Result = chord(header, gather.s(runlog.path)).delay()
    return result


def _check_outcome(app: LiteQ, r: Result, runlog: RunLog, killed: set[int]) -> None:
    """The callback ran once with every member's value; duplicates only where a process died."""
    assert r.get(timeout=60) == EXPECTED
    runs = runlog.runs_per_key()
    assert runs.get("callback") == 1, f"callback ran {runs.get('callback', 0)} times"
    assert {f"m{i}" for i in range(N)} <= runs.keys()
    for key, n in runs.items():
        if n > 1:
            pids = {e.pid for e in runlog.starts(key)}
            assert pids & killed, f"{key} ran {n} times, never in a killed process ({pids})"
    assert runs[f"m{HELD}"] >= 2
    header = r.parent
    assert isinstance(header, GroupResult) and len(header) == N
    assert header.get(timeout=10) == [i * i for i in range(N)]
    assert app.storage.get([r.id])[0].attempts == 1  # type: ignore[union-attr]


def test_thousand_member_chord_survives_a_sigkilled_child(
    make_app: Callable[..., LiteQ], runlog: RunLog, gate: Gate
) -> None:
    # Given a 1,000-member chord running on two children, one of them held inside a member
    app = _register(make_app())
    with app.workers(concurrency=2, shutdown_timeout=10.0) as pool:
        try:
            r = _send(app, runlog, gate)
            held = runlog.wait_started(f"m{HELD}", timeout=30)
            assert held.pid in wait_for(lambda: full_pool(pool), 10, "two ready children")
            assert r.state == "scheduled"

            # When the child running the held member is SIGKILLed mid-way, then members may finish
            os.kill(held.pid, signal.SIGKILL)
            wait_for(lambda: (p := child_pids(pool)) and held.pid not in p, 20, "the dead child to be replaced")
            gate.release_all()

            # Then the callback ran exactly once with the right answer and one result per member
            _check_outcome(app, r, runlog, killed={held.pid})
            # And the held member ran again elsewhere, its lost run recorded
            again = runlog.started(f"m{HELD}", attempt=2)
            assert again is not None and again.pid != held.pid
        finally:
            gate.release_all()


def _pool_env(store: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["LITEQ_CANVAS_STORE"] = str(store)
    env["LITEQ_CANVAS_LEASE"] = "2"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _start_pool(reaper: Reaper, app: LiteQ, store: Path, name: str) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "liteq", "worker", "tests.canvas_app:app", "-c", "2", "--shutdown-timeout", "5"]
    proc = reaper.popen(cmd, name=name, env=_pool_env(store))
    wait_for(lambda: registered(app, proc.pid) or proc.poll() is not None, 30, f"pool {name} to register")
    assert proc.poll() is None, reaper.stderr(name)
    return proc


def test_thousand_member_chord_survives_a_sigkilled_supervisor(
    tmp_path: Path, make_app: Callable[..., LiteQ], reaper: Reaper, runlog: RunLog, gate: Gate
) -> None:
    # Given a pool in another process (lease 2 s) running a 1,000-member chord, one member held
    store = tmp_path / "store"
    app = _register(make_app(store))
    first = _start_pool(reaper, app, store, "first")
    r = _send(app, runlog, gate)
    held = runlog.wait_started(f"m{HELD}", timeout=30)
    family = reaper.descendants(first.pid)
    assert held.pid in {p.pid for p in family}

    # When the supervisor is SIGKILLed mid-way
    first.send_signal(signal.SIGKILL)
    assert first.wait(10) == -signal.SIGKILL

    # Then its children exit, and the chord is neither finished nor failed
    wait_for(lambda: all(gone(p.pid) for p in family), EXIT_WITHIN, "the orphaned children to exit")
    assert r.state == "scheduled"
    assert runlog.runs_per_key().get("callback") is None

    # When a second pool starts, with every member free to finish
    gate.release_all()
    second = _start_pool(reaper, app, store, "second")
    try:
        # Then the callback ran exactly once with the right answer and one result per member
        _check_outcome(app, r, runlog, killed={first.pid} | {p.pid for p in family})
    finally:
        # And the second pool stops cleanly
        second.send_signal(signal.SIGTERM)
        assert second.wait(30) == 0, reaper.stderr("second")


def test_chord_with_a_failing_member_fails_at_once_in_a_pool(make_app: Callable[..., LiteQ]) -> None:
    # Given a pool and a 200-member chord whose member 50 raises
    app = make_app()
    square, fail, total = app.task(ct.square), app.task(ct.fail), app.task(ct.total)
    with app.workers(concurrency=2, shutdown_timeout=10.0):
        header = [fail.s(i, message="member 50") if i == 50 else square.s(i) for i in range(200)]
        r = chord(header, total.s()).delay()

        # When it runs, Then the chord's result raises the member's error within the timeout
        with pytest.raises(TaskFailed) as caught:
            r.get(timeout=30)
        assert isinstance(r.parent, GroupResult)
        assert (caught.value.type, caught.value.message) == ("tests.canvas_tasks.CanvasError", "member 50")
        assert caught.value.reason == f"dependency failed: {r.parent.results[50].id}"
        # And the other members still all ran, the body never did
        header_result = r.parent
        wait_for(lambda: header_result.finished_count() == 200, 30, "every member to finish")
        assert header_result.completed_count() == 199
        row = app.storage.get([r.id])[0]
        assert row is not None and row.attempts == 0
