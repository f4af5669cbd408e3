"""Process targets for the store fault tests (``tests/test_store_faults.py``).

They are module-level functions taking only picklable arguments, so they run under the ``spawn``
and ``forkserver`` start methods. Each target writes what it observed to files outside the store
under test: a JSON summary at ``out_path`` (``{"error": ...}`` when it raised) and, where the test
needs one, an append-only log with one line per event. Lines are written with one ``O_APPEND``
``write`` each, so concurrent writers never interleave within a line and a SIGKILL loses at most
the line being written.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from liteq import LiteQ
from liteq.storage.records import Outcome
from liteq.storage.sqlite import SqliteStorage

#: The name every fault-test task is registered under; no worker ever imports it to run it.
TASK_NAME = "faults.noop"
#: The queue every fault-test task goes to.
QUEUE = "default"


def noop(i: int) -> int:
    """The registered task; the fault tests claim and complete through the store, never run it."""
    return i


def append_line(path: str, line: str) -> None:
    """Append one line to ``path`` in a single ``O_APPEND`` write (atomic between processes)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line.rstrip("\n") + "\n").encode())
    finally:
        os.close(fd)


def _write_json(path: str, value: Any) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(value, f)
    os.replace(tmp, path)


def _guarded(out_path: str, body: Callable[[], dict[str, Any]]) -> None:
    """Run ``body``; write its summary, or the exception it raised, to ``out_path``."""
    try:
        summary = body()
    except BaseException as exc:
        _write_json(
            out_path,
            {"error": f"{type(exc).__module__}.{type(exc).__qualname__}: {exc}", "traceback": traceback.format_exc()},
        )
        sys.exit(1)
    _write_json(out_path, summary)


def _app(store_dir: str, durability: str = "normal") -> tuple[LiteQ, Any]:
    app = LiteQ(store_dir, durability=durability)
    return app, app.task(name=TASK_NAME)(noop)


# -- 10 producers and 4 claimers ---------------------------------------------------------------------


def produce(store_dir: str, producer: int, count: int, start: Any, out_path: str) -> None:
    """After ``start`` (a barrier), enqueue ``count`` tasks one ``delay()`` at a time, at default
    settings; report the ids told."""

    def body() -> dict[str, Any]:
        app, task = _app(store_dir)
        try:
            app.storage.counts()  # open the connection before the start
            start.wait(30)
            ids = [task.delay(producer * 1_000_000 + i).id for i in range(count)]
        finally:
            app.close()
        return {"ids": ids}

    _guarded(out_path, body)


def consume(
    store_dir: str, owner: str, start: Any, run_log: str, stop_path: str, out_path: str, deadline_s: float
) -> None:
    """Claim and complete until ``stop_path`` exists and nothing is left; log every run to ``run_log``.

    ``stop_path`` is checked *before* a claim, so an empty claim after it appeared means the producers
    had finished and every task was already claimed.
    """

    def body() -> dict[str, Any]:
        store = SqliteStorage(store_dir)
        ran = rejected = 0
        try:
            store.counts()  # open the connection before the start
            start.wait(30)
            deadline = time.monotonic() + deadline_s
            while True:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{owner} still claiming after {deadline_s}s")
                producers_done = os.path.exists(stop_path)
                claimed = store.claim(owner, [QUEUE], limit=8, lease=600.0)
                if not claimed:
                    if producers_done:
                        break
                    store.wait(store.version, 0.02)  # other processes' writes are seen by polling
                    continue
                for c in claimed:
                    append_line(run_log, f"{c.id} {c.attempt} {c.lease_token} {owner}")
                applied = store.complete([Outcome(c.id, c.lease_token, "succeeded", result=b"ok") for c in claimed])
                ran += len(claimed)
                rejected += applied.count(False)
        finally:
            store.close()
        return {"ran": ran, "rejected": rejected}

    _guarded(out_path, body)


