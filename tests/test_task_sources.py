"""Which code a worker runs, and with which limits, when it has only the store.

- Only registered code runs: a stored task name is a string anyone who can write the store
  chooses, so a worker imports a task's module only when it is listed in ``include``; otherwise the
  task fails as ``unknown task`` (payload kept, ``liteq retry`` runs it again). A canary module
  that writes a file when imported proves it is never imported.
- Limits travel with the stored task: a ``liteq worker STORE`` that has no app enforces the hard
  and soft time limits and the rate limit the producer declared.
"""

from __future__ import annotations

import itertools
import os
import signal
import sqlite3
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from liteq import LiteQ, TaskFailed
from liteq.cli import EXIT_OK, main
from liteq.message import encode_call
from liteq.storage.records import NewTask
from liteq.storage.sqlite import DB_FILENAME
from tests import limit_tasks
from tests.support import wait_for

MakeApp = Callable[..., LiteQ]
CANARY_MODULE = "tests.canary_tasks"
CANARY_TASK = f"{CANARY_MODULE}.hello"


@pytest.fixture
def canary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The file the canary module writes when imported; the module is unloaded before and after."""
    mark = tmp_path / "canary-imported"
    monkeypatch.setenv("LITEQ_CANARY", str(mark))
    sys.modules.pop(CANARY_MODULE, None)
    yield mark
    sys.modules.pop(CANARY_MODULE, None)


def store_canary_task(app: LiteQ) -> str:
    """A task stored under the canary's name by someone who can write the store."""
    payload = encode_call(app.serializer, ("world",), {}, {})
    (task_id,) = app.storage.enqueue([NewTask(id="c" * 32, name=CANARY_TASK, queue="default", payload=payload)])
    return task_id


def test_a_stored_name_never_imports_a_module_not_included(make_any_app: MakeApp, canary: Path) -> None:
    # Given a task stored under the name of a module that nobody listed in include
    app = make_any_app()
    task_id = store_canary_task(app)
    # When a worker runs it
    app.run_until_empty()
    # Then the module was never imported, and the task failed as unknown with its payload kept
    assert not canary.exists()
    assert CANARY_MODULE not in sys.modules
    with pytest.raises(TaskFailed) as caught:
        app.result(task_id).get(timeout=5)
    assert caught.value.reason == "unknown task"
    assert "include" in caught.value.message
    row = app.storage.get([task_id])[0]
    assert row is not None and row.payload


def test_an_included_module_is_imported_and_a_failed_unknown_task_retries(
    make_app: MakeApp, canary: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a task that failed as unknown on a worker without include
    app = make_app()
    task_id = store_canary_task(app)
    app.run_until_empty()
    assert app.result(task_id).state == "failed" and not canary.exists()
    # When it is retried by hand and a worker that includes its module runs it
    assert main(["retry", str(tmp_path / "store"), task_id]) == EXIT_OK
    capsys.readouterr()
    worker = make_app(include=[CANARY_MODULE])
    worker.run_until_empty()
    # Then the module was imported (by that worker only) and the task ran with its kept payload
    assert canary.exists()
    assert worker.result(task_id).get(timeout=5) == "hello world"


def test_include_refuses_what_is_not_a_module_name(make_app: MakeApp) -> None:
    from liteq import ConfigurationError

    with pytest.raises(ConfigurationError, match="include"):
        make_app(include=["os; rm -rf /"])


# -- limits travel with the stored task ----------------------------------------------------------------


def test_limits_are_stored_with_the_task_and_old_rows_load(make_app: MakeApp, tmp_path: Path) -> None:
    # Given a task declared with limits
    app = make_app()
    task = app.task(name="tests.limit_tasks.sleep_for", timeout=3, soft_timeout=1, rate_limit="5/s")(
        limit_tasks.sleep_for.fn
    )
    r = task.delay(0)
    # When a worker without the app claims it, the limits come with it
    bare = make_app()
    (claimed,) = bare.storage.claim("w", ["default"], lease=30)
    assert (claimed.id, claimed.timeout, claimed.soft_timeout) == (r.id, 3.0, 1.0)
    conn = sqlite3.connect(tmp_path / "store" / DB_FILENAME)
    try:
        assert conn.execute("SELECT rate_limit FROM tasks WHERE id = ?", (r.id,)).fetchone() == (5.0,)
        # And a row stored before limits were stored (NULL) claims with none: the app's options apply
        conn.execute("UPDATE tasks SET timeout = NULL, soft_timeout = NULL, rate_limit = NULL")
        conn.commit()
    finally:
        conn.close()
    bare.storage.release([(claimed.id, claimed.lease_token)])
    (again,) = bare.storage.claim("w", ["default"], lease=30)
    assert (again.timeout, again.soft_timeout) == (None, None)


def _env(canary: Path) -> dict[str, str]:
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["LITEQ_CANARY"] = str(canary)
    return env


@pytest.mark.slow
def test_a_worker_without_the_app_enforces_stored_limits_and_imports_only_included_code(
    make_app: MakeApp, tmp_path: Path, reaper: Any, canary: Path
) -> None:
    # Given tasks declared with limits by a producer, and a task naming a module not included
    store = tmp_path / "store"
    producer = make_app()
    hard = producer.task(name="tests.limit_tasks.sleep_for", timeout=1.0)(limit_tasks.sleep_for.fn)
    soft = producer.task(name="tests.limit_tasks.soft_sleep", soft_timeout=0.5, timeout=20)(limit_tasks.soft_sleep.fn)
    stamp = producer.task(name="tests.limit_tasks.stamp", rate_limit="4/s")(limit_tasks.stamp.fn)
    killed = hard.delay(60)
    interrupted = soft.delay(60)
    stamps = [stamp.delay() for _ in range(4)]
    unknown = store_canary_task(producer)
    # When `liteq worker STORE` runs them, knowing only the store and the module to include
    proc = reaper.popen(
        [sys.executable, "-m", "liteq", "worker", str(store), "-c", "3", "--include", "tests.limit_tasks"],
        name="worker",
        env=_env(canary),
    )
    try:
        wait_for(
            lambda: all(producer.result(i).state in ("succeeded", "failed") for i in
                        [killed.id, interrupted.id, unknown, *(s.id for s in stamps)]),
            60,
            "every task to finish",
            interval=0.1,
        )  # fmt: skip
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    err = reaper.stderr("worker")
    # Then the hard limit killed the run, the soft limit interrupted it, the rate spread the starts
    with pytest.raises(TaskFailed) as caught:
        killed.get(timeout=1)
    assert caught.value.reason == "timeout", err
    assert interrupted.get(timeout=1) == "soft", err
    starts = sorted(s.get(timeout=1) for s in stamps)
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert min(gaps) >= 0.2, gaps  # 4/s: one start every 0.25 s across the store
    # And the module nobody included was never imported; its task failed as unknown
    assert not canary.exists()
    assert producer.result(unknown).state == "failed"
    assert producer.storage.get([unknown])[0].reason == "unknown task"  # type: ignore[union-attr]
