"""Importable task functions for the process-pool tests (``tests/test_pool*.py``).

Pool children rebuild the app from its spec and re-register each task from its module and
qualname, so every task here is a plain module-level function. Tasks that the tests need to
observe write one line per event to an append-only log outside the store under test, with a
single ``O_APPEND`` write each (atomic between processes; a SIGKILL loses at most that line):

    start <key> <attempt> <pid>
    end <key> <attempt> <pid>

Tasks that must stay running until the test says so wait for a release file to appear in a
directory the test controls: ``<key>.<attempt>`` releases one attempt, ``<key>`` every attempt of
that key and ``all`` everything. They give up after :data:`MAX_BLOCK` seconds so that a broken
pool never leaves a process behind for long.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import threading
import time
from typing import Any

from liteq import SoftTimeLimit, current

#: The longest a blocking task waits for its release file (seconds).
MAX_BLOCK = 90.0
#: How often a blocking task looks for its release file (seconds).
POLL = 0.01

logger = logging.getLogger("tests.pool_tasks")


def append_line(path: str, line: str) -> None:
    """Append one line to ``path`` in a single ``O_APPEND`` write."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line.rstrip("\n") + "\n").encode())
    finally:
        os.close(fd)


def _released(release_dir: str, key: str, attempt: int) -> bool:
    return any(os.path.exists(os.path.join(release_dir, n)) for n in (f"{key}.{attempt}", key, "all"))


def record(log: str, key: str) -> str:
    """Log one run (``start`` and ``end`` lines) and return ``key``."""
    attempt = current().attempt
    append_line(log, f"start {key} {attempt} {os.getpid()}")
    append_line(log, f"end {key} {attempt} {os.getpid()}")
    return key


def block(log: str, release_dir: str, key: str) -> str:
    """Log the start, wait for a release file (see the module doc), log the end; return ``key.attempt``."""
    attempt = current().attempt
    append_line(log, f"start {key} {attempt} {os.getpid()}")
    deadline = time.monotonic() + MAX_BLOCK
    while not _released(release_dir, key, attempt):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{key} attempt {attempt} was never released")
        time.sleep(POLL)
    append_line(log, f"end {key} {attempt} {os.getpid()}")
    return f"{key}.{attempt}"


def stubborn(log: str, release_dir: str, key: str) -> str:
    """Like :func:`block`, but swallows every exception raised into it (a cancel, a soft limit)."""
    attempt = current().attempt
    append_line(log, f"start {key} {attempt} {os.getpid()}")
    deadline = time.monotonic() + MAX_BLOCK
    while time.monotonic() < deadline:
        try:
            while not _released(release_dir, key, attempt) and time.monotonic() < deadline:
                time.sleep(POLL)
            break
        except BaseException as exc:  # refusing to stop is the point
            append_line(log, f"ignored {type(exc).__name__} {os.getpid()}")
    append_line(log, f"end {key} {attempt} {os.getpid()}")
    return f"{key}.{attempt}"


def progress_then_block(log: str, release_dir: str, key: str) -> str:
    """Report progress 0.5 "half way", then :func:`block`."""
    current().progress(0.5, "half way")
    return block(log, release_dir, key)


def kill_self() -> None:
    """A poison task: SIGKILL the process running it, every time."""
    os.kill(os.getpid(), signal.SIGKILL)


def exit_hard() -> None:
    """A poison task: leave the process at once with ``os._exit(3)``, skipping every cleanup."""
    os._exit(3)


def sleep_forever() -> None:
    """Hang in ``time.sleep``."""
    time.sleep(1e6)


def select_forever() -> None:
    """Hang inside a blocking C call (``select`` on nothing)."""
    select.select([], [], [], 1e6)


def read_forever() -> bytes:
    """Hang reading a pipe whose write end this process holds and never writes to."""
    r, w = os.pipe()
    try:
        return os.read(r, 1)
    finally:
        os.close(r)
        os.close(w)


def spin_ignoring_sigterm() -> None:
    """Ignore SIGTERM, then spin on the CPU without ever returning."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while True:
        pass


def soft_limited(log: str) -> str:
    """Sleep past the soft limit; catch :class:`SoftTimeLimit` and return a value instead."""
    try:
        time.sleep(60)
    except SoftTimeLimit as exc:
        append_line(log, f"soft {type(exc).__name__} {os.getpid()}")
        return "caught soft limit"
    return "slept"


class UnpicklableError(Exception):
    """An exception that neither pickles (a lock, a required keyword) nor prints (``__str__`` raises)."""

    def __init__(self, *, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail
        self.lock = threading.Lock()

    def __str__(self) -> str:
        raise RuntimeError("__str__ is broken too")


def raise_unpicklable() -> None:
    """Raise :class:`UnpicklableError`."""
    raise UnpicklableError(detail="cannot travel")


class Opaque:
    """A value no serializer handles, with a recognizable repr."""

    def __init__(self) -> None:
        self.lock = threading.Lock()

    def __repr__(self) -> str:
        return "<Opaque value with a lock>"


def return_unserializable() -> Opaque:
    """Return an :class:`Opaque` instance."""
    return Opaque()


def pid() -> int:
    """Return the pid of the process running the task."""
    return os.getpid()


def pid_logged(log: str, key: str) -> int:
    """Log the run like :func:`record` and return the pid."""
    record(log, key)
    return os.getpid()


def warn(message: str) -> str:
    """Log ``message`` at WARNING on the ``tests.pool_tasks`` logger; return it."""
    logger.warning(message)
    return message


def add(x: int, y: int) -> int:
    """Return ``x + y``."""
    return x + y


def echo(value: Any) -> Any:
    """Return ``value``."""
    return value
