"""Helpers for the process-pool tests: waiting on state, the run log, release gates, processes.

Nothing here sleeps for a fixed time to let something happen: :func:`tests.support.wait_for`
(re-exported) polls a predicate until it holds or a deadline passes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from tests.support import wait_for

if TYPE_CHECKING:
    from liteq import LiteQ
    from liteq.pool import WorkerPool

#: The repository root: subprocesses run here so that ``tests`` is importable.
ROOT = Path(__file__).resolve().parent.parent
#: Every start method the crash tests run under.
START_METHODS = ("fork", "forkserver", "spawn")


@dataclass(frozen=True)
class Event:
    """One line of the run log: ``kind`` is ``start`` or ``end``."""

    kind: str
    key: str
    attempt: int
    pid: int


class RunLog:
    """The append-only log the tasks of :mod:`tests.pool_tasks` write, outside the store."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def events(self) -> list[Event]:
        """Every complete line written so far."""
        try:
            text = Path(self.path).read_text()
        except FileNotFoundError:
            return []
        out = []
        for line in text.splitlines():
            parts = line.split()
            if len(parts) == 4 and parts[0] in ("start", "end"):
                out.append(Event(parts[0], parts[1], int(parts[2]), int(parts[3])))
        return out

    def starts(self, key: str | None = None) -> list[Event]:
        """``start`` events, of one key or all."""
        return [e for e in self.events() if e.kind == "start" and (key is None or e.key == key)]

    def started(self, key: str, attempt: int = 1) -> Event | None:
        """The start of ``key``'s ``attempt``, once it is logged."""
        for e in self.starts(key):
            if e.attempt == attempt:
                return e
        return None

    def wait_started(self, key: str, attempt: int = 1, timeout: float = 20.0) -> Event:
        """Wait for the start of ``key``'s ``attempt``."""
        return wait_for(lambda: self.started(key, attempt), timeout, f"{key} attempt {attempt} to start")

    def runs_per_key(self) -> dict[str, int]:
        """How many times each key started."""
        counts: dict[str, int] = {}
        for e in self.starts():
            counts[e.key] = counts.get(e.key, 0) + 1
        return counts


class Gate:
    """Release files for :func:`tests.pool_tasks.block` (see that module's doc)."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.dir = str(directory)

    def release(self, key: str, attempt: int | None = None) -> None:
        """Let ``key`` (one attempt, or every attempt) finish."""
        name = key if attempt is None else f"{key}.{attempt}"
        Path(self.dir, name).touch()

    def release_all(self) -> None:
        """Let every blocked task finish."""
        Path(self.dir, "all").touch()


def gone(pid: int) -> bool:
    """True once ``pid`` no longer runs (exited, or a zombie nobody reaped yet)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def child_pids(pool: WorkerPool) -> set[int]:
    """The pids of a pool's live children."""
    return {c.pid for c in list(pool.children) if c.process.is_alive()}


def full_pool(pool: WorkerPool) -> set[int]:
    """The pool's child pids once it has ``concurrency`` live, ready children; else an empty set."""
    children = list(pool.children)
    if len(children) != pool.concurrency or not all(c.ready and c.process.is_alive() for c in children):
        return set()
    return {c.pid for c in children}


@contextlib.contextmanager
def running_pool(app: LiteQ, gate: Gate | None = None, **options: Any) -> Iterator[WorkerPool]:
    """``app.workers(**options)`` with a short shutdown timeout that releases every blocked task
    before it stops, so a failing test never waits out a hung task."""
    options.setdefault("shutdown_timeout", 10.0)
    with app.workers(**options) as pool:
        try:
            yield pool
        finally:
            if gate is not None:
                gate.release_all()


class Reaper:
    """Processes a test started: killed by pid (with their descendants) at teardown, even on failure."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.popens: list[subprocess.Popen[bytes]] = []
        self.procs: list[psutil.Process] = []
        self._files: list[Any] = []

    def watch(self, pid: int) -> None:
        """Kill ``pid`` at teardown if it still runs (psutil refuses a pid that was reused)."""
        with contextlib.suppress(psutil.NoSuchProcess):
            self.procs.append(psutil.Process(pid))

    def popen(self, args: list[str], *, name: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start ``args`` in the repository root; stdout and stderr go to ``<tmp>/<name>.out|.err``."""
        out = open(self.tmp / f"{name}.out", "wb")  # noqa: SIM115  closed at teardown
        err = open(self.tmp / f"{name}.err", "wb")  # noqa: SIM115
        self._files += [out, err]
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=err)
        self.popens.append(proc)
        self.watch(proc.pid)
        return proc

    def stderr(self, name: str) -> str:
        """What the process started as ``name`` wrote to stderr so far."""
        return (self.tmp / f"{name}.err").read_text(errors="replace")

    def descendants(self, pid: int) -> list[psutil.Process]:
        """Every live descendant of ``pid`` (children, fork server, their children), now watched too."""
        try:
            found = psutil.Process(pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        self.procs += found
        return found

    def cleanup(self) -> None:
        """SIGKILL every watched process still running, its descendants first; reap our children."""
        for p in list(self.procs):
            with contextlib.suppress(psutil.Error):
                self.procs += p.children(recursive=True)
        for p in reversed(self.procs):
            with contextlib.suppress(psutil.Error):
                p.kill()
        for proc in self.popens:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
        for f in self._files:
            f.close()


def pool_env(store: Path, lease: float = 60.0, busy_timeout: float = 5.0) -> dict[str, str]:
    """The environment of a pool subprocess running :mod:`tests.pool_app` on ``store``."""
    env = dict(os.environ)
    env["LITEQ_TEST_STORE"] = str(store)
    env["LITEQ_TEST_LEASE"] = str(lease)
    env["LITEQ_TEST_BUSY_TIMEOUT"] = str(busy_timeout)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def worker_cmd(*args: str) -> list[str]:
    """``python -m liteq worker tests.pool_app:app ARGS``."""
    return [sys.executable, "-m", "liteq", "worker", "tests.pool_app:app", *args]


def run_worker_cmd(**options: Any) -> list[str]:
    """``python -m tests.pool_app OPTIONS_JSON``: ``app.run_worker(**options)`` in the foreground."""
    import json

    return [sys.executable, "-m", "tests.pool_app", json.dumps(options)]


def registered(app: LiteQ, pid: int) -> dict[str, Any] | None:
    """The worker entry ``app.stats()`` shows for the pool whose supervisor is ``pid``."""
    for w in app.stats()["workers"]:
        if w["pid"] == pid:
            return dict(w)
    return None
