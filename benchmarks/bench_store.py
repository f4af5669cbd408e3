"""Store benchmarks (issue 2): enqueue, batch enqueue, drain, and cost at a 1,000,000-task backlog.

Every figure is measured in a fresh directory under ``ctx.workdir`` (the disk a user's store lives
on), each measurement ``ctx.repeats`` times with the median reported, and liteq is interleaved
with its references in every round so that a noisy neighbour slows them alike.

References:

- *raw INSERT+COMMIT*: Python's ``sqlite3`` inserting one comparable row (text id, a few columns,
  a 16-byte blob) per ``BEGIN IMMEDIATE``/``COMMIT`` in WAL at the same ``synchronous`` setting, ids
  and rows prepared before the clock starts. This is the ceiling the issue sets targets against.
- *raw, liteq's schema*: the same loop inserting liteq's own row into liteq's own table and indexes
  (informational): the SQLite floor of liteq's schema, which shows how much of the gap to the
  ceiling is Python and how much is the extra indexes every task row must update.
- *SqliteHuey*: Huey 3 enqueueing the same no-op task (``task(i)``), default settings, and with
  ``fsync=True`` beside ``durability="full"``.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from _common import Context, Figure, median, remove, timed

from liteq import LiteQ
from liteq.storage.records import Outcome
from liteq.storage.sqlite import DB_FILENAME
from liteq.storage.states import SUCCEEDED

N_SINGLE = 10_000
N_BATCH = 100_000
RAW_BATCH = 1_000
N_DRAIN = 10_000
BACKLOG_SMALL = 10
BACKLOG_LARGE = 1_000_000
BUILD_CHUNK = 50_000
SCALE_OPS = 2_000

SYNC = {"normal": "NORMAL", "full": "FULL"}

# The comparable raw row: a text id (unique), a few columns, a small blob.
RAW_SCHEMA = (
    "CREATE TABLE tasks (seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, name TEXT NOT NULL, "
    "queue TEXT NOT NULL, state TEXT NOT NULL, run_at REAL NOT NULL, payload BLOB)"
)
RAW_INSERT = "INSERT INTO tasks (id, name, queue, state, run_at, payload) VALUES (?,?,?,?,?,?)"
RAW_PAYLOAD = bytes(range(16))
# liteq's own INSERT (storage/sqlite.py), for the schema-floor reference.
LITEQ_INSERT = (
    "INSERT INTO tasks (id, name, queue, priority, state, run_at, expires_at, enqueued_at, "
    "max_attempts, idempotency_key, payload, payload_ref, result_ttl, parent_id) "
    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
)


def _noop(i: int) -> None:
    return None


def _app(path: Path, durability: str = "normal") -> tuple[LiteQ, Any]:
    app = LiteQ(path, durability=durability)
    return app, app.task(name="bench.noop")(_noop)


def _ids(n: int) -> list[str]:
    # Time-ordered 32-hex-digit ids, like liteq's, so the raw id index also grows at its right edge.
    base = int(time.time() * 1000)
    return [f"{base:012x}{i:020x}" for i in range(n)]


def _raw_conn(path: Path, sync: str, schema: str | None = RAW_SCHEMA) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={sync}")
    if schema:
        conn.execute(schema)
    return conn


# -- enqueue one at a time ------------------------------------------------------------------------


def _raw_single(ctx: Context, n: int, sync: str) -> float:
    path = ctx.fresh(f"raw-single-{sync.lower()}")
    conn = _raw_conn(path / "raw.sqlite3", sync)
    now = time.time()
    rows = [(i, "bench.noop", "default", "pending", now, RAW_PAYLOAD) for i in _ids(n)]

    def go() -> None:
        for row in rows:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(RAW_INSERT, row)
            conn.execute("COMMIT")

    seconds = timed(go)
    conn.close()
    remove(path)
    return n / seconds


def _raw_liteq_schema_single(ctx: Context, n: int, durability: str) -> float:
    path = ctx.fresh(f"raw-schema-{durability}")
    app, _ = _app(path, durability)
    payload = app.serializer.dumps({"v": 1, "a": [0], "k": {}, "m": {}})
    app.close()
    conn = _raw_conn(path / DB_FILENAME, SYNC[durability], schema=None)
    now = time.time()
    rows = [
        (i, "bench.noop", "default", 0, "pending", now, None, now, 3, None, payload, None, None, None) for i in _ids(n)
    ]

    def go() -> None:
        for row in rows:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(LITEQ_INSERT, row)
            conn.execute("COMMIT")

    seconds = timed(go)
    conn.close()
    remove(path)
    return n / seconds


def _liteq_single(ctx: Context, n: int, durability: str) -> float:
    path = ctx.fresh(f"liteq-single-{durability}")
    app, noop = _app(path, durability)
    noop.delay(-1)  # open the connection before the clock starts, as the raw loop does

    def go() -> None:
        for i in range(n):
            noop.delay(i)

    seconds = timed(go)
    assert app.storage.counts()["default"]["pending"] == n + 1
    app.close()
    remove(path)
    return n / seconds


def _huey_single(ctx: Context, n: int, variant: str) -> tuple[float, int]:
    from huey import SqliteHuey
    from huey.storage import SqliteStorage as HueyStorage

    class NormalSyncStorage(HueyStorage):  # type: ignore[misc]
        # Huey has no synchronous=NORMAL option (fsync=False means OFF): set it by hand.
        def _create_connection(self) -> sqlite3.Connection:
            conn = super()._create_connection()
            conn.execute("PRAGMA synchronous=NORMAL")
            return conn  # type: ignore[no-any-return]

    path = ctx.fresh(f"huey-{variant}")
    options: dict[str, Any] = {"filename": str(path / "huey.db")}
    if variant == "fsync":
        options["fsync"] = True
    elif variant == "normal":
        options["storage_class"] = NormalSyncStorage
    huey = SqliteHuey(name="bench", **options)
    noop = huey.task(name="noop")(_noop)
    noop(-1)
    sync = huey.storage.conn.execute("PRAGMA synchronous").fetchone()[0]

    def go() -> None:
        for i in range(n):
            noop(i)

    seconds = timed(go)
    assert huey.pending_count() == n + 1
    huey.storage.close()
    remove(path)
    return n / seconds, sync


def bench_single(ctx: Context) -> list[Figure]:
    n = ctx.n(N_SINGLE)
    figures = []
    sync_names = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}
    for durability in ("normal", "full"):
        sync = SYNC[durability]
        huey_variant = "default" if durability == "normal" else "fsync"
        raw, schema, ours, huey, huey_normal = [], [], [], [], []
        huey_sync = -1
        for round_ in range(ctx.repeats):
            raw.append(_raw_single(ctx, n, sync))
            schema.append(_raw_liteq_schema_single(ctx, n, durability))
            ours.append(_liteq_single(ctx, n, durability))
            rate, huey_sync = _huey_single(ctx, n, huey_variant)
            huey.append(rate)
            if durability == "normal":
                huey_normal.append(_huey_single(ctx, n, "normal")[0])
            ctx.log(
                f"single enqueue {durability} round {round_ + 1}: raw {raw[-1]:,.0f}/s, liteq schema "
                f"{schema[-1]:,.0f}/s, liteq {ours[-1]:,.0f}/s, huey {huey[-1]:,.0f}/s"
            )
        r, s, o, h = median(raw), median(schema), median(ours), median(huey)
        group = f"enqueue {n:,} x delay(), durability={durability!r}"
        figures.append(
            Figure(
                group,
                "liteq delay()",
                o,
                "tasks/s",
                reference=f"raw INSERT+COMMIT {r:,.0f}/s ({o / r:.0%})",
                target=f">= 50% of raw ({r / 2:,.0f}/s)",
                ok=o >= r / 2,
                runs=ours,
                extra={"raw": r, "ratio_to_raw": o / r, "huey": h, "ratio_to_huey": o / h},
            )
        )
        figures.append(Figure(group, f"raw INSERT+COMMIT, synchronous={sync}", r, "tasks/s", runs=raw, note="ceiling"))
        figures.append(
            Figure(
                group,
                "raw INSERT+COMMIT of liteq's row, table and indexes",
                s,
                "tasks/s",
                reference=f"{s / r:.0%} of raw",
                runs=schema,
                note="the SQLite floor of liteq's schema",
            )
        )
        label = "SqliteHuey, default settings" if durability == "normal" else "SqliteHuey, fsync=True"
        figures.append(
            Figure(
                group,
                f"{label} (synchronous={sync_names.get(huey_sync, huey_sync)})",
                h,
                "tasks/s",
                reference=f"liteq is {o / h:.1f}x",
                runs=huey,
            )
        )
        if huey_normal:
            hn = median(huey_normal)
            figures.append(
                Figure(
                    group,
                    "SqliteHuey, synchronous=NORMAL (patched in; Huey has no option for it)",
                    hn,
                    "tasks/s",
                    reference=f"liteq is {o / hn:.1f}x",
                    runs=huey_normal,
                )
            )
    return figures


# -- batch enqueue --------------------------------------------------------------------------------


def _raw_batch(ctx: Context, n: int) -> float:
    path = ctx.fresh("raw-batch")
    conn = _raw_conn(path / "raw.sqlite3", "NORMAL")
    now = time.time()
    rows = [(i, "bench.noop", "default", "pending", now, RAW_PAYLOAD) for i in _ids(n)]

    def go() -> None:
        for start in range(0, n, RAW_BATCH):
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(RAW_INSERT, rows[start : start + RAW_BATCH])
            conn.execute("COMMIT")

    seconds = timed(go)
    conn.close()
    remove(path)
    return n / seconds


def _liteq_batch(ctx: Context, n: int) -> tuple[float, float]:
    path = ctx.fresh("liteq-batch")
    app, noop = _app(path)
    noop.delay(-1)
    started = time.perf_counter()
    signatures = [noop.s(i) for i in range(n)]
    built = time.perf_counter()
    results = app.enqueue_many(signatures)
    done = time.perf_counter()
    assert len(results) == n
    app.close()
    remove(path)
    return n / (done - built), n / (done - started)


def bench_batch(ctx: Context) -> list[Figure]:
    n = ctx.n(N_BATCH)
    raw, call, whole = [], [], []
    for round_ in range(ctx.repeats):
        raw.append(_raw_batch(ctx, n))
        a, b = _liteq_batch(ctx, n)
        call.append(a)
        whole.append(b)
        ctx.log(f"batch round {round_ + 1}: raw {raw[-1]:,.0f}/s, enqueue_many {a:,.0f}/s ({b:,.0f}/s with .s())")
    r, c, w = median(raw), median(call), median(whole)
    group = f"batch enqueue of {n:,} tasks, durability='normal'"
    return [
        Figure(
            group,
            "app.enqueue_many(signatures)",
            c,
            "tasks/s",
            reference=f"raw executemany {r:,.0f}/s ({c / r:.0%})",
            target=">= 100,000 tasks/s",
            ok=c >= 100_000,
            runs=call,
            note="the enqueue_many call on a prepared list of task.s(i)",
        ),
        Figure(
            group,
            "app.enqueue_many([task.s(i) for i in ...]) incl. building the signatures",
            w,
            "tasks/s",
            reference=f"raw executemany {r:,.0f}/s ({w / r:.0%})",
            runs=whole,
        ),
        Figure(group, f"raw executemany, {RAW_BATCH:,} rows per transaction", r, "tasks/s", runs=raw, note="ceiling"),
    ]


# -- drain ----------------------------------------------------------------------------------------


def bench_drain(ctx: Context) -> list[Figure]:
    n = ctx.n(N_DRAIN)
    rates = []
    for round_ in range(ctx.repeats):
        path = ctx.fresh("liteq-drain")
        app, noop = _app(path)
        app.enqueue_many([noop.s(i) for i in range(n)])
        ran = 0

        def go(app: LiteQ = app) -> None:
            nonlocal ran
            ran = app.run_until_empty()

        seconds = timed(go)
        assert ran == n, ran
        app.close()
        remove(path)
        rates.append(n / seconds)
        ctx.log(f"drain round {round_ + 1}: {rates[-1]:,.0f} tasks/s")
    return [
        Figure(
            f"in-process drain of {n:,} no-op tasks",
            "app.run_until_empty()",
            median(rates),
            "tasks/s",
            reference="no target in the issue",
            runs=rates,
            note="claim 16 per transaction, run, complete 16 per transaction",
        )
    ]


# -- cost at a large backlog ----------------------------------------------------------------------


def _build_backlog(ctx: Context, app: LiteQ, noop: Any, n: int) -> float:
    started = time.perf_counter()
    done = 0
    while done < n:
        k = min(BUILD_CHUNK, n - done)
        app.enqueue_many([noop.s(i) for i in range(done, done + k)])
        done += k
        if done % 200_000 == 0 or done == n:
            ctx.log(f"backlog: {done:,} of {n:,} queued")
    return time.perf_counter() - started


def _cycles(app: LiteQ, noop: Any, ops: int) -> tuple[float, float]:
    """Mean µs of one ``delay()`` and of one single-task claim + complete, the backlog held steady."""
    storage = app.storage
    result = app.serializer.dumps(None)
    clock = time.perf_counter
    enqueue = claim = 0.0
    for i in range(ops):
        t0 = clock()
        noop.delay(i)
        t1 = clock()
        (task,) = storage.claim("bench-worker", ["default"], limit=1, lease=60.0)
        storage.complete([Outcome(task.id, task.lease_token, SUCCEEDED, result=result)])
        t2 = clock()
        enqueue += t1 - t0
        claim += t2 - t1
    return enqueue / ops * 1e6, claim / ops * 1e6


def bench_scale(ctx: Context) -> list[Figure]:
    large = ctx.n(BACKLOG_LARGE, floor=1_000)
    ops = ctx.n(SCALE_OPS)
    small_dir, large_dir = ctx.fresh("backlog-small"), ctx.fresh("backlog-large")
    small_app, small_noop = _app(small_dir)
    large_app, large_noop = _app(large_dir)
    small_app.enqueue_many([small_noop.s(i) for i in range(BACKLOG_SMALL)])
    build = _build_backlog(ctx, large_app, large_noop, large)
    size = sum(os.path.getsize(large_dir / f) for f in os.listdir(large_dir) if f.startswith(DB_FILENAME))
    # Warm both stores (connections, statement cache, the pages claim and enqueue touch).
    _cycles(small_app, small_noop, 200)
    _cycles(large_app, large_noop, 200)
    rounds = max(ctx.repeats, 5)  # cheap, and the ratio of two noisy figures needs the extra rounds
    small_enq, small_claim, large_enq, large_claim = [], [], [], []
    for round_ in range(rounds):
        a, b = _cycles(small_app, small_noop, ops)
        c, d = _cycles(large_app, large_noop, ops)
        small_enq.append(a)
        small_claim.append(b)
        large_enq.append(c)
        large_claim.append(d)
        ctx.log(f"scale round {round_ + 1}: enqueue {a:.1f} vs {c:.1f} us, claim+complete {b:.1f} vs {d:.1f} us")
    counts = large_app.storage.counts()["default"]
    assert counts["pending"] == large, counts
    small_app.close()
    large_app.close()
    remove(small_dir)
    remove(large_dir)
    group = f"cost per op with {large:,} tasks queued vs {BACKLOG_SMALL}"
    figures = []
    for name, small, big in (
        ("delay() (enqueue + commit)", small_enq, large_enq),
        ("claim(limit=1) + complete()", small_claim, large_claim),
    ):
        s, b = median(small), median(big)
        figures.append(
            Figure(
                group,
                name,
                b,
                "us/op",
                reference=f"{s:.1f} us/op at {BACKLOG_SMALL} queued ({b / s:.2f}x)",
                target=f"<= 1.20x the cost at {BACKLOG_SMALL} ({1.2 * s:.1f} us)",
                ok=b <= 1.2 * s,
                runs=big,
                extra={"at_small": s, "runs_small": small, "ratio": b / s},
            )
        )
    figures.append(
        Figure(
            group,
            f"building the backlog with enqueue_many, {BUILD_CHUNK:,} per call",
            large / build,
            "tasks/s",
            reference=f"store file {size / 2**20:,.0f} MiB",
            runs=[large / build],
        )
    )
    return figures


def run(ctx: Context) -> list[Figure]:
    """Every store benchmark, in the order of the issue."""
    figures: list[Figure] = []
    for bench in (bench_single, bench_batch, bench_drain, bench_scale):
        ctx.log(f"{bench.__name__} ...")
        figures += bench(ctx)
    return figures
