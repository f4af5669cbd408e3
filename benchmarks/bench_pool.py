"""Process-pool benchmarks (issues 3 and 10): W2 drain, W3 latency, W4 CPU fan-out, idle cost,
the cost of the supervisor's spin, start-up, memory.

All in one run so that the ratios hold on a noisy machine. Beside liteq's ``WorkerPool`` with 2
children:

- the ceiling: ``multiprocessing.Pool(2)`` (``fork`` context) running the same functions with no
  durability at all, one task per message (``map(..., chunksize=1)``), as liteq hands one task at a
  time to a child;
- the reference: Huey 3 ``SqliteHuey`` with its consumer in process mode with 2 workers
  (``huey_consumer bench_tasks.huey -k process -w 2``), every other setting its default.

The tasks are :func:`bench_tasks.noop` (returns its argument, so Huey stores a result as liteq
does) and :func:`bench_tasks.burn` (pure-Python loop calibrated here to ~10 ms).

W2 runs liteq's pool in this process (``with app.workers(concurrency=2)``), as the issue describes
it; the latency, idle and memory figures run the pool in its own process (``python -m liteq worker
bench_tasks:app -c 2``), so that its CPU and PSS are the pool's alone and the producer is another
process.
"""

from __future__ import annotations

import multiprocessing
import random
import time
from pathlib import Path
from typing import Any

import bench_tasks
from _common import Context, Figure, median, remove
from _procs import (
    PssSampler,
    cpu_snapshot,
    cpu_used,
    percentile,
    pss,
    start_huey_consumer,
    start_liteq_worker,
    stop,
    wait_until,
)

from liteq import LiteQ
from liteq.storage.states import SUCCEEDED

N_DRAIN = 10_000
N_LATENCY = 200
N_CPU = 200
CPU_TASK_MS = 10.0
IDLE_SECONDS = 30.0
N_SPIN = 3_000
SPIN_RATE = 1_000.0
N_MEMORY = 200_000
ENQUEUE_CHUNK = 50_000
MB = 2**20


def _app(path: Path) -> tuple[LiteQ, dict[str, Any]]:
    """A producer app on ``path`` with the benchmark tasks under the names the workers use."""
    app = LiteQ(path)
    return app, {fn.__name__: app.task(fn) for fn in (bench_tasks.noop, bench_tasks.burn)}


def _huey(path: Path) -> tuple[Any, dict[str, Any]]:
    from huey import SqliteHuey

    huey = SqliteHuey(name="bench", filename=str(path))
    return huey, {fn.__name__: huey.task(name=fn.__name__)(fn) for fn in (bench_tasks.noop, bench_tasks.burn)}


def _succeeded(app: LiteQ) -> int:
    return app.storage.counts().get("default", {}).get(SUCCEEDED, 0)


def calibrate(ms: float = CPU_TASK_MS) -> int:
    """Iterations of :func:`bench_tasks.burn` that take about ``ms`` milliseconds here."""
    n = 20_000
    while True:
        seconds = min(_time(bench_tasks.burn, n) for _ in range(3))
        if seconds > 0.02:
            return int(n * ms / 1000 / seconds)
        n *= 2


def _time(fn: Any, *args: Any) -> float:
    started = time.perf_counter()
    fn(*args)
    return time.perf_counter() - started


# -- W2: drain 10,000 queued no-op tasks ------------------------------------------------------------


def _w2_liteq(ctx: Context, n: int) -> tuple[float, float, float]:
    """Seconds from pool start to every result stored, seconds of that spent starting, rate."""
    path = ctx.fresh("w2-liteq")
    app, t = _app(path)
    app.enqueue_many([t["noop"].s(i) for i in range(n)])
    started = time.perf_counter()
    with app.workers(concurrency=2) as pool:
        ready = time.perf_counter()
        while pool.tasks_done < n:  # cheap: a counter of the supervisor thread
            time.sleep(0.002)
        while _succeeded(app) < n:  # and every outcome committed
            time.sleep(0.001)
        done = time.perf_counter()
    app.close()
    remove(path)
    return done - started, ready - started, n / (done - started)


