"""A pool that rides out store errors (issue 9, RELIABILITY.md "Store errors while things run").

A store locked by another process past the busy timeout, or a full disk, puts a pool in the
``degraded`` state instead of ending it: it claims nothing, its children finish what they run,
their outcomes wait in memory, and it resumes by itself. Real pools, real locks held by another
connection, a real full tmpfs (as root); the run log of :mod:`tests.pool_tasks`, outside the store,
is the oracle for "every task ran once".
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from liteq import LiteQ, StoreBusy, StoreCorrupt, StoreFull
from liteq.cli import main as cli_main
from liteq.health import Health, PoolState, degrades
from liteq.storage.records import WorkerInfo
from liteq.storage.sqlite import DB_FILENAME, SqliteStorage
from liteq.storage.sqlite.schema import MIGRATIONS, SCHEMA_VERSION
from tests import pool_tasks
from tests.pool_support import Reaper, RunLog, pool_env, wait_for, worker_cmd

MakeApp = Callable[..., LiteQ]

#: A short busy timeout keeps "a lock held for 3x the busy timeout" fast.
BUSY = 0.5


# -- the state machine -------------------------------------------------------------------------------


def test_health_enters_once_backs_off_capped_and_leaves_once(caplog: pytest.LogCaptureFixture) -> None:
    # Given a healthy loop
    health = Health("worker w", logging.getLogger("tests.health"), base=0.1, cap=1.0)
    assert health.ok and health.state is PoolState.OK and health.reason is None
    caplog.set_level(logging.WARNING, "tests.health")
    # When store calls keep failing as busy
    delays = []
    for _ in range(12):
        with health.guard("claim") as guard:
            raise StoreBusy("locked", path="x", waited=0.1)
        assert guard.failed
        delays.append(health.retry_at - time.monotonic())
    # Then it is degraded with the first reason, retries back off up to the cap, and one line was logged
    assert health.state is PoolState.DEGRADED and health.reason == "store busy during claim"
    assert health.since is not None and abs(health.since - time.time()) < 5
    assert all(d <= 1.0 for d in delays) and max(delays) >= 0.4 and delays[0] < 0.2
    assert len(caplog.records) == 1 and "degraded" in caplog.records[0].getMessage()
    # When a round goes through, it is ok again, logged once
    health.recovered()
    assert health.ok and health.reason is None and health.since is None
    assert len(caplog.records) == 2 and "back to ok" in caplog.records[1].getMessage()


def test_only_curable_store_errors_degrade() -> None:
    assert degrades(StoreBusy("x")) and degrades(StoreFull("x")) and degrades(OSError(5, "EIO"))
    assert not degrades(StoreCorrupt("x")) and not degrades(ValueError("bug"))
    # A corrupt store still ends the loop: the guard lets it through
    health = Health("w", logging.getLogger("tests.health"))
    with pytest.raises(StoreCorrupt), health.guard("claim"):
        raise StoreCorrupt("damaged")
    assert health.ok


# -- the store records it ------------------------------------------------------------------------------


def _v5_store(directory: Path) -> None:
    """A store as liteq with schema version 5 left it, with one worker row."""
    directory.mkdir()
    conn = sqlite3.connect(directory / DB_FILENAME, isolation_level=None)
    for version in range(5):
        conn.executescript(MIGRATIONS[version])
    conn.execute("PRAGMA user_version=5")
    conn.execute(
        "INSERT INTO workers (id, host, pid, concurrency, queues, started_at, heartbeat_at, tasks_done) "
        "VALUES ('old', 'box', 1, 2, '[\"default\"]', 10.0, 20.0, 7)"
    )
    conn.close()


def test_a_version_5_store_migrates_and_keeps_its_workers(tmp_path: Path) -> None:
    # Given a store of schema version 5 (before worker health) with a worker recorded
    _v5_store(tmp_path / "store")
    # When this liteq opens it
    store = SqliteStorage(str(tmp_path / "store"))
    try:
        # Then it is at version 6, the worker is kept and reads as ok
        assert store.db.read("PRAGMA user_version")[0][0] == SCHEMA_VERSION  # the latest, whatever came after version 6
        (old,) = store.workers()
        assert (old.id, old.tasks_done, old.state, old.state_reason, old.state_since) == ("old", 7, "ok", None, None)
        # And its state can be written
        store.heartbeat("old", state="degraded", state_reason="store full during claim", state_since=30.0, now=40.0)
        (old,) = store.workers()
        assert (old.state, old.state_reason, old.state_since, old.heartbeat_at) == (
            "degraded",
            "store full during claim",
            30.0,
            40.0,
        )
    finally:
        store.close()


def test_degraded_state_shows_while_the_store_is_locked(tmp_path: Path) -> None:
    # Given a registered worker and another connection holding the write lock
    store = SqliteStorage(str(tmp_path / "store"), busy_timeout=0.1)
    try:
        store.register_worker(WorkerInfo("w", "box", 1, 2, ["default"], 1.0, 1.0))
        holder = sqlite3.connect(tmp_path / "store" / DB_FILENAME, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            # When the worker records a degraded heartbeat, the row cannot be written...
            with pytest.raises(StoreBusy):
                store.heartbeat("w", state="degraded", state_reason="store busy during claim", state_since=5.0)
            # ...yet a reader sees the state
            (w,) = SqliteStorage(str(tmp_path / "store")).workers()
            assert (w.state, w.state_reason, w.state_since) == ("degraded", "store busy during claim", 5.0)
            assert w.state_text().startswith("degraded: store busy during claim since 1970-01-01 00:00:05")
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        # When the lock is gone and an ok heartbeat commits, it reads ok again
        store.heartbeat("w")
        (w,) = store.workers()
        assert (w.state, w.state_text()) == ("ok", "ok")
    finally:
        store.close()


# -- a real `liteq worker` under an exclusive lock -------------------------------------------------


@contextlib.contextmanager
def exclusive_lock(store: Path) -> Iterator[sqlite3.Connection]:
    """Hold ``BEGIN EXCLUSIVE`` on the store from another connection (what a backup or a shell does)."""
    holder = sqlite3.connect(store / DB_FILENAME, isolation_level=None, timeout=30)
    holder.execute("BEGIN EXCLUSIVE")
    holder.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('test-holder', 'x')")
    try:
        yield holder
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def _drain_setup(app: LiteQ, runlog: RunLog, n: int) -> list[str]:
    """Enqueue ``n`` tasks that log their runs; return their keys."""
    record = app.task(pool_tasks.record)
    keys = [f"k{i}" for i in range(n)]
    app.enqueue_many([record.s(runlog.path, k) for k in keys])
    return keys


def _worker_state(app: LiteQ, pid: int) -> str | None:
    for w in app.stats()["workers"]:
        if w["pid"] == pid:
            return str(w["state_text"])
    return None


def _status_json(store: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    capsys.readouterr()
    assert cli_main(["status", str(store), "--json"]) == 0
    return dict(json.loads(capsys.readouterr().out))


def _assert_each_ran_once(app: LiteQ, runlog: RunLog, keys: list[str]) -> None:
    runs = runlog.runs_per_key()
    assert sorted(runs) == sorted(keys)
    twice = {k: n for k, n in runs.items() if n != 1}
    assert not twice, f"ran more than once: {twice}"
    states = app.stats()["states"]
    assert states == {"succeeded": len(keys)}, states


@pytest.mark.timeout(180)
def test_liteq_worker_rides_out_an_exclusive_lock_of_three_busy_timeouts(
    tmp_path: Path, make_app: MakeApp, runlog: RunLog, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given `liteq worker -c 2` with a short busy timeout draining a few thousand tasks
    store = tmp_path / "store"
    app = make_app(busy_timeout=BUSY)
    keys = _drain_setup(app, runlog, 3000)
    reaper = Reaper(tmp_path)
    try:
        proc = reaper.popen(worker_cmd("-c", "2"), name="worker", env=pool_env(store, busy_timeout=BUSY))
        wait_for(lambda: len(runlog.starts()) >= 300, 60, "the worker to get going")

        # When another process holds BEGIN EXCLUSIVE for 3x the busy timeout
        with exclusive_lock(store):
            began = time.monotonic()
            # Then the worker shows degraded while it lasts (read from the store, as status does)
            state = wait_for(
                lambda: (s := _worker_state(app, proc.pid)) and s.startswith("degraded") and s,
                10,
                "the worker to show degraded",
            )
            assert "store busy" in state
            report = _status_json(store, capsys)
            (w,) = [w for w in report["workers"] if w["pid"] == proc.pid]
            assert w["state"] == "degraded" and "store busy" in w["state_reason"]
            assert cli_main(["status", str(store)]) == 0
            assert "degraded: store busy during" in capsys.readouterr().out
            left = 3 * BUSY - (time.monotonic() - began)
            if left > 0:
                time.sleep(left)  # the lock is the fault: it is held for a set time
            assert proc.poll() is None

        # Then it resumes by itself, shows ok, and drains everything
        wait_for(lambda: _worker_state(app, proc.pid) == "ok", 30, "the worker to be ok again")
        wait_for(lambda: app.stats()["states"].get("succeeded", 0) == len(keys), 120, "every task to finish")
        assert proc.poll() is None, reaper.stderr("worker")
        _assert_each_ran_once(app, runlog, keys)
        err = reaper.stderr("worker")
        assert err.count("degraded: store busy") == 1 and err.count("back to ok") == 1, err[-3000:]
        proc.terminate()
        assert proc.wait(30) == 0
    finally:
        reaper.cleanup()


@pytest.mark.timeout(120)
def test_app_workers_rides_out_an_exclusive_lock_and_shows_its_state(
    tmp_path: Path, make_app: MakeApp, runlog: RunLog
) -> None:
    # Given app.workers() draining tasks with a short busy timeout
    store = tmp_path / "store"
    app = make_app(busy_timeout=BUSY)
    keys = _drain_setup(app, runlog, 1500)
    with app.workers(concurrency=2, shutdown_timeout=10) as pool:
        wait_for(lambda: len(runlog.starts()) >= 100, 60, "the pool to get going")
        # When another connection holds the write lock for 3x the busy timeout
        with exclusive_lock(store):
            began = time.monotonic()
            # Then the app sees the pool degraded, with the reason and since when
            wait_for(lambda: pool.state is PoolState.DEGRADED, 10, "the pool to be degraded")
            assert pool.state_reason is not None and "store busy" in pool.state_reason
            assert pool.state_since is not None and abs(pool.state_since - time.time()) < 10
            left = 3 * BUSY - (time.monotonic() - began)
            if left > 0:
                time.sleep(left)  # the lock is the fault: it is held for a set time
        # Then it is ok again by itself and drains everything, each task once
        wait_for(lambda: pool.state is PoolState.OK, 30, "the pool to be ok again")
        wait_for(lambda: app.stats()["states"].get("succeeded", 0) == len(keys), 90, "every task to finish")
        assert pool._thread is not None and pool._thread.is_alive()
    _assert_each_ran_once(app, runlog, keys)


# -- a full disk -------------------------------------------------------------------------------------


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 64 MiB tmpfs mounted for this test (root only), unmounted after."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs to fill needs root")
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    point = tmp_path / "tmpfs"
    point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(point)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace').strip()}")
    try:
        yield point
    finally:
        subprocess.run(["umount", "-l", str(point)], check=False)


def _fill(directory: Path) -> Path:
    """Fill the filesystem of ``directory`` with one file; return it (delete it to free the space)."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for chunk in (1 << 16, 512):  # unbuffered, down to the last block
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * chunk)
    finally:
        os.close(fd)
    return filler


