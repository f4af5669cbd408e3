"""The store thread: every store call of the cluster server runs in one thread, with group commit.

- **One writer, one clock.** Every store call runs in this thread (or, when it is idle, as one
  turn in the event loop's thread, see :meth:`StoreThread.run_here`), never two at once, and the
  server stamps its own ``now``: a client's clock never decides a lease or an eta.
- **Group commit.** Each turn takes every job queued since the last one; enqueues and completions
  from all connections go to the store as one batch each (one transaction), and are split back per
  request. A batch that fails is retried request by request, so one client's bad batch never fails
  another's.
- **One hand-off per turn.** The results of a turn in this thread go back to the event loop
  together, once the turn is over (its lock released, its jobs counted as finished): one wake-up
  of the loop per turn, not one per job, and the loop, answering them, finds the store thread idle
  and runs the next small call itself.
"""

from __future__ import annotations

import queue
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from liteq.storage import open_storage
from liteq.storage.contract import Storage
from liteq.storage.records import NewTask

from . import codec
from .admission import ServerConfig

__all__ = ["WAKES", "Job", "Reply", "StoreThread"]

#: What a write tells waiters: ``w`` work may have become runnable (pools claim), ``d`` a task
#: finished or changed state (producers in ``Result.get`` look). Writes missing here wake nobody.
WAKES = {
    "enqueue": "w",
    "retry": "w",
    "release": "w",
    "complete": "wd",
    "cancel": "d",
    "purge": "d",
    "set_progress": "d",
}


#: A job's ``done`` with the result or exception to call it with.
Reply = tuple[Callable[[Any, BaseException | None], None], Any, BaseException | None]


@dataclass(slots=True)
class Job:
    """One call for the store thread: an operation with its decoded arguments, and what to call
    with its result or exception."""

    op: codec.Operation | None
    args: dict[str, Any]
    done: Callable[[Any, BaseException | None], None]
    special: str | None = None
    """A server-level job (``reset``, ``retry_enqueue``) instead of a store operation."""


