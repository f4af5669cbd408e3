"""Helpers of the cluster tests: real ``liteq serve`` and ``liteq worker`` processes on 127.0.0.1."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

_LISTENING = re.compile(r"listening on (liteqs?://\S+)")


@dataclass
class ServerProcess:
    """A ``liteq serve`` subprocess; ``url`` is where it listens, ``output`` what it printed."""

    proc: subprocess.Popen[str]
    url: str
    store: Path
    output: list[str] = field(default_factory=list)
    pump: threading.Thread | None = None

    @property
    def pid(self) -> int:
        """The server's process id."""
        return self.proc.pid

    @property
    def port(self) -> int:
        """The port it listens on."""
        return int(self.url.rsplit(":", 1)[1])

    def text(self) -> str:
        """Everything it printed so far (stdout and stderr)."""
        return "".join(self.output)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        """Signal it (by pid) and wait; SIGKILL if it does not end in time. Returns the exit code."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout)
        self.close_pipes()
        return self.proc.returncode

    def close_pipes(self) -> None:
        """After the process ended: let the reader finish, then close its pipe."""
        if self.pump is not None:
            self.pump.join(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def _pump(proc: subprocess.Popen[str], output: list[str], found: list[str], ready: threading.Event) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        output.append(line)
        m = _LISTENING.search(line)
        if m and not found:
            found.append(m.group(1))
            ready.set()
    ready.set()


def start_server(
    store: Path,
    *args: str,
    bind: str = "127.0.0.1:0",
    env: dict[str, str] | None = None,
    timeout: float = 20,
    expect_failure: bool = False,
) -> ServerProcess:
    """Start ``liteq serve STORE --bind BIND ARGS`` and wait for its listening line."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.Popen(
        [sys.executable, "-m", "liteq", "serve", str(store), "--bind", bind, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=full_env,
    )
    output: list[str] = []
    found: list[str] = []
    ready = threading.Event()
    pump = threading.Thread(target=_pump, args=(proc, output, found, ready), daemon=True)
    pump.start()
    if not ready.wait(timeout) or not found:
        if expect_failure:
            proc.wait(timeout)
            failed = ServerProcess(proc, "", store, output, pump)
            failed.close_pipes()
            return failed
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout)
        ServerProcess(proc, "", store, output, pump).close_pipes()
        raise AssertionError(f"liteq serve did not start within {timeout}s:\n{''.join(output)}")
    return ServerProcess(proc, found[0], store, output, pump)


def wait_exit(proc: subprocess.Popen[str], timeout: float) -> int:
    """Wait for a process to end; fail the test if it does not."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        if time.monotonic() > deadline:
            raise AssertionError(f"process {proc.pid} did not exit within {timeout}s")
        time.sleep(0.02)
    return proc.returncode


class InProcessServer:
    """A :class:`liteq.cluster.server.Server` on its own event loop thread in this process, for tests
    that look at the server's state (parked claims) or wrap its store."""

    def __init__(self, storage: object, **config: object) -> None:
        import asyncio

        from liteq.cluster.admission import ServerConfig
        from liteq.cluster.server import Server

        self.loop = asyncio.new_event_loop()
        self.server = Server(storage, ServerConfig(host="127.0.0.1", port=0, **config))  # type: ignore[arg-type]
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)
        host, port = self.server.address
        scheme = "liteqs" if config.get("ssl") else "liteq"
        self.url = f"{scheme}://{host}:{port}"

    def run(self, coro: object, timeout: float = 10) -> object:
        """Run a coroutine on the server's loop and return its result."""
        import asyncio

        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)  # type: ignore[arg-type]

    def stop(self) -> None:
        """Close the server (idempotent), wait for it, stop the loop."""

        async def close() -> None:
            self.server.close()
            self.server.close()
            await self.server.wait_closed()
            await self.server.wait_closed()

        if self.loop.is_running():
            self.run(close(), 30)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
        self.loop.close()


#: The token of the servers :func:`served` starts.
TOKEN = "test-token-" + os.urandom(8).hex()


@contextlib.contextmanager
def served(store: Path, *args: str, kill: bool = False) -> Iterator[ServerProcess]:
    """A ``liteq serve`` with :data:`TOKEN` on ``store``, stopped (or SIGKILLed) afterwards."""
    proc = start_server(store, *args, env={"LITEQ_TOKEN": TOKEN})
    try:
        yield proc
    finally:
        proc.stop(signal.SIGKILL if kill else signal.SIGTERM)


@pytest.fixture(name="server")
def server_fixture(tmp_path: Path) -> Iterator[ServerProcess]:
    """The ``server`` fixture: a ``liteq serve`` with a token, on a fresh store (import
    ``server_fixture`` into a test module to use it)."""
    with served(tmp_path / "served", kill=True) as proc:
        yield proc