# -- 10 claimers racing ------------------------------------------------------------------------------


def race_claim(store_dir: str, owner: str, start: Any, out_path: str, seed: int) -> None:
    """Wait for ``start`` (a barrier), then claim batches of random size until the queue is empty; report the ids."""

    def body() -> dict[str, Any]:
        rng = random.Random(seed)
        store = SqliteStorage(store_dir)
        ids: list[str] = []
        try:
            store.counts()  # open the connection before the race starts
            start.wait(30)
            while claimed := store.claim(owner, [QUEUE], limit=rng.randint(1, 8), lease=600.0):
                ids += [c.id for c in claimed]
        finally:
            store.close()
        return {"ids": ids}

    _guarded(out_path, body)


# -- a process holding the write lock ----------------------------------------------------------------


def hold_lock(db_path: str, mode: str, locked: Any, release: Any, hold_s: float) -> None:
    """Open ``db_path`` raw, ``BEGIN <mode>``, write a row, signal ``locked``; roll back on ``release``."""
    conn = sqlite3.connect(db_path, isolation_level=None, timeout=10.0)
    try:
        conn.execute(f"BEGIN {mode}")
        conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('fault-test-holder', 'x')")
        locked.set()
        release.wait(hold_s)
        conn.execute("ROLLBACK")
    finally:
        conn.close()


# -- producers killed mid-enqueue --------------------------------------------------------------------


def produce_keys(store_dir: str, n: int, batch: int, told_log: str) -> None:
    """Enqueue ``k0..k{n-1}`` in order with idempotency keys, ``batch`` per transaction.

    Each enqueue the producer was told succeeded is logged as ``key id``. A restarted producer starts
    again from ``k0``: keys already stored must come back with their first id and write nothing.
    """
    app, task = _app(store_dir)
    try:
        for start in range(0, n, batch):
            keys = [f"k{i}" for i in range(start, min(start + batch, n))]
            if len(keys) == 1:
                ids = [task.apply_async((start,), idempotency_key=keys[0]).id]
            else:
                sigs = [task.s(int(k[1:])).set(idempotency_key=k) for k in keys]
                ids = [r.id for r in app.enqueue_many(sigs)]
            append_line(told_log, " ".join(f"{k} {i}" for k, i in zip(keys, ids, strict=True)))
    finally:
        app.close()


# -- durable enqueue ---------------------------------------------------------------------------------


def enqueue_then_hang(store_dir: str, durability: str, n: int, told_log: str, hang_s: float) -> None:
    """``delay()`` ``n`` times, logging each id once the call returned, then hang until killed."""
    app, task = _app(store_dir, durability)
    for i in range(n):
        append_line(told_log, task.delay(i).id)
    threading.Event().wait(hang_s)  # the test SIGKILLs us here, with the store still open
    app.close()


def write_while(store_dir: str, busy_timeout: float, started: Any, stop_path: str, out_path: str) -> None:
    """Enqueue one task at a time until ``stop_path`` exists; report how many, the longest single
    enqueue and the first store error (a writer sharing the store with a long purge)."""

    def body() -> dict[str, Any]:
        app = LiteQ(store_dir, busy_timeout=busy_timeout)
        task = app.task(name=TASK_NAME)(noop)
        longest, count, error = 0.0, 0, None
        try:
            app.storage.counts()
            started.set()
            while not os.path.exists(stop_path) and error is None:
                t0 = time.monotonic()
                try:
                    task.delay(count)
                except Exception as exc:  # the test asserts there is none
                    error = f"{type(exc).__name__}: {exc}"
                longest = max(longest, time.monotonic() - t0)
                count += 1
                # A producer's pace, not a wait for state: a writer in a tight loop would starve
                # the purge's own busy handler, which polls.
                time.sleep(0.002)
        finally:
            app.close()
        return {"count": count, "longest": longest, "store_error": error}

    _guarded(out_path, body)
