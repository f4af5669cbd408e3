"""The producer's asyncio face: ``adelay``, ``aapply_async``, ``aenqueue_many``, ``await result``,
``Result.aget``, ``GroupResult.aget``, on a local store with a real pool and over a cluster server.

"Never blocks the loop" is measured, not assumed: a heartbeat coroutine sleeps 1 ms at a time and
records the longest gap between its wake-ups while the producer works.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from liteq import GroupResult, LiteQ, chain, chord, group
from liteq.aio import MAX_THREADS
from liteq.exceptions import ConfigurationError, ResultTimeout, StoreCorrupt, TaskFailed
from tests import canvas_tasks, pool_tasks, tasks
from tests.cluster_support import TOKEN, ServerProcess, served
from tests.pool_support import Reaper, pool_env, run_worker_cmd

pytestmark = pytest.mark.timeout(120)

T = TypeVar("T")


class Heartbeat:
    """Measures how long the event loop went without running this coroutine (its longest stall)."""

    def __init__(self) -> None:
        self.longest = 0.0
        self.beats = 0
        self._task: asyncio.Task[None] | None = None

    async def _beat(self) -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            self.longest = max(self.longest, now - last - 0.001)
            self.beats += 1
            last = now

    async def __aenter__(self) -> Heartbeat:
        self._task = asyncio.get_running_loop().create_task(self._beat())
        await asyncio.sleep(0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass


def run(coro_fn: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine in a fresh event loop (as ``asyncio.run`` in an application)."""

    async def main() -> T:
        return await coro_fn()

    return asyncio.run(main())


@pytest.fixture
def app(tmp_path: Path) -> Iterator[LiteQ]:
    """A SQLite app with the test tasks registered under their default names."""
    a = LiteQ(tmp_path / "store")
    for fn in (tasks.add, tasks.fail, tasks.identity, tasks.noop):
        a.task(fn)
    try:
        yield a
    finally:
        a.close()


# -- local store, real pool ----------------------------------------------------------------------


def test_a_thousand_concurrent_awaits_in_one_loop_with_a_pool_running(app: LiteQ) -> None:
    add = app.get_task("tests.tasks.add")

    threads_before = threading.active_count()
    most_threads = [0]

    async def count_threads() -> None:
        while True:
            most_threads[0] = max(most_threads[0], threading.active_count())
            await asyncio.sleep(0.005)

    async def main() -> tuple[list[Any], float, int]:
        counter = asyncio.ensure_future(count_threads())
        async with Heartbeat() as beat:
            # Given 1,000 tasks enqueued concurrently from one loop
            results = await asyncio.gather(*(add.adelay(i, i) for i in range(1000)))
            # When 1,000 coroutines await their results at once while the pool drains them
            values = await asyncio.wait_for(asyncio.gather(*(r.aget(timeout=90) for r in results)), 100)
        counter.cancel()
        return values, beat.longest, beat.beats

    # (The pool starts and stops outside the loop: its start and graceful stop block by design.)
    with app.workers(concurrency=2):
        threads_before = threading.active_count()
        values, longest, beats = run(main)
    # Then every value is right, in order
    assert values == [2 * i for i in range(1000)]
    # And the loop kept running the whole time: its longest stall stays far below a blocking
    # store call (the bound is loose: the machine is shared).
    assert beats > 10
    assert longest < 0.5, f"the event loop stalled for {longest:.3f}s"
    # And no thread per waiter: at most the shared executor's few threads were added
    assert most_threads[0] - threads_before <= MAX_THREADS, (threads_before, most_threads[0])


def test_adelay_from_a_running_loop_does_not_block_it_while_the_store_is_locked(app: LiteQ) -> None:
    add = app.get_task("tests.tasks.add")
    # Given another connection holding the store's write lock
    db = sqlite3.connect(app.storage.db_path, isolation_level=None)  # type: ignore[attr-defined]
    db.execute("BEGIN IMMEDIATE")
    locked = True

    async def main() -> tuple[Any, int, float]:
        nonlocal locked
        async with Heartbeat() as beat:
            # When a coroutine enqueues: the write waits for the lock, in the executor
            pending = asyncio.ensure_future(add.aapply_async((2, 3), priority=7, queue="fast"))
            before = beat.beats
            while beat.beats < before + 50:
                await asyncio.sleep(0.001)
            # Then the loop kept beating meanwhile, and the enqueue is still waiting
            assert not pending.done()
            beats_while_locked = beat.beats - before
            db.execute("COMMIT")
            locked = False
            result = await asyncio.wait_for(pending, 30)
        return result, beats_while_locked, beat.longest

    try:
        result, beats_while_locked, longest = run(main)
    finally:
        if locked:
            db.execute("ROLLBACK")
        db.close()
    assert beats_while_locked >= 50
    # And once the lock is released the task is stored with its per-call options
    row = result.info()
    assert (row.state, row.priority, row.queue) == ("pending", 7, "fast")
    assert longest < 0.5


