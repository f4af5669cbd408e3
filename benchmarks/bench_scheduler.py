"""Scheduler benchmark (issue 4): overhead of 1,000 registered schedules on an idle pool.

The schedules (see :mod:`bench_tasks`): 995 cron ``* * * * *`` schedules, all due at the same
instant every minute (the cron path, and the largest burst 1,000 schedules can make), and 5
``every=1s`` schedules. Each slot enqueues :func:`bench_tasks.fired` into a queue the pool does not
serve (``-Q default``), so the pool's CPU is the scheduler's own cost (deciding what is due,
computing next slots, enqueueing the slots in one transaction), not the cost of running the tasks.

Two pools run side by side over the same window of at least a minute (so exactly one minute
boundary falls in it), each ``python -m liteq worker bench_tasks:app -c 2`` in its own process:
one with the 1,000 schedules, one with none (the baseline). CPU is the whole process tree's
(supervisor, fork server, resource tracker, children), via psutil.

Slot lateness is ``enqueued_at - slot`` of every slot fired in the window, read from the store
(``periodic_slots`` joined with ``tasks``). ``enqueued_at`` is the tick's start time, so it does
not include computing the burst or committing it; the pool logs ``fired N periodic slot(s)`` after
each commit, and those log times (ms resolution) give the commit lateness too (informational).
"""

from __future__ import annotations

import re
import sqlite3
import time
from datetime import datetime
from pathlib import Path

from _common import Context, Figure, remove
from _procs import cpu_snapshot, cpu_used, percentile, start_liteq_worker, stop, wait_until

from liteq.storage.sqlite import DB_FILENAME

N_SCHEDULES = 1_000
EVERY_SECOND = 5
WINDOW = 62.0  # seconds: a minute boundary always falls inside, and the every-second slots around it
SETTLE = 3.0

_FIRED_LOG = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) .*fired (\d+) periodic slot")


