"""asyncio benchmarks (issue 13).

Producer rows (this module's ``producer_*`` functions):

- round trip: from an event loop, ``await (await noop.adelay(i))`` one at a time against an idle
  pool in another process (``python -m liteq worker bench_tasks:app -c 2``), p50 beside the same
  process's blocking ``noop.delay(i).get()`` (the sync W3) measured in alternating rounds;
- loop stall: the longest time the event loop went without running a 1 ms heartbeat coroutine
  while 10,000 ``adelay`` calls ran from it 100 at a time (target: <= 5 ms), beside the same
  loop idle for as long (what the machine's scheduler alone costs); and while 10,000 calls were
  made all at once (``asyncio.gather``), beside gathering as many no-op coroutines (what asyncio
  alone costs for a burst that size: every first step runs in one turn of the loop).

Worker rows (``worker_*``: ``async def`` tasks in the pool):

- naps: 100 tasks that each ``await asyncio.sleep(0.1)``, queued, then drained by one child:
  wall time from the pool ready to every outcome stored (target: <= 0.3 s);
- drain: 10,000 queued no-op ``async def`` tasks drained on ``app.workers(2)``, tasks/s beside
  10,000 sync no-op tasks drained the same way (the W2 workload) in alternating rounds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import bench_tasks
from _common import Context, Figure, median, remove
from _procs import percentile, start_liteq_worker, stop

from liteq import LiteQ

N_ROUND_TRIP = 200
N_STALL = 10_000
STALL_TARGET_MS = 5.0
IN_FLIGHT = 100


class _Heartbeat:
    """Sleeps 1 ms at a time; ``longest`` is the worst lateness of a wake-up (the loop's stall)."""

    def __init__(self) -> None:
        self.longest = 0.0
        self.task: asyncio.Task[None] | None = None

    async def _beat(self) -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            self.longest = max(self.longest, now - last - 0.001)
            last = now

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._beat())

    async def stop(self) -> None:
        assert self.task is not None
        self.task.cancel()
        try:
            await self.task
        except asyncio.CancelledError:
            pass


