"""``async def`` tasks on the worker side (issue 13): many per child on one event loop, with every
guarantee a sync task has. Real pools, real processes and signals; waits poll state with a deadline."""

from __future__ import annotations

import itertools
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from liteq import LiteQ, SoftTimeLimit, TaskCancelled, TaskFailed, TaskTimedOut, chain, chord, group
from liteq.message import ErrorInfo
from tests import aio_tasks
from tests.pool_support import START_METHODS, Gate, RunLog, full_pool, gone, running_pool, wait_for

pytestmark = pytest.mark.timeout(120)


def _log_lines(runlog: RunLog) -> list[str]:
    try:
        return Path(runlog.path).read_text().splitlines()
    except FileNotFoundError:
        return []


# -- registry and in-process runs ---------------------------------------------------------------------


def test_async_def_registers_an_async_task(make_app: Callable[..., LiteQ]) -> None:
    app = make_app("memory://")
    assert app.task(aio_tasks.nap).is_async is True
    assert app.task(lambda: 1, name="sync_one").is_async is False


def test_immediate_mode_runs_async_tasks_on_a_fresh_loop(make_app: Callable[..., LiteQ]) -> None:
    app = make_app("memory://", immediate=True)
    steps = app.task(aio_tasks.progress_steps)
    key, me, seen = steps.delay("k", 3).get(timeout=5)
    assert key == "k" and seen == [me] * 3


def test_immediate_mode_inside_a_running_loop_runs_on_a_helper_thread(make_app: Callable[..., LiteQ]) -> None:
    import asyncio

    app = make_app("memory://", immediate=True)
    add = app.task(aio_tasks.add)

    async def main() -> int:
        return int(add.delay(2, 3).get(timeout=5))

    assert asyncio.run(main()) == 5


def test_run_until_empty_runs_async_tasks_with_retries(make_app: Callable[..., LiteQ], runlog: RunLog) -> None:
    app = make_app("memory://")
    flaky = app.task(aio_tasks.flaky, retries=3, retry_backoff=0.0)
    r = flaky.delay(runlog.path, "f", 2)
    deadline = time.monotonic() + 20
    while not r.ready() and time.monotonic() < deadline:
        app.run_until_empty()
    assert r.get(timeout=1) == 3
    errors = [ErrorInfo.decode(b) for b in app.storage.get([r.id], history=True)[0].errors]  # type: ignore[union-attr]
    types = [e.type for e in errors if e is not None][:2]
    assert types[0] == "ValueError" and types[1].endswith(".Retry")


def test_soft_limit_raises_inside_the_coroutine_in_process(make_app: Callable[..., LiteQ], runlog: RunLog) -> None:
    app = make_app("memory://", immediate=True)
    catches = app.task(aio_tasks.soft_catch, soft_timeout=0.2)
    assert catches.delay(runlog.path).get(timeout=10) == "caught soft limit"
    assert any(line.startswith("soft SoftTimeLimit") for line in _log_lines(runlog))


def test_hard_limit_cancels_the_coroutine_in_process(make_app: Callable[..., LiteQ], runlog: RunLog) -> None:
    app = make_app("memory://", immediate=True)
    forever = app.task(aio_tasks.sleep_forever, timeout=0.2)
    with pytest.raises(TaskTimedOut):
        forever.delay(runlog.path).get(timeout=10)
    assert any(line.startswith("raised TaskTimedOut") for line in _log_lines(runlog))


# -- in a pool --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("start_method", START_METHODS)
def test_hundred_coroutines_share_one_child(make_app: Callable[..., LiteQ], start_method: str) -> None:
    # Given one child and 100 tasks that each await asyncio.sleep(1), plus one sync task
    app = make_app()
    nap = app.task(aio_tasks.nap)
    from tests import pool_tasks

    record = app.task(pool_tasks.record)
    results = [nap.delay(1.0) for _ in range(100)]
    with running_pool(app, concurrency=1, start_method=start_method) as pool:
        wait_for(lambda: full_pool(pool), 30, "the child to start")
        t0 = time.monotonic()
        # Then they all finish in about one second (a generous bound on a shared machine), not 100
        assert [r.get(timeout=60) for r in results] == [1.0] * 100
        took = time.monotonic() - t0
        # And a sync task still runs, with the child to itself
        assert record.delay(os.devnull, "s").get(timeout=30) == "s"
    assert took < 15, f"100 concurrent 1 s naps took {took:.1f}s on one child"