@pytest.mark.timeout(120)
def test_app_workers_rides_out_a_full_disk(small_tmpfs: Path, make_app: MakeApp, runlog: RunLog) -> None:
    # Given a pool whose store lives on a small tmpfs, draining tasks
    app = make_app(small_tmpfs / "store", busy_timeout=BUSY)
    keys = _drain_setup(app, runlog, 5000)  # enough that the disk fills while they run
    with app.workers(concurrency=2, shutdown_timeout=10) as pool:
        wait_for(lambda: len(runlog.starts()) >= 20, 60, "the pool to get going")
        # When the disk fills up
        filler = _fill(small_tmpfs)
        # Then the pool goes degraded (store full) rather than dying
        wait_for(lambda: pool.state is PoolState.DEGRADED, 30, "the pool to be degraded")
        assert pool.state_reason is not None and "store full" in pool.state_reason, pool.state_reason
        assert pool._thread is not None and pool._thread.is_alive()
        # When space is freed, it resumes by itself and drains everything, each task once
        filler.unlink()
        wait_for(lambda: os.statvfs(small_tmpfs).f_bavail > 1000, 10, "the space to be free")
        wait_for(lambda: pool.state is PoolState.OK, 30, "the pool to be ok again")
        wait_for(lambda: app.stats()["states"].get("succeeded", 0) == len(keys), 90, "every task to finish")
    _assert_each_ran_once(app, runlog, keys)