def _w2_pool(n: int) -> tuple[float, float]:
    started = time.perf_counter()
    pool = multiprocessing.get_context("fork").Pool(2)
    ready = time.perf_counter()
    out = pool.map(bench_tasks.noop, range(n), chunksize=1)
    done = time.perf_counter()
    pool.terminate()
    pool.join()
    assert len(out) == n
    return done - started, ready - started


def _w2_huey(ctx: Context, n: int, sample: bool) -> tuple[float, float, int]:
    """Seconds from consumer start to every result stored, seconds to the first result, peak PSS."""
    path = ctx.fresh("w2-huey")
    huey, t = _huey(path / "huey.db")
    for i in range(n):
        t["noop"](i)
    started = time.perf_counter()
    proc = start_huey_consumer(path / "huey.db", path / "consumer.log")
    sampler = PssSampler(proc.pid) if sample else None
    if sampler:
        sampler.start()
    first = None
    while True:
        count = huey.result_count()
        if count and first is None:
            first = time.perf_counter()
        if count >= n:
            break
        if proc.poll() is not None:
            raise RuntimeError(f"huey consumer exited with {proc.returncode}; see {path / 'consumer.log'}")
        time.sleep(0.01)
    done = time.perf_counter()
    peak = sampler.finish() if sampler else 0
    stop(proc)
    huey.storage.close()
    remove(path)
    return done - started, (first or done) - started, peak


def bench_drain(ctx: Context) -> tuple[list[Figure], int]:
    n = ctx.n(N_DRAIN)
    liteq_rate, liteq_warm, liteq_startup = [], [], []
    pool_rate, pool_warm = [], []
    huey_rate, huey_warm = [], []
    huey_peak = 0
    for round_ in range(ctx.repeats):
        total, startup, rate = _w2_liteq(ctx, n)
        liteq_rate.append(rate)
        liteq_warm.append(n / (total - startup))
        liteq_startup.append(startup)
        total, startup = _w2_pool(n)
        pool_rate.append(n / total)
        pool_warm.append(n / (total - startup))
        total, first, peak = _w2_huey(ctx, n, sample=round_ == 0)
        huey_rate.append(n / total)
        huey_warm.append((n - 1) / max(total - first, 1e-9))
        huey_peak = max(huey_peak, peak)
        ctx.log(
            f"W2 round {round_ + 1}: liteq {liteq_rate[-1]:,.0f}/s ({liteq_warm[-1]:,.0f}/s after a "
            f"{liteq_startup[-1] * 1000:.0f} ms start), Pool(2) {pool_rate[-1]:,.0f}/s, Huey {huey_rate[-1]:,.0f}/s"
        )
    lr, lw, pr, pw, hr, hw = map(median, (liteq_rate, liteq_warm, pool_rate, pool_warm, huey_rate, huey_warm))
    group = f"W2: drain {n:,} queued no-op tasks on 2 worker processes"
    return [
        Figure(
            group,
            "liteq app.workers(2), from pool start to every result stored",
            lr,
            "tasks/s",
            reference=f"Pool(2) {pr:,.0f}/s ({lr / pr:.0%}); Huey is {hr:,.0f}/s ({lr / hr:.1f}x)",
            target=f">= 40% of Pool(2) ({0.4 * pr:,.0f}/s)",
            ok=lr >= 0.4 * pr,
            runs=liteq_rate,
            extra={"pool2": pr, "ratio_to_pool2": lr / pr, "huey": hr, "startup_s": liteq_startup},
        ),
        Figure(
            group,
            "liteq, children already started (excl. start-up)",
            lw,
            "tasks/s",
            reference=f"Pool(2) excl. start-up {pw:,.0f}/s ({lw / pw:.0%}); start-up {median(liteq_startup) * 1000:.0f} ms",
            runs=liteq_warm,
            note="the first pool of a process also starts the fork server",
        ),
        Figure(group, "multiprocessing.Pool(2).map(chunksize=1), no durability", pr, "tasks/s", runs=pool_rate),
        Figure(
            group,
            "SqliteHuey, consumer -k process -w 2, from consumer start",
            hr,
            "tasks/s",
            reference=f"{hw:,.0f}/s from its first result",
            runs=huey_rate,
            extra={"from_first_result": huey_warm, "peak_pss_mb": huey_peak / MB},
        ),
    ], huey_peak