def test_async_concurrency_caps_the_coroutines_per_child(
    make_app: Callable[..., LiteQ], runlog: RunLog, gate: Gate
) -> None:
    app = make_app()
    ablock = app.task(aio_tasks.ablock)
    results = [ablock.delay(runlog.path, gate.dir, f"k{i}") for i in range(7)]
    with running_pool(app, gate, concurrency=1, async_concurrency=3, start_method="fork") as pool:
        wait_for(lambda: len(runlog.starts()) == 3, 30, "three coroutines to start")
        # The supervisor holds the rest: the child's room is 3
        assert sum(len(c.queue) for c in pool.children) == 3
        gate.release_all()
        assert sorted(r.get(timeout=30) for r in results) == sorted(f"k{i}.1" for i in range(7))


def test_progress_and_current_are_per_coroutine(make_app: Callable[..., LiteQ], runlog: RunLog, gate: Gate) -> None:
    app = make_app()
    steps = app.task(aio_tasks.progress_steps)
    blocked = app.task(aio_tasks.progress_then_block)
    with running_pool(app, gate, concurrency=1, start_method="fork"):
        held = [blocked.delay(runlog.path, gate.dir, f"b{i}") for i in range(5)]
        ran = [steps.delay(f"s{i}", 4) for i in range(20)]
        for r in ran:
            _key, me, seen = r.get(timeout=30)
            assert me == r.id and seen == [r.id] * 4
        # Each running coroutine's progress is its own
        for i, r in enumerate(held):
            wait_for(lambda r=r: r.progress is not None, 20, "progress of a running coroutine")
            assert r.progress is not None and r.progress.message == f"b{i} half way"
        gate.release_all()
        assert [r.get(timeout=30) for r in held] == [f"b{i}.1" for i in range(5)]


def test_retries_and_retry_in_a_pool(make_app: Callable[..., LiteQ], runlog: RunLog) -> None:
    app = make_app()
    flaky = app.task(aio_tasks.flaky, retries=3, retry_backoff=0.0)
    with running_pool(app, concurrency=1, start_method="fork"):
        results = [flaky.delay(runlog.path, f"f{i}", 2) for i in range(10)]
        assert [r.get(timeout=60) for r in results] == [3] * 10


def test_soft_and_hard_limits_in_a_pool(make_app: Callable[..., LiteQ], runlog: RunLog) -> None:
    app = make_app()
    soft = app.task(aio_tasks.soft_catch, soft_timeout=0.3, timeout=30)
    hard = app.task(aio_tasks.sleep_forever, timeout=0.5)
    nap = app.task(aio_tasks.nap)
    with running_pool(app, concurrency=1, start_method="fork") as pool:
        pid = next(iter(wait_for(lambda: full_pool(pool), 30, "the child to start")))
        beside = nap.delay(2.0)
        r_soft, r_hard = soft.delay(runlog.path), hard.delay(runlog.path)
        assert r_soft.get(timeout=30) == "caught soft limit"
        with pytest.raises(TaskTimedOut):
            r_hard.get(timeout=30)
        # The coroutine beside them was not disturbed, and the child was not killed
        assert beside.get(timeout=30) == 2.0
        assert pid in full_pool(pool)
    lines = _log_lines(runlog)
    assert any(line.startswith("soft SoftTimeLimit") for line in lines)
    assert any(line.startswith("raised TaskTimedOut") for line in lines)
    assert r_hard.state == "failed"


def test_coroutine_swallowing_cancellation_gets_its_child_killed_and_others_retried(
    make_app: Callable[..., LiteQ], runlog: RunLog, gate: Gate
) -> None:
    # Given a coroutine with a hard limit that swallows everything raised into it, and ten others
    app = make_app()
    swallow = app.task(aio_tasks.swallow_forever, timeout=0.5, retries=0)
    ablock = app.task(aio_tasks.ablock, retries=1)
    with running_pool(app, gate, concurrency=1, start_method="fork") as pool:
        pid = next(iter(wait_for(lambda: full_pool(pool), 30, "the child to start")))
        others = [ablock.delay(runlog.path, gate.dir, f"o{i}") for i in range(10)]
        wait_for(lambda: len(runlog.starts()) == 10, 30, "ten coroutines to start")
        r = swallow.delay(runlog.path)
        # Then the limit is raised inside it (it swallows it), and the child is killed after the grace
        with pytest.raises(TaskTimedOut):
            r.get(timeout=40)
        wait_for(lambda: gone(pid), 20, "the child to be killed")
        assert any(line.startswith("ignored TaskTimedOut") for line in _log_lines(runlog))
        # And the coroutines beside it run again (worker lost, not timed out)
        gate.release_all()
        assert sorted(x.get(timeout=40) for x in others) == sorted(f"o{i}.2" for i in range(10))
    assert r.state == "failed"


