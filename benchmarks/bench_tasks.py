"""Task functions the pool, scheduler and canvas benchmarks run, importable by worker processes.

The functions are plain module-level functions, so a ``multiprocessing.Pool`` runs them as they
are, and each benchmark registers them on its own liteq app or Huey instance (task names are the
same everywhere: ``bench_tasks.<function>`` for liteq, ``<function>`` for Huey).

A worker in another process needs a module-level app: with ``LITEQ_BENCH_STORE`` set, importing
this module creates ``app`` on that store (``python -m liteq worker bench_tasks:app``), and with
``LITEQ_BENCH_SCHEDULES`` set it also registers the scheduler benchmark's schedules. With
``HUEY_BENCH_DB`` set it creates ``huey``, a ``SqliteHuey`` on that file
(``huey_consumer bench_tasks.huey``). Without them (the benchmark process itself) both are None.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from typing import Any

#: Queue the scheduler benchmark's periodic tasks go to; its pool does not serve it, so the pool's
#: CPU is the scheduler's own cost (firing = enqueueing), not the cost of running the tasks.
SCHEDULED_QUEUE = "fired"


def noop(i: int) -> int:
    """The no-op task. Returns its argument so Huey stores a result too (it skips ``None``)."""
    return i


async def anoop(i: int) -> int:
    """The no-op ``async def`` task (the asyncio worker benchmark)."""
    return i


async def anap(seconds: float) -> float:
    """``await asyncio.sleep(seconds)`` (the asyncio worker benchmark: coroutines share a child)."""
    import asyncio

    await asyncio.sleep(seconds)
    return seconds


def burn(n: int) -> int:
    """Pure-Python CPU work: ``n`` loop iterations (the benchmark calibrates ``n`` to ~10 ms)."""
    x = 0
    for i in range(n):
        x = (x * 31 + i) % 1_000_003
    return x


_WORD = re.compile(rb"\S+")


def count_words(path: str, start: int, end: int) -> dict[str, int]:
    """Word counts of bytes ``[start, end)`` of the text file at ``path`` (the map step)."""
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read(end - start)
    return dict(Counter(data.decode("ascii").split()))


def merge_counts(parts: list[dict[str, int]]) -> dict[str, int]:
    """Sum the per-chunk counts (the reduce step, a chord body)."""
    total: dict[str, int] = {}
    get = total.get
    for part in parts:
        for word, n in part.items():
            total[word] = get(word, 0) + n
    return total


def nothing(*args: Any) -> None:
    """A no-op that takes anything (chord members and bodies in the overhead benchmark)."""
    return None


def fired(i: int) -> None:
    """What each schedule of the scheduler benchmark enqueues (into :data:`SCHEDULED_QUEUE`)."""
    return None


def _liteq_app() -> Any:
    store = os.environ.get("LITEQ_BENCH_STORE")
    if not store:
        return None
    from liteq import LiteQ

    liteq_app = LiteQ(store)
    for fn in (noop, burn, count_words, merge_counts, nothing):
        liteq_app.task(fn)
    periodic = liteq_app.task(queue=SCHEDULED_QUEUE)(fired)
    schedules = int(os.environ.get("LITEQ_BENCH_SCHEDULES", "0"))
    every_second = int(os.environ.get("LITEQ_BENCH_EVERY_SECOND", "0"))
    for i in range(schedules):
        if i < every_second:
            liteq_app.periodic(every=1.0, name=f"every-second-{i}", args=(i,))(periodic)
        else:
            liteq_app.periodic(cron="* * * * *", name=f"each-minute-{i}", args=(i,))(periodic)
    return liteq_app


def _huey() -> Any:
    path = os.environ.get("HUEY_BENCH_DB")
    if not path:
        return None
    from huey import SqliteHuey

    instance = SqliteHuey(name="bench", filename=path)
    for fn in (noop, burn):
        instance.task(name=fn.__name__)(fn)
    return instance


app = _liteq_app()
huey = _huey()
