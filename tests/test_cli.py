"""The ``liteq`` command: inspection and repair of a store, run through ``liteq.cli.main``."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from liteq import LiteQ
from liteq.cli import EXIT_ERROR, EXIT_NOT_FOUND, EXIT_OK, EXIT_USAGE, main, parse_size
from liteq.storage.sqlite import DB_FILENAME, SCHEMA_VERSION
from tests import tasks

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """A store holding one succeeded, one failed and one pending task."""
    path = tmp_path / "store"
    app = LiteQ(path)
    add = app.task(tasks.add)
    fail = app.task(tasks.fail)
    add.delay(1, 2)
    fail.delay("broken on purpose")
    app.run_until_empty()
    add.delay(5, 5)
    app.close()
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_status_counts_tasks_by_queue_and_state(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # When status is asked for, as a table and as JSON
    code, out, _ = run(capsys, "status", str(store))
    jcode, jout, _ = run(capsys, "status", str(store), "--json")
    # Then both show one task in each state the fixture made
    assert code == EXIT_OK and "default" in out and "workers: none" in out
    report = json.loads(jout)
    assert jcode == EXIT_OK
    assert report["states"] == {"succeeded": 1, "failed": 1, "pending": 1}
    assert report["failed"] == 1 and report["oldest_pending_age"] is not None


def test_status_throughput_comes_from_the_stores_history(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Given the fixture's two finished tasks, deleted afterwards
    app = LiteQ(store)
    assert app.purge(states=["succeeded", "failed"]) == 2
    app.close()
    # When status is asked for
    code, out, _ = run(capsys, "status", str(store), "--json")
    # Then the finishes still count: throughput comes from the per-minute history, not the rows
    assert code == EXIT_OK and json.loads(out)["throughput_last_minute"] == 2


def test_tasks_lists_with_filters_and_short_errors(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # When failed tasks are listed
    code, out, _ = run(capsys, "tasks", str(store), "--state", "failed")
    jcode, jout, _ = run(capsys, "tasks", str(store), "--state", "pending", "--json")
    # Then the failed one shows with its name; the JSON lists the pending one
    assert code == EXIT_OK and "tests.tasks.fail" in out and "failed" in out
    rows = json.loads(jout)
    assert jcode == EXIT_OK and [r["state"] for r in rows] == ["pending"]


def test_show_decodes_arguments_and_every_error(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Given the failed task's id
    app = LiteQ(store)
    (row,) = app.storage.list(states=["failed"])
    app.close()
    # When it is shown
    code, out, _ = run(capsys, "show", str(store), row.id)
    jcode, jout, _ = run(capsys, "show", str(store), row.id, "--json")
    # Then its arguments, its error and traceback are there
    assert code == EXIT_OK and "broken on purpose" in out and "Traceback" in out
    info = json.loads(jout)
    assert jcode == EXIT_OK
    assert info["args"] == ["broken on purpose"] and info["errors"][0]["type"] == "ValueError"


def test_show_of_an_unknown_id_exits_not_found(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "show", str(store), "nope")
    assert code == EXIT_NOT_FOUND and "no task nope" in err


def test_retry_all_failed_puts_them_back(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # When every failed task is retried
    code, out, err = run(capsys, "retry", str(store), "--all-failed")
    # Then it is pending again, with plain progress lines when not on a terminal
    assert code == EXIT_OK and "retried 1 of 1" in out and "retrying: 1/1" in err
    app = LiteQ(store)
    assert app.stats()["states"] == {"succeeded": 1, "pending": 2}
    app.close()


def test_retry_needs_ids_or_all_failed(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, _ = run(capsys, "retry", str(store))
    assert code == EXIT_USAGE


def test_cancel_reports_each_state_and_unknown_ids(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Given the pending task
    app = LiteQ(store)
    (row,) = app.storage.list(states=["pending"])
    app.close()
    # When it and an unknown id are cancelled
    code, out, _ = run(capsys, "cancel", str(store), row.id, "missing")
    # Then the first is cancelled, the second reported, and the exit code says one was not found
    assert f"{row.id}: cancelled" in out and "missing: not found" in out
    assert code == EXIT_NOT_FOUND


def test_purge_asks_unless_yes(
    store: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a "no" on standard input, then nothing is deleted
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO("n\n"))
    code, out, _ = run(capsys, "purge", str(store), "--state", "failed")
    assert code == EXIT_OK and "nothing deleted" in out
    # When --yes is given, then the failed task is gone and the rest stays
    code, out, _ = run(capsys, "purge", str(store), "--state", "failed", "--yes")
    assert code == EXIT_OK and "deleted 1 task(s)" in out
    app = LiteQ(store)
    assert app.stats()["states"] == {"succeeded": 1, "pending": 1}
    app.close()


def test_enqueue_with_json_arguments(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an importable module holding an app
    monkeypatch.setenv("LITEQ_TEST_STORE", str(tmp_path / "cli-store"))
    module = tmp_path / "cli_app.py"
    module.write_text(
        "import os\nfrom liteq import LiteQ\napp = LiteQ(os.environ['LITEQ_TEST_STORE'])\n"
        "@app.task(name='mul')\ndef mul(x, y):\n    return x * y\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    # When a task is enqueued from the command line
    code, out, _ = run(capsys, "enqueue", "cli_app:app", "mul", "--args", "[6, 7]")
    # Then its id is printed and it runs with those arguments
    assert code == EXIT_OK
    app = LiteQ(tmp_path / "cli-store")
    app.task(name="mul")(lambda x, y: x * y)
    app.run_until_empty()
    assert app.result(out.strip()).get(timeout=5) == 42
    app.close()
    # And bad JSON is a usage error
    code, _, _ = run(capsys, "enqueue", "cli_app:app", "mul", "--args", "[6,")
    assert code == EXIT_USAGE


def test_missing_store_is_one_line_not_a_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "status", str(tmp_path / "nowhere"))
    assert code == EXIT_ERROR and "no liteq store" in err and "Traceback" not in err + out


def test_store_from_a_newer_liteq_says_to_upgrade(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Given a store whose schema is newer than this liteq
    conn = sqlite3.connect(store / DB_FILENAME)
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    # When it is opened from the command line, then one line says what to do
    code, _, err = run(capsys, "status", str(store))
    assert code == EXIT_ERROR and "upgrade liteq" in err and "Traceback" not in err


def test_locked_store_is_one_line(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Given another connection holding the write lock past the busy timeout (5 s)
    holder = sqlite3.connect(store / DB_FILENAME, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        # When a command that writes runs, then it reports the lock in one line
        code, _, err = run(capsys, "retry", str(store), "--all-failed")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert code == EXIT_ERROR and "locked" in err and "Traceback" not in err


def test_every_command_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    for command in (
        "worker",
        "status",
        "tasks",
        "show",
        "retry",
        "cancel",
        "purge",
        "enqueue",
        "periodic",
        "scheduler",
    ):
        code, out, _ = run(capsys, command, "--help")
        assert code == EXIT_OK and "Usage:" in out, command


@pytest.mark.parametrize(
    ("text", "size"), [("500000", 500_000), ("200MB", 200_000_000), ("1.5GiB", 1_610_612_736), ("64 kib", 65_536)]
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


def test_worker_start_up_loads_neither_the_dashboard_nor_the_cluster_package() -> None:
    # Given a fresh interpreter that asks for `liteq worker --help` (a worker's start-up, minus the pool)
    probe = (
        "import contextlib, io, sys\n"
        "from liteq.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    code = main(['worker', '--help'])\n"
        "print(code, ' '.join(sorted(m for m in sys.modules if m.startswith('liteq'))))\n"
    )
    # When it runs
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    code, loaded = done.stdout.split(" ", 1)
    modules = set(loaded.split())
    # Then only the worker's command module was imported: no dashboard, cluster, or other command
    assert code == str(EXIT_OK)
    assert "liteq.cli.worker" in modules
    assert not {m for m in modules if m.startswith(("liteq.dashboard", "liteq.cluster"))}, sorted(modules)
    assert not modules & {"liteq.cli.status", "liteq.cli.tasks", "liteq.cli.cluster", "liteq.cli.dashboard"}


def test_help_lists_every_command_from_its_module(capsys: pytest.CaptureFixture[str]) -> None:
    # Given the top-level help, which loads each command's module to read its summary
    code, out, _ = run(capsys, "--help")
    # Then every command is listed, the cluster and dashboard ones too
    assert code == EXIT_OK
    listed = {line.split()[0] for line in out.split("Commands:", 1)[1].splitlines() if line.strip()}
    assert listed == {
        "cancel", "control", "dashboard", "enqueue", "periodic", "purge", "retry",
        "scheduler", "serve", "show", "status", "tasks", "worker",
    }  # fmt: skip
