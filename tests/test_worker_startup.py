"""What ``liteq worker`` loads and starts before its first task: no module a sync worker does not use."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(60)


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
