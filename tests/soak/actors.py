"""The soak's processes besides ``liteq worker`` and ``liteq scheduler``: ``python -m
tests.soak.actors <role> ARGS``.

- ``producer INDEX KEYS RATE T0 SEED``: sends keys ``p<INDEX>-0`` … ``p<INDEX>-<KEYS-1>``, key ``i``
  not before ``T0 + i / RATE``. Plain tasks carry the key as their idempotency key; chains and
  chords (whose steps cannot) are sent once. It logs ``send`` before and ``told`` after each call
  (:mod:`tests.soak.oracle`). A restarted producer reads those logs, goes back a few plain keys
  before the first one it was not told about (their retry must return the first id), and skips
  canvas keys it already sent. A store error (busy, full) is retried after a short backoff, like
  a careful producer would; after a lost connection (cluster) only a plain, idempotent call is.
- ``pool-host CONCURRENCY START_METHOD [CLOCK_FILE]``: ``app.workers()`` (START_METHOD ``default``:
  the pool's own choice, a zygote where it can) in this process until
  SIGTERM; exits 3 at once if the pool's thread dies while it should run. With CLOCK_FILE (and a
  pool that takes an injected clock), the pool's wall clock is stepped by the offset in that file.
- ``hold-lock DB SECONDS TIMES``: ``BEGIN EXCLUSIVE`` on the database file for SECONDS; writes the
  moments it held the lock to TIMES.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import random
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from liteq import StorageError, StoreUnavailable, chain, chord
from tests.faultprocs import append_line

#: Plain tasks, chains and chords among the keys (the rest are plain tasks).
CHAIN_SHARE, CHORD_SHARE = 0.08, 0.08
#: Plain tasks that run for a second or so instead of a few milliseconds.
LONG_SHARE = 0.1
#: Chord header size and chain length.
CHORD_MEMBERS, CHAIN_STEPS = 4, 3
#: How many acknowledged plain keys a restarted producer sends again.
MAX_RESEND = 12


def shape_of(seed: int, key: str) -> tuple[str, random.Random]:
    """What key ``key`` sends (``plain``, ``chain`` or ``chord``), and a generator for its details."""
    rng = random.Random(f"{seed}:{key}")
    u = rng.random()
    return ("chain" if u < CHAIN_SHARE else "chord" if u < CHAIN_SHARE + CHORD_SHARE else "plain"), rng


def _send(key: str, seed: int) -> list[str]:
    from tests.soak.soak_app import first, square, step, total, work

    shape, rng = shape_of(seed, key)
    if shape == "plain":
        # Mostly short tasks, and some long enough that kills and pauses catch them running.
        ms = rng.randint(300, 1500) if rng.random() < LONG_SHARE else rng.randint(5, 60)
        r = work.apply_async((ms, rng.random() < 0.05), {"key": key}, idempotency_key=key)
        return [r.id]
    if shape == "chain":
        last = chain(first.s(rng.randint(0, 9), key=key), *(step.s(i, key=key) for i in range(1, CHAIN_STEPS))).delay()
        ids = []
        node = last
        while node is not None:
            ids.append(node.id)
            node = node.parent
        return ids[::-1]
    body = chord([square.s(i, key=key) for i in range(CHORD_MEMBERS)], total.s(key=key)).delay()
    return [*(r.id for r in body.parent.results), body.id]


def producer(index: int, keys: int, rate: float, t0: float, seed: int) -> None:
    """See the module doc."""
    from tests.soak import oracle

    directory = os.environ["LITEQ_SOAK_ORACLE"]
    log = os.path.join(directory, f"told-{os.getpid()}.log")
    while True:  # a producer restarted while the store is locked or full waits to open it
        try:
            import tests.soak.soak_app  # noqa: F401  opens the store
        except StorageError as exc:
            print(f"opening the store: {type(exc).__name__}: {exc}; retrying", file=sys.stderr, flush=True)
            time.sleep(0.2)
            continue
        break
    told = oracle.read_told(directory)
    names = [f"p{index}-{i}" for i in range(keys)]
    first_untold = next((i for i, k in enumerate(names) if k not in told or not told[k].ids), keys)
    start = max(0, first_untold - random.Random(f"{seed}:{index}:{os.getpid()}").randint(0, MAX_RESEND))
    for i in range(start, keys):
        key = names[i]
        shape, _ = shape_of(seed, key)
        if shape != "plain" and key in told:
            continue  # sent before (maybe committed): only an idempotent call may be repeated
        wait = t0 + i / rate - time.time()
        if wait > 0:
            time.sleep(wait)
        backoff = 0.05
        while True:
            append_line(log, f"send {key} {time.time():.6f} {shape}")
            try:
                ids = _send(key, seed)
            except StoreUnavailable as exc:
                # The reply was lost: the call may have committed. Only an idempotent call may be sent
                # again; a chain or chord is given up (the checks accept it stored whole or not at all).
                if shape != "plain":
                    print(f"{key}: {exc}; not sent again", file=sys.stderr, flush=True)
                    ids = []
                    break
                print(f"{key}: {exc}; retrying", file=sys.stderr, flush=True)
                time.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
                continue
            except StorageError as exc:  # busy, full: nothing was written
                print(f"{key}: {type(exc).__name__}: {exc}; retrying", file=sys.stderr, flush=True)
                time.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
                continue
            break
        if ids:
            append_line(log, f"told {key} {time.time():.6f} {' '.join(ids)}")


def pool_takes_a_clock() -> bool:
    """Whether ``WorkerPool`` accepts an injected wall clock (``clock=``)."""
    from liteq.pool import WorkerPool

    return "clock" in inspect.signature(WorkerPool).parameters


def stepped_clock(path: str) -> Callable[[], float]:
    """The wall clock plus the offset (seconds) written in ``path`` by the nemesis: a clock step."""
    seen = {"at": -1.0, "offset": 0.0}

    def clock() -> float:
        mono = time.monotonic()
        if mono - seen["at"] > 0.05:  # read the offset at most every 50 ms
            seen["at"] = mono
            with contextlib.suppress(OSError, ValueError):
                seen["offset"] = float(Path(path).read_text() or 0)
        return time.time() + seen["offset"]

    return clock


def pool_host(concurrency: int, start_method: str, clock_file: str | None = None) -> int:
    """See the module doc."""
    from tests.soak.soak_app import app

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    options: dict[str, Any] = {}
    if clock_file and pool_takes_a_clock():
        options["clock"] = stepped_clock(clock_file)
    method = None if start_method == "default" else start_method
    with app.workers(concurrency, start_method=method, shutdown_timeout=20.0, **options) as pool:
        name = f"liteq-pool-{pool.id}"
        while not stop.wait(0.2):
            if not any(t.name == name for t in threading.enumerate()):
                logging.getLogger("tests.soak").error("the pool's thread is gone while it should run")
                pool.join(0)  # raises the error that stopped it, if any
                return 3
    return 0


def hold_lock(db: str, seconds: float, times: str) -> None:
    """See the module doc."""
    conn = sqlite3.connect(db, isolation_level=None, timeout=30.0)
    try:
        conn.execute("BEGIN EXCLUSIVE")
        conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('soak-lock-holder', 'x')")
        locked = time.time()
        time.sleep(seconds)  # holding the lock is the fault
        conn.execute("ROLLBACK")
        append_line(times, f"{locked:.6f} {time.time():.6f}")
    finally:
        conn.close()


def main(argv: list[str]) -> int:
    """Dispatch on the role (see the module doc)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s")
    role, args = argv[0], argv[1:]
    if role == "producer":
        producer(int(args[0]), int(args[1]), float(args[2]), float(args[3]), int(args[4]))
        return 0
    if role == "pool-host":
        return pool_host(int(args[0]), args[1], args[2] if len(args) > 2 else None)
    if role == "hold-lock":
        hold_lock(args[0], float(args[1]), args[2])
        return 0
    raise SystemExit(f"unknown role {role!r}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
