"""Store fault tests (RELIABILITY.md, "Fault tests to build" → "Store", and G1 durable enqueue).

Each test injects one fault into a real SQLite store — concurrent processes, a foreign write lock, a
full disk, a damaged file, SIGKILLed producers — and checks with an oracle kept *outside* the store:
what producers were told (ids returned by ``delay()``), and an append-only log with one line per
run or claim. Processes are real (``spawn``), their targets live in :mod:`tests.faultprocs`, and they
are killed only by their own PID. Nothing sleeps for a fixed time: the tests wait on state with a
deadline (:func:`wait_for`).
"""

from __future__ import annotations

import contextlib
import errno
import gc
import glob
import json
import multiprocessing
import os
import random
import re
import signal
import sqlite3
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import pytest

from liteq import LiteQ
from liteq.exceptions import StoreBusy, StoreCorrupt, StoreFull
from liteq.message import new_id
from liteq.storage.records import NewTask, Outcome
from liteq.storage.sqlite import DB_FILENAME, SqliteStorage
from tests import faultprocs
from tests.support import wait_for

CTX = multiprocessing.get_context("spawn")
QUEUE = faultprocs.QUEUE


# -- helpers -------------------------------------------------------------------------------------


class Procs:
    """Processes started by one test; whatever is still alive at teardown is SIGKILLed by its PID."""

    def __init__(self) -> None:
        self.started: list[BaseProcess] = []

    def start(self, target: Callable[..., None], *args: Any) -> BaseProcess:
        proc = CTX.Process(target=target, args=args, daemon=True)
        proc.start()
        self.started.append(proc)
        return proc

    def join_all(self, procs: list[BaseProcess], timeout: float) -> None:
        """Join ``procs`` within ``timeout`` seconds in total; fail naming the ones still running."""
        deadline = time.monotonic() + timeout
        for proc in procs:
            proc.join(max(0.0, deadline - time.monotonic()))
        alive = [p.pid for p in procs if p.is_alive()]
        assert not alive, f"processes {alive} still running after {timeout}s"

    def kill(self, proc: BaseProcess) -> None:
        """SIGKILL one process we started, by its PID, and reap it."""
        assert proc.pid is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.join(10)

    def close(self) -> None:
        for proc in self.started:
            if proc.is_alive():
                self.kill(proc)
            proc.join(10)
            proc.close()


@pytest.fixture
def procs() -> Iterator[Procs]:
    started = Procs()
    try:
        yield started
    finally:
        started.close()


def read_summary(path: Path, proc: BaseProcess) -> dict[str, Any]:
    """A child's JSON summary; fails with the child's own error when it raised."""
    assert path.exists(), f"process {proc.pid} exited with {proc.exitcode} and wrote no summary"
    summary: dict[str, Any] = json.loads(path.read_text())
    assert "error" not in summary, f"process {proc.pid} raised {summary['error']}\n{summary['traceback']}"
    assert proc.exitcode == 0, f"process {proc.pid} exited with {proc.exitcode}"
    return summary


def new_task(payload: bytes = b"p", **fields: Any) -> NewTask:
    return NewTask(id=new_id(), name=faultprocs.TASK_NAME, queue=QUEUE, payload=payload, **fields)


def total(store: SqliteStorage) -> int:
    return sum(n for by_state in store.counts().values() for n in by_state.values())


def assert_healthy(store: SqliteStorage) -> None:
    assert store.integrity_check() == ["ok"]


