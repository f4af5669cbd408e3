"""A Starlette app that queues a job on a request and streams its progress back (Server-Sent Events).

- ``POST /jobs?steps=N`` queues ``crunch(N)`` (an ``async def`` task) with ``await crunch.adelay(N)`` and answers 202 with
  the task id at once;
- ``GET /jobs/{id}/events`` streams ``progress`` events while the job runs and one ``done`` (or
  ``failed``) event at the end. The end arrives the moment the task finishes: ``await
  result.aget(timeout=...)`` wakes on the same notification as ``Result.get()``; progress is
  sampled between those waits.

Nothing here blocks the event loop on the store: ``adelay`` and ``aget`` run their store calls off
the loop, and the progress read goes through ``asyncio.to_thread``.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from liteq import LiteQ, ResultTimeout, TaskFailed, current

DATA = Path(os.environ.get("LITEQ_EXAMPLE_DIR") or Path(__file__).resolve().parent / "liteq-data")
queue = LiteQ(DATA / "store")

#: How often a stream samples progress while its job runs.
PROGRESS_EVERY = 0.1


@queue.task
async def crunch(steps: int) -> int:
    """A job that takes a while and says how far it got after each step. An ``async def`` task:
    a worker child runs many of these at once on its own event loop."""
    if steps > 50:
        raise ValueError(f"{steps} steps is too many for this demo (50 at most)")
    total = 0
    for i in range(steps):
        await asyncio.sleep(0.05)  # the real work: an API call, a download...
        total += i * i
        current().progress((i + 1) / steps, f"step {i + 1} of {steps}")
    return total


def sse(event: str, data: object) -> str:
    """One Server-Sent Event."""
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


async def create_job(request: Request) -> JSONResponse:
    try:
        steps = int(request.query_params.get("steps", "10"))
    except ValueError:
        return JSONResponse({"error": "steps must be an integer"}, status_code=400)
    result = await crunch.adelay(steps)
    return JSONResponse({"id": result.id, "events": f"/jobs/{result.id}/events"}, status_code=202)


async def job_events(request: Request) -> StreamingResponse:
    result = queue.result(request.path_params["id"])

    async def stream() -> AsyncIterator[str]:
        last = None
        while True:
            try:
                value = await result.aget(timeout=PROGRESS_EVERY)
            except ResultTimeout:
                progress = await asyncio.to_thread(lambda: result.progress)
                if progress is not None and progress != last:
                    last = progress
                    yield sse("progress", {"fraction": progress.fraction, "message": progress.message})
                continue
            except TaskFailed as exc:
                yield sse("failed", {"type": exc.type, "message": exc.message})
                return
            yield sse("done", {"result": value})
            return

    return StreamingResponse(stream(), media_type="text/event-stream")


app = Starlette(routes=[Route("/jobs", create_job, methods=["POST"]), Route("/jobs/{id}/events", job_events)])
