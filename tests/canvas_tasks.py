"""Importable task functions for the canvas tests (``tests/test_canvas*.py``).

Plain module-level functions: each test registers the ones it needs on its own app
(``app.task(canvas_tasks.add)``), and pool children re-register them by module and qualname.

Tasks that the fault tests observe append one line per event to a log outside the store, each in
a single ``O_APPEND`` write (atomic between processes; a SIGKILL loses at most that line), in the
format :class:`tests.pool_support.RunLog` reads::

    start <key> <attempt> <pid>
    end <key> <attempt> <pid>

A member listed in ``hold`` waits, before it ends, for a release file in a directory the test
controls (``<key>.<attempt>``, ``<key>`` or ``all``, as :class:`tests.pool_support.Gate` writes
them), so a test knows that member is running when it acts; it gives up after :data:`MAX_HOLD` s.
"""

from __future__ import annotations

import os
import time
from typing import Any

from liteq import current

#: The longest a held member waits for its release file (seconds).
MAX_HOLD = 60.0


class CanvasError(Exception):
    """An exception type defined outside the builtins, to check that its qualified name travels."""


def add(x: int, y: int) -> int:
    """Return ``x + y``."""
    return x + y


def mul(x: int, y: int) -> int:
    """Return ``x * y``."""
    return x * y


def double(x: int) -> int:
    """Return ``2 * x``."""
    return 2 * x


def square(x: int) -> int:
    """Return ``x * x``."""
    return x * x


def total(values: list[int]) -> int:
    """Return the sum of a list (a chord body)."""
    return sum(values)


def collect(values: list[Any]) -> list[Any]:
    """Return the list received (a chord body that shows what it was given)."""
    return list(values)


def echo(*args: Any, **kwargs: Any) -> list[Any]:
    """Return the arguments as received: ``[args, kwargs]``."""
    return [list(args), kwargs]


def constant(value: Any = "done") -> Any:
    """Return ``value`` (an ``si()`` step that takes nothing from its parent)."""
    return value


def fail(*args: Any, message: str = "boom") -> None:
    """Raise ``CanvasError(message)`` whatever it receives."""
    raise CanvasError(message)


def flaky(value: Any) -> Any:
    """Raise ``CanvasError`` on the first attempt, return ``value`` on the next ones."""
    if current().attempt == 1:
        raise CanvasError(f"first attempt of {value!r}")
    return value


def append_line(path: str, line: str) -> None:
    """Append one line to ``path`` in a single ``O_APPEND`` write."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line.rstrip("\n") + "\n").encode())
    finally:
        os.close(fd)


def logged_collect(values: list[Any], log: str) -> list[Any]:
    """Log the run under key ``body`` and return the list received."""
    attempt = current().attempt
    append_line(log, f"start body {attempt} {os.getpid()}")
    append_line(log, f"end body {attempt} {os.getpid()}")
    return list(values)


def _released(release_dir: str, key: str, attempt: int) -> bool:
    return any(os.path.exists(os.path.join(release_dir, n)) for n in (f"{key}.{attempt}", key, "all"))


def member(log: str, release_dir: str, i: int, hold: list[int]) -> int:
    """A chord member: log the run under key ``m<i>``, wait for release when ``i`` is in ``hold``,
    return ``i * i``."""
    key, attempt = f"m{i}", current().attempt
    append_line(log, f"start {key} {attempt} {os.getpid()}")
    if i in hold:
        deadline = time.monotonic() + MAX_HOLD
        while not _released(release_dir, key, attempt) and time.monotonic() < deadline:
            time.sleep(0.01)
    append_line(log, f"end {key} {attempt} {os.getpid()}")
    return i * i


def gather(values: list[int], log: str) -> dict[str, Any]:
    """A chord body: log the run under key ``callback``; return how many values, their sum and
    whether each member's value is in its place."""
    attempt = current().attempt
    append_line(log, f"start callback {attempt} {os.getpid()}")
    in_place = all(v == i * i for i, v in enumerate(values))
    append_line(log, f"end callback {attempt} {os.getpid()}")
    return {"n": len(values), "sum": sum(values), "in_place": in_place}


def fails_until(path: str) -> int:
    """Fail until the file ``path`` exists, then return 1 (a step fixed between two runs)."""
    if not os.path.exists(path):
        raise CanvasError(f"{path} is missing")
    return 1