# -- concurrent producers and claimers -------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_ten_producers_and_four_claimers_run_every_task_once(tmp_path: Path, procs: Procs) -> None:
    # Given a store, and 4 claimer and 10 producer processes at default settings, released at once
    store_dir = str(tmp_path / "store")
    SqliteStorage(store_dir).close()
    run_log, stop = tmp_path / "runs.log", tmp_path / "producers-done"
    n_producers, per_producer, n_claimers = 10, 500, 4
    start = CTX.Barrier(n_producers + n_claimers + 1)
    claimers = [
        procs.start(
            faultprocs.consume, store_dir, f"c{i}", start, str(run_log), str(stop), str(tmp_path / f"c{i}.json"), 80.0
        )
        for i in range(n_claimers)
    ]
    producers = [
        procs.start(faultprocs.produce, store_dir, i, per_producer, start, str(tmp_path / f"p{i}.json"))
        for i in range(n_producers)
    ]

    # When every producer enqueues 500 tasks one delay() at a time while the claimers claim and complete
    start.wait(30)
    procs.join_all(producers, 60)
    stop.touch()
    procs.join_all(claimers, 30)

    # Then no caller saw an error (no `database is locked`, no StoreBusy at the default busy timeout)
    told = [i for n, p in enumerate(producers) for i in read_summary(tmp_path / f"p{n}.json", p)["ids"]]
    results = [read_summary(tmp_path / f"c{n}.json", c) for n, c in enumerate(claimers)]
    # And every task a producer was told about ran exactly once, on its first attempt
    assert len(told) == len(set(told)) == n_producers * per_producer
    runs = [line.split() for line in run_log.read_text().splitlines()]
    per_id = Counter(run[0] for run in runs)
    assert set(per_id) == set(told), "a task ran that no producer enqueued, or a told task never ran"
    assert [i for i, n in per_id.items() if n != 1] == [], "tasks run more than once"
    assert {run[1] for run in runs} == {"1"}
    assert len({run[2] for run in runs}) == len(runs), "two runs shared a lease token"
    assert sum(r["rejected"] for r in results) == 0
    assert sum(r["ran"] for r in results) == len(told)
    # And the store agrees and is intact
    with SqliteStorage(store_dir) as store:
        assert store.counts() == {QUEUE: {"succeeded": len(told)}}
        assert_healthy(store)


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_ten_processes_racing_to_claim_never_claim_a_task_twice(tmp_path: Path, procs: Procs) -> None:
    # Given 2,000 pending tasks and 10 claimer processes released at once by a barrier
    store_dir = str(tmp_path / "store")
    with SqliteStorage(store_dir) as store:
        enqueued = set(store.enqueue([new_task() for _ in range(2000)]))
    start = CTX.Barrier(11)
    racers = [
        procs.start(faultprocs.race_claim, store_dir, f"r{i}", start, str(tmp_path / f"r{i}.json"), i)
        for i in range(10)
    ]

    # When they all claim batches of 1 to 8 until the queue is empty
    start.wait(30)
    procs.join_all(racers, 45)

    # Then the claimed sets are disjoint and together cover every task
    claimed = {f"r{n}": read_summary(tmp_path / f"r{n}.json", r)["ids"] for n, r in enumerate(racers)}
    every = [i for ids in claimed.values() for i in ids]
    assert len(every) == len(set(every)), "a task was claimed twice"
    assert set(every) == enqueued
    # And the store records each task as running once, leased to the claimer that reported it
    with SqliteStorage(store_dir) as store:
        rows = {row.id: row for row in store.list(limit=10_000)}
        for owner, ids in claimed.items():
            for i in ids:
                assert (rows[i].state, rows[i].lease_owner, rows[i].attempts) == ("running", owner, 1)
        assert_healthy(store)


