"""A store in this process's memory, for tests and immediate mode.

It keeps the same contract as :class:`~liteq.storage.sqlite.SqliteStorage` (the contract tests run
on both) with plain dicts under one lock. It is not shared between processes; a child process gets
an empty store.

Like the SQLite store it is composed of one module per policy over one shared
:class:`.state.MemoryState` (its dicts and its lock): :mod:`.queue` (a task's states),
:mod:`.canvas`, :mod:`.schedules`, :mod:`.workers`, :mod:`.history` (reads) and
:mod:`.retention`. :class:`MemoryStorage` only wires them to the contract; rules both stores decide
the same way live in :mod:`liteq.storage.policy`.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterable, Mapping, Sequence

from ..contract import Storage
from ..records import ClaimedTask, NewTask, Outcome, ScheduleState, StatsRow, TaskRow, WorkerInfo
from . import canvas, retention, schedules
from . import workers as registry
from .history import History
from .queue import Queue
from .state import MemoryState

__all__ = ["DEFAULT_RESULT_TTL", "MemoryStorage"]

DEFAULT_RESULT_TTL = 24 * 3600.0


def _reopen(result_ttl: float) -> MemoryStorage:
    return MemoryStorage(result_ttl=result_ttl)


class MemoryStorage(Storage):
    """Tasks and results in a dict. ``location`` is ``memory://``."""

    location = "memory://"

    def __init__(self, *, result_ttl: float = DEFAULT_RESULT_TTL) -> None:
        super().__init__()
        self.result_ttl = float(result_ttl)
        self.state = MemoryState(result_ttl=self.result_ttl, location=self.location, notify=self.notify)
        self.queue = Queue(self.state)
        self.history = History(self.state)

    def __repr__(self) -> str:
        return "MemoryStorage()"

    def __reduce__(self) -> tuple[object, ...]:
        return (_reopen, (self.result_ttl,))

    # -- the queue -----------------------------------------------------------------------------------

    def enqueue(self, tasks: Sequence[NewTask], *, now: float | None = None) -> builtins.list[str]:
        """Store a batch atomically; see :meth:`Storage.enqueue`."""
        return self.queue.enqueue(tasks, now=now)

    def group_members(self, group_id: str) -> builtins.list[str]:
        """Member ids in order; see :meth:`Storage.group_members`."""
        return canvas.group_members(self.state, group_id)

    def claim(
        self,
        owner: str,
        queues: Sequence[str],
        *,
        limit: int = 1,
        lease: float = 60.0,
        now: float | None = None,
        ids: Sequence[str] | None = None,
        limits: Mapping[str, float] | None = None,
    ) -> builtins.list[ClaimedTask]:
        """Lease due tasks; see :meth:`Storage.claim`."""
        return self.queue.claim(owner, queues, limit=limit, lease=lease, now=now, ids=ids, limits=limits)

    def extend(
        self, owner: str, leases: Sequence[tuple[str, str]], *, lease: float, now: float | None = None
    ) -> builtins.list[bool]:
        """Push lease deadlines; see :meth:`Storage.extend`."""
        return self.queue.extend(owner, leases, lease=lease, now=now)

    def complete(self, outcomes: Sequence[Outcome], *, now: float | None = None) -> builtins.list[bool]:
        """Apply outcomes under their lease tokens; see :meth:`Storage.complete`."""
        return self.queue.complete(outcomes, now=now)

    def release(self, leases: Sequence[tuple[str, str]], *, uncount: bool = True) -> int:
        """Hand leased tasks back; see :meth:`Storage.release`."""
        return self.queue.release(leases, uncount=uncount)

    def reap(self, *, now: float | None = None, owner: str | None = None) -> builtins.list[str]:
        """Recover lost leases; see :meth:`Storage.reap`."""
        return self.queue.reap(now=now, owner=owner)

    def set_progress(self, id: str, lease_token: str, progress: bytes) -> bool:
        """Record progress; see :meth:`Storage.set_progress`."""
        return self.queue.set_progress(id, lease_token, progress)

    def cancel(self, ids: Sequence[str], *, now: float | None = None) -> builtins.list[str | None]:
        """Cancel tasks; see :meth:`Storage.cancel`."""
        return self.queue.cancel(ids, now=now)

    def retry(self, ids: Sequence[str], *, now: float | None = None) -> builtins.list[bool]:
        """Re-run finished tasks; see :meth:`Storage.retry`."""
        return self.queue.retry(ids, now=now)

    # -- retention -----------------------------------------------------------------------------------

    def purge(
        self, *, queue: str | None = None, states: Iterable[str] | None = None, ids: Sequence[str] | None = None
    ) -> int:
        """Delete matching tasks; see :meth:`Storage.purge`."""
        return retention.purge(self.state, queue=queue, states=states, ids=ids)

    def prune(self, *, now: float | None = None, limit: int = 10_000) -> int:
        """Delete finished tasks past their TTL; see :meth:`Storage.prune`."""
        return retention.prune(self.state, now=now, limit=limit)

    # -- reads ---------------------------------------------------------------------------------------

    def get(self, ids: Sequence[str], *, history: bool = False) -> builtins.list[TaskRow | None]:
        """Rows by id; see :meth:`Storage.get`."""
        return self.history.get(ids, history=history)

    def list(
        self,
        *,
        states: Iterable[str] | None = None,
        queue: str | None = None,
        name: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> builtins.list[TaskRow]:
        """Rows matching filters, oldest first; see :meth:`Storage.list`."""
        return self.history.list(states=states, queue=queue, name=name, limit=limit, offset=offset)

    def page(
        self,
        *,
        states: Iterable[str] | None = None,
        queue: str | None = None,
        name: str | None = None,
        since: float | None = None,
        until: float | None = None,
        parent: str | None = None,
        before: str | None = None,
        limit: int = 50,
    ) -> builtins.list[TaskRow]:
        """Newest-first keyset page (a linear scan); see :meth:`Storage.page`."""
        return self.history.page(
            states=states, queue=queue, name=name, since=since, until=until, parent=parent, before=before, limit=limit
        )

    def oldest_pending(self) -> dict[str, TaskRow]:
        """The first-stored pending task per queue; see :meth:`Storage.oldest_pending`."""
        return self.history.oldest_pending()

    def stats(self, *, since: float, until: float | None = None, bucket: int = 60) -> builtins.list[StatsRow]:
        """Finish statistics per minute (or ``bucket``); see :meth:`Storage.stats`."""
        return self.history.stats(since=since, until=until, bucket=bucket)

    def counts(self) -> dict[str, dict[str, int]]:
        """``{queue: {state: n}}``; see :meth:`Storage.counts`."""
        return self.history.counts()

    def next_run_at(self, queues: Sequence[str]) -> float | None:
        """Earliest scheduled ``run_at``; see :meth:`Storage.next_run_at`."""
        return self.history.next_run_at(queues)

    # -- periodic schedules ----------------------------------------------------------------------------

    def register_schedules(self, names: Sequence[str], *, now: float | None = None) -> None:
        """Record new schedules; see :meth:`Storage.register_schedules`."""
        schedules.register_schedules(self.state, names, now=now)

    def schedule_states(self, names: Sequence[str] | None = None) -> dict[str, ScheduleState]:
        """Schedule states; see :meth:`Storage.schedule_states`."""
        return schedules.schedule_states(self.state, names)

    def set_schedule_paused(self, name: str, paused: bool, *, now: float | None = None) -> bool:
        """Pause or resume; see :meth:`Storage.set_schedule_paused`."""
        return schedules.set_schedule_paused(self.state, name, paused, now=now)

    # -- workers -------------------------------------------------------------------------------------

    def register_worker(self, info: WorkerInfo) -> None:
        """Record a live worker; see :meth:`Storage.register_worker`."""
        registry.register_worker(self.state, info)

    def heartbeat(
        self,
        worker_id: str,
        *,
        tasks_done: int = 0,
        now: float | None = None,
        state: str = "ok",
        state_reason: str | None = None,
        state_since: float | None = None,
    ) -> None:
        """Refresh a heartbeat and state; see :meth:`Storage.heartbeat`."""
        registry.heartbeat(
            self.state,
            worker_id,
            tasks_done=tasks_done,
            now=now,
            state=state,
            state_reason=state_reason,
            state_since=state_since,
        )

    def unregister_worker(self, worker_id: str) -> None:
        """Forget a worker; see :meth:`Storage.unregister_worker`."""
        registry.unregister_worker(self.state, worker_id)

    def workers(self, *, stale_after: float | None = None, now: float | None = None) -> builtins.list[WorkerInfo]:
        """Recorded workers; see :meth:`Storage.workers`."""
        return registry.workers(self.state, stale_after=stale_after, now=now)