def _run(fn: Callable[[], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        return await fn()

    return asyncio.run(main())


def _app(path: Path) -> tuple[LiteQ, Any]:
    app = LiteQ(path)
    return app, app.task(bench_tasks.noop)


def producer_round_trip(ctx: Context) -> list[Figure]:
    """``adelay`` + ``await`` round trip p50 from an event loop, beside the blocking round trip."""
    n = ctx.n(N_ROUND_TRIP)
    path = ctx.fresh("async-round-trip")
    worker = start_liteq_worker(path, path / "worker.log")
    app, noop = _app(path)

    async def async_round(count: int) -> list[float]:
        out = []
        for i in range(count):
            started = time.perf_counter()
            await (await noop.adelay(i))
            out.append((time.perf_counter() - started) * 1e6)
        return out

    def sync_round(count: int) -> list[float]:
        out = []
        for i in range(count):
            started = time.perf_counter()
            noop.delay(i).get(timeout=30)
            out.append((time.perf_counter() - started) * 1e6)
        return out

    try:
        noop.delay(-1).get(timeout=60)  # the pool is up
        sync_round(20)  # warm: connections, wake sockets
        _run(lambda: async_round(20))
        a50, s50, a99 = [], [], []
        for round_ in range(ctx.repeats):
            lat = _run(lambda: async_round(n))
            a50.append(percentile(lat, 50))
            a99.append(percentile(lat, 99))
            s50.append(percentile(sync_round(n), 50))
            ctx.log(
                f"async round trip {round_ + 1}: p50 {a50[-1]:.0f} us (sync {s50[-1]:.0f} us), p99 {a99[-1]:.0f} us"
            )
    finally:
        stop(worker)
        app.close()
    remove(path)
    group = f"asyncio producer: enqueue one no-op and await its result, {n} times, pool in another process"
    return [
        Figure(
            group,
            "await (await noop.adelay(i)) p50",
            median(a50),
            "us",
            reference=f"sync W3 delay().get() p50 {median(s50):.0f} us (same run)",
            runs=a50,
        ),
        Figure(group, "await (await noop.adelay(i)) p99", median(a99), "us", runs=a99),
    ]


def producer_loop_stall(ctx: Context) -> list[Figure]:
    """The event loop's longest stall during 10,000 ``adelay`` calls (100 in flight, and a burst),
    beside what the loop shows without liteq: idle for as long, and gathering as many no-ops."""
    n = ctx.n(N_STALL)
    burst, paced, rates, idle, floor = [], [], [], [], []
    for round_ in range(ctx.repeats):
        path = ctx.fresh("async-stall")
        app, noop = _app(path)

        async def measure(noop: Any = noop) -> tuple[float, float, float, float, float]:
            await noop.adelay(-1)  # warm: the executor's threads and their connections
            # IN_FLIGHT producers share the n calls: creating n tasks up front would itself stall
            # the loop (the "gathering no-ops alone" figure), which is not liteq's doing.
            calls = iter(range(n))

            async def producer() -> None:
                for i in calls:
                    await noop.adelay(i)

            beat = _Heartbeat()
            beat.start()
            started = time.perf_counter()
            await asyncio.gather(*(producer() for _ in range(IN_FLIGHT)))
            elapsed = time.perf_counter() - started
            await beat.stop()
            in_flight = beat.longest

            beat = _Heartbeat()
            beat.start()
            await asyncio.sleep(elapsed)
            await beat.stop()
            quiet = beat.longest

            beat = _Heartbeat()
            beat.start()
            started = time.perf_counter()
            await asyncio.gather(*(noop.adelay(i) for i in range(n)))
            rate = n / (time.perf_counter() - started)
            await beat.stop()
            at_once = beat.longest

            beat = _Heartbeat()
            beat.start()
            await asyncio.gather(*(asyncio.sleep(0) for _ in range(n)))
            await beat.stop()
            return in_flight, quiet, at_once, beat.longest, rate

        try:
            in_flight, quiet, at_once, gather_only, rate = _run(measure)
        finally:
            app.close()
        remove(path)
        paced.append(in_flight * 1000)
        idle.append(quiet * 1000)
        burst.append(at_once * 1000)
        floor.append(gather_only * 1000)
        rates.append(rate)
        ctx.log(
            f"loop stall round {round_ + 1}: {IN_FLIGHT} in flight {paced[-1]:.2f} ms (idle loop {idle[-1]:.2f} ms); "
            f"all {n} at once {burst[-1]:.2f} ms ({rate:,.0f}/s; gathering {n} no-ops alone {floor[-1]:.2f} ms)"
        )
    group = f"asyncio producer: longest event-loop stall during {n} adelay() calls"
    return [
        Figure(
            group,
            f"{IN_FLIGHT} in flight",
            median(paced),
            "ms",
            reference=f"the same loop idle as long: {median(idle):.2f} ms",
            target=f"<= {STALL_TARGET_MS:.0f} ms",
            ok=median(paced) <= STALL_TARGET_MS,
            runs=paced,
        ),
        Figure(
            group,
            "all at once (asyncio.gather)",
            median(burst),
            "ms",
            reference=f"gathering {n} no-op coroutines alone: {median(floor):.2f} ms",
            runs=burst,
        ),
        Figure(group, "enqueue rate, all at once", median(rates), "tasks/s", runs=rates),
    ]


# -- worker rows: async def tasks in the pool -----------------------------------------------------------

N_NAPS = 100
NAP = 0.1
NAP_TARGET_S = 0.3
N_DRAIN = 10_000


def _succeeded(app: LiteQ) -> int:
    return sum(by_state.get("succeeded", 0) for by_state in app.storage.counts().values())


def _drain(ctx: Context, label: str, fn: Any, args: list[tuple[Any, ...]], concurrency: int) -> tuple[float, float]:
    """Queue ``fn(*a)`` for each ``a``, start ``app.workers(concurrency)``, and time from the pool
    being ready to every outcome stored; returns (seconds, tasks/s)."""
    path = ctx.fresh(label)
    app = LiteQ(path)
    task = app.task(fn)
    app.enqueue_many([task.s(*a) for a in args])
    with app.workers(concurrency=concurrency) as pool:
        started = time.perf_counter()
        while pool.tasks_done < len(args):  # a counter of the supervisor thread
            time.sleep(0.002)
        while _succeeded(app) < len(args):  # and every outcome committed
            time.sleep(0.001)
        took = time.perf_counter() - started
    app.close()
    remove(path)
    return took, len(args) / took


def worker_naps(ctx: Context) -> list[Figure]:
    """100 tasks that each ``await asyncio.sleep(0.1)`` on one child: wall time (target <= 0.3 s)."""
    walls = [_drain(ctx, "async-naps", bench_tasks.anap, [(NAP,)] * N_NAPS, 1)[0] for _ in range(ctx.repeats)]
    group = f"asyncio worker: {N_NAPS} x await asyncio.sleep({NAP}) on one child"
    return [
        Figure(
            group,
            "wall, from the pool ready to every outcome stored",
            median(walls),
            "s",
            reference=f"one after another: {N_NAPS * NAP:.0f} s",
            target=f"<= {NAP_TARGET_S} s",
            ok=median(walls) <= NAP_TARGET_S,
            runs=walls,
        )
    ]


def worker_drain(ctx: Context) -> list[Figure]:
    """10,000 queued no-op ``async def`` tasks drained on ``app.workers(2)``, beside the same
    number of sync no-op tasks (the W2 drain) measured the same way in alternating rounds."""
    n = ctx.n(N_DRAIN)
    coroutine: list[float] = []
    sync: list[float] = []
    for _ in range(ctx.repeats):
        coroutine.append(_drain(ctx, "async-drain", bench_tasks.anoop, [(i,) for i in range(n)], 2)[1])
        sync.append(_drain(ctx, "sync-drain", bench_tasks.noop, [(i,) for i in range(n)], 2)[1])
    group = f"asyncio worker: drain {n:,} queued no-op tasks on app.workers(2)"
    return [
        Figure(
            group,
            "async def no-op tasks, from the pool ready to every outcome stored",
            median(coroutine),
            "tasks/s",
            reference=f"sync no-op tasks (W2), same measure: {median(sync):,.0f} tasks/s",
            runs=coroutine,
        )
    ]


def run(ctx: Context) -> list[Figure]:
    """Every asyncio benchmark: the producer's rows, then the worker's."""
    return [*producer_round_trip(ctx), *producer_loop_stall(ctx), *worker_naps(ctx), *worker_drain(ctx)]