def test_await_result_wakes_on_a_completion_by_another_thread(app: LiteQ) -> None:
    identity = app.get_task("tests.tasks.identity")

    async def main() -> list[Any]:
        results = [await identity.adelay({"n": i}) for i in range(3)]
        # A worker in another thread completes them while the loop awaits
        worker = threading.Thread(target=app.run_until_empty)
        worker.start()
        try:
            return [await r for r in results]
        finally:
            await asyncio.to_thread(worker.join)

    assert run(main) == [{"n": 0}, {"n": 1}, {"n": 2}]


def test_aget_timeout_raises_result_timeout(app: LiteQ) -> None:
    add = app.get_task("tests.tasks.add")

    async def main() -> float:
        result = await add.adelay(1, 2)
        started = time.monotonic()
        with pytest.raises(ResultTimeout, match="still pending"):
            await result.aget(timeout=0.2)
        elapsed = time.monotonic() - started
        # The group form too, naming how many members are unfinished
        members = await app.aenqueue_many([add.s(1, 1), add.s(2, 2)])
        assert await GroupResult(app, "empty", []).aget(timeout=0.1) == []
        with pytest.raises(ResultTimeout, match="2 of 2 member"):
            await GroupResult(app, "g2", members).aget(timeout=0.1)
        return elapsed

    elapsed = run(main)
    assert 0.2 <= elapsed < 5


def test_a_cancelled_awaiter_is_forgotten_and_the_watcher_unbinds_when_nobody_waits(app: LiteQ) -> None:
    add = app.get_task("tests.tasks.add")
    wake_dir = app.storage.wake_dir
    assert wake_dir is not None

    def our_sockets() -> list[str]:
        return [n for n in os.listdir(wake_dir) if n.startswith(f"{os.getpid()}-")] if os.path.isdir(wake_dir) else []

    async def main() -> None:
        result = await add.adelay(1, 2)
        # Given a coroutine awaiting a result, with the watcher's wake-up socket bound
        waiting = asyncio.ensure_future(result.aget())
        deadline = time.monotonic() + 10
        while not our_sockets():
            assert time.monotonic() < deadline, "the watcher never bound its wake-up socket"
            await asyncio.sleep(0.005)
        # When it is cancelled (a client went away)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        # Then the watcher forgets it and unbinds its socket: no wake-ups are sent to an idle loop
        while our_sockets():
            assert time.monotonic() < deadline, "the watcher kept its socket with nobody waiting"
            await asyncio.sleep(0.005)
        # And a later await still works
        await asyncio.to_thread(app.run_until_empty)
        assert await result == 3

    run(main)


def test_failures_raise_task_failed_or_come_back_with_propagate_false(app: LiteQ) -> None:
    fail = app.get_task("tests.tasks.fail")

    async def main() -> None:
        result = await fail.adelay("it broke")
        await asyncio.to_thread(app.run_until_empty)
        with pytest.raises(TaskFailed, match="it broke") as info:
            await result
        assert info.value.type.endswith("ValueError")
        exc = await result.aget(propagate=False)
        assert isinstance(exc, TaskFailed) and "it broke" in str(exc)

    run(main)


