"""Word count over a generated corpus with a chord: map over chunks in parallel, reduce once.

1. Generate a corpus of ``--size-mb`` megabytes (seeded, so every run builds the same text).
2. Cut it into chunks at line boundaries; each chunk is one ``count_chunk`` task that reads its
   byte range from the file (tasks get a path and offsets, never megabytes of text).
3. A chord runs the chunk tasks on a worker pool and calls ``merge_counts`` once with the list of
   their results.
4. Count the same file in this process with ``collections.Counter`` and compare.

Files go to examples/map_reduce/liteq-data (or $LITEQ_EXAMPLE_DIR): the store and corpus.txt.
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import time
from pathlib import Path

from liteq import LiteQ, chord

DATA = Path(os.environ.get("LITEQ_EXAMPLE_DIR") or Path(__file__).resolve().parent / "liteq-data")

app = LiteQ(DATA / "store")


@app.task
def count_words(path: str, start: int, end: int) -> dict[str, int]:
    """Count the words in bytes [start, end) of the file (the map step)."""
    with open(path, "rb") as f:
        f.seek(start)
        text = f.read(end - start).decode()
    return dict(collections.Counter(text.split()))


@app.task
def merge_counts(partials: list[dict[str, int]]) -> dict[str, int]:
    """Add up the chunks' counts (the reduce step: the chord's callback, run once)."""
    total: collections.Counter[str] = collections.Counter()
    for part in partials:
        total.update(part)
    return dict(total)


def make_corpus(path: Path, size_mb: float, seed: int = 42) -> int:
    """Write about ``size_mb`` MB of lines of random words (Zipf-like frequencies); return bytes."""
    rng = random.Random(seed)
    syllables = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "qua", "bri", "dor"]
    vocab = sorted({"".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(3000)})
    weights = [1 / (rank + 1) for rank in range(len(vocab))]
    target = int(size_mb * 1_000_000)
    written = 0
    with open(path, "w") as f:
        while written < target:
            line = " ".join(rng.choices(vocab, weights, k=12)) + "\n"
            f.write(line)
            written += len(line)
    return written


def chunk_ranges(path: Path, chunk_bytes: int) -> list[tuple[int, int]]:
    """Byte ranges of about ``chunk_bytes`` each, cut just after a newline."""
    size = path.stat().st_size
    ranges = []
    with open(path, "rb") as f:
        start = 0
        while start < size:
            f.seek(min(start + chunk_bytes, size))
            f.readline()  # move on to the end of the current line
            end = min(f.tell(), size)
            ranges.append((start, end))
            start = end
    return ranges


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mb", type=float, default=2.0, help="corpus size in MB (default 2)")
    parser.add_argument("--chunk-kb", type=int, default=256, help="bytes per map task, in KB (default 256)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    args = parser.parse_args()

    app.purge()  # start from an empty store on every run
    DATA.mkdir(parents=True, exist_ok=True)
    corpus = DATA / "corpus.txt"
    size = make_corpus(corpus, args.size_mb)
    ranges = chunk_ranges(corpus, args.chunk_kb * 1024)
    print(f"corpus: {size / 1e6:.1f} MB in {len(ranges)} chunks")

    with app.workers(concurrency=args.workers):
        started = time.perf_counter()
        workflow = chord((count_words.s(str(corpus), a, b) for a, b in ranges), merge_counts.s())
        result = workflow.delay()  # every task of the workflow is stored in one transaction
        counts = result.get(timeout=300)
        pool_seconds = time.perf_counter() - started
        header = result.parent  # the chord's header: one result per chunk
        print(f"chord: {len(header)} map tasks, 1 reduce, {pool_seconds:.2f}s on {args.workers} workers")

    started = time.perf_counter()
    single = collections.Counter(corpus.read_text().split())
    single_seconds = time.perf_counter() - started
    print(f"single process: {single_seconds:.2f}s")

    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:5]
    print(f"{sum(counts.values())} words, {len(counts)} distinct; top 5:")
    for word, n in top:
        print(f"  {word:<12} {n}")
    same = counts == dict(single)
    print(f"chord result matches single-process count: {same}")
    app.close()
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
