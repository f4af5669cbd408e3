"""The process pool, working as intended: ``app.workers()``, ``run_worker`` / ``liteq worker``,
progress, logs from children, ``--reload``, and the pool's record in the store.

Real child processes throughout; every wait is on observed state with a deadline. The fault tests
(killed children and supervisors, signals, time limits) are in ``tests/test_pool_faults.py``.
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from liteq import LiteQ, Progress, TaskFailed, UnknownTask
from tests import pool_tasks
from tests.pool_support import (
    ROOT,
    Gate,
    Reaper,
    RunLog,
    child_pids,
    full_pool,
    pool_env,
    registered,
    running_pool,
    wait_for,
    worker_cmd,
)


class Capture(logging.Handler):
    """Keeps every record it handles (from any thread)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._lock2 = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        with self._lock2:
            self.records.append(record)

    def matching(self, text: str) -> list[logging.LogRecord]:
        with self._lock2:
            return [r for r in self.records if text in r.getMessage()]


@pytest.fixture
def capture() -> Iterator[Capture]:
    """A :class:`Capture` on the root logger, installed before any pool starts."""
    handler = Capture()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)


# -- basics ------------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_workers_runs_tasks_and_results_come_back(make_app: Callable[..., LiteQ]) -> None:
    # Given an app with a task and a pool of two children
    app = make_app()
    add = app.task(pool_tasks.add)
    with running_pool(app, concurrency=2) as pool:
        # When tasks are enqueued one by one and in a batch
        single = add.delay(2, 3)
        batch = app.enqueue_many([add.s(i, i) for i in range(20)])

        # Then every result comes back, computed in the children
        assert single.get(timeout=20) == 5
        assert [r.get(timeout=20) for r in batch] == [2 * i for i in range(20)]
        assert len(full_pool(pool)) == 2
        assert os.getpid() not in child_pids(pool)
    assert app.stats()["states"] == {"succeeded": 21}


@pytest.mark.timeout(60)
def test_progress_reported_in_a_child_is_visible_to_the_caller(
    make_app: Callable[..., LiteQ], runlog: RunLog, gate: Gate
) -> None:
    # Given a task that reports progress, then blocks until released
    app = make_app()
    task = app.task(pool_tasks.progress_then_block)
    with running_pool(app, gate, concurrency=1):
        result = task.delay(runlog.path, gate.dir, "p")

        # When it has reported half way
        # Then the caller sees that progress while the task still runs
        assert wait_for(lambda: result.progress, 15, "progress to reach the store") == Progress(0.5, "half way")
        assert result.state == "running"

        # And once released, it finishes with its value
        gate.release("p")
        assert result.get(timeout=15) == "p.1"


@pytest.mark.timeout(60)
def test_pool_registers_itself_while_running_and_unregisters_after(make_app: Callable[..., LiteQ]) -> None:
    # Given an app with no worker
    app = make_app()
    app.task(pool_tasks.add)
    assert app.stats()["workers"] == []

    # When a pool runs
    with running_pool(app, concurrency=2) as pool:
        # Then it is listed with its id, this process's pid, its concurrency and queues
        (worker,) = app.stats()["workers"]
        assert worker["id"] == pool.id
        assert worker["pid"] == os.getpid()
        assert worker["concurrency"] == 2
        assert worker["queues"] == ["default"]

    # And after it stopped it is gone
    assert app.stats()["workers"] == []


@pytest.mark.timeout(90)
def test_workers_inside_an_app_that_already_runs_threads(make_app: Callable[..., LiteQ]) -> None:
    # Given an application with busy threads: some compute, some take and release locks
    # (the classic deadlock of forking a multi-threaded process is a lock another thread held)
    app = make_app()
    add = app.task(pool_tasks.add)
    stop = threading.Event()
    shared = threading.Lock()

    def busy() -> None:
        n = 0
        while not stop.is_set():
            with shared:
                n += sum(range(200))
            logging.getLogger("tests.busy").debug("tick %d", n)

    threads = [threading.Thread(target=busy, name=f"busy-{i}", daemon=True) for i in range(4)]
    for t in threads:
        t.start()
    try:
        # When the app starts a pool with the default start method and runs tasks
        with running_pool(app, concurrency=2) as pool:
            results = app.enqueue_many([add.s(i, 1) for i in range(30)])

            # Then the children start and every task completes
            assert [r.get(timeout=30) for r in results] == [i + 1 for i in range(30)]
            assert len(full_pool(pool)) == 2
            assert pool.start_method in ("forkserver", "spawn")
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert not any(t.is_alive() for t in threads)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("start_method", ["forkserver", "spawn"])
def test_unknown_task_fails_naming_the_module(make_app: Callable[..., LiteQ], start_method: str) -> None:
    # Given a task whose name points at a module the children cannot import
    app = make_app()

    def ghost() -> None:  # local: a child can never import it
        """Never runs."""

    task = app.task(name="ghost_module_for_liteq_tests.ghost")(ghost)
    add = app.task(pool_tasks.add)
    with running_pool(app, concurrency=1, start_method=start_method):
        # When it is enqueued
        result = task.delay()

        # Then it fails with reason 'unknown task' and a message naming the module to fix
        with pytest.raises(TaskFailed) as info:
            result.get(timeout=20)
        assert info.value.reason == "unknown task"
        assert info.value.type.endswith(UnknownTask.__name__)
        assert "ghost_module_for_liteq_tests" in info.value.message
        # And the pool keeps working
        assert add.delay(1, 1).get(timeout=20) == 2


