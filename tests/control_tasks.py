"""Importable task functions (and one helper process) for the scheduler and task-control tests.

Like :mod:`tests.tasks`, each test registers the functions it needs on its own app, so no app lives
at import time. Tasks that the tests observe append one line per event to a log *outside* the store
under test, in a single ``O_APPEND`` write (atomic between processes)::

    start <key> <index> <time> <pid>
    end <key> <index> <time> <pid>

``python -m tests.control_tasks ticker STORE`` runs a scheduler over a simulated clock in a loop,
for the test that SIGKILLs schedulers between computing and committing a slot.
"""

from __future__ import annotations

import os
import random
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The longest a hanging task waits before giving up, so a broken pool leaves nothing behind for long.
MAX_HANG = 45.0

#: Simulated start of the killed-ticker test (2024-01-01 00:00:00 UTC).
TICKER_T0 = 1_704_067_200.0
#: The schedules the ticker registers: ``(task name, every seconds, catch_up)``.
TICKER_SCHEDULES: tuple[tuple[str, float, str], ...] = (
    ("tick-all-60", 60.0, "all"),
    ("tick-all-45", 45.0, "all"),
    ("tick-coalesce-30", 30.0, "coalesce"),
)


def append_line(path: str, line: str) -> None:
    """Append one line to ``path`` in a single ``O_APPEND`` write."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line.rstrip("\n") + "\n").encode())
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Interval:
    """One logged run: ``key`` and ``index`` as passed, wall-clock start and end, the child's pid."""

    key: str
    index: int
    start: float
    end: float
    pid: int


def intervals(path: str | Path) -> list[Interval]:
    """Completed runs in the log at ``path`` (a start without its end is left out), by start time."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return []
    starts: dict[tuple[str, int, int], float] = {}
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 5:
            continue
        kind, key, index, at, pid = parts[0], parts[1], int(parts[2]), float(parts[3]), int(parts[4])
        if kind == "start":
            starts[(key, index, pid)] = at
        elif kind == "end" and (key, index, pid) in starts:
            out.append(Interval(key, index, starts.pop((key, index, pid)), at, pid))
    return sorted(out, key=lambda i: i.start)


def noop(*args: Any, **kwargs: Any) -> None:
    """Do nothing (a periodic task whose runs are counted in the store)."""


def stamp(log: str, key: str, index: int, duration: float = 0.0) -> int:
    """Log a start, busy the child for ``duration`` seconds, log the end; return the child's pid."""
    append_line(log, f"start {key} {index} {time.time():.6f} {os.getpid()}")
    if duration:
        time.sleep(duration)  # the task's own work, not a wait on test state
    append_line(log, f"end {key} {index} {time.time():.6f} {os.getpid()}")
    return os.getpid()


def locked(key: str, index: int, log: str, duration: float = 0.0) -> int:
    """:func:`stamp` with the lock key first, for ``lock="key-{0}"``."""
    return stamp(log, key, index, duration)


def hang(log: str, key: str) -> None:
    """Log a start with the pid, then run until killed (at most :data:`MAX_HANG` seconds)."""
    append_line(log, f"start {key} 0 {time.time():.6f} {os.getpid()}")
    deadline = time.monotonic() + MAX_HANG
    while time.monotonic() < deadline:
        time.sleep(0.01)


def stubborn(log: str, key: str) -> None:
    """Like :func:`hang`, but swallow whatever is raised inside it (a cancel), so only a kill stops it."""
    append_line(log, f"start {key} 0 {time.time():.6f} {os.getpid()}")
    deadline = time.monotonic() + MAX_HANG
    while time.monotonic() < deadline:
        try:
            time.sleep(0.01)
        except BaseException:  # the point of this task: a cancel raised here is ignored
            append_line(log, f"ignored {key} 0 {time.time():.6f} {os.getpid()}")
            continue


def touch(path: str) -> None:
    """Create ``path`` (a task that must never run leaves no such file)."""
    Path(path).touch()


def pid() -> int:
    """The pid of the process running the task."""
    return os.getpid()


def user_key(user_id: int, *args: Any, **kwargs: Any) -> int:
    """``unique=`` key function: one waiting task per user, whatever the other arguments."""
    return user_id


def notify(user_id: int, note: str = "") -> str:
    """A task made unique per user with :func:`user_key`."""
    return f"{user_id}:{note}"


# -- the killed ticker ------------------------------------------------------------------------------


def ticker_app(store: str) -> Any:
    """The app the ticker process (and the test checking it) opens: :data:`TICKER_SCHEDULES` on ``store``."""
    from liteq import LiteQ

    app = LiteQ(store)
    for task_name, every, catch_up in TICKER_SCHEDULES:
        task = app.task(name=task_name)(noop)
        app.periodic(every=every, catch_up=catch_up)(task)
    return app


def run_ticker(store: str, ready: str, mode: str = "loop") -> None:
    """Tick forever over a simulated clock that resumes from the store's last fired slot.

    Each tick moves the clock 1 to 400 simulated seconds past the newest slot the store has recorded,
    so a process killed and restarted carries on where the store (not the process) left off.
    ``ready`` is created after the first tick, so the test kills only a process that is ticking.
    With ``mode="suicide"`` the process SIGKILLs itself at a random enqueue after the first tick:
    the slots are computed, the transaction that would commit them never starts.
    """
    from liteq.scheduler import Scheduler

    app = ticker_app(store)
    scheduler = Scheduler(app)
    rng = random.Random(os.getpid())
    signalled = False
    if mode == "suicide":
        real_enqueue = app.storage.enqueue

        def enqueue(tasks: Any, *, now: float | None = None) -> list[str]:
            if signalled and rng.random() < 0.3:
                os.kill(os.getpid(), signal.SIGKILL)
            ids: list[str] = real_enqueue(tasks, now=now)
            return ids

        app.storage.enqueue = enqueue
    now = TICKER_T0
    while True:
        states = app.storage.schedule_states()
        newest = max((s.last_slot for s in states.values() if s.last_slot is not None), default=TICKER_T0)
        now = max(now, newest) + rng.uniform(1.0, 400.0)
        scheduler.tick(now=now)
        if not signalled:
            Path(ready).touch()
            signalled = True


if __name__ == "__main__":
    if len(sys.argv) in (4, 5) and sys.argv[1] == "ticker":
        run_ticker(*sys.argv[2:])
    else:
        sys.exit("usage: python -m tests.control_tasks ticker STORE READY_FILE [loop|suicide]")
