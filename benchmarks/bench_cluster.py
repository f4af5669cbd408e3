"""Cluster benchmarks (issue 11), on loopback, beside the local pool.

A real ``liteq serve`` process serves a store in the work dir; workers are ``liteq worker
bench_tasks:app -c N`` processes connected to it, as a user starts them:

- W2: drain queued no-op tasks with 2 remote worker processes (two pools of one child each) against
  a local pool of 2 children on a directory store (target: remote >= 0.6x local);
- W3: this process enqueues one no-op through the server and blocks on its result, one at a time,
  a remote pool of 2 running them (target: p50 <= 2 ms; Celery+Redis about 2.9 ms on this machine);
- remote enqueue, one ``delay()`` per task (target >= 5,000/s), and ``enqueue_many`` in batches
  (target >= 50,000 tasks/s);
- an idle server with 200 connected workers (each listening for pushes and heartbeating like a
  pool): server memory per connection and server CPU per minute (reported, no target).
"""

from __future__ import annotations

import re
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import bench_tasks
import psutil
from _common import Context, Figure, median, remove
from _procs import env, percentile, start_liteq_worker, stop, wait_until

from liteq import LiteQ
from liteq.storage.states import SUCCEEDED

N_DRAIN = 10_000
N_LATENCY = 200
N_ENQUEUE_ONE = 5_000
N_ENQUEUE_MANY = 200_000
ENQUEUE_CHUNK = 20_000
IDLE_CONNECTIONS = 200
IDLE_SECONDS = 60.0
HEARTBEAT_INTERVAL = 5.0
MB = 2**20
TOKEN = secrets.token_urlsafe(24)


def start_server(store: Path, log: Path) -> tuple[subprocess.Popen[str], str]:
    """``liteq serve STORE --bind 127.0.0.1:0`` with a token; return it and the URL it prints."""
    with open(log, "ab") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "liteq", "serve", str(store), "--bind", "127.0.0.1:0", "-l", "WARNING"],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=env(LITEQ_TOKEN=TOKEN),
        )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    found = re.search(r"listening on (liteq://\S+)", line)
    if not found:
        proc.kill()
        raise RuntimeError(f"liteq serve did not start: {line!r} (see {log})")
    return proc, found.group(1)


def stop_server(proc: subprocess.Popen[str]) -> None:
    """SIGTERM the server and wait; close its pipe."""
    stop(proc)  # type: ignore[arg-type]
    if proc.stdout is not None:
        proc.stdout.close()


def _remote_app(url: str) -> tuple[LiteQ, Any]:
    app = LiteQ(url, token=TOKEN)
    return app, app.task(bench_tasks.noop)


def _succeeded(app: LiteQ) -> int:
    return sum(q.get(SUCCEEDED, 0) for q in app.storage.counts().values())


def _drain(ctx: Context, n: int, *, remote: bool) -> tuple[float, float]:
    """Tasks per second from worker start to every result stored, and from the first result on
    (the drain once the worker processes are up, without their interpreter start and imports).

    The server is started before the clock: it stands for a server that is already running, as the
    local store is."""
    path = ctx.fresh("w2-remote" if remote else "w2-local")
    local = LiteQ(path / "store")
    noop = local.task(bench_tasks.noop)
    local.enqueue_many([noop.s(i) for i in range(n)])
    server = workers = None
    first: list[tuple[float, int]] = []

    def done(count: int) -> bool:
        if count and not first:
            first.append((time.perf_counter(), count))
        return count >= n

    try:
        if remote:
            server, url = start_server(path / "store", path / "server.log")
            started = time.perf_counter()
            workers = [
                start_liteq_worker(url, path / f"w{i}.log", concurrency=1, LITEQ_TOKEN=TOKEN)  # type: ignore[arg-type]
                for i in range(2)
            ]
            wait_until(lambda: done(_succeeded(local)), 900, interval=0.005)
        else:
            started = time.perf_counter()
            with local.workers(concurrency=2) as pool:
                while not done(pool.tasks_done):
                    time.sleep(0.002)
                wait_until(lambda: _succeeded(local) >= n, 900, interval=0.001)
        ended = time.perf_counter()
        at, count = first[0]
        return n / (ended - started), (n - count) / max(ended - at, 1e-9)
    finally:
        for w in workers or []:
            stop(w)
        if server is not None:
            stop_server(server)
        local.close()
        remove(path)