# -- a foreign write lock --------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["EXCLUSIVE", "IMMEDIATE"])
def test_lock_held_past_busy_timeout_raises_store_busy_and_writes_nothing(
    tmp_path: Path, procs: Procs, mode: str
) -> None:
    # Given a store with a claimed task and a pending one, opened with a 0.3 s busy timeout
    store_dir = str(tmp_path / "store")
    app = LiteQ(store_dir, busy_timeout=0.3)
    try:
        task = app.task(name=faultprocs.TASK_NAME)(faultprocs.noop)
        store = app.storage
        assert isinstance(store, SqliteStorage)
        task.delay(1)
        task.delay(2)
        (running,) = store.claim("w1", [QUEUE], lease=600.0)
        before = store.counts()
        # And another process holding the write lock (`BEGIN <mode>` on the database file)
        locked, release = CTX.Event(), CTX.Event()
        holder = procs.start(faultprocs.hold_lock, store.db_path, mode, locked, release, 60.0)
        assert locked.wait(30), "the lock holder never took the lock"

        # When a producer enqueues (through delay() and through the store, with a blob payload)
        for attempt in (lambda: task.delay(3), lambda: store.enqueue([new_task(b"x" * 100_000)])):
            started = time.monotonic()
            with pytest.raises(StoreBusy) as caught:
                attempt()
            elapsed = time.monotonic() - started

            # Then it raises StoreBusy after about the busy timeout, naming the store and the time waited
            exc = caught.value
            assert 0.3 <= exc.waited <= elapsed < 5.0
            assert exc.path == store.path
            assert store.db_path in str(exc)
            assert f"{exc.waited:.2f}s" in str(exc)
        # And claims and completions are refused the same way, changing nothing
        with pytest.raises(StoreBusy):
            store.claim("w2", [QUEUE])
        with pytest.raises(StoreBusy):
            store.complete([Outcome(running.id, running.lease_token, "succeeded", result=b"r")])
        # And nothing was written (readers are not blocked in WAL mode)
        assert store.counts() == before
        (row,) = store.get([running.id])
        assert row is not None and (row.state, row.lease_token) == ("running", running.lease_token)

        # When the holder releases the lock
        release.set()
        procs.join_all([holder], 30)
        assert holder.exitcode == 0

        # Then enqueue, claim and complete work again, and a worker drains the queue
        assert store.complete([Outcome(running.id, running.lease_token, "succeeded", result=b"r")]) == [True]
        task.delay(3)
        assert app.run_until_empty() == 2
        assert store.counts() == {QUEUE: {"succeeded": 3}}
        assert_healthy(store)
    finally:
        app.close()


# -- a full disk -----------------------------------------------------------------------------------


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs mounted under ``tmp_path`` (root only), unmounted after the test."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs to fill it needs root")
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        gc.collect()  # see test_full_disk_leaves_no_file_open_after_close: a failed open leaks a handle
        if subprocess.run(["umount", str(mnt)], check=False).returncode != 0:
            subprocess.run(["umount", "--lazy", str(mnt)], check=True)
            raise AssertionError(f"{mnt} was still busy after the test; unmounted lazily")