# -- another process ---------------------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_producer_here_pool_in_another_process_cli(
    tmp_path: Path, make_app: Callable[..., LiteQ], reaper: Reaper, runlog: RunLog
) -> None:
    # Given a pool started as `liteq worker tests.pool_app:app -c 1` in its own process
    store = tmp_path / "store"
    app = make_app(store)
    record = app.task(pool_tasks.record)
    proc = reaper.popen(
        [str(Path(sys.executable).parent / "liteq"), "worker", "tests.pool_app:app", "-c", "1"],
        name="cli",
        env=pool_env(store),
    )
    worker = wait_for(lambda: registered(app, proc.pid), 30, "the CLI pool to register")
    assert worker["concurrency"] == 1

    # When this process enqueues tasks
    results = [record.delay(runlog.path, f"k{i}") for i in range(10)]

    # Then the other process runs them, each once, in its child, and the results come back here
    assert [r.get(timeout=30) for r in results] == [f"k{i}" for i in range(10)]
    assert runlog.runs_per_key() == {f"k{i}": 1 for i in range(10)}
    assert {e.pid for e in runlog.starts()} - {proc.pid, os.getpid()} == {e.pid for e in runlog.starts()}

    # And SIGTERM stops it with exit code 0, unregistered
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0, reaper.stderr("cli")
    assert registered(app, proc.pid) is None


@pytest.mark.timeout(90)
def test_pool_here_producer_in_another_process(
    tmp_path: Path, make_app: Callable[..., LiteQ], reaper: Reaper, runlog: RunLog
) -> None:
    # Given a pool in this process on a store on disk
    store = tmp_path / "store"
    app = make_app(store)
    app.task(pool_tasks.record)
    app.task(pool_tasks.add)
    with running_pool(app, concurrency=2):
        # When another process enqueues tasks through tests.pool_app and waits for their results
        script = (
            "from tests.pool_app import app\n"
            "from tests import pool_tasks\n"
            "rs = [app.tasks['tests.pool_tasks.add'].delay(i, 10) for i in range(20)]\n"
            "print(sum(r.get(timeout=30) for r in rs))\n"
            "app.close()\n"
        )
        proc = reaper.popen([sys.executable, "-c", script], name="producer", env=pool_env(store))

        # Then it gets every result
        assert proc.wait(60) == 0, reaper.stderr("producer")
    assert (tmp_path / "producer.out").read_text().strip() == str(sum(range(20)) + 200)
    assert app.stats()["states"] == {"succeeded": 20}


@pytest.mark.timeout(90)
def test_python_m_liteq_worker_runs_tasks_and_stops_on_sigterm(
    tmp_path: Path, make_app: Callable[..., LiteQ], reaper: Reaper
) -> None:
    # Given `python -m liteq worker tests.pool_app:app -c 2 --start-method spawn` in a subprocess
    store = tmp_path / "store"
    app = make_app(store)
    add = app.task(pool_tasks.add)
    proc = reaper.popen(worker_cmd("-c", "2", "--start-method", "spawn"), name="worker", env=pool_env(store))
    wait_for(lambda: registered(app, proc.pid), 30, "the pool to register")

    # When tasks are enqueued
    results = app.enqueue_many([add.s(i, 2) for i in range(10)])

    # Then they run; and the process exits 0 on SIGTERM, having logged its stop
    assert [r.get(timeout=30) for r in results] == [i + 2 for i in range(10)]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0, reaper.stderr("worker")
    assert "stopped after 10 task(s)" in reaper.stderr("worker")


# -- logs --------------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("start_method", [None, "fork", "forkserver", "spawn"])  # None: the default (a zygote)
def test_child_log_records_reach_parent_handlers_with_task_fields(
    make_app: Callable[..., LiteQ], capture: Capture, start_method: str | None
) -> None:
    # Given a handler on the root logger of this process, installed before the pool starts
    app = make_app()
    warn = app.task(pool_tasks.warn)
    with running_pool(app, concurrency=1, start_method=start_method):
        # When a task in a child logs a warning
        text = f"hello from a child {uuid.uuid4().hex}"
        result = warn.delay(text)
        assert result.get(timeout=20) == text

        # Then the record reaches the handler here, with the task's id and name
        (record,) = wait_for(lambda: capture.matching(text), 15, "the child's record")
    assert record.levelno == logging.WARNING
    assert record.name == "tests.pool_tasks"
    assert getattr(record, "task_id", None) == result.id
    assert getattr(record, "task_name", None) == "tests.pool_tasks.warn"
    assert record.process != os.getpid()