def bench_drain(ctx: Context) -> list[Figure]:
    n = ctx.n(N_DRAIN, 200)
    local, remote, local_steady, remote_steady = [], [], [], []
    for round_ in range(ctx.repeats):
        overall, steady = _drain(ctx, n, remote=False)
        local.append(overall)
        local_steady.append(steady)
        overall, steady = _drain(ctx, n, remote=True)
        remote.append(overall)
        remote_steady.append(steady)
        ctx.log(
            f"W2 round {round_ + 1}: local {local[-1]:,.0f}/s, remote {remote[-1]:,.0f}/s; "
            f"from the first result: local {local_steady[-1]:,.0f}/s, remote {remote_steady[-1]:,.0f}/s"
        )
    ratio = median(remote) / median(local)
    steady_ratio = median(remote_steady) / median(local_steady)
    group = f"W2: drain {n:,} queued no-ops, 2 worker processes"
    return [
        Figure(group, "local pool of 2 (directory store)", median(local), "tasks/s", runs=local),
        Figure(
            group,
            "2 remote worker processes through liteq serve",
            median(remote),
            "tasks/s",
            reference=f"{ratio:.2f}x local",
            target=">= 0.6x local",
            ok=ratio >= 0.6,
            runs=remote,
        ),
        Figure(group, "local, from the first result on", median(local_steady), "tasks/s", runs=local_steady),
        Figure(
            group,
            "remote, from the first result on",
            median(remote_steady),
            "tasks/s",
            reference=f"{steady_ratio:.2f}x local",
            runs=remote_steady,
        ),
    ]


def bench_latency_and_enqueue(ctx: Context) -> list[Figure]:
    path = ctx.fresh("w3-remote")
    server, url = start_server(path / "store", path / "server.log")
    worker = start_liteq_worker(url, path / "worker.log", concurrency=2, LITEQ_TOKEN=TOKEN)  # type: ignore[arg-type]
    app, noop = _remote_app(url)
    figures: list[Figure] = []
    try:
        wait_until(lambda: app.stats()["workers"], 60)
        noop.delay(-1).get(timeout=60)  # warm: connections, children, caches
        n = ctx.n(N_LATENCY, 20)
        p50s, p99s = [], []
        clock = time.perf_counter
        for round_ in range(ctx.repeats):
            lat = []
            for i in range(n):
                t0 = clock()
                noop.delay(i).get(timeout=30)
                lat.append((clock() - t0) * 1e3)
            p50s.append(percentile(lat, 50))
            p99s.append(percentile(lat, 99))
            ctx.log(f"W3 remote round {round_ + 1}: p50 {p50s[-1]:.2f} ms, p99 {p99s[-1]:.2f} ms")
        group = f"W3: remote producer, enqueue one no-op and block on its result, {n} times"
        p50 = median(p50s)
        figures += [
            Figure(group, "p50 through liteq serve", p50, "ms", "Celery+Redis ~2.9 ms", "<= 2 ms", p50 <= 2.0, p50s),
            Figure(group, "p99 through liteq serve", median(p99s), "ms", runs=p99s),
        ]
        stop(worker)  # the enqueue rates measure the server, not a pool draining beside it
        one, many = [], []
        n_one, n_many = ctx.n(N_ENQUEUE_ONE, 100), ctx.n(N_ENQUEUE_MANY, 1000)
        for round_ in range(ctx.repeats):
            t0 = clock()
            for i in range(n_one):
                noop.delay(i)
            one.append(n_one / (clock() - t0))
            t0 = clock()
            for start in range(0, n_many, ENQUEUE_CHUNK):
                app.enqueue_many([noop.s(i) for i in range(start, min(start + ENQUEUE_CHUNK, n_many))])
            many.append(n_many / (clock() - t0))
            ctx.log(f"remote enqueue round {round_ + 1}: one call per task {one[-1]:,.0f}/s, batches {many[-1]:,.0f}/s")
            app.purge()
        group = "Remote enqueue through liteq serve"
        figures += [
            Figure(
                group,
                f"one delay() per task ({n_one:,})",
                median(one),
                "tasks/s",
                "",
                ">= 5,000/s",
                median(one) >= 5000,
                one,
            ),
            Figure(
                group,
                f"enqueue_many ({n_many:,} in batches of {ENQUEUE_CHUNK:,})",
                median(many),
                "tasks/s",
                "",
                ">= 50,000/s",
                median(many) >= 50_000,
                many,
            ),
        ]
    finally:
        stop(worker)
        app.close()
        stop_server(server)
        remove(path)
    return figures