@pytest.mark.parametrize("start_method", START_METHODS)
def test_sigkill_with_hundred_coroutines_in_flight_retries_all_once(
    make_app: Callable[..., LiteQ], runlog: RunLog, gate: Gate, start_method: str
) -> None:
    # Given one child running 100 coroutines
    app = make_app()
    ablock = app.task(aio_tasks.ablock, retries=2)
    results = [ablock.delay(runlog.path, gate.dir, f"k{i}") for i in range(100)]
    with running_pool(app, gate, concurrency=1, start_method=start_method):
        wait_for(lambda: len(runlog.starts()) == 100, 60, "100 coroutines to start")
        pids = {e.pid for e in runlog.starts()}
        assert len(pids) == 1
        # When the child is SIGKILLed
        victim = pids.pop()
        os.kill(victim, signal.SIGKILL)
        # Then all 100 run again, each as attempt 2, in a new child
        wait_for(lambda: len(runlog.starts()) == 200, 60, "100 retries to start")
        gate.release_all()
        values = [r.get(timeout=60) for r in results]
    assert values == [f"k{i}.2" for i in range(100)]
    # None lost, none counted twice: one lost attempt each, then one success
    rows = app.storage.get([r.id for r in results], history=True)
    for row in rows:
        assert row is not None and row.state == "succeeded" and row.attempts == 2
        reasons = [e.type for e in (ErrorInfo.decode(b) for b in row.errors) if e is not None]
        assert reasons == ["liteq.WorkerLost"], reasons
    per_key = runlog.runs_per_key()
    assert per_key == {f"k{i}": 2 for i in range(100)}


def test_cancel_of_a_running_coroutine_raises_inside_it(
    make_app: Callable[..., LiteQ], runlog: RunLog, gate: Gate
) -> None:
    app = make_app()
    forever = app.task(aio_tasks.sleep_forever)
    ablock = app.task(aio_tasks.ablock)
    with running_pool(app, gate, concurrency=1, start_method="fork") as pool:
        pid = next(iter(wait_for(lambda: full_pool(pool), 30, "the child to start")))
        other = ablock.delay(runlog.path, gate.dir, "other")
        r = forever.delay(runlog.path)
        runlog.wait_started("other")
        wait_for(lambda: r.state == "running", 20, "the coroutine to run")
        assert r.cancel() is True
        with pytest.raises(TaskCancelled):
            r.get(timeout=30)
        assert any(line.startswith("raised TaskCancelled") for line in _log_lines(runlog))
        # The child was not killed: the other coroutine goes on
        assert pid in full_pool(pool)
        gate.release("other")
        assert other.get(timeout=30) == "other.1"
    assert r.state == "cancelled"


def test_cancel_of_a_coroutine_that_refuses_kills_its_child(
    make_app: Callable[..., LiteQ], runlog: RunLog, gate: Gate
) -> None:
    app = make_app()
    swallow = app.task(aio_tasks.swallow_forever)
    with running_pool(app, gate, concurrency=1, start_method="fork") as pool:
        pid = next(iter(wait_for(lambda: full_pool(pool), 30, "the child to start")))
        r = swallow.delay(runlog.path)
        runlog.wait_started("swallow")
        assert r.cancel() is True
        with pytest.raises(TaskCancelled):
            r.get(timeout=30)
        wait_for(lambda: gone(pid), 20, "the child to be killed")
    assert r.state == "cancelled"


def test_a_coroutine_blocking_the_loop_does_not_starve_leases(
    make_app: Callable[..., LiteQ], runlog: RunLog, gate: Gate
) -> None:
    # Given a short lease, a coroutine that blocks the child's loop for several leases, and
    # coroutines beside it
    app = make_app()
    blocker = app.task(aio_tasks.block_loop)
    ablock = app.task(aio_tasks.ablock)
    lease = 1.5
    with running_pool(app, gate, concurrency=1, start_method="fork", lease=lease) as pool:
        pid = next(iter(wait_for(lambda: full_pool(pool), 30, "the child to start")))
        beside = [ablock.delay(runlog.path, gate.dir, f"b{i}") for i in range(5)]
        wait_for(lambda: len(runlog.starts()) == 5, 30, "five coroutines to start")
        gate.release_all()  # they finish once the loop runs again
        r = blocker.delay(4 * lease)
        # Then the leases are extended while the loop is blocked: nothing is reclaimed, the child
        # answers liveness pings, and every task ends on its first attempt
        assert r.get(timeout=60) == "blocked"
        assert [x.get(timeout=30) for x in beside] == [f"b{i}.1" for i in range(5)]
        assert pid in full_pool(pool)
    rows = app.storage.get([r.id, *(x.id for x in beside)])
    assert all(row is not None and row.attempts == 1 for row in rows)
    assert runlog.runs_per_key() == {f"b{i}": 1 for i in range(5)}


