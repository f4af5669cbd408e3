"""A worker child that dies while the pool starts: killed by a signal (replaced) or failing to import.

The pool runs in a subprocess (``liteq worker tests.pool_app:app``) whose children import
:mod:`tests.pool_app`; ``LITEQ_TEST_DIE_AT_START`` makes the first children SIGKILL themselves at
that import, before they can report ready.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from liteq import LiteQ
from liteq.pool import STARTUP_RESPAWNS
from tests import pool_tasks
from tests.pool_support import Reaper, pool_env, worker_cmd

pytestmark = pytest.mark.timeout(90)


@pytest.mark.parametrize("start_method", ["forkserver", "spawn"])
def test_child_killed_before_ready_is_replaced_and_the_pool_runs(
    tmp_path: Path, reaper: Reaper, start_method: str
) -> None:
    store = tmp_path / "q.db"
    dies = tmp_path / "dies"
    dies.mkdir()
    env = pool_env(store)
    env["LITEQ_TEST_DIE_AT_START"] = f"{dies}:2"  # both first children die; their replacements start
    proc = reaper.popen(worker_cmd("-c", "2", "--start-method", start_method), name="pool", env=env)
    app = LiteQ(str(store))
    try:
        add = app.task(pool_tasks.add)
        result = add.delay(2, 3)
        assert result.get(timeout=60) == 5
        assert proc.poll() is None, reaper.stderr("pool")
        assert sorted(p.name for p in dies.iterdir()) == ["die-0", "die-1"]
        assert "was killed by SIGKILL while starting; starting another" in reaper.stderr("pool")
    finally:
        app.close()


def test_child_killed_at_every_start_ends_start_up_after_the_bound(tmp_path: Path, reaper: Reaper) -> None:
    dies = tmp_path / "dies"
    dies.mkdir()
    env = pool_env(tmp_path / "q.db")
    env["LITEQ_TEST_DIE_AT_START"] = f"{dies}:1000"  # every child dies
    proc = reaper.popen(worker_cmd("-c", "1", "--start-method", "forkserver"), name="pool", env=env)
    assert proc.wait(60) != 0
    err = reaper.stderr("pool")
    assert f"worker child 0 was killed by SIGKILL while starting, {STARTUP_RESPAWNS + 1} times" in err
    assert "import error" not in err
    assert len(list(dies.iterdir())) == STARTUP_RESPAWNS + 1


def test_child_that_cannot_import_the_app_ends_start_up_as_an_import_error(tmp_path: Path, reaper: Reaper) -> None:
    env = pool_env(tmp_path / "q.db")
    env["LITEQ_TEST_DIE_AT_START"] = "no-colon-here"  # the hook's own ValueError: the app does not import
    proc = reaper.popen(worker_cmd("-c", "1", "--start-method", "forkserver"), name="pool", env=env)
    assert proc.wait(60) != 0
    err = reaper.stderr("pool")
    assert "worker child exited with code 1 while starting" in err
    assert "import error" in err
    assert "ValueError" in err  # the child's own traceback reaches the supervisor's stderr
