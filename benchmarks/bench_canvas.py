"""Canvas benchmark (issue 5): a map-reduce word count as a chord, and the chord's store overhead.

Word count: a deterministic 50 MB text (lowercase words drawn from a 20,000-word vocabulary with
Zipf weights 1/rank, ~9,000 words per 50 KB chunk of which ~2,600 distinct, as in prose) split at
whitespace into 1,000 chunks. ``chord([count_words.s(path, start, end) ...], merge_counts.s())`` on
``app.workers(concurrency=2)`` (started before the clock, as a deployed pool is), against the same
two functions called in one process over the same chunks. Each member returns a dict of its
chunk's counts (~22 KB encoded) and the body receives all 1,000 of them.

The members get **file offsets**, not the text: the text is already on a disk every worker can read,
as input to a real map-reduce is; copying 50 MB through the store would write it twice (WAL, then
the database at checkpoint) in the producer before any worker starts, and time the store's bulk
write rather than the map-reduce. (Each 50 KB chunk would also stay inline in the task row: the blob
cache starts at 64 KB.) The member results do go through the store, as they must.

Chord overhead: in this process, no pool: ``M`` no-op members plus a no-op body sent as a chord and
drained with ``run_until_empty()``, against the same ``M`` no-op tasks sent with ``enqueue_many``
and drained the same way. The difference per member is the store time the chord adds (dependency
rows, group rows, the count-down in each member's ``complete()``, the body reading ``M`` results).
"""

from __future__ import annotations

import itertools
import random
import time
from pathlib import Path
from typing import Any

import bench_tasks
from _common import Context, Figure, median, remove

from liteq import LiteQ, chord

TEXT_MB = 50
N_CHUNKS = 1_000
VOCABULARY = 20_000
SEED = 20240501
N_OVERHEAD = 1_000