def fill(path: Path, *, leave: int = 0) -> None:
    """Grow ``path`` until the filesystem refuses even one more byte, then give back ``leave`` bytes."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        chunk = 1 << 16
        while chunk:
            try:
                os.write(fd, b"\0" * chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                chunk //= 2
        os.ftruncate(fd, max(0, os.fstat(fd).st_size - leave))
    finally:
        os.close(fd)


@pytest.mark.root
@pytest.mark.timeout(60)
def test_full_disk_raises_store_full_writes_nothing_partial_and_resumes(small_tmpfs: Path) -> None:
    # Given a store on a small tmpfs with 10 running tasks and 10 pending ones
    store = SqliteStorage(small_tmpfs / "store")
    try:
        store.enqueue([new_task(b"%d" % i) for i in range(20)])
        running = store.claim("w1", [QUEUE], limit=10, lease=600.0)
        before = store.counts()
        filler = small_tmpfs / "filler"
        results = [random.Random(i).randbytes(60_000) for i in range(len(running))]
        results[0] = random.Random(99).randbytes(200_000)  # above the blob threshold
        outcomes = [Outcome(c.id, c.lease_token, "succeeded", result=r) for c, r in zip(running, results, strict=True)]
        batch = [new_task(random.Random(i).randbytes(8_000)) for i in range(120)]

        # When the disk is full to the last byte, or has room for only part of the writes, and a worker
        # claims, completes with large results (in the row and as a blob), and a producer enqueues a
        # batch that needs new pages
        for what, room, attempt in [
            ("claim", 0, lambda: store.claim("w2", [QUEUE], limit=10)),
            ("complete", 300_000, lambda: store.complete(outcomes)),
            ("enqueue", 300_000, lambda: store.enqueue(batch)),
        ]:
            filler.unlink(missing_ok=True)
            fill(filler, leave=room)
            # Then each raises StoreFull naming the store
            with pytest.raises(StoreFull, match=re.escape(store.path)) as caught:
                attempt()
            assert caught.value.path == store.path, what

            # And nothing partial is left: same counts, running tasks untouched, no row of the batch
            assert store.counts() == before, what
            for c, row in zip(running, store.get([c.id for c in running]), strict=True):
                assert row is not None and (row.state, row.lease_token, row.result) == ("running", c.lease_token, None)
            assert store.get([t.id for t in batch]) == [None] * len(batch), what

        # When space is freed
        filler.unlink()

        # Then the same operations succeed and the store is intact
        assert store.complete(outcomes) == [True] * len(running)
        assert len(store.claim("w2", [QUEUE], limit=10)) == 10
        assert len(store.enqueue(batch)) == len(batch)
        assert store.counts() == {QUEUE: {"succeeded": 10, "running": 10, "pending": len(batch)}}
        for row, result in zip(store.get([c.id for c in running]), results, strict=True):
            assert row is not None and row.result == result
        (row,) = store.get([batch[-1].id])
        assert row is not None and row.payload == batch[-1].payload
        assert_healthy(store)
    finally:
        store.close()


def open_files_under(path: Path) -> list[str]:
    """Files under ``path`` that this process has open."""
    found = []
    for fd in glob.glob(f"/proc/{os.getpid()}/fd/*"):
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith(f"{path}/"):
                found.append(target)
    return found


@pytest.mark.root
@pytest.mark.timeout(30)
def test_full_disk_leaves_no_file_open_after_close(small_tmpfs: Path) -> None:
    # Given a store on a full disk whose blob cache was never opened, and a running task
    store = SqliteStorage(small_tmpfs / "store")
    try:
        store.enqueue([new_task()])
        (running,) = store.claim("w1", [QUEUE], lease=600.0)
        fill(small_tmpfs / "filler")
        # When a completion with a result above the blob threshold fails for want of space
        with pytest.raises(StoreFull):
            store.complete([Outcome(running.id, running.lease_token, "succeeded", result=b"r" * 200_000)])
    finally:
        store.close()
    # Then closing the store closed every file it opened (else its disk cannot even be unmounted)
    assert open_files_under(small_tmpfs) == []


# -- a damaged file --------------------------------------------------------------------------------


def checkpointed_store(store_dir: Path, rows: int) -> list[str]:
    """Create a store with ``rows`` tasks of 1 KB payload, fold its WAL into the file and close it."""
    with SqliteStorage(store_dir) as store:
        ids = []
        for start in range(0, rows, 500):
            ids += store.enqueue([new_task(random.Random(i).randbytes(1000)) for i in range(start, start + 500)])
    conn = sqlite3.connect(store_dir / DB_FILENAME, isolation_level=None)
    try:
        assert conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0
    finally:
        conn.close()
    wal = store_dir / f"{DB_FILENAME}-wal"
    assert not wal.exists() or wal.stat().st_size == 0
    return ids


def corrupt_middle_table_page(db: Path) -> int:
    """Overwrite a table b-tree leaf page near the middle of ``db`` with garbage; return its number."""
    data = db.read_bytes()
    page_size = int.from_bytes(data[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = len(data) // page_size
    # Leaf pages of a table start with 0x0D; every table but `tasks` is empty here, so this is a tasks page.
    number = next(
        n for n in sorted(range(2, pages), key=lambda n: abs(n - pages // 2)) if data[(n - 1) * page_size] == 0x0D
    )
    garbage = bytearray(random.Random(number).randbytes(page_size))
    garbage[0] = 0x00  # no valid page type, so the damage is seen whatever the random bytes are
    with open(db, "r+b") as f:
        f.seek((number - 1) * page_size)
        f.write(garbage)
    return number


def assert_corrupt_quickly(call: Callable[[], Any], store_path: str, what: str) -> None:
    started = time.monotonic()
    with pytest.raises(StoreCorrupt) as caught:
        call()
    assert time.monotonic() - started < 1.0, f"{what} took long to fail"
    assert caught.value.path == store_path, what
    assert os.path.join(store_path, DB_FILENAME) in str(caught.value), what


@pytest.mark.timeout(60)
def test_corrupt_page_raises_store_corrupt_every_time_without_hanging(tmp_path: Path) -> None:
    # Given a closed store of 3,000 tasks whose WAL is checkpointed into the database file
    store_dir = tmp_path / "store"
    ids = checkpointed_store(store_dir, 3000)
    # And garbage written over one of the tasks table's pages in the middle of the file
    corrupt_middle_table_page(store_dir / DB_FILENAME)

    # When the store is reopened (by the storage and by an app) and used
    store = SqliteStorage(store_dir)
    app = LiteQ(store_dir)
    try:
        app.task(name=faultprocs.TASK_NAME)(faultprocs.noop)
        # Then every operation that touches the damaged page raises StoreCorrupt naming the file,
        # quickly, every time it is called (no hang, no retry loop)
        for _ in range(20):
            # (counts() reads the small table its triggers keep, not the damaged one: a full listing scans it)
            assert_corrupt_quickly(lambda: store.list(limit=5000), store.path, "list")
            assert_corrupt_quickly(lambda: store.get(ids), store.path, "get")
            assert_corrupt_quickly(lambda: store.claim("w1", [QUEUE], limit=5000), store.path, "claim")
            assert_corrupt_quickly(app.run_until_empty, store.path, "run_until_empty")
        # And the integrity check reports the damage
        with contextlib.suppress(StoreCorrupt):
            assert store.integrity_check() != ["ok"]
    finally:
        app.close()
        store.close()


@pytest.mark.timeout(60)
def test_garbage_header_is_not_a_database_raises_store_corrupt(tmp_path: Path) -> None:
    # Given a closed store whose first page header is overwritten with garbage
    store_dir = tmp_path / "store"
    checkpointed_store(store_dir, 500)
    with open(store_dir / DB_FILENAME, "r+b") as f:
        f.write(random.Random(5).randbytes(100))

    # When it is opened, again and again
    for _ in range(10):
        # Then opening raises StoreCorrupt naming the file, at once
        assert_corrupt_quickly(lambda: SqliteStorage(store_dir).close(), str(store_dir), "SqliteStorage()")
        assert_corrupt_quickly(lambda: LiteQ(store_dir).close(), str(store_dir), "LiteQ()")


# -- SIGKILLed producers ---------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_producer_killed_mid_enqueue_and_retried_with_keys_makes_one_task_per_key(tmp_path: Path, procs: Procs) -> None:
    # Given a producer that enqueues k0..k19999 in order with idempotency keys, from k0 on each start
    store_dir = str(tmp_path / "store")
    told_log = tmp_path / "told.log"
    n_keys, kills = 20_000, 20
    rng = random.Random(20)
    store = SqliteStorage(store_dir)
    try:
        # When it is SIGKILLed at a random point 20 times, with a random batch size each run
        for round_ in range(kills):
            target = total(store) + rng.randint(50, 400)
            producer = procs.start(faultprocs.produce_keys, store_dir, n_keys, rng.choice([1, 1, 3, 16]), str(told_log))

            def passed(target: int = target, producer: BaseProcess = producer) -> bool:
                return total(store) >= target or not producer.is_alive()

            wait_for(passed, 30, f"round {round_} to pass {target} tasks")
            assert producer.is_alive(), f"producer exited with {producer.exitcode} before kill {round_}"
            procs.kill(producer)
            assert producer.exitcode == -signal.SIGKILL
        # And finally runs to completion
        producer = procs.start(faultprocs.produce_keys, store_dir, n_keys, 7, str(told_log))
        procs.join_all([producer], 60)
        assert producer.exitcode == 0

        # Then every key has exactly one task and nothing else is stored
        rows = store.list(limit=2 * n_keys)
        assert sorted(r.idempotency_key or "" for r in rows) == sorted(f"k{i}" for i in range(n_keys))
        stored = {r.idempotency_key: r.id for r in rows}
        # And every id a producer was told is the stored one for its key, whichever run told it
        told: dict[str, set[str]] = {}
        for line in told_log.read_text().splitlines():
            words = line.split()
            for key, id_ in zip(words[::2], words[1::2], strict=True):
                told.setdefault(key, set()).add(id_)
        assert set(told) == set(stored)
        assert {k: ids for k, ids in told.items() if ids != {stored[k]}} == {}
        assert_healthy(store)
    finally:
        store.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("durability", ["normal", "full"])
def test_enqueue_survives_sigkill_of_the_producer_after_delay_returned(
    tmp_path: Path, procs: Procs, durability: str
) -> None:
    # Given a producer that called delay() 50 times, logged each returned id, and is still running
    store_dir = str(tmp_path / "store")
    SqliteStorage(store_dir, durability=durability).close()
    told_log = tmp_path / "told.log"
    producer = procs.start(faultprocs.enqueue_then_hang, store_dir, durability, 50, str(told_log), 60.0)
    wait_for(lambda: told_log.exists() and len(told_log.read_text().splitlines()) == 50, 30, "50 delay() calls")

    # When it is SIGKILLed with its store open (its last commits are still in the WAL)
    procs.kill(producer)
    assert producer.exitcode == -signal.SIGKILL
    assert os.path.getsize(os.path.join(store_dir, f"{DB_FILENAME}-wal")) > 0

    # Then a fresh open of the store finds every task it was told about, pending
    told = told_log.read_text().split()
    with SqliteStorage(store_dir, durability=durability) as store:
        rows = store.get(told)
        assert [(r.state, r.name) if r else None for r in rows] == [("pending", faultprocs.TASK_NAME)] * 50
        assert_healthy(store)


# -- purge and prune of large sets ------------------------------------------------------------------

PURGE_ROWS = 200_000


def insert_finished(db_path: Path, n: int, *, expired_at: float) -> None:
    """``n`` succeeded rows written straight into the database (fast set-up of a large finished set)."""
    conn = sqlite3.connect(db_path, isolation_level=None)
    try:
        conn.execute("BEGIN")
        conn.execute(
            "INSERT INTO tasks (id, name, queue, state, run_at, enqueued_at, finished_at, result, result_expires_at) "
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ?) "
            "SELECT printf('%032x', x), ?, 'default', 'succeeded', 0, 0, 0, randomblob(64), ? FROM c",
            (n, faultprocs.TASK_NAME, expired_at),
        )
        conn.execute("COMMIT")
    finally:
        conn.close()


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("how", ["purge", "prune"])
def test_large_purge_never_makes_another_writer_wait_past_the_busy_timeout(
    tmp_path: Path, procs: Procs, how: str
) -> None:
    # Given a store holding a large finished set, and another process enqueueing all the time
    busy_timeout = 0.5
    store_dir = tmp_path / "store"
    store = SqliteStorage(store_dir, busy_timeout=busy_timeout)
    insert_finished(store_dir / DB_FILENAME, PURGE_ROWS, expired_at=1.0)
    started = CTX.Event()
    stop, out = tmp_path / "stop", tmp_path / "writer.json"
    writer = procs.start(faultprocs.write_while, str(store_dir), busy_timeout, started, str(stop), str(out))
    assert started.wait(60), "the writer did not start"
    # When the whole finished set is deleted (liteq purge, or the pool's prune without a limit)
    try:
        if how == "purge":
            deleted = store.purge(states=["succeeded"])
        else:
            deleted = store.prune(now=time.time(), limit=PURGE_ROWS)
    finally:
        stop.touch()
        procs.join_all([writer], 60)
    # Then every finished row is gone, the writer's tasks are kept, and no write of the writer
    # waited for the lock past the busy timeout (none raised StoreBusy)
    summary = read_summary(out, writer)
    assert deleted == PURGE_ROWS
    assert summary["store_error"] is None, summary
    assert summary["longest"] < busy_timeout, summary
    assert summary["count"] > 0
    assert store.counts()["default"] == {"pending": summary["count"]}
    assert_healthy(store)
    store.close()
