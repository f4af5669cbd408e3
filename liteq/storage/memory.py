"""A store in this process's memory, for tests and immediate mode.

It keeps the same contract as :class:`~liteq.storage.sqlite.SqliteStorage` (the contract tests run
on both) with plain dicts under one lock. Scans are linear: it is meant for thousands of tasks,
not millions. It is not shared between processes; a child process gets an empty store.
"""

from __future__ import annotations

import builtins
import copy
import itertools
import os
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from ..exceptions import StorageError
from ..ratelimit import admit
from .base import (
    CASCADE_REASON,
    FAILED,
    FINISHED_STATES,
    PENDING,
    RUNNING,
    SCHEDULED,
    STATS_MEMORY,
    ClaimedTask,
    NewTask,
    Outcome,
    ScheduleState,
    StatsRow,
    Storage,
    TaskRow,
    WorkerInfo,
    check_lease,
    check_new_tasks,
    checked_outcomes,
    is_cascaded,
)

__all__ = ["MemoryStorage"]

DEFAULT_RESULT_TTL = 24 * 3600.0


@dataclass(slots=True)
class _Entry:
    seq: int
    row: TaskRow
    result_ttl: float | None
    timeout: float | None = None
    soft_timeout: float | None = None
    rate_limit: float | None = None


def _reopen(result_ttl: float) -> MemoryStorage:
    return MemoryStorage(result_ttl=result_ttl)


