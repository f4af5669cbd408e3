"""A task's states in the memory store: enqueue, claim, leases, outcomes, cancel and retry."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence

from ...exceptions import StorageError
from ...ratelimit import admit
from ..checks import check_lease, check_new_tasks, checked_outcomes
from ..policy import FAILED_STATES, open_dependencies, retry_blocked, state_for_run_at
from ..records import ClaimedTask, NewTask, Outcome, ScheduleState, TaskRow
from ..states import CANCELLED, EXPIRED, FAILED, PENDING, RUNNING, SCHEDULED, is_cascaded
from .canvas import finish, rewait, wait_for
from .state import Entry, MemoryState

__all__ = ["Queue"]


class Queue:
    """The writes that move tasks between states, over one :class:`MemoryState`."""

    def __init__(self, state: MemoryState) -> None:
        self.s = state

    def enqueue(self, tasks: Sequence[NewTask], *, now: float | None = None) -> list[str]:
        """Store a batch atomically; see :meth:`Storage.enqueue`."""
        now = time.time() if now is None else now
        check_new_tasks(tasks, now)
        ids = []
        with self.s.lock:
            linked: list[tuple[Entry, list[str], float]] = []
            # Check the whole batch first: a refused batch writes nothing.
            seen_ids: set[str] = set()
            seen_keys: set[str] = set()
            for t in tasks:
                if t.idempotency_key is not None and (
                    t.idempotency_key in self.s.keys or t.idempotency_key in seen_keys
                ):
                    continue
                if t.id in self.s.tasks or t.id in seen_ids:
                    raise StorageError(f"task id {t.id} is already stored; ids must be unique", path=self.s.location)
                seen_ids.add(t.id)
                if t.idempotency_key is not None:
                    seen_keys.add(t.idempotency_key)
            for t in tasks:
                if t.idempotency_key is not None and t.idempotency_key in self.s.keys:
                    ids.append(self.s.keys[t.idempotency_key])
                    continue
                if t.unique_key is not None:
                    twin = next(
                        (
                            e.row.id
                            for e in self.s.tasks.values()
                            if e.row.unique_key == t.unique_key and e.row.state in (PENDING, SCHEDULED)
                        ),
                        None,
                    )
                    if twin is not None:
                        ids.append(twin)
                        continue
                if t.slot is not None:
                    if t.slot in self.s.slots:
                        ids.append(self.s.slots[t.slot])
                        continue
                    self.s.slots[t.slot] = t.id
                    st = self.s.schedules.setdefault(t.slot[0], ScheduleState(t.slot[0], False, None))
                    st.last_slot = max(st.last_slot or t.slot[1], t.slot[1])
                    st.last_fired_at, st.last_task_id = now, t.id
                run_at = now if t.run_at is None else t.run_at
                row = TaskRow(
                    id=t.id,
                    name=t.name,
                    queue=t.queue,
                    state=state_for_run_at(run_at, now),
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
                entry = Entry(next(self.s.seq), row, t.result_ttl, t.timeout, t.soft_timeout, t.rate_limit)
                self.s.tasks[t.id] = entry
                if t.group_id is not None:
                    self.s.groups.setdefault(t.group_id, {})[t.group_index or 0] = t.id
                if t.depends_on:
                    linked.append((entry, t.depends_on, t.release_delay))
                if t.idempotency_key is not None:
                    self.s.keys[t.idempotency_key] = t.id
                ids.append(t.id)
            # Dependencies once the whole batch is in: a task may wait for one stored after it.
            for entry, deps, delay in linked:
                wait_for(self.s, entry, deps, now, delay)
        self.s.notify()
        return ids

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
        with self.s.lock:
            if ids is not None:
                wanted = set(ids)
                candidates = [
                    e
                    for e in self.s.tasks.values()
                    if e.row.id in wanted and e.row.state in (PENDING, SCHEDULED) and e.row.id not in self.s.waiting
                ]
            else:
                qs = set(queues)
                for e in self.s.tasks.values():
                    if e.row.state == SCHEDULED and e.row.run_at <= now:
                        e.row.state = PENDING
                candidates = [e for e in self.s.tasks.values() if e.row.state == PENDING and e.row.queue in qs]
            candidates.sort(key=lambda e: (-e.row.priority, e.seq))
            held = {e.row.lock_key for e in self.s.tasks.values() if e.row.state == RUNNING and e.row.lock_key}
            for e in candidates:
                if len(out) >= limit:
                    break
                r = e.row
                if r.lock_key is not None and r.lock_key in held:
                    continue
                if r.expires_at is not None and r.expires_at <= now:
                    r.attempts += 1
                    r.reason = "expired"
                    finish(self.s, e, EXPIRED, now)
                    continue
                # The app's current rate wins; a pool without the app uses the one stored with the task.
                rate = limits[r.name] if limits and r.name in limits else e.rate_limit
                if rate is not None:
                    ok, when, self.s.rates[r.name] = admit(self.s.rates.get(r.name), now, rate)
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
            self.s.notify()
        return out

    def leased(self, id: str, token: str) -> Entry | None:
        e = self.s.tasks.get(id)
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
        with self.s.lock:
            for id_, token in leases:
                e = self.leased(id_, token)
                if e is not None:
                    e.row.lease_deadline = now + lease
                out.append(e is not None)
        return out

    def complete(self, outcomes: Sequence[Outcome], *, now: float | None = None) -> list[bool]:
        """Apply outcomes under their lease tokens; see :meth:`Storage.complete`."""
        now = time.time() if now is None else now
        outcomes = checked_outcomes(outcomes, now)
        out = []
        with self.s.lock:
            for o in outcomes:
                e = self.leased(o.id, o.lease_token)
                out.append(e is not None)
                if e is None:
                    continue
                r = e.row
                r.error, r.reason = o.error, o.reason
                if o.error is not None:
                    r.errors.append(o.error)
                if o.state in (SCHEDULED, PENDING):
                    r.run_at = now if o.run_at is None else o.run_at
                    r.state = state_for_run_at(r.run_at, now)
                    r.lease_owner = r.lease_token = None
                    r.lease_deadline = None
                else:
                    r.result = o.result
                    finish(self.s, e, o.state, now, o.result_ttl)
        self.s.notify()
        return out

    def release(self, leases: Sequence[tuple[str, str]], *, uncount: bool = True) -> int:
        """Hand leased tasks back; see :meth:`Storage.release`."""
        n = 0
        with self.s.lock:
            for id_, token in leases:
                e = self.leased(id_, token)
                if e is None:
                    continue
                r = e.row
                r.attempts = max(r.attempts - (1 if uncount else 0), 0)
                if r.cancel_requested:
                    r.reason = "cancelled"
                    finish(self.s, e, CANCELLED, time.time())
                    n += 1
                    continue
                _hand_back(r)
                n += 1
        self.s.notify()
        return n

    def reap(self, *, now: float | None = None, owner: str | None = None) -> list[str]:
        """Recover lost leases; see :meth:`Storage.reap`."""
        now = time.time() if now is None else now
        touched = []
        with self.s.lock:
            for e in self.s.tasks.values():
                r = e.row
                if r.state != RUNNING:
                    continue
                lost = r.lease_owner == owner if owner is not None else (r.lease_deadline or 0) < now
                if not lost:
                    continue
                touched.append(r.id)
                if r.cancel_requested:
                    r.reason = "cancelled"
                    finish(self.s, e, CANCELLED, now)
                    continue
                r.reason = "worker lost"
                if r.attempts >= r.max_attempts:
                    r.error = None
                    finish(self.s, e, FAILED, now)
                else:
                    _hand_back(r)
        if touched:
            self.s.notify()
        return touched

    def set_progress(self, id: str, lease_token: str, progress: bytes) -> bool:
        """Record progress; see :meth:`Storage.set_progress`."""
        with self.s.lock:
            e = self.leased(id, lease_token)
            if e is not None:
                e.row.progress = progress
        self.s.notify()
        return e is not None

    def cancel(self, ids: Sequence[str], *, now: float | None = None) -> list[str | None]:
        """Cancel tasks; see :meth:`Storage.cancel`."""
        now = time.time() if now is None else now
        out: list[str | None] = []
        with self.s.lock:
            for id_ in ids:
                e = self.s.tasks.get(id_)
                if e is None:
                    out.append(None)
                    continue
                if e.row.state in (PENDING, SCHEDULED):
                    e.row.reason = "cancelled"
                    finish(self.s, e, CANCELLED, now)
                elif e.row.state == RUNNING:
                    e.row.cancel_requested = True
                out.append(e.row.state)
        self.s.notify()
        return out

    def retry(self, ids: Sequence[str], *, now: float | None = None) -> list[bool]:
        """Re-run finished tasks; see :meth:`Storage.retry`."""
        now = time.time() if now is None else now
        out = []
        with self.s.lock:
            chosen = {i for i in ids if (e := self.s.tasks.get(i)) is not None and e.row.state in FAILED_STATES}
            for id_ in ids:
                e = self.s.tasks.get(id_)
                ok = id_ in chosen and e is not None
                # A canvas step waits again for the steps it depends on that are retried with it (or
                # still running); one whose dependency stays failed cannot run and is not retried.
                cascaded = e is not None and is_cascaded(e.row.reason)
                deps = (
                    [(d, self.s.tasks[d].row.state) for d in self.s.requires.get(id_, ()) if d in self.s.tasks]
                    if cascaded
                    else []
                )
                if ok and retry_blocked(deps, chosen):
                    ok = False
                if e is not None and ok:
                    r = e.row
                    r.state, r.run_at, r.attempts = PENDING, now, 0
                    r.reason = r.result = None
                    r.finished_at = r.started_at = r.result_expires_at = r.expires_at = None
                    r.cancel_requested = False
                    open_deps = open_dependencies(deps, chosen)
                    if open_deps:
                        rewait(self.s, e, open_deps)
                out.append(ok)
        self.s.notify()
        return out


def _hand_back(r: TaskRow) -> None:
    """A running row back to ``pending`` without its lease (released by its worker, or lost)."""
    r.state = PENDING
    r.started_at = None
    r.lease_owner = r.lease_token = None
    r.lease_deadline = None
