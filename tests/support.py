"""Helpers shared by the test modules: waiting on state with a deadline (never a fixed sleep), and
running a script in a process group of its own."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.01) -> T:
    """Poll ``predicate`` until it returns something truthy (returned); fail naming ``what`` after
    ``timeout`` seconds. The interval is how often state is looked at, not a wait for it."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def run_in_session(
    argv: list[str], *, cwd: Path, env: dict[str, str], timeout: float, what: str
) -> tuple[int, str, str]:
    """Run ``argv`` in a session of its own; return (exit code, stdout, stderr).

    On timeout the whole process group is killed (a pool the script started goes with it) and the
    test fails naming ``what``, with whatever the process printed."""
    proc = subprocess.Popen(
        argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{what} did not finish within {timeout}s\nstdout:\n{out}\nstderr:\n{err}")
    return proc.returncode, out, err
