"""Values above the blob threshold: durable under ``durability="full"``, a lost or damaged blob
fails its own task with a typed error and nothing else, and blobs nobody refers to are collected."""

from __future__ import annotations

import glob
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from liteq import LiteQ, StoreCorrupt, TaskFailed
from liteq.message import encode_call
from liteq.storage.records import NewTask
from liteq.storage.sqlite import DB_FILENAME, SqliteStorage
from tests import tasks

MakeApp = Callable[..., LiteQ]
BIG = "x" * 200_000  # over the default 64 KiB threshold


def refs(store: Path, column: str) -> dict[str, str | None]:
    conn = sqlite3.connect(store / DB_FILENAME)
    try:
        return dict(conn.execute(f"SELECT id, {column} FROM tasks").fetchall())
    finally:
        conn.close()


def blob_files(store: Path) -> list[str]:
    return [f for f in glob.glob(str(store / "blobs" / "**" / "*.val"), recursive=True)]


@pytest.mark.parametrize(("durability", "in_blobs"), [("full", False), ("normal", True)])
def test_full_durability_keeps_large_values_in_the_database(
    make_app: MakeApp, tmp_path: Path, durability: str, in_blobs: bool
) -> None:
    # Given an app with durability="full" (and, for contrast, "normal")
    app = make_app(durability=durability)
    echo = app.task(tasks.identity)
    # When a value over the blob threshold is enqueued and returned
    r = echo.delay(BIG)
    app.run_until_empty()
    assert r.get(timeout=5) == BIG
    # Then under "full" both live in the database (committed and fsynced with their row), not in
    # blob files that the row's commit does not sync; under "normal" they go to the blob cache
    store = tmp_path / "store"
    assert (refs(store, "payload_ref")[r.id] is not None) is in_blobs
    assert (refs(store, "result_ref")[r.id] is not None) is in_blobs
    assert bool(blob_files(store)) is in_blobs


def test_a_missing_payload_blob_fails_that_task_only(make_app: MakeApp, tmp_path: Path) -> None:
    # Given two tasks with large arguments and one small one, and one large payload's blob lost
    app = make_app()
    echo = app.task(tasks.identity)
    lost, kept, small = echo.delay(BIG), echo.delay(BIG + "y"), echo.delay("s")
    store = app.storage
    assert isinstance(store, SqliteStorage)
    store.blobs.delete(refs(tmp_path / "store", "payload_ref")[lost.id])
    # When a worker runs them (claimed in one batch)
    app.run_until_empty()
    # Then the one whose blob is gone failed, saying so; the others ran
    with pytest.raises(TaskFailed) as caught:
        lost.get(timeout=5)
    assert caught.value.reason.startswith("blob missing:"), caught.value.reason
    assert kept.get(timeout=5) == BIG + "y"
    assert small.get(timeout=5) == "s"
    # And the failed row keeps its blob key: a restored blob and `liteq retry` bring it back
    assert refs(tmp_path / "store", "payload_ref")[lost.id] is not None


def test_a_damaged_blob_cache_fails_tasks_with_blobs_and_no_other(make_app: MakeApp, tmp_path: Path) -> None:
    # Given a task with a large argument and a small one, and the blob cache's index then damaged
    app = make_app()
    echo = app.task(tasks.identity)
    big, small = echo.delay(BIG), echo.delay("s")
    app.close()
    index = tmp_path / "store" / "blobs" / "cache.db"
    for leftover in (f"{index}-wal", f"{index}-shm"):
        if os.path.exists(leftover):
            os.unlink(leftover)
    index.write_bytes(b"this is not a database" * 100)
    # When a fresh worker runs them
    worker = make_app()
    worker.task(tasks.identity)
    worker.run_until_empty()
    # Then the task whose payload is a blob failed as damaged, and the other ran
    with pytest.raises(TaskFailed) as caught:
        worker.result(big.id).get(timeout=5)
    assert caught.value.reason.startswith("blob damaged:"), caught.value.reason
    assert worker.result(small.id).get(timeout=5) == "s"


def test_a_lost_result_blob_is_a_typed_error_for_that_result_only(make_app: MakeApp, tmp_path: Path) -> None:
    # Given two finished tasks with large results, one of whose result blobs is then lost
    app = make_app()
    echo = app.task(tasks.identity)
    gone, fine = echo.delay(BIG), echo.delay(BIG + "z")
    app.run_until_empty()
    store = app.storage
    assert isinstance(store, SqliteStorage)
    store.blobs.delete(refs(tmp_path / "store", "result_ref")[gone.id])
    # When the results are read, then the lost one raises StoreCorrupt naming it (never a silent
    # None), and the other reads as usual
    with pytest.raises(StoreCorrupt, match=f"result of task {gone.id} is lost: blob missing"):
        gone.get(timeout=5)
    assert fine.get(timeout=5) == BIG + "z"


def test_a_chain_step_whose_input_blob_is_lost_fails_with_that_reason(make_app: MakeApp, tmp_path: Path) -> None:
    # Given a finished step with a large result whose blob is then lost
    app = make_app()
    identity = app.task(tasks.identity)
    first = identity.delay(BIG)
    app.run_until_empty()
    store = app.storage
    assert isinstance(store, SqliteStorage)
    store.blobs.delete(refs(tmp_path / "store", "result_ref")[first.id])
    # When the next step of its chain (which takes that result as input) runs
    payload = encode_call(app.serializer, (), {}, {"prev": first.id})
    (step,) = store.enqueue([NewTask(id="d" * 32, name=identity.name, queue="default", payload=payload)])
    app.run_until_empty()
    # Then that step fails saying its input is lost, and the worker goes on
    with pytest.raises(TaskFailed) as caught:
        app.result(step).get(timeout=5)
    assert caught.value.reason == "dependency result missing"
    assert "blob missing" in caught.value.message


def test_blobs_nobody_refers_to_are_collected(make_app: MakeApp, tmp_path: Path) -> None:
    # Given a stored task with a blob, and the blob of a writer killed before its row committed
    app = make_app()
    echo = app.task(tasks.identity)
    live = echo.delay(BIG)
    store = app.storage
    assert isinstance(store, SqliteStorage)
    orphan = f"p:{'e' * 32}:0011223344556677"
    store.blobs.set(orphan, b"o" * 100_000)
    # When blobs are collected: a young orphan may be a write in flight and is kept
    assert store.collect_blobs() == 0
    assert store.blobs.get(orphan) is not None
    # Once old enough it is deleted; the task's own blob stays
    assert store.collect_blobs(min_age=0) == 1
    assert store.blobs.get(orphan) is None
    app.run_until_empty()
    assert live.get(timeout=5) == BIG


def test_a_manual_retry_drops_the_old_result_blob(make_app: MakeApp, tmp_path: Path) -> None:
    # Given a task that succeeded with a large result, then was marked failed (a later cascade)
    app = make_app()
    echo = app.task(tasks.identity)
    r = echo.delay(BIG)
    app.run_until_empty()
    old = refs(tmp_path / "store", "result_ref")[r.id]
    store = app.storage
    assert isinstance(store, SqliteStorage) and old is not None
    conn = sqlite3.connect(tmp_path / "store" / DB_FILENAME)
    conn.execute("UPDATE tasks SET state = 'failed' WHERE id = ?", (r.id,))
    conn.commit()
    conn.close()
    # When it is retried by hand, the old result's blob is garbage and is deleted
    assert store.retry([r.id]) == [True]
    assert store.blobs.get(old) is None