# -- reload ------------------------------------------------------------------------------------------

RELOAD_MODULE = '''\
"""An app module for the --reload test; version {version}."""
from liteq import LiteQ

app = LiteQ({store!r})


@app.task
def version() -> int:
    return {version}
'''


def _write_atomically(path: Path, text: str) -> None:
    # One "moved" event with the whole content: a plain rewrite first truncates the file, and the
    # watcher could compile (and accept) the empty intermediate state.
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_reload_replaces_children_on_change_and_keeps_them_on_syntax_error(
    tmp_path: Path, capture: Capture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an app module in its own directory, and a pool over it with reload=True
    src = tmp_path / "src"
    src.mkdir()
    name = f"reloadmod_{uuid.uuid4().hex[:8]}"
    module_path = src / f"{name}.py"
    store = str(tmp_path / "store")
    module_path.write_text(RELOAD_MODULE.format(store=store, version=1))
    monkeypatch.syspath_prepend(str(src))
    module = importlib.import_module(name)
    app: LiteQ = module.app
    try:
        with running_pool(app, concurrency=2, reload=True) as pool:
            assert pool.start_method == "spawn"
            first = wait_for(lambda: full_pool(pool), 30, "two ready children")
            assert app.tasks[f"{name}.version"].delay().get(timeout=20) == 1

            # When the module changes
            _write_atomically(module_path, RELOAD_MODULE.format(store=store, version=2) + "# edited\n")

            # Then every child is replaced, and the new children run the new code
            second = wait_for(
                lambda: (p := full_pool(pool)) and not (p & first) and p, 30, "children replaced after the change"
            )
            assert app.tasks[f"{name}.version"].delay().get(timeout=20) == 2

            # When the module is saved with a syntax error
            _write_atomically(module_path, "def broken(:\n")

            # Then the error is logged and the children are kept
            wait_for(lambda: capture.matching("does not compile"), 30, "the syntax error to be logged")
            assert app.tasks[f"{name}.version"].delay().get(timeout=20) == 2
            assert full_pool(pool) == second
    finally:
        app.close()
        sys.modules.pop(name, None)


RELOAD_BLOCK_MODULE = '''\
"""An app module for the --reload test with queued tasks; version {version}."""
from liteq import LiteQ
from tests import pool_tasks

app = LiteQ({store!r})
block = app.task(pool_tasks.block)
'''


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_reload_runs_a_task_waiting_in_a_child_pipe_once(
    tmp_path: Path, runlog: RunLog, gate: Gate, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a reloading pool with one child running task a, task b waiting in its pipe
    src = tmp_path / "src"
    src.mkdir()
    name = f"reloadblock_{uuid.uuid4().hex[:8]}"
    module_path = src / f"{name}.py"
    store = str(tmp_path / "store")
    module_path.write_text(RELOAD_BLOCK_MODULE.format(store=store, version=1))
    monkeypatch.syspath_prepend(str(src))
    module = importlib.import_module(name)
    app: LiteQ = module.app
    try:
        with running_pool(app, gate, concurrency=1, reload=True) as pool:
            (old,) = wait_for(lambda: full_pool(pool), 30, "a ready child")
            a = module.block.delay(runlog.path, gate.dir, "a")
            b = module.block.delay(runlog.path, gate.dir, "b")
            runlog.wait_started("a")
            wait_for(lambda: len(pool.children[0].queue) == 2, 10, "b to wait in the child's pipe")

            # When the source changes, then every task is released
            _write_atomically(module_path, RELOAD_BLOCK_MODULE.format(store=store, version=2) + "# edited\n")
            wait_for(lambda: pool.children[0].retiring, 20, "the reload to retire the child")
            gate.release_all()
            assert [a.get(timeout=30), b.get(timeout=30)] == ["a.1", "b.1"]
            wait_for(lambda: (p := full_pool(pool)) and old not in p, 30, "the child to be replaced")

        # Then each task ran once: a in the old child, b in the new one
        assert runlog.runs_per_key() == {"a": 1, "b": 1}
        started_b = runlog.started("b")
        assert started_b is not None and started_b.pid != old
    finally:
        app.close()
        sys.modules.pop(name, None)


# -- the command line, with its signal handling -------------------------------------------------------


@pytest.mark.timeout(60)
def test_cli_worker_bad_app_exits_with_an_error(tmp_path: Path) -> None:
    # Given an app reference that does not import
    # When `liteq worker` is started with it
    proc = subprocess.run(
        [sys.executable, "-m", "liteq", "worker", "no_such_module_xyz:app", "-c", "1"],
        cwd=ROOT,
        env=pool_env(tmp_path / "store"),
        capture_output=True,
        timeout=30,
    )

    # Then it exits 1 with a one-line error naming the module, and no traceback
    assert proc.returncode == 1
    assert b"no_such_module_xyz" in proc.stderr
    assert b"Traceback" not in proc.stderr