def test_group_chain_and_chord_results_await_in_order(app: LiteQ) -> None:
    add = app.get_task("tests.tasks.add")
    fail = app.get_task("tests.tasks.fail")

    async def main() -> None:
        with app.workers(concurrency=2):
            # A group: values in the members' order, however they finish
            gr = group(add.s(i, 100) for i in range(20)).delay()
            assert await gr.aget(timeout=60) == [i + 100 for i in range(20)]
            assert await gr == [i + 100 for i in range(20)]
            # starmap() gives a GroupResult too
            assert await add.starmap([(1, 2), (3, 4)]).aget(timeout=60) == [3, 7]
            # A chain's last step and a chord's body
            assert await chain(add.s(1, 2), add.s(10), add.s(100)).delay().aget(timeout=60) == 113
            assert await chord((add.s(i, i) for i in range(5)), total.s()).delay().aget(timeout=60) == 20
            # A failed member raises at once (as get(): the first failed in order among those
            # finished by then); propagate=False waits for all and puts each failure in place
            bad = group([add.s(1, 1), fail.s("second"), fail.s("third")]).delay()
            with pytest.raises(TaskFailed, match=r"second|third"):
                await bad.aget(timeout=60)
            values = await bad.aget(timeout=60, propagate=False)
            assert values[0] == 2 and isinstance(values[1], TaskFailed) and "third" in str(values[2])

    total = app.task(canvas_tasks.total)
    run(main)


def test_aenqueue_many_writes_one_batch_and_a_bad_call_fails_alone(app: LiteQ) -> None:
    add = app.get_task("tests.tasks.add")
    identity = app.get_task("tests.tasks.identity")

    async def main() -> None:
        results = await app.aenqueue_many([add.s(i, 1) for i in range(50)])
        assert len({r.id for r in results}) == 50
        # Concurrent adelay calls: one does not encode; it fails alone, the others are stored
        calls = [identity.adelay(i) for i in range(10)] + [identity.adelay(object())]
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        assert all(not isinstance(o, BaseException) for o in outcomes[:10])
        assert isinstance(outcomes[10], Exception) and not isinstance(outcomes[10], StoreCorrupt)
        # A misspelt option is a clear, typed error naming the options there are
        with pytest.raises(ConfigurationError, match=r"unknown call option 'countdwn'"):
            await add.aapply_async((1, 2), countdwn=5)
        await asyncio.to_thread(app.run_until_empty)
        assert await asyncio.gather(*outcomes[:10]) == list(range(10))
        assert await asyncio.gather(*results) == [i + 1 for i in range(50)]

    run(main)


def test_an_immediate_app_runs_the_task_before_adelay_returns(tmp_path: Path) -> None:
    app = LiteQ(tmp_path / "store", immediate=True)
    add = app.task(tasks.add)
    try:

        async def twice(x: int) -> int:
            await asyncio.sleep(0.001)
            return 2 * x

        atwice = app.task(twice, name="tests.test_async_producer.twice")

        async def main() -> Any:
            result = await add.adelay(20, 22)
            assert result.ready()
            # An async def task too: run off this loop (in the sending thread, on a loop of its own)
            doubled = await atwice.adelay(21)
            assert doubled.ready()
            return await result, await doubled

        assert run(main) == (42, 42)
    finally:
        app.close()


# -- cluster ---------------------------------------------------------------------------------------


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A ``liteq serve`` with a token, on a fresh store."""
    with served(tmp_path / "served") as proc:
        yield proc


def test_over_a_cluster_server_with_a_remote_pool(server: ServerProcess, reaper: Reaper, tmp_path: Path) -> None:
    # Given a remote pool (another process) connected to the server, and a producer app on it
    env = {**pool_env(tmp_path, lease=30), "LITEQ_TEST_STORE": server.url, "LITEQ_TOKEN": TOKEN}
    reaper.popen(run_worker_cmd(concurrency=2), name="remote-worker", env=env)
    app = LiteQ(server.url, token=TOKEN)
    add = app.task(pool_tasks.add)
    try:

        async def main() -> tuple[list[Any], float]:
            async with Heartbeat() as beat:
                # When 200 coroutines enqueue and await through the server
                results = await asyncio.gather(*(add.adelay(i, 1) for i in range(200)))
                values = await asyncio.wait_for(asyncio.gather(*(r.aget(timeout=60) for r in results)), 90)
                # And a timeout still raises ResultTimeout over the cluster
                never = await add.aapply_async((1, 1), countdown=3600)
                with pytest.raises(ResultTimeout):
                    await never.aget(timeout=0.2)
            return values, beat.longest

        values, longest = run(main)
        # Then every value is right and the loop never stalled on the network
        assert values == [i + 1 for i in range(200)]
        assert longest < 1.0
    finally:
        app.close()