def generate(path: Path, size: int, seed: int = SEED) -> None:
    """Write ``size`` bytes (about) of deterministic text to ``path``."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab: list[str] = []
    seen: set[str] = set()
    while len(vocab) < VOCABULARY:
        word = "".join(rng.choice(letters) for _ in range(rng.randint(2, 10)))
        if word not in seen:
            seen.add(word)
            vocab.append(word)
    cum, total = [], 0.0
    for rank in range(len(vocab)):
        total += 1 / (rank + 1)
        cum.append(total)
    written = 0
    with open(path, "w", encoding="ascii") as f:
        while written < size:
            line = " ".join(rng.choices(vocab, cum_weights=cum, k=20_000)) + "\n"
            f.write(line)
            written += len(line)


def chunk_bounds(path: Path, n: int) -> list[tuple[int, int]]:
    """``n`` byte ranges covering the file, each ending at whitespace."""
    data = path.read_bytes()
    size = len(data)
    cuts = [0]
    for i in range(1, n):
        pos = max(i * size // n, cuts[-1])
        while pos < size and not data[pos : pos + 1].isspace():
            pos += 1
        cuts.append(pos)
    cuts.append(size)
    return list(itertools.pairwise(cuts))


def _single(path: Path, bounds: list[tuple[int, int]]) -> tuple[float, float, dict[str, int]]:
    """Seconds of the map phase and of the merge, and the counts, in this process."""
    started = time.perf_counter()
    parts = [bench_tasks.count_words(str(path), a, b) for a, b in bounds]
    mapped = time.perf_counter()
    counts = bench_tasks.merge_counts(parts)
    return mapped - started, time.perf_counter() - mapped, counts


def bench_wordcount(ctx: Context) -> list[Figure]:
    n = ctx.n(N_CHUNKS)
    size = max(1, int(TEXT_MB * min(ctx.scale, 1.0) * 2**20))
    work = ctx.fresh("wordcount")
    text = work / "text.txt"
    started = time.perf_counter()
    generate(text, size)
    bounds = chunk_bounds(text, n)
    ctx.log(f"word count: {text.stat().st_size / 2**20:.0f} MB generated in {time.perf_counter() - started:.1f}s")
    store = work / "store"
    app = LiteQ(store)
    count = app.task(bench_tasks.count_words)
    merge = app.task(bench_tasks.merge_counts)
    singles, maps, merges, pooled, ratios = [], [], [], [], []
    expected: dict[str, int] | None = None
    with app.workers(concurrency=2):
        chord([count.s(str(text), 0, 10)], merge.s()).delay().get(timeout=60)  # children up
        for round_ in range(ctx.repeats):
            m, r, counts = _single(text, bounds)
            expected = expected or counts
            t0 = time.perf_counter()
            result = chord([count.s(str(text), a, b) for a, b in bounds], merge.s()).delay()
            got = result.get(timeout=600)
            seconds = time.perf_counter() - t0
            assert got == expected, "the chord's counts differ from the single-process counts"
            singles.append(m + r)
            maps.append(m)
            merges.append(r)
            pooled.append(seconds)
            ratios.append(seconds / (m + r))
            ctx.log(
                f"word count round {round_ + 1}: one process {m + r:.2f}s (map {m:.2f}s + merge {r:.2f}s), "
                f"chord on 2 workers {seconds:.2f}s ({ratios[-1]:.2f}x)"
            )
    app.close()
    remove(work)
    single, mapped, merged, chord_s, ratio = map(median, (singles, maps, merges, pooled, ratios))
    bound = mapped / 2 + merged
    group = f"word count of {size / 2**20:.0f} MB in {n:,} chunks: chord of {n:,} + 1 merge on 2 workers"
    return [
        Figure(
            group,
            "chord on app.workers(2), delay() to the merged counts",
            chord_s * 1000,
            "ms",
            reference=f"one process {single * 1000:,.0f} ms ({ratio:.2f}x)",
            target="< 0.6x one process",
            ok=ratio < 0.6,
            runs=[x * 1000 for x in pooled],
            extra={"ratios": ratios, "amdahl_bound_ms": bound * 1000},
        ),
        Figure(
            group,
            "one process: map (count each chunk) + merge",
            single * 1000,
            "ms",
            reference=f"map {mapped * 1000:,.0f} ms + merge {merged * 1000:,.0f} ms",
            runs=[x * 1000 for x in singles],
        ),
        Figure(
            group,
            "ideal on 2 processes: map / 2 + merge (no transfer, no store)",
            bound * 1000,
            "ms",
            reference=f"{bound / single:.2f}x one process",
            note="Amdahl: the merge is serial",
        ),
    ]


def _drain_plain(ctx: Context, m: int) -> float:
    path = ctx.fresh("chord-plain")
    app = LiteQ(path)
    nothing = app.task(bench_tasks.nothing)
    app.enqueue_many([nothing.s(-1)])
    app.run_until_empty()  # connection, schema, statement cache
    started = time.perf_counter()
    app.enqueue_many([nothing.s(i) for i in range(m)])
    ran = app.run_until_empty()
    seconds = time.perf_counter() - started
    assert ran == m, ran
    app.close()
    remove(path)
    return seconds


def _drain_chord(ctx: Context, m: int) -> float:
    path = ctx.fresh("chord-chord")
    app = LiteQ(path)
    nothing = app.task(bench_tasks.nothing)
    app.enqueue_many([nothing.s(-1)])
    app.run_until_empty()
    started = time.perf_counter()
    result: Any = chord([nothing.s(i) for i in range(m)], nothing.s()).delay()
    ran = app.run_until_empty()
    seconds = time.perf_counter() - started
    assert ran == m + 1, ran
    assert result.ready()
    app.close()
    remove(path)
    return seconds


def bench_overhead(ctx: Context) -> list[Figure]:
    m = ctx.n(N_OVERHEAD)
    plain, chorded, per = [], [], []
    for round_ in range(max(ctx.repeats, 5)):  # cheap; a difference of two noisy figures
        p = _drain_plain(ctx, m)
        c = _drain_chord(ctx, m)
        plain.append(p)
        chorded.append(c)
        per.append((c - p) / m * 1e6)
        ctx.log(
            f"chord overhead round {round_ + 1}: plain {p * 1000:.0f} ms, chord {c * 1000:.0f} ms, {per[-1]:.1f} us/member"
        )
    p, c, o = median(plain), median(chorded), median(per)
    group = f"chord overhead: {m:,} no-op members + body vs {m:,} plain no-op tasks, in-process run_until_empty()"
    return [
        Figure(
            group,
            "store time the chord adds per member",
            o,
            "us/op",
            reference=f"plain {p / m * 1e6:.1f} us/task, chord {c / m * 1e6:.1f} us/member",
            target="< 100 us per member",
            ok=o < 100,
            runs=per,
        )
    ]


def run(ctx: Context) -> list[Figure]:
    """The word-count chord and the chord's overhead per member."""
    return bench_wordcount(ctx) + bench_overhead(ctx)
