"""Importable ``async def`` tasks for the asyncio worker tests (``tests/test_async_tasks.py``).

Module-level so that pool children under ``spawn`` and ``forkserver`` re-register them by module
and qualname. They log to the same append-only run log as :mod:`tests.pool_tasks` and wait on the
same release files, but asynchronously (``await asyncio.sleep`` between looks), so a hundred of
them share one child's event loop.
"""

from __future__ import annotations

import asyncio
import os
import time

from liteq import Retry, SoftTimeLimit, current
from tests.pool_tasks import MAX_BLOCK, POLL, _released, append_line


async def nap(seconds: float) -> float:
    """``await asyncio.sleep(seconds)``; return ``seconds``."""
    await asyncio.sleep(seconds)
    return seconds


async def noop() -> None:
    """Nothing at all (throughput)."""


async def ablock(log: str, release_dir: str, key: str) -> str:
    """Log the start, wait (awaiting) for a release file, log the end; return ``key.attempt``."""
    attempt = current().attempt
    append_line(log, f"start {key} {attempt} {os.getpid()}")
    deadline = time.monotonic() + MAX_BLOCK
    while not _released(release_dir, key, attempt):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{key} attempt {attempt} was never released")
        await asyncio.sleep(POLL)
    append_line(log, f"end {key} {attempt} {os.getpid()}")
    return f"{key}.{attempt}"


async def sleep_forever(log: str) -> None:
    """``await asyncio.sleep(1e6)``; log what was raised inside it, then let it through."""
    try:
        await asyncio.sleep(1e6)
    except BaseException as exc:
        append_line(log, f"raised {type(exc).__name__} {os.getpid()}")
        raise


async def swallow_forever(log: str) -> None:
    """Sleep forever and swallow every exception raised into it (cancel, time limits)."""
    append_line(log, f"start swallow 1 {os.getpid()}")
    deadline = time.monotonic() + MAX_BLOCK
    while time.monotonic() < deadline:
        try:
            await asyncio.sleep(1e6)
        except BaseException as exc:  # refusing to stop is the point
            append_line(log, f"ignored {type(exc).__name__} {os.getpid()}")


async def soft_catch(log: str) -> str:
    """Sleep past the soft limit; catch :class:`SoftTimeLimit` and return a value instead."""
    try:
        await asyncio.sleep(1e6)
    except SoftTimeLimit as exc:
        append_line(log, f"soft {type(exc).__name__} {os.getpid()}")
        return "caught soft limit"
    return "slept"


async def progress_steps(key: str, steps: int) -> tuple[str, str, list[str]]:
    """Report progress ``steps`` times, awaiting between; return (key, own id, ids seen by current())."""
    seen = []
    me = current().id
    for i in range(steps):
        current().progress((i + 1) / steps, f"{key} step {i + 1}")
        seen.append(current().id)
        await asyncio.sleep(0.01)
    return key, me, seen


async def progress_then_block(log: str, release_dir: str, key: str) -> str:
    """Report progress 0.5 "<key> half way", then :func:`ablock`."""
    current().progress(0.5, f"{key} half way")
    return await ablock(log, release_dir, key)


async def flaky(log: str, key: str, fail_times: int) -> int:
    """Raise on the first ``fail_times`` attempts (a ValueError, then a ``Retry``); return the attempt."""
    attempt = current().attempt
    append_line(log, f"start {key} {attempt} {os.getpid()}")
    await asyncio.sleep(0)
    if attempt <= fail_times:
        if attempt == 1:
            raise ValueError(f"{key} failed on attempt {attempt}")
        raise Retry(countdown=0)
    return attempt


async def block_loop(seconds: float) -> str:
    """Block the child's event loop with ``time.sleep`` (a misbehaving coroutine)."""
    time.sleep(seconds)
    return "blocked"


async def add(x: int, y: int) -> int:
    """``x + y`` after a yield to the loop (canvas steps)."""
    await asyncio.sleep(0)
    return x + y


async def total(values: list[int]) -> int:
    """The sum of a group's results (a chord's body)."""
    await asyncio.sleep(0)
    return sum(values)


async def astamp(key: str, index: int, log: str, duration: float = 0.0) -> int:
    """Log ``start``/``end`` lines with wall times around ``await asyncio.sleep(duration)``."""
    append_line(log, f"stamp start {key} {index} {time.time():.6f}")
    await asyncio.sleep(duration)
    append_line(log, f"stamp end {key} {index} {time.time():.6f}")
    return index


async def tick(log: str) -> None:
    """A periodic coroutine: log one line per run."""
    await asyncio.sleep(0)
    append_line(log, f"tick {time.time():.6f}")