# -- W4: CPU fan-out -------------------------------------------------------------------------------


def bench_cpu(ctx: Context, iterations: int) -> tuple[list[Figure], float]:
    n = ctx.n(N_CPU)
    path = ctx.fresh("w4-liteq")
    app, t = _app(path)
    burn = t["burn"]
    bare_times, liteq_times, ratios = [], [], []
    bare = multiprocessing.get_context("fork").Pool(2)
    bare.map(bench_tasks.noop, range(4), chunksize=1)  # children up
    with app.workers(concurrency=2):
        for r in app.enqueue_many([burn.s(1000) for _ in range(4)]):
            r.get(timeout=60)  # children up and warm
        for round_ in range(ctx.repeats):
            b = _time(bare.map, bench_tasks.burn, [iterations] * n, 1)

            def run_liteq() -> None:
                for r in app.enqueue_many([burn.s(iterations) for _ in range(n)]):
                    r.get(timeout=600)

            q = _time(run_liteq)
            bare_times.append(b)
            liteq_times.append(q)
            ratios.append(q / b)
            ctx.log(f"W4 round {round_ + 1}: bare {b:.3f}s, liteq {q:.3f}s ({q / b:.3f}x)")
    bare.terminate()
    bare.join()
    app.close()
    remove(path)
    b, q, ratio = median(bare_times), median(liteq_times), median(ratios)
    group = f"W4: {n} tasks of ~{CPU_TASK_MS:.0f} ms pure-Python work on 2 processes (children started)"
    return [
        Figure(
            group,
            "liteq app.workers(2): enqueue_many + get() every result",
            q * 1000,
            "ms",
            reference=f"bare Pool(2) {b * 1000:,.0f} ms; median of per-round ratios {ratio:.3f}x",
            target="within 5% of bare (<= 1.05x)",
            ok=ratio <= 1.05,
            runs=[x * 1000 for x in liteq_times],
            extra={"ratios": ratios, "iterations": iterations},
        ),
        Figure(
            group,
            "bare multiprocessing.Pool(2).map(chunksize=1)",
            b * 1000,
            "ms",
            runs=[x * 1000 for x in bare_times],
        ),
    ], b


# -- W3 latency, idle cost, Huey W4: pools in their own processes ---------------------------------


def _liteq_latency(app: LiteQ, noop: Any, n: int) -> list[float]:
    out = []
    clock = time.perf_counter
    for i in range(n):
        started = clock()
        noop.delay(i).get(timeout=30)
        out.append((clock() - started) * 1e6)
    return out


def _huey_latency(noop: Any, n: int) -> list[float]:
    out = []
    clock = time.perf_counter
    for i in range(n):
        started = clock()
        noop(i).get(blocking=True, timeout=30)
        out.append((clock() - started) * 1e6)
    return out