class StoreThread:
    """Runs every store call in one thread, taking all queued jobs per turn (group commit).

    ``on_turn(replies, kinds)`` is called from the store thread after each of its turns, with the
    turn's replies (each job's ``done`` and what to call it with, in order) and the wake-up kinds
    the turn caused; it hands them to the thread that calls the ``done`` functions."""

    def __init__(self, storage: Storage, config: ServerConfig, on_turn: Callable[[list[Reply], str], None]) -> None:
        self.storage = storage
        self.config = config
        self._on_turn = on_turn
        #: Held while the store is checkpointed or replaced (a test-mode ``reset``).
        self._swap = threading.Lock()
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="liteq-store", daemon=True)
        self.busy = False
        # One turn at a time, in this thread or (run_here) in the event loop's.
        self._lock = threading.Lock()
        self._submitted = 0  # counted by the submitting (event loop) thread only
        self._finished = 0  # counted by the store thread only

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def submit(self, job: Job) -> None:
        """Queue a job; its ``done`` goes to ``on_turn`` once its turn is over. Call from one thread
        only."""
        self._submitted += 1
        self._jobs.put(job)

    def run_here(self, jobs: list[Job]) -> str | None:
        """Run ``jobs`` as one turn in the calling thread, if the store thread is idle with no job
        queued (so none submitted earlier is overtaken), calling their ``done`` in this thread;
        return the wake-up kinds it caused, or None when the jobs must be submitted instead. Call
        from the thread that submits."""
        if self._submitted != self._finished or not self._lock.acquire(blocking=False):
            return None
        try:
            return self._turn(jobs)
        finally:
            self._lock.release()

    @property
    def supports_checkpoint(self) -> bool:
        """Whether the current store has a write-ahead log to checkpoint (see :meth:`checkpoint`)."""
        return bool(self.storage.supports_checkpoint)

    def checkpoint(self) -> None:
        """Checkpoint the current store (a store a ``reset`` replaced included); for the server's
        background checkpoint thread, which runs no store call besides this one. A ``reset`` waits
        for it: closing a store closes every thread's connection, and SQLite's connection must not
        be closed under a statement another thread runs on it."""
        with self._swap:
            self.storage.checkpoint()

    def stop(self) -> None:
        """Finish the queued jobs, then end the thread (call :meth:`join` to wait)."""
        self._jobs.put(None)

    def join(self, timeout: float | None = None) -> None:
        """Wait for the thread to end."""
        self._thread.join(timeout)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._jobs.get()
            if first is None:
                break
            jobs = [first]
            while True:
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    stopping = True
                    break
                jobs.append(job)
            replies: list[Reply] = []
            with self._lock:
                self.busy = True
                try:
                    kinds = self._turn(jobs, replies)
                finally:
                    self.busy = False
            self._finished += len(jobs)
            self._on_turn(replies, kinds)

    def _turn(self, jobs: list[Job], replies: list[Reply] | None = None) -> str:
        """Run one turn's jobs; return the wake-up kinds it caused (``w`` work, ``d`` done). Each
        job's ``done`` is called at once, or appended to ``replies`` when given."""
        kinds = ""
        i = 0
        while i < len(jobs):
            job = jobs[i]
            name = job.op.name if job.op is not None else None
            if name in ("enqueue", "complete") and job.special is None and job.args.get("now") is None:
                j = i + 1
                while (
                    j < len(jobs)
                    and jobs[j].op is job.op
                    and jobs[j].special is None
                    and jobs[j].args.get("now") is None
                ):
                    j += 1
                self._grouped(jobs[i:j], replies)
                kinds += WAKES.get(str(name), "")
                i = j
                continue
            result = self._one(job, replies)
            if job.special == "reset":
                kinds += "wd"
            elif name == "reap":
                kinds += "wd" if result else ""
            elif name is not None:
                kinds += WAKES.get(name, "")
            i += 1
        return "".join(sorted(set(kinds)))

    def _stamp(self, job: Job) -> dict[str, Any]:
        args = dict(job.args)
        assert job.op is not None
        if job.op.takes_now and (args.get("now") is None or not self.config.trust_client_clock):
            args["now"] = time.time()
        return args

    def _one(self, job: Job, replies: list[Reply] | None) -> Any:
        try:
            if job.special == "reset":
                self._reset()
                result: Any = None
            elif job.special == "retry_enqueue":
                result = self._retry_enqueue(self._stamp(job))
            else:
                assert job.op is not None
                result = getattr(self.storage, job.op.name)(**self._stamp(job))
        except BaseException as exc:
            _reply(replies, job, None, exc)
            return None
        _reply(replies, job, result, None)
        return result

    def _grouped(self, jobs: list[Job], replies: list[Reply] | None) -> None:
        if len(jobs) == 1:
            self._one(jobs[0], replies)
            return
        assert jobs[0].op is not None
        name = jobs[0].op.name
        key = "tasks" if name == "enqueue" else "outcomes"
        combined: list[Any] = []
        for job in jobs:
            combined.extend(job.args[key])
        try:
            results = getattr(self.storage, name)(combined, now=time.time())
        except BaseException:
            # One request's batch failed the group: run each alone, so only that one fails.
            for job in jobs:
                self._one(job, replies)
            return
        start = 0
        for job in jobs:
            n = len(job.args[key])
            _reply(replies, job, results[start : start + n], None)
            start += n

    def _retry_enqueue(self, args: dict[str, Any]) -> list[str]:
        # A retry whose first attempt may have committed before the reply was lost. A batch is
        # atomic: if any of its ids is stored, it committed, and the entries whose id is missing were
        # deduplicated (key, unique, slot) — enqueueing those alone dedupes them again.
        tasks: list[NewTask] = args["tasks"]
        found = self.storage.get([t.id for t in tasks])
        if not any(found):
            ids: list[str] = self.storage.enqueue(tasks, now=args["now"])
            return ids
        missing = [t for t, row in zip(tasks, found, strict=True) if row is None]
        again = iter(self.storage.enqueue(missing, now=args["now"]) if missing else [])
        return [t.id if row is not None else next(again) for t, row in zip(tasks, found, strict=True)]

    def _reset(self) -> None:
        with self._swap:  # never under a running checkpoint (see checkpoint)
            location = self.storage.location
            self.storage.close()
            if "://" not in location:
                shutil.rmtree(location, ignore_errors=True)
            self.storage = open_storage(location)


def _reply(replies: list[Reply] | None, job: Job, result: Any, exc: BaseException | None) -> None:
    if replies is None:
        job.done(result, exc)
    else:
        replies.append((job.done, result, exc))