class MemoryStorage(Storage):
    """Tasks and results in a dict. ``location`` is ``memory://``."""

    location = "memory://"

    def __init__(self, *, result_ttl: float = DEFAULT_RESULT_TTL) -> None:
        super().__init__()
        self.result_ttl = float(result_ttl)
        self._lock = threading.RLock()
        self._tasks: dict[str, _Entry] = {}
        self._keys: dict[str, str] = {}
        self._workers: dict[str, WorkerInfo] = {}
        self._slots: dict[tuple[str, float], str] = {}
        self._schedules: dict[str, ScheduleState] = {}
        self._rates: dict[str, float] = {}
        self._dependents: dict[str, list[str]] = {}
        self._waiting: dict[str, int] = {}
        self._holds: dict[str, tuple[float, float | None]] = {}
        self._requires: dict[str, list[str]] = {}
        self._groups: dict[str, dict[int, str]] = {}
        self._seq = itertools.count(1)
        self._stats: dict[tuple[int, str, str, str], tuple[int, float, float]] = {}

    def __repr__(self) -> str:
        return "MemoryStorage()"

    def __reduce__(self) -> tuple[object, ...]:
        return (_reopen, (self.result_ttl,))

    def _finish(self, e: _Entry, state: str, now: float, ttl: float | None = None) -> None:
        self._settle(e, state, now, ttl)
        # Dependents (canvas) move on in the same step: one more success counted, or a failure passed on.
        # The links stay (not popped) so that a manual retry of a failed chain can wait again.
        for dep_id in list(self._dependents.get(e.row.id, ())):
            d = self._tasks.get(dep_id)
            if d is None or d.row.state != SCHEDULED or self._waiting.get(dep_id, 0) <= 0:
                continue
            if state == "succeeded":
                self._waiting[dep_id] -= 1
                if not self._waiting[dep_id]:
                    del self._waiting[dep_id]
                    delay, not_before = self._holds.pop(dep_id, (0.0, None))
                    d.row.run_at = max(now + delay, not_before or 0.0)
                    d.row.state = PENDING if d.row.run_at <= now else SCHEDULED
            else:
                self._waiting.pop(dep_id, None)
                self._holds.pop(dep_id, None)
                d.row.error = e.row.error
                reason = e.row.reason or ""
                root = reason[len(CASCADE_REASON) :] if is_cascaded(reason) else e.row.id
                d.row.reason = CASCADE_REASON + root
                self._finish(d, FAILED, now)

    def _settle(self, e: _Entry, state: str, now: float, ttl: float | None = None) -> None:
        self._waiting.pop(e.row.id, None)
        r = e.row
        r.state = state
        r.finished_at = now
        r.result_expires_at = now + (
            ttl if ttl is not None else e.result_ttl if e.result_ttl is not None else self.result_ttl
        )
        r.lease_owner = r.lease_token = None
        r.lease_deadline = None
        # The history the dashboard charts (SqliteStorage keeps it with a trigger).
        latency = max(now - r.enqueued_at, 0.0)
        key = (int(now // 60), r.queue, r.name, state)
        n, total, worst = self._stats.get(key, (0, 0.0, 0.0))
        self._stats[key] = (n + 1, total + latency, max(worst, latency))

    # -- writes ------------------------------------------------------------------------------------

    def enqueue(self, tasks: Sequence[NewTask], *, now: float | None = None) -> list[str]:
        """Store a batch atomically; see :meth:`Storage.enqueue`."""
        now = time.time() if now is None else now
        check_new_tasks(tasks, now)
        ids = []
        with self._lock:
            linked: list[tuple[_Entry, list[str], float]] = []
            # Check the whole batch first: a refused batch writes nothing.
            seen_ids: set[str] = set()
            seen_keys: set[str] = set()
            for t in tasks:
                if t.idempotency_key is not None and (
                    t.idempotency_key in self._keys or t.idempotency_key in seen_keys
                ):
                    continue
                if t.id in self._tasks or t.id in seen_ids:
                    raise StorageError(f"task id {t.id} is already stored; ids must be unique", path=self.location)
                seen_ids.add(t.id)
                if t.idempotency_key is not None:
                    seen_keys.add(t.idempotency_key)
            for t in tasks:
                if t.idempotency_key is not None and t.idempotency_key in self._keys:
                    ids.append(self._keys[t.idempotency_key])
                    continue
                if t.unique_key is not None:
                    twin = next(
                        (
                            e.row.id
                            for e in self._tasks.values()
                            if e.row.unique_key == t.unique_key and e.row.state in (PENDING, SCHEDULED)
                        ),
                        None,
                    )
                    if twin is not None:
                        ids.append(twin)
                        continue
                if t.slot is not None:
                    if t.slot in self._slots:
                        ids.append(self._slots[t.slot])
                        continue
                    self._slots[t.slot] = t.id
                    st = self._schedules.setdefault(t.slot[0], ScheduleState(t.slot[0], False, None))
                    st.last_slot = max(st.last_slot or t.slot[1], t.slot[1])
                    st.last_fired_at, st.last_task_id = now, t.id
                run_at = now if t.run_at is None else t.run_at
                row = TaskRow(
                    id=t.id,
                    name=t.name,
                    queue=t.queue,
                    state=SCHEDULED if run_at > now else PENDING,
                    priority=t.priority,
                    payload=bytes(t.payload),
                    run_at=run_at,
                    enqueued_at=now,
                    attempts=0,
                    max_attempts=t.max_attempts,
                    expires_at=t.expires_at,
                    idempotency_key=t.idempotency_key,
                    parent_id=t.parent_id,
                    unique_key=t.unique_key,
                    lock_key=t.lock_key,
                )
                entry = _Entry(next(self._seq), row, t.result_ttl, t.timeout, t.soft_timeout, t.rate_limit)
                self._tasks[t.id] = entry
                if t.group_id is not None:
                    self._groups.setdefault(t.group_id, {})[t.group_index or 0] = t.id
                if t.depends_on:
                    linked.append((entry, t.depends_on, t.release_delay))
                if t.idempotency_key is not None:
                    self._keys[t.idempotency_key] = t.id
                ids.append(t.id)
            # Dependencies once the whole batch is in: a task may wait for one stored after it.
            for entry, deps, delay in linked:
                self._wait_for(entry, deps, now, delay)
        self.notify()
        return ids

    def _wait_for(self, e: _Entry, deps: Sequence[str], now: float, delay: float = 0.0) -> None:
        deps = self._requires[e.row.id] = list(dict.fromkeys(deps))
        waiting = 0
        for dep_id in deps:
            d = self._tasks.get(dep_id)
            if d is not None and d.row.state in FINISHED_STATES - {"succeeded"}:
                e.row.error, e.row.reason = d.row.error, CASCADE_REASON + dep_id
                self._finish(e, FAILED, now)
                return
            # A dependency already gone (pruned after it finished) or succeeded is not waited for.
            if d is not None and d.row.state != "succeeded":
                waiting += 1
                if e.row.id not in self._dependents.setdefault(dep_id, []):
                    self._dependents[dep_id].append(e.row.id)
        if waiting:
            self._waiting[e.row.id] = waiting
            not_before = e.row.run_at if e.row.run_at > e.row.enqueued_at else None
            self._holds[e.row.id] = (delay, not_before)
            e.row.state, e.row.run_at = SCHEDULED, float("inf")

    def group_members(self, group_id: str) -> builtins.list[str]:
        """Member ids in order; see :meth:`Storage.group_members`."""
        with self._lock:
            members = self._groups.get(group_id, {})
            return [members[i] for i in sorted(members) if members[i] in self._tasks]

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
    ) -> list[ClaimedTask]:
        """Lease due tasks; see :meth:`Storage.claim`."""
        check_lease(lease)
        now = time.time() if now is None else now
        out: list[ClaimedTask] = []
        with self._lock:
            if ids is not None:
                wanted = set(ids)
                candidates = [
                    e
                    for e in self._tasks.values()
                    if e.row.id in wanted and e.row.state in (PENDING, SCHEDULED) and e.row.id not in self._waiting
                ]
            else:
                qs = set(queues)
                for e in self._tasks.values():
                    if e.row.state == SCHEDULED and e.row.run_at <= now:
                        e.row.state = PENDING
                candidates = [e for e in self._tasks.values() if e.row.state == PENDING and e.row.queue in qs]
            candidates.sort(key=lambda e: (-e.row.priority, e.seq))
            held = {e.row.lock_key for e in self._tasks.values() if e.row.state == RUNNING and e.row.lock_key}
            for e in candidates:
                if len(out) >= limit:
                    break
                r = e.row
                if r.lock_key is not None and r.lock_key in held:
                    continue
                if r.expires_at is not None and r.expires_at <= now:
                    r.attempts += 1
                    r.reason = "expired"
                    self._finish(e, "expired", now)
                    continue
                # The app's current rate wins; a pool without the app uses the one stored with the task.
                rate = limits[r.name] if limits and r.name in limits else e.rate_limit
                if rate is not None:
                    ok, when, self._rates[r.name] = admit(self._rates.get(r.name), now, rate)
                    if not ok:
                        r.state, r.run_at = SCHEDULED, when
                        continue
                r.attempts += 1
                if r.lock_key is not None:
                    held.add(r.lock_key)
                r.state = RUNNING
                r.lease_owner = owner
                r.lease_token = os.urandom(12).hex()
                r.lease_deadline = now + lease
                r.started_at = now
                out.append(
                    ClaimedTask(
                        id=r.id,
                        name=r.name,
                        queue=r.queue,
                        payload=r.payload or b"",
                        attempt=r.attempts,
                        max_attempts=r.max_attempts,
                        lease_token=r.lease_token,
                        lease_deadline=r.lease_deadline,
                        enqueued_at=r.enqueued_at,
                        expires_at=r.expires_at,
                        priority=r.priority,
                        timeout=e.timeout,
                        soft_timeout=e.soft_timeout,
                    )
                )
        if candidates:
            self.notify()
        return out

    def _leased(self, id: str, token: str) -> _Entry | None:
        e = self._tasks.get(id)
        if e is None or e.row.state != RUNNING or e.row.lease_token != token:
            return None
        return e

    def extend(
        self, owner: str, leases: Sequence[tuple[str, str]], *, lease: float, now: float | None = None
    ) -> list[bool]:
        """Push lease deadlines; see :meth:`Storage.extend`."""
        check_lease(lease)
        now = time.time() if now is None else now
        out = []
        with self._lock:
            for id_, token in leases:
                e = self._leased(id_, token)
                if e is not None:
                    e.row.lease_deadline = now + lease
                out.append(e is not None)
        return out

    def complete(self, outcomes: Sequence[Outcome], *, now: float | None = None) -> list[bool]:
        """Apply outcomes under their lease tokens; see :meth:`Storage.complete`."""
        now = time.time() if now is None else now
        outcomes = checked_outcomes(outcomes, now)
        out = []
        with self._lock:
            for o in outcomes:
                e = self._leased(o.id, o.lease_token)
                out.append(e is not None)
                if e is None:
                    continue
                r = e.row
                r.error, r.reason = o.error, o.reason
                if o.error is not None:
                    r.errors.append(o.error)
                if o.state in (SCHEDULED, PENDING):
                    r.run_at = now if o.run_at is None else o.run_at
                    r.state = SCHEDULED if r.run_at > now else PENDING
                    r.lease_owner = r.lease_token = None
                    r.lease_deadline = None
                else:
                    r.result = o.result
                    self._finish(e, o.state, now, o.result_ttl)
        self.notify()
        return out

    def release(self, leases: Sequence[tuple[str, str]], *, uncount: bool = True) -> int:
        """Hand leased tasks back; see :meth:`Storage.release`."""
        n = 0
        with self._lock:
            for id_, token in leases:
                e = self._leased(id_, token)
                if e is None:
                    continue
                r = e.row
                r.attempts = max(r.attempts - (1 if uncount else 0), 0)
                if r.cancel_requested:
                    r.reason = "cancelled"
                    self._finish(e, "cancelled", time.time())
                    n += 1
                    continue
                r.state = PENDING
                r.started_at = None
                r.lease_owner = r.lease_token = None
                r.lease_deadline = None
                n += 1
        self.notify()
        return n

    def reap(self, *, now: float | None = None, owner: str | None = None) -> list[str]:
        """Recover lost leases; see :meth:`Storage.reap`."""
        now = time.time() if now is None else now
        touched = []
        with self._lock:
            for e in self._tasks.values():
                r = e.row
                if r.state != RUNNING:
                    continue
                lost = r.lease_owner == owner if owner is not None else (r.lease_deadline or 0) < now
                if not lost:
                    continue
                touched.append(r.id)
                if r.cancel_requested:
                    r.reason = "cancelled"
                    self._finish(e, "cancelled", now)
                    continue
                r.reason = "worker lost"
                if r.attempts >= r.max_attempts:
                    r.error = None
                    self._finish(e, FAILED, now)
                else:
                    r.state = PENDING
                    r.started_at = None
                    r.lease_owner = r.lease_token = None
                    r.lease_deadline = None
        if touched:
            self.notify()
        return touched

    def set_progress(self, id: str, lease_token: str, progress: bytes) -> bool:
        """Record progress; see :meth:`Storage.set_progress`."""
        with self._lock:
            e = self._leased(id, lease_token)
            if e is not None:
                e.row.progress = progress
        self.notify()
        return e is not None

    def cancel(self, ids: Sequence[str], *, now: float | None = None) -> list[str | None]:
        """Cancel tasks; see :meth:`Storage.cancel`."""
        now = time.time() if now is None else now
        out: list[str | None] = []
        with self._lock:
            for id_ in ids:
                e = self._tasks.get(id_)
                if e is None:
                    out.append(None)
                    continue
                if e.row.state in (PENDING, SCHEDULED):
                    e.row.reason = "cancelled"
                    self._finish(e, "cancelled", now)
                elif e.row.state == RUNNING:
                    e.row.cancel_requested = True
                out.append(e.row.state)
        self.notify()
        return out

    def retry(self, ids: Sequence[str], *, now: float | None = None) -> list[bool]:
        """Re-run finished tasks; see :meth:`Storage.retry`."""
        now = time.time() if now is None else now
        out = []
        with self._lock:
            chosen = {
                i
                for i in ids
                if (e := self._tasks.get(i)) is not None and e.row.state in FINISHED_STATES - {"succeeded"}
            }
            for id_ in ids:
                e = self._tasks.get(id_)
                ok = id_ in chosen and e is not None
                # A canvas step waits again for the steps it depends on that are retried with it (or
                # still running); one whose dependency stays failed cannot run and is not retried.
                cascaded = e is not None and is_cascaded(e.row.reason)
                deps = [d for d in self._requires.get(id_, ()) if d in self._tasks] if cascaded else []
                if ok and any(d not in chosen and self._tasks[d].row.state in FINISHED_STATES - {"succeeded"}
                              for d in deps):  # fmt: skip
                    ok = False
                if e is not None and ok:
                    r = e.row
                    r.state, r.run_at, r.attempts = PENDING, now, 0
                    r.reason = r.result = None
                    r.finished_at = r.started_at = r.result_expires_at = r.expires_at = None
                    r.cancel_requested = False
                    open_deps = [d for d in deps if d in chosen or self._tasks[d].row.state != "succeeded"]
                    if open_deps:
                        self._waiting[id_] = len(open_deps)
                        self._holds[id_] = (0.0, None)
                        r.state, r.run_at = SCHEDULED, float("inf")
                        for d in open_deps:
                            if id_ not in self._dependents.setdefault(d, []):
                                self._dependents[d].append(id_)
                out.append(ok)
        self.notify()
        return out

    def _drop(self, pred: object) -> int:
        with self._lock:
            doomed = [i for i, e in self._tasks.items() if pred(e)]  # type: ignore[operator]
            for i in doomed:
                e = self._tasks.pop(i)
                if e.row.idempotency_key is not None:
                    self._keys.pop(e.row.idempotency_key, None)
        if doomed:
            self.notify()
        return len(doomed)

    def purge(
        self, *, queue: str | None = None, states: Iterable[str] | None = None, ids: Sequence[str] | None = None
    ) -> int:
        """Delete matching tasks; see :meth:`Storage.purge`."""
        wanted = set(states) if states is not None else None
        idset = set(ids) if ids is not None else None

        def match(e: _Entry) -> bool:
            r = e.row
            if queue is not None and r.queue != queue:
                return False
            if wanted is None and r.state == RUNNING:
                return False
            if wanted is not None and r.state not in wanted:
                return False
            return idset is None or r.id in idset

        return self._drop(match)

    def prune(self, *, now: float | None = None, limit: int = 10_000) -> int:
        """Delete finished tasks past their TTL; see :meth:`Storage.prune`."""
        now = time.time() if now is None else now
        budget = [limit]
        with self._lock:
            horizon = int((now - STATS_MEMORY) // 60)
            for key in [k for k in self._stats if k[0] < horizon]:
                del self._stats[key]

        def match(e: _Entry) -> bool:
            x = e.row.result_expires_at
            if x is None or x > now or budget[0] <= 0:
                return False
            budget[0] -= 1
            return True

        return self._drop(match)

    # -- reads -------------------------------------------------------------------------------------

    def get(self, ids: Sequence[str], *, history: bool = False) -> list[TaskRow | None]:
        """Rows by id; see :meth:`Storage.get`."""
        with self._lock:
            out: builtins.list[TaskRow | None] = []
            for id_ in ids:
                e = self._tasks.get(id_)
                if e is None:
                    out.append(None)
                    continue
                row = copy.copy(e.row)
                row.errors = list(e.row.errors) if history else []
                out.append(row)
            return out

    def list(
        self,
        *,
        states: Iterable[str] | None = None,
        queue: str | None = None,
        name: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[TaskRow]:
        """Rows matching filters, oldest first; see :meth:`Storage.list`."""
        wanted = set(states) if states is not None else None
        with self._lock:
            entries = sorted(self._tasks.values(), key=lambda e: e.seq)
            rows = [
                e.row
                for e in entries
                if (wanted is None or e.row.state in wanted)
                and (queue is None or e.row.queue == queue)
                and (name is None or e.row.name == name)
            ][offset : offset + limit]
            return [self._bare(r) for r in rows]

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
        wanted = set(states) if states is not None else None
        with self._lock:
            bound = None
            if before is not None:
                cursor = self._tasks.get(before)
                if cursor is None:
                    return []
                bound = cursor.seq
            out: builtins.list[TaskRow] = []
            for e in sorted(self._tasks.values(), key=lambda e: -e.seq):
                r = e.row
                if len(out) >= limit:
                    break
                if (
                    (bound is None or e.seq < bound)
                    and (wanted is None or r.state in wanted)
                    and (queue is None or r.queue == queue)
                    and (name is None or r.name == name)
                    and (since is None or r.enqueued_at >= since)
                    and (until is None or r.enqueued_at < until)
                    and (parent is None or r.parent_id == parent)
                ):
                    out.append(self._bare(r))
            return out

    @staticmethod
    def _bare(r: TaskRow) -> TaskRow:
        c = copy.copy(r)
        c.payload = c.result = c.error = c.progress = None
        c.errors = []
        return c

    def oldest_pending(self) -> dict[str, TaskRow]:
        """The first-stored pending task per queue; see :meth:`Storage.oldest_pending`."""
        out: dict[str, TaskRow] = {}
        with self._lock:
            for e in sorted(self._tasks.values(), key=lambda e: e.seq):
                if e.row.state == PENDING and e.row.queue not in out:
                    out[e.row.queue] = self._bare(e.row)
        return out

    def stats(self, *, since: float, until: float | None = None, bucket: int = 60) -> builtins.list[StatsRow]:
        """Finish statistics per minute (or ``bucket``); see :meth:`Storage.stats`."""
        span = max(int(bucket) // 60, 1)
        summed: dict[tuple[int, str, str, str], tuple[int, float, float]] = {}
        with self._lock:
            for (m, q, n, st), (c, total, worst) in self._stats.items():
                if m * 60 >= since and (until is None or m * 60 < until):
                    key = (m // span * span, q, n, st)
                    c0, t0, w0 = summed.get(key, (0, 0.0, 0.0))
                    summed[key] = (c0 + c, t0 + total, max(w0, worst))
        return [
            StatsRow(minute=float(m * 60), queue=q, name=n, state=st, count=c, latency_sum=total, latency_max=worst)
            for (m, q, n, st), (c, total, worst) in sorted(summed.items())
        ]

    def counts(self) -> dict[str, dict[str, int]]:
        """``{queue: {state: n}}``; see :meth:`Storage.counts`."""
        out: dict[str, dict[str, int]] = {}
        with self._lock:
            for e in self._tasks.values():
                by_state = out.setdefault(e.row.queue, {})
                by_state[e.row.state] = by_state.get(e.row.state, 0) + 1
        return out

    def next_run_at(self, queues: Sequence[str]) -> float | None:
        """Earliest scheduled ``run_at``; see :meth:`Storage.next_run_at`."""
        qs = set(queues)
        with self._lock:
            times = [
                e.row.run_at
                for e in self._tasks.values()
                if e.row.state == SCHEDULED and e.row.queue in qs and e.row.id not in self._waiting
            ]
        return min(times) if times else None

    # -- periodic schedules ---------------------------------------------------------------------------

    def register_schedules(self, names: Sequence[str], *, now: float | None = None) -> None:
        """Record new schedules; see :meth:`Storage.register_schedules`."""
        now = time.time() if now is None else now
        with self._lock:
            for name in names:
                self._schedules.setdefault(name, ScheduleState(name, False, now))

    def schedule_states(self, names: Sequence[str] | None = None) -> dict[str, ScheduleState]:
        """Schedule states; see :meth:`Storage.schedule_states`."""
        with self._lock:
            wanted = (
                self._schedules if names is None else {n: self._schedules[n] for n in names if n in self._schedules}
            )
            return {n: copy.copy(s) for n, s in wanted.items()}

    def set_schedule_paused(self, name: str, paused: bool, *, now: float | None = None) -> bool:
        """Pause or resume; see :meth:`Storage.set_schedule_paused`."""
        now = time.time() if now is None else now
        with self._lock:
            st = self._schedules.get(name)
            if st is None:
                return False
            if st.paused and not paused:
                st.last_slot = max(st.last_slot or now, now)
            st.paused = paused
            return True

    # -- workers -----------------------------------------------------------------------------------

    def register_worker(self, info: WorkerInfo) -> None:
        """Record a live worker; see :meth:`Storage.register_worker`."""
        with self._lock:
            self._workers[info.id] = copy.deepcopy(info)

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
        now = time.time() if now is None else now
        with self._lock:
            w = self._workers.get(worker_id)
            if w is not None:
                w.heartbeat_at = now
                w.tasks_done += tasks_done
                w.state, w.state_reason, w.state_since = state, state_reason, state_since

    def unregister_worker(self, worker_id: str) -> None:
        """Forget a worker; see :meth:`Storage.unregister_worker`."""
        with self._lock:
            self._workers.pop(worker_id, None)

    def workers(self, *, stale_after: float | None = None, now: float | None = None) -> builtins.list[WorkerInfo]:
        """Recorded workers; see :meth:`Storage.workers`."""
        now = time.time() if now is None else now
        with self._lock:
            ws = sorted(self._workers.values(), key=lambda w: w.started_at)
            return [copy.deepcopy(w) for w in ws if stale_after is None or w.heartbeat_at >= now - stale_after]