# -- found by the soak -----------------------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_a_liteq_worker_started_while_the_store_is_locked_starts_degraded_instead_of_exiting(
    tmp_path: Path, make_app: MakeApp, runlog: RunLog
) -> None:
    # Found by the soak (tests/soak): a pool restarted during a backup's lock (or on a full disk)
    # exits at once from its start-up writes (reclaiming leases, registering), where a running pool
    # would ride the same fault out.
    # Given a store with tasks, locked by another process
    store = tmp_path / "store"
    app = make_app(busy_timeout=BUSY)
    keys = _drain_setup(app, runlog, 20)
    reaper = Reaper(tmp_path)
    try:
        with exclusive_lock(store):
            # When `liteq worker` starts meanwhile
            proc = reaper.popen(worker_cmd("-c", "1"), name="worker", env=pool_env(store, busy_timeout=BUSY))
            wait_for(
                lambda: proc.poll() is not None or "degraded" in reaper.stderr("worker"),
                60,
                "the worker to meet the lock",
            )
            # Then it is still running, degraded
            assert proc.poll() is None, reaper.stderr("worker")[-3000:]

        # And once the lock is gone it runs every task, once
        wait_for(lambda: app.stats()["states"].get("succeeded", 0) == len(keys), 60, "every task to finish")
        _assert_each_ran_once(app, runlog, keys)
        proc.terminate()
        assert proc.wait(30) == 0
    finally:
        reaper.cleanup()