def bench_latency_idle(ctx: Context, iterations: int, bare_cpu: float) -> list[Figure]:
    n, n_cpu = ctx.n(N_LATENCY), ctx.n(N_CPU)
    idle = max(3.0, IDLE_SECONDS * min(ctx.scale, 1.0))
    lpath, hpath = ctx.fresh("w3-liteq"), ctx.fresh("w3-huey")
    worker = start_liteq_worker(lpath, lpath / "worker.log")
    app, t = _app(lpath)
    consumer: Any = None
    huey: Any = None
    try:
        t["noop"].delay(-1).get(timeout=60)  # the pool is up
        _liteq_latency(app, t["noop"], 20)  # warm: connections, statement cache, wake sockets
        p50s, p99s, runs = [], [], []
        for round_ in range(ctx.repeats):
            lat = _liteq_latency(app, t["noop"], n)
            runs.append(lat)
            p50s.append(percentile(lat, 50))
            p99s.append(percentile(lat, 99))
            ctx.log(f"W3 liteq round {round_ + 1}: p50 {p50s[-1]:.0f} us, p99 {p99s[-1]:.0f} us, max {max(lat):.0f} us")
        # Huey's consumer starts only now: its workers poll the database while it runs, which
        # would land in liteq's round trips (and liteq's idle pool in none of Huey's).
        consumer = start_huey_consumer(hpath / "huey.db", hpath / "consumer.log")
        huey, h = _huey(hpath / "huey.db")
        h["noop"](-1).get(blocking=True, timeout=60)
        hlat = _huey_latency(h["noop"], n)
        h50, h99 = percentile(hlat, 50), percentile(hlat, 99)
        ctx.log(f"W3 Huey: p50 {h50 / 1000:.1f} ms, p99 {h99 / 1000:.1f} ms")

        # Idle: both pools have done nothing for a moment; count the CPU of each whole tree.
        time.sleep(2.0)
        before_l, before_h = cpu_snapshot(worker.pid), cpu_snapshot(consumer.pid)
        time.sleep(idle)
        after_l, after_h = cpu_snapshot(worker.pid), cpu_snapshot(consumer.pid)
        used_l, used_h = cpu_used(before_l, after_l), cpu_used(before_h, after_h)
        idle_l = sum(used_l.values()) * IDLE_SECONDS / idle
        idle_h = sum(used_h.values()) * IDLE_SECONDS / idle
        split = {after_l[pid][0]: round(cpu * IDLE_SECONDS / idle * 1000, 1) for pid, cpu in used_l.items()}
        idle_pss, idle_each = pss(worker.pid)
        ctx.log(f"idle {idle:.0f}s: liteq {idle_l * 1000:.0f} CPU-ms per 30 s {split}, Huey {idle_h * 1000:.0f}")

        # Huey's W4, for reference (its workers poll, so it starts up to 100 ms late).
        hw4 = _time(lambda: [r.get(blocking=True, timeout=600) for r in [h["burn"](iterations) for _ in range(n_cpu)]])
    finally:
        stop(worker)
        if consumer is not None:
            stop(consumer)
        app.close()
        if huey is not None:
            huey.storage.close()
    remove(lpath)
    remove(hpath)
    l50, l99 = median(p50s), median(p99s)
    group = f"W3: enqueue one no-op and block on its result, {n} times, from another process"
    idle_group = f"idle pool, CPU of the whole process tree over {idle:.0f} s (scaled to 30 s)"
    return [
        Figure(
            group,
            "liteq p50 (pool: python -m liteq worker -c 2)",
            l50,
            "us",
            reference=f"Huey p50 {h50 / 1000:.1f} ms",
            target="<= 0.7 ms",
            ok=l50 <= 700,
            runs=p50s,
            extra={"latencies_us": runs[len(runs) // 2]},
        ),
        Figure(
            group,
            "liteq p99",
            l99,
            "us",
            reference=f"Huey p99 {h99 / 1000:.1f} ms",
            target="<= 5 ms",
            ok=l99 <= 5000,
            runs=p99s,
        ),
        Figure(group, "SqliteHuey p50 (consumer -k process -w 2)", h50, "us", runs=[h50]),
        Figure(group, "SqliteHuey p99", h99, "us", runs=[h99], extra={"latencies_us": hlat}),
        Figure(
            idle_group,
            "liteq pool (supervisor + fork server or zygote + 2 children, + resource tracker if any)",
            idle_l * 1000,
            "CPU-ms",
            reference=f"{idle_l / IDLE_SECONDS:.2%} of a core; Huey {idle_h * 1000:.0f} CPU-ms",
            target="< 300 CPU-ms (1% of a core)",
            ok=idle_l < 0.3,
            runs=[idle_l * 1000],
            extra={
                "per_process_cpu_ms": split,
                "idle_pss_mb": idle_pss / MB,
                "idle_pss_each_mb": {k: v / MB for k, v in idle_each.items()},
            },
        ),
        Figure(idle_group, "SqliteHuey consumer (-k process -w 2)", idle_h * 1000, "CPU-ms", runs=[idle_h * 1000]),
        Figure(
            f"W4: {n_cpu} tasks of ~{CPU_TASK_MS:.0f} ms pure-Python work on 2 processes (children started)",
            "SqliteHuey consumer -k process -w 2 (reference)",
            hw4 * 1000,
            "ms",
            reference=f"{hw4 / bare_cpu:.2f}x bare Pool(2)",
            runs=[hw4 * 1000],
        ),
    ]


# -- what the supervisor's spin costs -----------------------------------------------------------------


def _supervisor_cpu_at_rate(ctx: Context, label: str, n: int, flags: tuple[str, ...] = ()) -> float:
    """Supervisor CPU per task (us) of a ``liteq worker -c 2`` fed ``n`` no-ops arriving at random
    (exponential gaps, SPIN_RATE a second), none waited on but the last."""
    path = ctx.fresh(label)
    worker = start_liteq_worker(path, path / "worker.log", flags=flags)
    app, t = _app(path)
    try:
        t["noop"].delay(-1).get(timeout=60)
        gaps = random.Random(1)
        before = cpu_snapshot(worker.pid)
        at = time.perf_counter()
        last = None
        for i in range(n):
            at += gaps.expovariate(SPIN_RATE)
            pause = at - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            last = t["noop"].delay(i)
        assert last is not None
        last.get(timeout=60)
        wait_until(lambda: _succeeded(app) >= n + 1, 60)
        used = cpu_used(before, cpu_snapshot(worker.pid))
    finally:
        stop(worker)
        app.close()
    remove(path)
    return used.get(worker.pid, 0.0) / n * 1e6


def bench_spin_cost(ctx: Context) -> list[Figure]:
    """What ``spin`` costs where it does not pay: tasks arriving at random about a millisecond apart."""
    n = ctx.n(N_SPIN)
    on, off = [], []
    for _ in range(ctx.repeats):  # alternating, so drift on the machine hits both alike
        on.append(_supervisor_cpu_at_rate(ctx, "spin-on", n))
        off.append(_supervisor_cpu_at_rate(ctx, "spin-off", n, ("--spin", "0")))
        ctx.log(f"spin cost: supervisor {on[-1]:.0f} us/task with the default spin, {off[-1]:.0f} with --spin 0")
    group = f"supervisor CPU per task, {n:,} no-ops arriving at random, {SPIN_RATE:,.0f}/s, liteq worker -c 2"
    return [
        Figure(
            group,
            "default spin",
            median(on),
            "us",
            reference=f"--spin 0: {median(off):.0f} us ({median(on) / median(off):.2f}x)",
            runs=on,
        ),
        Figure(group, "--spin 0", median(off), "us", runs=off),
    ]


# -- memory -----------------------------------------------------------------------------------------


def _drain_watch(app: LiteQ, worker: Any, results: list[Any], total: int, timeout: float = 900) -> None:
    results[-1].get(timeout=timeout)
    if not wait_until(lambda: _succeeded(app) >= total, timeout, interval=0.2):
        raise RuntimeError(f"pool did not drain {total} tasks")
    if worker.poll() is not None:
        raise RuntimeError(f"worker exited with {worker.returncode}")


def bench_memory(ctx: Context, huey_peak: int) -> list[Figure]:
    first = ctx.n(N_DRAIN)
    total = max(first * 2, ctx.n(N_MEMORY))
    path = ctx.fresh("memory")
    worker = start_liteq_worker(path, path / "worker.log")
    app, t = _app(path)
    noop = t["noop"]
    try:
        noop.delay(-1).get(timeout=60)
        total += 1
        sampler = PssSampler(worker.pid)
        sampler.start()
        results = app.enqueue_many([noop.s(i) for i in range(first)])
        _drain_watch(app, worker, results, first + 1)
        peak_first = sampler.finish()
        peak_each_first = sampler.peak_each
        time.sleep(1.0)
        after_first, each_first = pss(worker.pid)
        ctx.log(f"memory: {first:,} drained, peak PSS {peak_first / MB:.1f} MB, after {after_first / MB:.1f} MB")
        sampler = PssSampler(worker.pid, interval=0.5)
        sampler.start()
        done = first + 1
        while done < total:
            k = min(ENQUEUE_CHUNK, total - done)
            results = app.enqueue_many([noop.s(i) for i in range(done, done + k)])
            done += k
        _drain_watch(app, worker, results, total)
        peak_all = sampler.finish()
        time.sleep(1.0)
        after_all, each_all = pss(worker.pid)
        ctx.log(f"memory: {total:,} drained, peak PSS {peak_all / MB:.1f} MB, after {after_all / MB:.1f} MB")
    finally:
        stop(worker)
        app.close()
    remove(path)
    group = (
        "pool memory: PSS of supervisor + fork server (its zygote by default) + 2 children (+ resource tracker if any)"
    )
    growth = after_all / after_first
    return [
        Figure(
            group,
            f"peak PSS while draining {first:,} tasks (W2)",
            peak_first / MB,
            "MB",
            reference=f"SqliteHuey consumer peak {huey_peak / MB:.1f} MB" if huey_peak else "",
            target="<= 50 MB",
            ok=peak_first <= 50 * MB,
            runs=[peak_first / MB],
            extra={"per_process_at_peak_mb": {p: v / MB for p, v in peak_each_first.items()}},
        ),
        Figure(
            group,
            f"peak PSS while draining up to {total:,} tasks",
            peak_all / MB,
            "MB",
            target="<= 50 MB",
            ok=peak_all <= 50 * MB,
            runs=[peak_all / MB],
        ),
        Figure(
            group,
            f"PSS after {total:,} drained vs after {first:,}",
            after_all / MB,
            "MB",
            reference=f"{after_first / MB:.1f} MB after {first:,} ({growth:.2f}x)",
            target="flat: <= 1.10x",
            ok=growth <= 1.10,
            runs=[after_first / MB, after_all / MB],
            extra={
                "per_process_after_first_mb": {p: v / MB for p, v in each_first.items()},
                "per_process_after_all_mb": {p: v / MB for p, v in each_all.items()},
            },
        ),
    ]


# -- start-up: ``liteq worker`` until the first task can run -----------------------------------------


def bench_startup(ctx: Context) -> list[Figure]:
    """Seconds from launching ``python -m liteq worker bench_tasks:app -c 2`` to the result of a task
    that was waiting in the store: interpreter, imports, children started, one claim and run."""
    runs: list[float] = []
    for _ in range(max(ctx.repeats, 5)):
        path = ctx.fresh("startup")
        app, t = _app(path)
        result = t["noop"].delay(1)
        started = time.perf_counter()
        worker = start_liteq_worker(path, path / "worker.log")
        try:
            result.get(timeout=60)
            runs.append(time.perf_counter() - started)
        finally:
            stop(worker)
            app.close()
            remove(path)
    ctx.log(f"start-up runs: {', '.join(f'{r:.3f}s' for r in runs)}")
    value = median(runs)
    return [
        Figure(
            "start-up: liteq worker -c 2, from launch to the first task's result",
            "liteq worker start-up",
            value,
            "s",
            target="<= 0.2 s",
            ok=value <= 0.2,
            runs=runs,
        )
    ]


def run(ctx: Context) -> list[Figure]:
    """Every pool benchmark of issue 3."""
    iterations = calibrate()
    ctx.log(f"burn({iterations:,}) takes ~{CPU_TASK_MS:.0f} ms here")
    figures: list[Figure] = []
    ctx.log("W2 drain ...")
    drain, huey_peak = bench_drain(ctx)
    figures += drain
    ctx.log("W4 CPU fan-out ...")
    cpu, bare = bench_cpu(ctx, iterations)
    figures += cpu
    ctx.log("W3 latency and idle cost ...")
    figures += bench_latency_idle(ctx, iterations, bare)
    ctx.log("spin cost ...")
    figures += bench_spin_cost(ctx)
    ctx.log("start-up ...")
    figures += bench_startup(ctx)
    ctx.log("memory ...")
    figures += bench_memory(ctx, huey_peak)
    return figures