def bench_idle(ctx: Context) -> list[Figure]:
    path = ctx.fresh("idle-remote")
    server, url = start_server(path / "store", path / "server.log")
    clients: subprocess.Popen[bytes] | None = None
    try:
        proc = psutil.Process(server.pid)
        n = max(10, int(IDLE_CONNECTIONS * min(ctx.scale, 1.0)))
        seconds = max(5.0, IDLE_SECONDS * min(ctx.scale, 1.0))
        with LiteQ(url, token=TOKEN) as probe:  # one round trip, so the server is warm
            probe.stats()
        before = proc.memory_full_info().uss
        clients = subprocess.Popen(
            [sys.executable, __file__, "idle-clients", url, str(n)],
            env=env(LITEQ_TOKEN=TOKEN),
            stdout=subprocess.PIPE,
        )
        assert clients.stdout is not None
        clients.stdout.readline()  # "connected"
        time.sleep(HEARTBEAT_INTERVAL)  # let the first heartbeats land before measuring
        after = proc.memory_full_info().uss
        cpu0 = sum(proc.cpu_times()[:2])
        time.sleep(seconds)  # the measurement window itself: an idle server over time
        cpu = sum(proc.cpu_times()[:2]) - cpu0
        per_conn = (after - before) / n
        per_minute = cpu * 60.0 / seconds
        ctx.log(f"idle server, {n} workers: {per_conn / 1024:.1f} KiB per connection, {per_minute:.2f} CPU s/min")
        group = f"Idle liteq serve with {n} connected workers (heartbeat every {HEARTBEAT_INTERVAL:.0f} s)"
        return [
            Figure(group, "server memory per connection (USS)", per_conn / 1024, "KiB"),
            Figure(group, f"server CPU per minute (measured over {seconds:.0f} s)", per_minute, "CPU s/min"),
        ]
    finally:
        if clients is not None:
            clients.kill()
            clients.wait()
            if clients.stdout is not None:
                clients.stdout.close()
        stop_server(server)
        remove(path)


def _idle_clients(url: str, n: int) -> None:
    """Hold ``n`` connections like idle pools: each registered, listening, heartbeating."""
    import os
    import socket

    from liteq.cluster.remote import RemoteStorage

    from liteq.storage.records import WorkerInfo

    stores = [RemoteStorage(url) for _ in range(n)]
    now = time.time()
    for i, store in enumerate(stores):
        store.listen()
        store.register_worker(WorkerInfo(f"idle-{i}", socket.gethostname(), os.getpid(), 1, ["default"], now, now))
    print("connected", flush=True)
    while True:
        time.sleep(HEARTBEAT_INTERVAL)
        for i, store in enumerate(stores):
            store.heartbeat(f"idle-{i}")


def run(ctx: Context) -> list[Figure]:
    ctx.log("cluster W2 drain ...")
    figures = bench_drain(ctx)
    ctx.log("cluster W3 latency and remote enqueue ...")
    figures += bench_latency_and_enqueue(ctx)
    ctx.log("cluster idle server ...")
    figures += bench_idle(ctx)
    return figures


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "idle-clients":
    _idle_clients(sys.argv[2], int(sys.argv[3]))