def _query(store: Path, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(f"file:{store / DB_FILENAME}?mode=ro", uri=True, timeout=30)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def _registered(store: Path) -> int:
    try:
        return int(_query(store, "SELECT count(*) FROM schedules")[0][0])  # type: ignore[call-overload]
    except sqlite3.Error:
        return 0


def _commit_lateness(log: Path, start: float, end: float) -> list[tuple[float, int]]:
    """``(seconds after the whole second, slots)`` of each ``fired`` log line in ``[start, end]``."""
    out = []
    for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
        m = _FIRED_LOG.match(line)
        if not m:
            continue
        at = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S").timestamp() + int(m.group(2)) / 1000
        if start <= at <= end:
            out.append((at - int(at), int(m.group(3))))
    return out


def run(ctx: Context) -> list[Figure]:
    """CPU per minute of an idle pool with 1,000 schedules, and slot lateness."""
    n = ctx.n(N_SCHEDULES, floor=50)
    every = min(EVERY_SECOND, n)
    window = max(10.0, WINDOW * min(ctx.scale, 1.0))
    sched_dir, base_dir = ctx.fresh("sched-1000"), ctx.fresh("sched-none")
    log = sched_dir / "worker.log"
    with_s = start_liteq_worker(
        sched_dir,
        log,
        queues="default",
        LITEQ_BENCH_SCHEDULES=str(n),
        LITEQ_BENCH_EVERY_SECOND=str(every),
    )
    without = start_liteq_worker(base_dir, base_dir / "worker.log", queues="default")
    try:
        if not wait_until(lambda: _registered(sched_dir) >= n, 120, interval=0.2):
            raise RuntimeError(f"the pool did not register {n} schedules; see {log}")
        time.sleep(SETTLE)
        ctx.log(f"scheduler: {n} schedules registered; measuring {window:.0f} s")
        start = time.time()
        before_s, before_b = cpu_snapshot(with_s.pid), cpu_snapshot(without.pid)
        time.sleep(window)
        after_s, after_b = cpu_snapshot(with_s.pid), cpu_snapshot(without.pid)
        end = time.time()
        for proc in (with_s, without):
            if proc.poll() is not None:
                raise RuntimeError(f"a worker exited with {proc.returncode}; see {log}")
    finally:
        stop(with_s)
        stop(without)
    used_s, used_b = cpu_used(before_s, after_s), cpu_used(before_b, after_b)
    cpu_s = sum(used_s.values()) * 60 / window
    cpu_b = sum(used_b.values()) * 60 / window
    split = {after_s[pid][0]: round(cpu * 60 / window * 1000, 1) for pid, cpu in used_s.items()}
    rows = _query(
        sched_dir,
        "SELECT p.schedule, p.slot, t.enqueued_at FROM periodic_slots p JOIN tasks t ON t.id = p.task_id "
        "WHERE p.slot >= ? AND p.slot <= ?",
        (start, end),
    )
    late_all = [(float(at) - float(slot)) * 1000 for _, slot, at in rows]  # type: ignore[arg-type]
    late_sec = [(float(at) - float(slot)) * 1000 for name, slot, at in rows if str(name).startswith("every-second")]  # type: ignore[arg-type]
    minute = [r for r in rows if str(r[0]).startswith("each-minute")]
    expected_sec = every * int(window)
    commits = _commit_lateness(log, start, end)
    commit_ms = [at * 1000 for at, _ in commits]
    burst = [at * 1000 for at, k in commits if k > every]
    remove(sched_dir)
    remove(base_dir)
    if not late_all:
        raise RuntimeError("no periodic slot fired in the window")
    p99_all, p99_sec = percentile(late_all, 99), percentile(late_sec, 99) if late_sec else float("nan")
    ctx.log(
        f"scheduler: CPU {cpu_s * 1000:.0f} ms/min with schedules ({split}), {cpu_b * 1000:.0f} ms/min without; "
        f"{len(rows)} slots fired ({len(minute)} minute, {len(late_sec)} of ~{expected_sec} second slots); "
        f"lateness p99 {p99_all:.1f} ms, commit p99 {percentile(commit_ms, 99) if commit_ms else float('nan'):.1f} ms"
    )
    group = f"{n:,} schedules ({n - every} cron '* * * * *', {every} every=1s) on an idle pool, {window:.0f} s window"
    figures = [
        Figure(
            group,
            "CPU per minute of the pool with the schedules",
            cpu_s * 1000,
            "CPU-ms",
            reference=f"same pool without schedules {cpu_b * 1000:.0f} CPU-ms (+{(cpu_s - cpu_b) * 1000:.0f})",
            target="no target in the issue",
            runs=[cpu_s * 1000],
            extra={"per_process_ms": split, "baseline_ms": cpu_b * 1000, "slots_fired": len(rows)},
            note=f"{(cpu_s - cpu_b) / 60:.2%} of a core for the scheduler",
        ),
        Figure(
            group,
            f"slot lateness p99, every slot fired ({len(rows):,}: enqueued_at - slot)",
            p99_all,
            "ms",
            reference=f"p50 {percentile(late_all, 50):.1f} ms, max {max(late_all):.1f} ms",
            target="< 50 ms",
            ok=p99_all < 50,
            runs=late_all,
        ),
    ]
    if late_sec:
        figures.append(
            Figure(
                group,
                f"slot lateness p99, the every=1s slots ({len(late_sec)} of {expected_sec} expected)",
                p99_sec,
                "ms",
                reference=f"p50 {percentile(late_sec, 50):.1f} ms",
                target="< 50 ms",
                ok=p99_sec < 50 and len(late_sec) >= expected_sec - every,
                runs=late_sec,
            )
        )
    if commit_ms:
        figures.append(
            Figure(
                group,
                f"commit lateness p99 from the pool log ({len(commits)} ticks)",
                percentile(commit_ms, 99),
                "ms",
                reference=f"the minute burst committed {max(burst):.0f} ms after its slot" if burst else "",
                target="< 50 ms",
                ok=percentile(commit_ms, 99) < 50,
                runs=commit_ms,
                note="log time after the tick's commit minus the slot (1 ms resolution)",
            )
        )
    return figures
