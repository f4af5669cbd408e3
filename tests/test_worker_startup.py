"""What ``liteq worker`` loads and starts before its first task: no module a sync worker does not
use, and children forked from a zygote (:mod:`liteq.zygote`) instead of a second interpreter."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from liteq import LiteQ
from liteq import zygote as zygote_module
from liteq.zygote import single_threaded
from tests import pool_tasks
from tests.pool_support import Reaper, gone, pool_env, running_pool, wait_for, worker_cmd

pytestmark = pytest.mark.timeout(90)


def _modules_after(code: str) -> set[str]:
    """The modules a fresh interpreter holds after running ``code``."""
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_a_sync_worker_does_not_load_asyncio() -> None:
    # Given what the worker command, the supervisor and a child import
    code = "import liteq, liteq.cli, liteq.cli.worker, liteq.pool, liteq.child, liteq.worker, liteq.bootstrap"

    # When a fresh interpreter imports them
    modules = _modules_after(code)

    # Then asyncio (and what it drags in: ssl, concurrent.futures) is not among them
    assert "liteq.pool" in modules
    assert not {"asyncio", "liteq.aio", "concurrent.futures", "ssl"} & modules


def test_awaiting_a_result_still_works_without_an_import_at_the_top() -> None:
    # Given an app in immediate mode
    code = (
        "import asyncio\n"
        "from liteq import LiteQ\n"
        "app = LiteQ('memory://', immediate=True)\n"
        "@app.task\n"
        "def add(x, y):\n"
        "    return x + y\n"
        "async def main():\n"
        "    r = await add.adelay(2, 3)\n"
        "    assert await r == 5\n"
        "    assert await add.aapply_async((1, 1)) is not None\n"
        "asyncio.run(main())\n"
    )
    # When a coroutine enqueues and awaits, Then liteq.aio is loaded on demand
    assert "liteq.aio" in _modules_after(code)


# -- the zygote: children forked from a fork server forked from the supervisor -------------------------


def _family(reaper: Reaper, pid: int) -> dict[int, tuple[int, str]]:
    """``{pid: (parent pid, command line)}`` of every live descendant of ``pid``."""
    out = {}
    for p in reaper.descendants(pid):
        with contextlib.suppress(psutil.Error):
            out[p.pid] = (p.ppid(), " ".join(p.cmdline()))
    return out


def _start_default_pool(tmp_path: Path, reaper: Reaper, name: str = "pool") -> tuple[LiteQ, subprocess.Popen[bytes]]:
    store = tmp_path / "store"
    app = LiteQ(str(store))
    proc = reaper.popen(worker_cmd("-c", "2", "-l", "INFO"), name=name, env=pool_env(store))
    return app, proc


def _zygote_and_children(reaper: Reaper, supervisor: int) -> tuple[int, set[int]]:
    """The zygote's pid and its children's, once the pool has both children up."""

    def found() -> tuple[int, set[int]] | None:
        family = _family(reaper, supervisor)
        zygotes = [pid for pid, (parent, _) in family.items() if parent == supervisor]
        if len(zygotes) != 1:
            return None
        children = {pid for pid, (parent, _) in family.items() if parent == zygotes[0]}
        return (zygotes[0], children) if len(children) == 2 else None

    return wait_for(found, 30, "a zygote with two children")


def _pool_with_a_zygote(tmp_path: Path, reaper: Reaper) -> tuple[LiteQ, subprocess.Popen[bytes], Any, int, set[int]]:
    """A worker that ran one task, its ``add`` task, its zygote's pid and its children's."""
    app, proc = _start_default_pool(tmp_path, reaper)
    add = app.task(pool_tasks.add)
    assert add.delay(1, 1).get(timeout=30) == 2
    return (app, proc, add, *_zygote_and_children(reaper, proc.pid))


def test_a_worker_forks_its_children_from_a_zygote_and_starts_no_other_interpreter(
    tmp_path: Path, reaper: Reaper
) -> None:
    # Given `liteq worker APP -c 2` with the default start method
    app, proc = _start_default_pool(tmp_path, reaper)
    try:
        add = app.task(pool_tasks.add)

        # When it has run a task
        assert add.delay(2, 3).get(timeout=30) == 5

        # Then its only direct child is the zygote, a fork of the supervisor (same command line,
        # no fork server or resource tracker interpreter), and both task children are the zygote's
        zygote, children = _zygote_and_children(reaper, proc.pid)
        family = _family(reaper, proc.pid)
        assert set(family) == {zygote, *children}
        assert family[zygote][1] == " ".join(psutil.Process(proc.pid).cmdline())
        assert not any("forkserver" in cmd or "resource_tracker" in cmd for _, cmd in family.values())
        assert "forkserver (zygote)" in reaper.stderr("pool")
    finally:
        app.close()


def test_a_killed_zygote_is_replaced_by_the_standard_fork_server_and_the_pool_runs_on(
    tmp_path: Path, reaper: Reaper
) -> None:
    # Given a worker whose children come from a zygote
    app, proc, add, zygote, children = _pool_with_a_zygote(tmp_path, reaper)
    try:
        # When the zygote is SIGKILLed
        os.kill(zygote, signal.SIGKILL)

        # Then its orphaned children are gone (killed by the pool, or on their own), the pool starts
        # new ones from a spawned fork server, and tasks run again
        wait_for(lambda: all(gone(pid) for pid in children), 30, "the zygote's children to exit")
        assert [add.delay(i, 1).get(timeout=30) for i in range(4)] == [1, 2, 3, 4]
        assert proc.poll() is None, reaper.stderr("pool")
        assert "zygote died; children start from a spawned fork server now" in reaper.stderr("pool")
        family = _family(reaper, proc.pid)
        assert zygote not in family
        assert any("forkserver" in cmd for _, cmd in family.values())
    finally:
        app.close()


@pytest.mark.timeout(30)
def test_a_zygote_that_does_not_answer_is_killed_after_the_answer_timeout(
    reaper: Reaper, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a zygote that never answers (stopped or stuck: here a process that ignores its socket)
    monkeypatch.setattr(zygote_module, "ANSWER_TIMEOUT", 0.3)
    silent = reaper.popen([sys.executable, "-c", "import time; time.sleep(60)"], name="silent")
    ours, theirs = socket.socketpair()
    zygote = zygote_module.Zygote(silent.pid, ours)
    parent_end, child_end = multiprocessing.Pipe()
    try:
        # When the pool asks it for a child
        started = time.monotonic()
        with pytest.raises(zygote_module.ZygoteGone, match="did not answer"):
            zygote.start(0, child_end, 20, "liteq-child-0")

        # Then the supervisor waited only the answer timeout and the zygote was killed, so it
        # cannot fork that child later (the pool falls back to the standard fork server)
        assert time.monotonic() - started < 10
        assert silent.wait(10) == -signal.SIGKILL
    finally:
        for end in (theirs, parent_end, child_end):
            end.close()
        zygote.close(timeout=0)


def test_a_sigkilled_supervisor_takes_its_zygote_and_children_with_it(tmp_path: Path, reaper: Reaper) -> None:
    # Given a worker with its zygote and children up
    app, proc = _start_default_pool(tmp_path, reaper)
    try:
        assert app.task(pool_tasks.add).delay(1, 2).get(timeout=30) == 3
        zygote, children = _zygote_and_children(reaper, proc.pid)

        # When the supervisor is SIGKILLed
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(10) == -signal.SIGKILL

        # Then the zygote and the children exit within seconds
        wait_for(lambda: all(gone(pid) for pid in (zygote, *children)), 20, "the zygote and children to exit")
    finally:
        app.close()


def test_a_process_that_runs_threads_gets_the_standard_fork_server(make_app: Callable[..., LiteQ]) -> None:
    # Given an app in a process where another thread runs
    app = make_app()
    add = app.task(pool_tasks.add)
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait, name="busy", daemon=True)
    thread.start()
    try:
        # When a pool starts with the default start method
        with running_pool(app, concurrency=1) as pool:
            assert add.delay(2, 2).get(timeout=30) == 4

            # Then no zygote was forked (forking a multi-threaded process is unsafe): the one
            # child comes from the standard fork server, not from a fork of this process
            children = psutil.Process().children()
            assert pool.start_method == "forkserver"
            assert any("forkserver" in " ".join(p.cmdline()) for p in children)
            assert all(c.pid not in {p.pid for p in children} for c in pool.children)
    finally:
        stop.set()
        thread.join(10)


def test_single_threaded_counts_the_kernels_threads() -> None:
    # Given this process, When another thread runs, Then it is not single-threaded
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait, daemon=True)
    thread.start()
    try:
        assert not single_threaded()
    finally:
        stop.set()
        thread.join(10)