def test_canvas_with_async_steps(make_app: Callable[..., LiteQ]) -> None:
    app = make_app()
    add = app.task(aio_tasks.add)
    total = app.task(aio_tasks.total)
    with running_pool(app, concurrency=2, start_method="fork"):
        assert chain(add.s(1, 2), add.s(3), add.s(4)).delay().get(timeout=30) == 10
        assert group(add.s(i, i) for i in range(10)).delay().get(timeout=30) == [2 * i for i in range(10)]
        assert chord((add.s(i, 1) for i in range(10)), total.s()).delay().get(timeout=30) == 55


def test_async_concurrency_is_validated(make_app: Callable[..., LiteQ]) -> None:
    from liteq.exceptions import ConfigurationError
    from liteq.pool import WorkerPool

    app = make_app()
    with pytest.raises(ConfigurationError, match="async_concurrency"):
        WorkerPool(app, concurrency=1, async_concurrency=0)


_ = (SoftTimeLimit, TaskFailed)


# -- unique, lock, rate limit, periodic: enforced by the store and the scheduler, as for sync tasks --


def _stamps(path: Path) -> list[tuple[float, float]]:
    starts: dict[str, float] = {}
    out = []
    for line in path.read_text().splitlines() if path.exists() else []:
        _, edge, key, index, at = line.split()
        if edge == "start":
            starts[f"{key}.{index}"] = float(at)
        else:
            out.append((starts[f"{key}.{index}"], float(at)))
    return sorted(out)


def test_unique_async_task_returns_the_waiting_one(make_app: Callable[..., LiteQ]) -> None:
    app = make_app()
    add = app.task(unique=True)(aio_tasks.add)
    first = add.apply_async((1, 2), countdown=600)
    assert add.delay(1, 2).id == first.id


def test_lock_true_async_tasks_never_overlap_in_one_child(make_app: Callable[..., LiteQ], tmp_path: Path) -> None:
    log = tmp_path / "stamps.log"
    app = make_app()
    locked = app.task(lock=True)(aio_tasks.astamp)
    results = [locked.delay("k", i, str(log), 0.1) for i in range(4)]
    with running_pool(app, concurrency=1, start_method="fork"):
        assert sorted(r.get(timeout=30) for r in results) == [0, 1, 2, 3]
    runs = _stamps(log)
    assert len(runs) == 4
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(runs)), runs


def test_rate_limited_async_tasks_start_at_the_rate(make_app: Callable[..., LiteQ], tmp_path: Path) -> None:
    log = tmp_path / "stamps.log"
    app = make_app()
    limited = app.task(rate_limit="5/s")(aio_tasks.astamp)
    results = [limited.delay("r", i, str(log)) for i in range(6)]
    with running_pool(app, concurrency=1, start_method="fork"):
        assert sorted(r.get(timeout=30) for r in results) == list(range(6))
    rows = app.storage.get([r.id for r in results])
    claimed = sorted(r.started_at for r in rows if r is not None and r.started_at is not None)
    assert len(claimed) == 6
    assert min(b - a for a, b in itertools.pairwise(claimed)) >= 0.2 - 1e-3


def test_periodic_async_task_fires_in_a_pool(make_app: Callable[..., LiteQ], tmp_path: Path) -> None:
    log = tmp_path / "ticks.log"
    app = make_app()
    app.periodic(every=0.2, args=(str(log),))(aio_tasks.tick)
    with running_pool(app, concurrency=1, start_method="fork"):
        wait_for(lambda: log.exists() and len(log.read_text().splitlines()) >= 2, 30, "two periodic runs")


def test_cli_worker_passes_async_concurrency(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from liteq.app import LiteQ as App
    from liteq.cli import EXIT_OK, EXIT_USAGE, main

    seen: dict[str, object] = {}

    def fake_run_worker(self: App, concurrency: int | None = None, **options: object) -> None:
        seen.update(options)

    monkeypatch.setattr(App, "run_worker", fake_run_worker)
    store = tmp_path / "store"
    App(store).close()
    assert main(["worker", str(store), "--async-concurrency", "7"]) == EXIT_OK
    assert seen["async_concurrency"] == 7
    assert main(["worker", str(store), "--async-concurrency", "0"]) == EXIT_USAGE
