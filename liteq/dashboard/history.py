"""Charts and rates from the store's per-minute history (:meth:`Storage.stats`).

Pure functions over the rows a store returns, so the dashboard, ``liteq status`` and scripts read
the same figures, on every store (SQLite, memory, remote), and the figures survive restarts.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from ..storage.contract import Storage
from ..storage.records import StatsRow
from ..storage.states import FAILED, FINISHED_STATES, SUCCEEDED

__all__ = ["failures_by_name", "finished_recently", "series"]

MINUTE = 60.0


def finished_recently(storage: Storage, *, now: float, window: float = MINUTE) -> int:
    """Tasks that succeeded or failed in the last ``window`` seconds, from the per-minute history.

    The oldest minute overlapping the window counts in proportion to its overlap.
    """
    start = now - window
    rows = storage.stats(since=math.floor(start / MINUTE) * MINUTE)
    total = 0.0
    for r in rows:
        if r["state"] not in (SUCCEEDED, FAILED):
            continue
        overlap = min(r["minute"] + MINUTE, now) - max(r["minute"], start)
        span = min(r["minute"] + MINUTE, now) - r["minute"]
        if overlap > 0 and span > 0:
            total += r["count"] * min(overlap / span, 1.0)
    return round(total)


def series(rows: Iterable[StatsRow], *, since: float, until: float, bucket: float) -> dict[str, Any]:
    """Columns for a chart: bucket start times, finishes per state, mean and max latency.

    ``{"t": [...], "succeeded": [...], "failed": [...], "other": [...], "latency_mean": [...],
    "latency_max": [...]}``; a bucket without finishes has ``None`` latencies (a gap in the line).
    """
    first = math.floor(since / bucket) * bucket
    n = max(math.ceil((until - first) / bucket), 1)
    t = [first + i * bucket for i in range(n)]
    ok = [0] * n
    bad = [0] * n
    other = [0] * n
    lat_sum = [0.0] * n
    lat_n = [0] * n
    lat_max: list[float | None] = [None] * n
    for r in rows:
        i = int((r["minute"] - first) // bucket)
        if not 0 <= i < n or r["state"] not in FINISHED_STATES:
            continue
        if r["state"] == SUCCEEDED:
            ok[i] += r["count"]
        elif r["state"] == FAILED:
            bad[i] += r["count"]
        else:
            other[i] += r["count"]
        lat_sum[i] += r["latency_sum"]
        lat_n[i] += r["count"]
        worst = lat_max[i]
        lat_max[i] = r["latency_max"] if worst is None else max(worst, r["latency_max"])
    mean = [lat_sum[i] / lat_n[i] if lat_n[i] else None for i in range(n)]
    return {
        "t": t,
        "succeeded": ok,
        "failed": bad,
        "other": other,
        "latency_mean": mean,
        "latency_max": lat_max,
    }


def failures_by_name(rows: Sequence[StatsRow]) -> list[dict[str, Any]]:
    """``[{"name", "failed", "finished"}]`` over ``rows``, most failures first (names with none left out)."""
    failed: dict[str, int] = {}
    finished: dict[str, int] = {}
    for r in rows:
        finished[r["name"]] = finished.get(r["name"], 0) + r["count"]
        if r["state"] == FAILED:
            failed[r["name"]] = failed.get(r["name"], 0) + r["count"]
    return [
        {"name": name, "failed": n, "finished": finished[name]}
        for name, n in sorted(failed.items(), key=lambda kv: (-kv[1], kv[0]))
    ]
