"""Run the async API end to end: a Starlette app under uvicorn, a liteq worker pool, two jobs.

Serves ``api.app`` on 127.0.0.1 (a free port), runs a worker pool, posts a job, prints the
progress events streamed back as they arrive, then posts a job that fails and prints its
``failed`` event, and shuts everything down.

``--serve [--port N]`` keeps serving instead (port 0, the default, picks a free one; the first
line printed names the address) until interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
import urllib.request
from typing import Any

import api  # beside this script: Python puts the script's folder first on sys.path
import uvicorn


def post(base: str, path: str) -> dict[str, Any]:
    with urllib.request.urlopen(urllib.request.Request(base + path, method="POST"), timeout=10) as response:
        assert response.status == 202, response.status
        body: dict[str, Any] = json.loads(response.read())
        return body


def events(base: str, path: str) -> list[tuple[str, Any]]:
    """Read one job's event stream to its end, printing each event as it arrives."""
    got: list[tuple[str, Any]] = []
    event = ""
    with urllib.request.urlopen(base + path, timeout=30) as response:
        for raw in response:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                event = line[len("event: ") :]
            elif line.startswith("data: "):
                data = json.loads(line[len("data: ") :])
                print(f"  {event}: {data}", flush=True)
                got.append((event, data))
    return got


async def serve(port: int, demo: bool) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    server = uvicorn.Server(uvicorn.Config(api.app, log_level="warning", lifespan="off"))
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    running = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    while not server.started:
        if running.done():
            await running  # it failed to start: raise why
        await asyncio.sleep(0.01)
    print(f"serving on {base}", flush=True)
    try:
        if demo:
            await asyncio.to_thread(run_demo, base)
        else:
            stop = asyncio.Event()
            for sig in (signal.SIGINT, signal.SIGTERM):
                asyncio.get_running_loop().add_signal_handler(sig, stop.set)
            await stop.wait()
    finally:
        server.should_exit = True
        await running


def run_demo(base: str) -> None:
    job = post(base, "/jobs?steps=8")
    print(f"POST /jobs?steps=8 -> 202: task {job['id']}")
    got = events(base, job["events"])
    print(f"{sum(1 for e, _ in got if e == 'progress')} progress events, then {got[-1][0]}: {got[-1][1]}")
    bad = post(base, "/jobs?steps=99")
    print(f"POST /jobs?steps=99 -> 202: task {bad['id']}")
    got = events(base, bad["events"])
    print(f"then {got[-1][0]}: {got[-1][1]['message']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", action="store_true", help="keep serving until interrupted")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: a free one)")
    options = parser.parse_args()
    api.queue.purge()  # start from an empty store on every run
    with api.queue.workers(concurrency=2):
        asyncio.run(serve(options.port, demo=not options.serve))


if __name__ == "__main__":
    main()
