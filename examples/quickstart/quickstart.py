"""liteq quickstart: define tasks, start a local worker pool, enqueue, read results, see a failure
and a retry.

Run with `make demo` (or `python examples/quickstart/quickstart.py` from any directory). It keeps
its store in examples/quickstart/liteq-data/store (or $LITEQ_EXAMPLE_DIR/store), empties it at the
start of every run, and ends by itself.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

from liteq import LiteQ, Retry, TaskFailed, current

# The store's path is computed from this file, not the working directory, so the pool's child
# processes (which import this script again) open the very same store.
DATA = Path(os.environ.get("LITEQ_EXAMPLE_DIR") or Path(__file__).resolve().parent / "liteq-data")
app = LiteQ(DATA / "store")


@app.task
def add(x: int, y: int) -> int:
    """A plain task: its return value is stored as the result."""
    return x + y


@app.task(retries=3, retry_backoff=0.05)
def flaky(n: int) -> str:
    """Fails on its first attempt, then succeeds: shows automatic retries."""
    if current().attempt == 1:
        raise ConnectionError(f"upstream not ready for item {n}")
    return f"item {n} fetched on attempt {current().attempt}"


@app.task
def count_words(text: str) -> int:
    """Reports progress while it works."""
    words = text.split()
    for i, _ in enumerate(words, 1):
        current().progress(i / len(words), f"{i}/{len(words)} words")
    return len(words)


@app.task
def divide(a: float, b: float) -> float:
    """Raises for b == 0: the failure travels back to the caller as TaskFailed."""
    return a / b


@app.task(retries=5)
def poll_until_ready(job: str) -> str:
    """Asks for another attempt explicitly with Retry(countdown=...)."""
    if current().attempt < 3:
        raise Retry(countdown=0.02)
    return f"{job} ready after {current().attempt} checks"


def main() -> None:
    """Enqueue a few jobs, run them, print what came back."""
    app.purge()  # start from an empty store on every demo run
    results = [add.delay(i, random.randint(1, 9)) for i in range(5)]
    retried = flaky.delay(7)
    words = count_words.delay("liteq keeps tasks and results in a local store")
    bad = divide.delay(1, 0)
    polled = poll_until_ready.delay("report")

    # The process pool: two child processes, ready when the block starts, stopped gracefully at its end.
    with app.workers(concurrency=2):
        print("sums:", [r.get(timeout=30) for r in results])
        print("retry:", retried.get(timeout=30))
        print("words:", words.get(timeout=30), "progress:", words.progress)
        print("poll:", polled.get(timeout=30))
        try:
            bad.get(timeout=30)
        except TaskFailed as exc:
            print(f"failure: {exc.type}: {exc.message} (state={bad.state})")
    print("stats:", app.stats()["states"])
    print("quickstart done")
    app.close()


if __name__ == "__main__":
    main()
