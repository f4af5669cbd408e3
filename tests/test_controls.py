"""Task controls (issue 4): ``unique``, ``lock``, ``rate_limit`` and ``cancel()``, across pools.

"Across all pools" is tested with two apps on one store directory, each running its own pool
(``app.workers()``) in this process; the pools' children are real processes. Tasks record what
happened (start and end times, pids) in a log outside the store (:mod:`tests.control_tasks`), and
the tests compare it with the store. Nothing sleeps to let something happen: state is polled with
a deadline.
"""

from __future__ import annotations

import itertools
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from liteq import ConfigurationError, LiteQ, TaskCancelled
from tests import control_tasks, tasks
from tests.control_tasks import Interval, intervals
from tests.support import wait_for

pytestmark = pytest.mark.timeout(60)

MakeApp = Callable[..., LiteQ]


def states(app: LiteQ, name: str) -> list[str]:
    """The states of every task named ``name``, oldest first."""
    return [r.state for r in app.storage.list(name=name, limit=10_000)]


def alive(pid: int) -> bool:
    """True while process ``pid`` exists and is not a zombie."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def overlapping(a: Interval, b: Interval) -> bool:
    """True when two runs were in progress at the same time."""
    return a.start < b.end and b.start < a.end


# -- unique ---------------------------------------------------------------------------------------


def test_unique_returns_the_waiting_result_across_apps(make_app: MakeApp) -> None:
    # Given two apps on one store (two producers), each declaring the same unique task
    apps = [make_app(), make_app()]
    adds = [app.task(unique=True)(tasks.add) for app in apps]
    # When both send the same call while it waits, and one sends another call
    first = adds[0].delay(1, 2)
    second = adds[1].delay(1, 2)
    other = adds[0].delay(2, 2)
    # Then the second gets the first's Result; other arguments make another task
    assert second.id == first.id and other.id != first.id
    assert len(apps[0].storage.list(name=adds[0].name)) == 2
    # When the waiting task has run, the same call is sent again
    assert apps[1].run_until_empty() == 2
    assert second.get(timeout=5) == 3
    again = adds[1].delay(1, 2)
    # Then a new task is created
    assert again.id not in (first.id, other.id)
    assert states(apps[0], adds[0].name) == ["succeeded", "succeeded", "pending"]


def test_unique_dedups_a_scheduled_task(make_memory_app: MakeApp) -> None:
    # Given a unique task sent with a countdown (scheduled)
    app = make_memory_app()
    add = app.task(unique=True)(tasks.add)
    later = add.apply_async((1, 2), countdown=600)
    assert later.state == "scheduled"
    # When the same call is sent to run now
    now = add.delay(1, 2)
    # Then the scheduled one is returned, unchanged
    assert now.id == later.id and now.state == "scheduled"


def test_unique_does_not_dedup_against_a_running_task(make_app: MakeApp) -> None:
    # Given a unique task that a worker has claimed (running)
    app = make_app()
    add = app.task(unique=True)(tasks.add)
    first = add.delay(1, 2)
    (claimed,) = app.storage.claim("w", app.queues(), lease=30)
    assert claimed.id == first.id
    # When the same call is sent while it runs
    second = add.delay(1, 2)
    # Then a new task is queued (only a waiting copy makes delay() a no-op)
    assert second.id != first.id and second.state == "pending"


def test_unique_with_a_key_function(make_app: MakeApp) -> None:
    # Given a task unique per user (a key function of the arguments), on two apps of one store
    apps = [make_app(), make_app()]
    notify = [app.task(unique=control_tasks.user_key)(control_tasks.notify) for app in apps]
    # When calls for one user with different other arguments are sent, and one for another user
    a = notify[0].delay(7, note="first")
    b = notify[1].delay(7, note="second")
    c = notify[1].delay(8, note="first")
    # Then one task waits per user, and it keeps the first call's arguments
    assert b.id == a.id and c.id != a.id
    assert apps[0].run_until_empty() == 2
    assert a.get(timeout=5) == "7:first" and c.get(timeout=5) == "8:first"
    # ... and once it ran, the user can be notified again
    assert notify[0].delay(7, note="third").id != a.id


def test_unique_option_is_checked(make_memory_app: MakeApp) -> None:
    # Given an app
    app = make_memory_app()
    # When unique= is neither a bool nor a function
    # Then the declaration fails naming the option
    with pytest.raises(ConfigurationError, match="unique must be"):
        app.task(unique="yes")(tasks.add)  # type: ignore[call-overload]


# -- lock -------------------------------------------------------------------------------------------


def _send_locked(task: Any, log: Path, keys: tuple[str, ...], per_key: int, duration: float) -> list[Any]:
    """Interleave ``per_key`` runs of each key (``a0 b0 a1 b1 ...``); return their Results."""
    return [task.delay(key, i, str(log), duration) for i, key in itertools.product(range(per_key), keys)]


def test_lock_never_overlaps_a_key_across_two_pools(make_app: MakeApp, tmp_path: Path) -> None:
    # Given two apps on one store with a task locked per key ("key-{0}"), pools at default settings
    log = tmp_path / "runs.log"
    apps = [make_app(), make_app()]
    locked = [app.task(lock="key-{0}")(control_tasks.locked) for app in apps]
    results = _send_locked(locked[0], log, ("a", "b"), per_key=5, duration=0.1)
    # When two pools of two children each run them
    with apps[0].workers(concurrency=2), apps[1].workers(concurrency=2):
        for r in results:
            r.get(timeout=30)
    # Then each ran once, and no two runs of one key were ever in progress at the same time
    runs = intervals(log)
    assert sorted((i.key, i.index) for i in runs) == sorted((k, i) for i in range(5) for k in ("a", "b"))
    for key in ("a", "b"):
        mine = [i for i in runs if i.key == key]
        clashes = [(x, y) for x, y in itertools.combinations(mine, 2) if overlapping(x, y)]
        assert not clashes, clashes
    assert {r.info().lock_key for r in results} == {"key-a", "key-b"}


def test_lock_lets_different_keys_run_at_once(make_app: MakeApp, tmp_path: Path) -> None:
    # Given two apps on one store with a task locked per key, pools that claim one task per free child
    log = tmp_path / "runs.log"
    apps = [make_app(), make_app()]
    locked = [app.task(lock="key-{0}")(control_tasks.locked) for app in apps]
    results = _send_locked(locked[0], log, ("a", "b"), per_key=4, duration=0.2)
    # When two pools of two children run them (four children for two keys: the lock is contended)
    options: dict[str, Any] = {"concurrency": 2, "child_depth": 1, "prefetch": 0}
    with apps[0].workers(**options), apps[1].workers(**options):
        for r in results:
            r.get(timeout=30)
    runs = intervals(log)
    a = [i for i in runs if i.key == "a"]
    b = [i for i in runs if i.key == "b"]
    # Then one key never overlaps itself, while the two keys did run at the same time
    assert len(a) == len(b) == 4
    assert not [(x, y) for x, y in itertools.combinations(a, 2) if overlapping(x, y)]
    assert not [(x, y) for x, y in itertools.combinations(b, 2) if overlapping(x, y)]
    assert any(overlapping(x, y) for x in a for y in b), runs


def test_lock_true_is_one_run_of_the_task_at_a_time(make_app: MakeApp, tmp_path: Path) -> None:
    # Given a task with lock=True (one lock for every call), and a pool of two children
    log = tmp_path / "runs.log"
    app = make_app()
    locked = app.task(lock=True)(control_tasks.locked)
    results = [locked.delay(f"k{i}", i, str(log), 0.1) for i in range(4)]
    # When the pool runs them
    with app.workers(concurrency=2, child_depth=1, prefetch=0):
        for r in results:
            r.get(timeout=30)
    # Then even different arguments never ran at once
    runs = intervals(log)
    assert len(runs) == 4
    assert not [(x, y) for x, y in itertools.combinations(runs, 2) if overlapping(x, y)]


def test_a_lock_held_by_a_dead_worker_is_released_with_its_lease(make_app: MakeApp, tmp_path: Path) -> None:
    # Given two tasks of key "x" and one of key "y", and a worker that claimed the first "x" under a
    # 30 s lease and died without completing it
    log = tmp_path / "runs.log"
    app = make_app()
    locked = app.task(lock="key-{0}")(control_tasks.locked)
    x1 = locked.delay("x", 1, str(log))
    x2 = locked.delay("x", 2, str(log))
    (lost,) = app.storage.claim("dead-worker", app.queues(), limit=1, lease=30.0)
    assert lost.id == x1.id
    y1 = locked.delay("y", 1, str(log))
    with app.workers(concurrency=1):
        # When a live pool runs: the other key flows, the dead worker's key waits
        assert y1.get(timeout=20) > 0
        assert x2.state == "pending" and x1.state == "running"
        # When the lease runs out and the store is reaped (what every pool does periodically)
        assert app.storage.reap(now=time.time() + 31) == [x1.id]
        # Then the lock is free: the lost task runs again (attempt 2), then the next "x"
        x1.get(timeout=20)
        x2.get(timeout=20)
    assert x1.info().attempts == 2 and x2.info().attempts == 1
    runs = {(i.key, i.index): i for i in intervals(log)}
    assert runs[("x", 1)].end < runs[("x", 2)].start


def test_a_lock_template_naming_a_missing_argument_fails_in_the_caller(make_memory_app: MakeApp) -> None:
    # Given a task whose lock template names an argument the call does not pass
    app = make_memory_app()
    add = app.task(lock="user-{user_id}")(tasks.add)
    # When it is sent
    # Then the caller gets a ConfigurationError naming the template, and nothing is stored
    with pytest.raises(ConfigurationError, match=re.escape("lock template 'user-{user_id}'")):
        add.delay(1, 2)
    assert app.stats()["states"] == {}


# -- rate limit ----------------------------------------------------------------------------------


def test_rate_limit_is_shared_by_two_pools(make_app: MakeApp, tmp_path: Path) -> None:
    # Given two apps on one store with a task limited to 5 starts a second, and 20 calls queued
    log = tmp_path / "runs.log"
    apps = [make_app(), make_app()]
    limited = [app.task(rate_limit="5/s")(control_tasks.stamp) for app in apps]
    results = [limited[0].delay(str(log), "r", i) for i in range(20)]
    seen_scheduled = []

    def all_done() -> bool:
        current = states(apps[0], limited[0].name)
        if "scheduled" in current:
            seen_scheduled.append(current.count("scheduled"))
        assert "failed" not in current, current
        return current.count("succeeded") == 20

    # When two pools of two children (both claiming, each with the limit) run them
    with apps[0].workers(concurrency=2), apps[1].workers(concurrency=2):
        wait_for(all_done, 30, "20 rate-limited tasks to finish")

    # Then starts were spread at the rate across both pools: at least 0.2 s apart in the store's claim
    # times, about that in the tasks' own start times, about 3.8 s from first to last
    rows = apps[0].storage.get([r.id for r in results])
    claimed = sorted(r.started_at for r in rows if r is not None and r.started_at is not None)
    assert len(claimed) == 20
    gaps = [b - a for a, b in itertools.pairwise(claimed)]
    assert min(gaps) >= 0.2 - 1e-3, gaps
    assert claimed[-1] - claimed[0] >= 19 * 0.2 - 1e-3
    started = sorted(i.start for i in intervals(log))
    assert len(started) == 20
    assert min(b - a for a, b in itertools.pairwise(started)) >= 0.1
    # ... and waiting tasks were "scheduled", never failed, and waiting cost no attempt
    assert seen_scheduled, "no task was ever seen waiting as scheduled"
    assert {r.attempts for r in rows if r is not None} == {1}


def test_rate_limit_option_is_checked(make_memory_app: MakeApp) -> None:
    # Given an app
    app = make_memory_app()
    # When a rate limit is not a rate
    # Then the declaration fails with the expected spelling
    with pytest.raises(ConfigurationError, match="is not a rate"):
        app.task(rate_limit="fast")(tasks.add)
    with pytest.raises(ConfigurationError, match="must be positive"):
        app.task(rate_limit="0/s")(tasks.noop)
    assert app.task(rate_limit="100/m")(tasks.echo).options.rate_limit == pytest.approx(100 / 60)


# -- cancel -----------------------------------------------------------------------------------------


def _started_pid(log: Path, key: str) -> int:
    """Wait until the run log shows ``key`` started; return the pid that runs it."""
    line = wait_for(
        lambda: next(
            (ln for ln in (log.read_text().splitlines() if log.exists() else []) if ln.startswith(f"start {key} ")),
            None,
        ),
        20,
        f"task {key} to start",
    )
    return int(line.split()[-1])


def test_cancel_of_a_running_task_stops_it(make_app: MakeApp, tmp_path: Path) -> None:
    # Given a pool of one child running a task that would run for a long time
    log = tmp_path / "runs.log"
    app = make_app()
    hang = app.task(control_tasks.hang)
    pid_task = app.task(control_tasks.pid)
    with app.workers(concurrency=1):
        running = hang.delay(str(log), "h")
        _started_pid(log, "h")
        # When it is cancelled
        assert running.cancel() is True
        # Then it ends cancelled (get raises TaskCancelled) well before it would have finished
        with pytest.raises(TaskCancelled):
            running.get(timeout=20)
        # ... and the pool goes on running tasks
        assert pid_task.delay().get(timeout=20) > 0
    row = running.info()
    assert (row.state, row.reason) == ("cancelled", "cancelled")


def test_cancel_of_a_task_that_ignores_it_kills_and_replaces_the_child(make_app: MakeApp, tmp_path: Path) -> None:
    # Given a pool of one child running a task that swallows the cancel raised inside it
    log = tmp_path / "runs.log"
    app = make_app()
    stubborn = app.task(control_tasks.stubborn)
    pid_task = app.task(control_tasks.pid)
    with app.workers(concurrency=1):
        running = stubborn.delay(str(log), "s")
        child = _started_pid(log, "s")
        # When it is cancelled
        assert running.cancel() is True
        # Then after the grace its child is killed: the task ends cancelled, the child is replaced
        with pytest.raises(TaskCancelled):
            running.get(timeout=30)
        wait_for(lambda: not alive(child), 20, f"child {child} to be gone")
        replacement = pid_task.delay().get(timeout=20)
    assert replacement != child
    assert running.state == "cancelled" and running.info().reason == "cancelled"
    assert "ignored s" in log.read_text()  # it was asked nicely first


def test_cancel_of_a_pending_task_means_it_never_runs(make_app: MakeApp, tmp_path: Path) -> None:
    # Given a task queued before any worker runs, and a scheduled one
    app = make_app()
    touch = app.task(control_tasks.touch)
    marker, later_marker = tmp_path / "ran", tmp_path / "ran-later"
    waiting = touch.delay(str(marker))
    scheduled = touch.apply_async((str(later_marker),), countdown=1)
    # When both are cancelled, then a pool runs with a task queued after them
    assert waiting.cancel() is True and scheduled.cancel() is True
    follower = touch.delay(str(tmp_path / "follower"))
    with app.workers(concurrency=1):
        follower.get(timeout=20)
        # ... and past the scheduled one's time
        wait_for(lambda: time.time() > scheduled.info().run_at + 0.5, 5, "the cancelled task's run time")
        tasks_after = touch.delay(str(tmp_path / "after"))
        tasks_after.get(timeout=20)
    # Then the cancelled tasks never ran and say why
    assert not marker.exists() and not later_marker.exists()
    for r in (waiting, scheduled):
        assert r.state == "cancelled"
        with pytest.raises(TaskCancelled):
            r.get(timeout=1)
    # ... and cancelling a finished task reports False and changes nothing
    assert follower.cancel() is False and follower.state == "succeeded"


def test_cancel_from_another_app_on_the_store(make_app: MakeApp, tmp_path: Path) -> None:
    # Given a task running in a pool of one app
    log = tmp_path / "runs.log"
    owner, other = make_app(), make_app()
    hang = owner.task(control_tasks.hang)
    with owner.workers(concurrency=1):
        running = hang.delay(str(log), "h")
        wait_for(lambda: log.exists() and "start h" in log.read_text(), 20, "the task to start")
        # When another process (another app on the store) cancels it by id
        assert other.result(running.id).cancel() is True
        # Then the pool stops it
        with pytest.raises(TaskCancelled):
            running.get(timeout=20)
    assert os.path.exists(log)
