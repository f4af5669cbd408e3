"""Helpers the pool, scheduler and canvas benchmarks share: worker processes, CPU and PSS of a
process tree, percentiles.

A pool "in another process" is started exactly as a user would start it (``python -m liteq worker
bench_tasks:app -c 2``, ``python -m huey.bin.huey_consumer bench_tasks.huey -k process -w 2``),
with this directory on ``PYTHONPATH`` so the workers import :mod:`bench_tasks`.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil

HERE = Path(__file__).resolve().parent


def env(**extra: str) -> dict[str, str]:
    """This process's environment with this directory on ``PYTHONPATH`` and ``extra`` set."""
    out = dict(os.environ)
    out["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), out.get("PYTHONPATH", "")) if p)
    out.update(extra)
    return out


def start_liteq_worker(
    store: Path,
    log: Path,
    *,
    concurrency: int = 2,
    queues: str | None = None,
    flags: tuple[str, ...] = (),
    **extra: str,
) -> subprocess.Popen[bytes]:
    """``python -m liteq worker bench_tasks:app -c N [FLAGS]`` on ``store``, with ``extra`` in its
    environment; its log goes to ``log``."""
    cmd = [sys.executable, "-m", "liteq", "worker", "bench_tasks:app", "-c", str(concurrency), "-l", "INFO"]
    if queues:
        cmd += ["-Q", queues]
    cmd += flags
    with open(log, "ab") as out:
        return subprocess.Popen(
            cmd, env=env(LITEQ_BENCH_STORE=str(store), **extra), stdout=out, stderr=subprocess.STDOUT, cwd=HERE
        )


def start_huey_consumer(db: Path, log: Path, *, workers: int = 2) -> subprocess.Popen[bytes]:
    """Huey's consumer, process mode, ``workers`` workers, otherwise its defaults."""
    cmd = [sys.executable, "-m", "huey.bin.huey_consumer", "bench_tasks.huey", "-k", "process", "-w", str(workers)]
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, env=env(HUEY_BENCH_DB=str(db)), stdout=out, stderr=subprocess.STDOUT, cwd=HERE)


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
    """Signal ``proc`` (graceful stop for both liteq and Huey) and wait; SIGKILL its tree if it hangs."""
    if proc.poll() is None:
        tree = processes(proc.pid)
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            for p in tree:
                try:
                    p.kill()
                except psutil.Error:
                    pass
            proc.wait(5)


def processes(pid: int) -> list[psutil.Process]:
    """The process ``pid`` and all its descendants (a pool: supervisor, fork server, children...)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def role(p: psutil.Process, root: int) -> str:
    """What a process of a pool's tree is: supervisor, fork server (a spawned one, or a zygote forked
    from the supervisor), resource tracker or a child."""
    if p.pid == root:
        return "supervisor"
    try:
        cmd = " ".join(p.cmdline())
        parent = p.ppid()
    except psutil.Error:
        return f"{p.pid}"
    if "resource_tracker" in cmd:
        return "resource tracker"
    if "forkserver" in cmd and parent == root:
        return "fork server"
    if parent == root:
        try:
            if p.cmdline() == psutil.Process(root).cmdline():
                return "fork server (zygote)"  # forked from the supervisor, not started as an interpreter
        except psutil.Error:
            pass
    return f"child {p.pid}"


def cpu_snapshot(pid: int) -> dict[int, tuple[str, float]]:
    """``{pid: (role, user+system CPU seconds)}`` for the tree under ``pid``."""
    out: dict[int, tuple[str, float]] = {}
    for p in processes(pid):
        try:
            t = p.cpu_times()
            out[p.pid] = (role(p, pid), t.user + t.system)
        except psutil.Error:
            pass
    return out


def cpu_used(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> dict[int, float]:
    """CPU seconds each process of ``after`` used since ``before`` (all of it for new processes)."""
    return {pid: cpu - (before[pid][1] if pid in before else 0.0) for pid, (_, cpu) in after.items()}


def pss(pid: int) -> tuple[int, dict[str, int]]:
    """Total PSS (bytes) of the tree under ``pid`` and PSS per process (by role)."""
    each: dict[str, int] = {}
    for p in processes(pid):
        try:
            each[role(p, pid)] = int(p.memory_full_info().pss)
        except psutil.Error:
            pass
    return sum(each.values()), each


class PssSampler(threading.Thread):
    """Samples the PSS of a process tree every ``interval`` seconds until :meth:`finish`."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        super().__init__(name="pss-sampler", daemon=True)
        self.pid = pid
        self.interval = interval
        self.samples: list[int] = []
        self.peak = 0
        self.peak_each: dict[str, int] = {}
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            total, each = pss(self.pid)
            if total:
                self.samples.append(total)
                if total > self.peak:
                    self.peak, self.peak_each = total, each
            self._halt.wait(self.interval)

    def finish(self) -> int:
        """Stop sampling; return the peak (bytes)."""
        self._halt.set()
        self.join()
        return self.peak


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100), nearest rank on the sorted values."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[rank]


def wait_until(check: Any, timeout: float, interval: float = 0.01) -> bool:
    """Call ``check()`` every ``interval`` seconds until it is true or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(interval)
    return bool(check())
