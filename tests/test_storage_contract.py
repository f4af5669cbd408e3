"""The storage contract: every store (SQLite, memory, later remote) passes these same tests.

Tests speak bytes through the :class:`~liteq.storage.contract.Storage` API only, and drive time through
``now=``: no sleeps, no wall clock. ``T0`` lies in the future on purpose, so an operation that has no
``now`` parameter (``release``) and stamps the store's own clock stamps a time that is already past
for these tests.
"""

from __future__ import annotations

import pickle
import random
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from liteq.exceptions import LiteQError
from liteq.storage.contract import Storage
from liteq.storage.records import ClaimedTask, NewTask, Outcome, TaskRow, WorkerInfo
from liteq.storage.states import CANCELLED, EXPIRED, FAILED, PENDING, RUNNING, SCHEDULED, SUCCEEDED
from tests.support import wait_for

pytestmark = pytest.mark.timeout(30)

T0 = 2_000_000_000.0
"""The test clock's origin (2033): later than any wall-clock time a store may stamp by itself."""

BLOB = random.Random(7).randbytes(200_000)
"""Bigger than the SQLite store's 64 KiB blob threshold, so it lives out of the hot table."""


# -- helpers -------------------------------------------------------------------------------------


def new_task(queue: str = "default", *, name: str = "tasks.add", payload: bytes = b"payload", **fields: Any) -> NewTask:
    """A task with a random id, so nothing can rely on ids sorting in enqueue order."""
    return NewTask(id=uuid.uuid4().hex, name=name, queue=queue, payload=payload, **fields)


def enqueue_one(storage: Storage, *, now: float = T0, **fields: Any) -> str:
    (task_id,) = storage.enqueue([new_task(**fields)], now=now)
    return task_id


def claim_one(
    storage: Storage, *, now: float = T0, owner: str = "w1", queues: tuple[str, ...] = ("default",), lease: float = 60.0
) -> ClaimedTask:
    claimed = storage.claim(owner, list(queues), now=now, lease=lease)
    assert len(claimed) == 1, claimed
    return claimed[0]


def row(storage: Storage, task_id: str, *, history: bool = False) -> TaskRow:
    (found,) = storage.get([task_id], history=history)
    assert found is not None, f"task {task_id} is gone"
    return found


def finish(storage: Storage, task: ClaimedTask, state: str = SUCCEEDED, *, now: float, **fields: Any) -> None:
    assert storage.complete([Outcome(task.id, task.lease_token, state, **fields)], now=now) == [True]


# -- enqueue -------------------------------------------------------------------------------------


def test_enqueue_batch_returns_ids_in_order_and_stores_every_field(storage: Storage) -> None:
    # Given a batch of tasks in two queues
    tasks = [
        new_task("a", name="t.one", payload=b"1", priority=3, max_attempts=4, expires_at=T0 + 500, parent_id="p"),
        new_task("b", name="t.two", payload=b"2"),
        new_task("a", name="t.three", payload=b"3", idempotency_key="k3"),
    ]
    # When it is enqueued
    ids = storage.enqueue(tasks, now=T0)
    # Then the ids come back in order and every row is pending with the given fields
    assert ids == [t.id for t in tasks]
    first = row(storage, ids[0])
    assert (first.name, first.queue, first.state, first.payload) == ("t.one", "a", PENDING, b"1")
    assert (first.priority, first.max_attempts, first.attempts) == (3, 4, 0)
    assert (first.expires_at, first.parent_id, first.enqueued_at, first.run_at) == (T0 + 500, "p", T0, T0)
    assert not first.cancel_requested and first.lease_token is None
    assert row(storage, ids[2]).idempotency_key == "k3"


def test_enqueue_of_an_empty_batch_stores_nothing(storage: Storage) -> None:
    assert storage.enqueue([], now=T0) == []
    assert storage.counts() == {}


@pytest.mark.parametrize(
    "payload",
    [b"", b"\x00", b"a\x00b\x00\x00", bytes(range(256)), b"\xff" * 65_535, b"\x00" * 65_536, b"x" * 65_537],
    ids=["empty", "nul", "inner-nuls", "all-bytes", "below-threshold", "at-threshold", "above-threshold"],
)
def test_payload_bytes_roundtrip_exactly(storage: Storage, payload: bytes) -> None:
    # Given a task with awkward payload bytes
    task_id = enqueue_one(storage, payload=payload)
    # When it is read back and claimed
    stored = row(storage, task_id).payload
    claimed = claim_one(storage)
    # Then both give the exact bytes
    assert stored == payload and type(stored) is bytes
    assert claimed.payload == payload and type(claimed.payload) is bytes


def test_idempotency_key_returns_existing_id_and_writes_nothing(storage: Storage) -> None:
    # Given a task stored under an idempotency key
    first = new_task(payload=b"original", idempotency_key="order-42")
    storage.enqueue([first], now=T0)
    # When another task with the same key is enqueued, beside a new one
    again = new_task(payload=b"duplicate", idempotency_key="order-42")
    other = new_task(payload=b"other")
    ids = storage.enqueue([again, other], now=T0 + 1)
    # Then the existing id comes back, nothing is written for the duplicate, the other is stored
    assert ids == [first.id, other.id]
    assert storage.get([again.id]) == [None]
    assert row(storage, first.id).payload == b"original"
    assert _nonzero(storage.counts()) == {"default": {PENDING: 2}}


def test_idempotency_key_duplicated_within_one_batch_stores_one_task(storage: Storage) -> None:
    # Given one batch holding the same key twice
    a, b = new_task(idempotency_key="k"), new_task(idempotency_key="k")
    # When it is enqueued
    ids = storage.enqueue([a, b], now=T0)
    # Then both entries get the first task's id and only it is stored
    assert ids == [a.id, a.id]
    assert storage.get([b.id]) == [None]
    assert len(storage.claim("w1", ["default"], limit=10, now=T0)) == 1


def test_idempotency_key_holds_after_the_task_finished(storage: Storage) -> None:
    # Given a finished task with a key (still stored)
    task_id = enqueue_one(storage, idempotency_key="k")
    finish(storage, claim_one(storage), now=T0 + 1)
    # When the key is enqueued again
    ids = storage.enqueue([new_task(idempotency_key="k")], now=T0 + 2)
    # Then the finished task's id comes back and nothing new is pending
    assert ids == [task_id]
    assert storage.claim("w1", ["default"], now=T0 + 2) == []


def _clashing_batch(storage: Storage, clash_with: str) -> tuple[NewTask, list[NewTask]]:
    """A stored task, and a batch whose last entry reuses an id (the stored one, or one in the batch)."""
    existing = new_task()
    storage.enqueue([existing], now=T0)
    fresh = new_task()
    clashing_id = existing.id if clash_with == "stored" else fresh.id
    return existing, [fresh, NewTask(id=clashing_id, name="t", queue="default", payload=b"clash")]


@pytest.mark.parametrize("payload", [b"small", BLOB], ids=["small", "large"])
def test_idempotent_reenqueue_under_the_same_id_keeps_the_stored_payload(storage: Storage, payload: bytes) -> None:
    # Given a task stored under an id and a key (a producer that retries after a timeout reuses both)
    first = new_task(payload=payload, idempotency_key="k")
    storage.enqueue([first], now=T0)
    # When it is enqueued again with other bytes
    again = NewTask(id=first.id, name=first.name, queue=first.queue, payload=payload[::-1] + b"!", idempotency_key="k")
    assert storage.enqueue([again], now=T0 + 1) == [first.id]
    # Then nothing was written: the stored payload is the first one
    assert row(storage, first.id).payload == payload
    assert claim_one(storage, now=T0 + 2).payload == payload


def test_idempotency_key_is_free_again_once_its_task_is_purged(storage: Storage) -> None:
    # Given a key whose task was purged (so it is no longer stored)
    old = enqueue_one(storage, idempotency_key="k")
    storage.purge(ids=[old])
    # When the key is enqueued again, then a new task is stored
    again = new_task(idempotency_key="k")
    assert storage.enqueue([again], now=T0 + 1) == [again.id]
    assert row(storage, again.id).state == PENDING


def test_store_clock_is_used_when_now_is_none(storage: Storage) -> None:
    # Given no `now` anywhere: the store stamps its own clock
    before = time.time()
    (task_id,) = storage.enqueue([new_task()])
    task = storage.claim("w1", ["default"], lease=60)[0]
    assert storage.complete([Outcome(task.id, task.lease_token, SUCCEEDED, result=b"r")]) == [True]
    after = time.time()
    # Then every stamp lies between the wall-clock readings around the calls
    done = row(storage, task_id)
    assert before <= done.enqueued_at <= done.started_at <= done.finished_at <= after  # type: ignore[operator]
    assert before + 60 <= task.lease_deadline <= after + 60


@pytest.mark.parametrize("clash_with", ["stored", "same-batch"])
def test_enqueue_is_atomic_for_the_whole_batch(storage: Storage, clash_with: str) -> None:
    # Given a batch whose last entry reuses a task id
    existing, batch = _clashing_batch(storage, clash_with)
    # When it is enqueued, it fails (the contract names no error type here: see the next test)
    with pytest.raises(Exception):  # noqa: B017
        storage.enqueue(batch, now=T0 + 1)
    # Then nothing of that batch was written, and the stored task is untouched
    assert storage.get([batch[0].id]) == [None]
    assert row(storage, existing.id).payload == b"payload"
    assert _nonzero(storage.counts()) == {"default": {PENDING: 1}}


def test_failed_enqueue_keeps_the_stored_tasks_large_payload(storage: Storage) -> None:
    # Given a stored task with a large payload
    existing = new_task(payload=BLOB)
    storage.enqueue([existing], now=T0)
    # When an enqueue that reuses its id fails
    clash = NewTask(id=existing.id, name="t", queue="default", payload=BLOB[::-1])
    with pytest.raises(Exception):  # noqa: B017
        storage.enqueue([clash], now=T0 + 1)
    # Then the stored task still has its own payload
    assert row(storage, existing.id).payload == BLOB
    assert claim_one(storage, now=T0 + 2).payload == BLOB


@pytest.mark.parametrize("clash_with", ["stored", "same-batch"])
def test_enqueue_of_a_clashing_id_raises_a_liteq_error(storage: Storage, clash_with: str) -> None:
    # Given a batch whose last entry reuses a task id
    _, batch = _clashing_batch(storage, clash_with)
    # When it is enqueued, then the error is liteq's own (exceptions.py: every error under one root)
    with pytest.raises(LiteQError):
        storage.enqueue(batch, now=T0 + 1)


def test_future_run_at_is_scheduled_until_it_passes(storage: Storage) -> None:
    # Given a task due at T0+100
    task_id = enqueue_one(storage, run_at=T0 + 100)
    assert (row(storage, task_id).state, row(storage, task_id).run_at) == (SCHEDULED, T0 + 100)
    # When workers claim before and after that time
    early = storage.claim("w1", ["default"], now=T0 + 99)
    late = storage.claim("w1", ["default"], now=T0 + 101)
    # Then it is handed out only once its time has passed
    assert early == []
    assert [t.id for t in late] == [task_id]
    assert row(storage, task_id).state == RUNNING


def test_past_run_at_is_pending_at_once(storage: Storage) -> None:
    task_id = enqueue_one(storage, run_at=T0 - 100, now=T0)
    assert row(storage, task_id).state == PENDING
    assert claim_one(storage, now=T0).id == task_id


# -- claim ---------------------------------------------------------------------------------------


def test_claim_orders_by_priority_then_enqueue_order(storage: Storage) -> None:
    # Given tasks of mixed priorities, enqueued over time and within one batch
    low = enqueue_one(storage, now=T0, priority=0)
    high_old = enqueue_one(storage, now=T0 + 1, priority=5)
    batch = storage.enqueue([new_task(priority=5), new_task(priority=0), new_task(priority=9)], now=T0 + 2)
    # When they are claimed one at a time
    order = [claim_one(storage, now=T0 + 3).id for _ in range(5)]
    # Then the highest priority goes first, and equal priorities go oldest first
    assert order == [batch[2], high_old, batch[0], low, batch[1]]


def test_claim_takes_only_the_given_queues_and_respects_limit(storage: Storage) -> None:
    # Given tasks in three queues; the highest priority one is in a queue nobody asks for
    a1 = enqueue_one(storage, queue="a", now=T0)
    c1 = enqueue_one(storage, queue="c", now=T0 + 1, priority=1)
    b1 = enqueue_one(storage, queue="b", now=T0 + 2, priority=9)
    a2 = enqueue_one(storage, queue="a", now=T0 + 3)
    # When a worker for queues a and c claims two, then asks for more
    first = storage.claim("w1", ["a", "c"], limit=2, now=T0 + 5)
    rest = storage.claim("w1", ["a", "c"], limit=10, now=T0 + 5)
    # Then it gets a and c tasks only, at most two at once, in order across queues
    assert [t.id for t in first] == [c1, a1]
    assert [t.id for t in rest] == [a2]
    assert storage.claim("w1", ["a", "c"], limit=10, now=T0 + 5) == []
    assert row(storage, b1).state == PENDING
    assert storage.claim("w1", ["nobody"], limit=10, now=T0 + 5) == []


def test_claim_with_ids_takes_only_those_tasks(storage: Storage) -> None:
    # Given three pending tasks, the wanted one of the lowest priority
    top = enqueue_one(storage, priority=9)
    wanted = enqueue_one(storage, priority=0)
    enqueue_one(storage, priority=5)
    # When a claim is restricted to the wanted id
    claimed = storage.claim("w1", ["default"], limit=10, now=T0, ids=[wanted])
    # Then only that task is leased
    assert [t.id for t in claimed] == [wanted]
    assert row(storage, top).state == PENDING


def test_claim_leases_the_task(storage: Storage) -> None:
    # Given a pending task
    task = new_task(name="t.lease", payload=b"body", priority=2, max_attempts=3, expires_at=T0 + 1000)
    storage.enqueue([task], now=T0)
    # When a worker claims it with a 30 s lease
    claimed = claim_one(storage, owner="w1", now=T0 + 10, lease=30.0)
    # Then it gets the task's fields, a first attempt and a lease, and the row is running
    assert (claimed.id, claimed.name, claimed.queue, claimed.payload) == (task.id, "t.lease", "default", b"body")
    assert (claimed.attempt, claimed.max_attempts, claimed.priority) == (1, 3, 2)
    assert (claimed.enqueued_at, claimed.expires_at, claimed.lease_deadline) == (T0, T0 + 1000, T0 + 40)
    assert claimed.lease_token
    stored = row(storage, task.id)
    assert (stored.state, stored.attempts, stored.lease_owner) == (RUNNING, 1, "w1")
    assert (stored.lease_token, stored.lease_deadline) == (claimed.lease_token, T0 + 40)
    assert stored.started_at == T0 + 10


def test_claim_hands_out_fresh_distinct_tokens_and_counts_attempts(storage: Storage) -> None:
    # Given three tasks claimed at once
    storage.enqueue([new_task(max_attempts=3) for _ in range(3)], now=T0)
    batch = storage.claim("w1", ["default"], limit=3, lease=10, now=T0)
    tokens = {t.lease_token for t in batch}
    # When the leases run out and the first task is claimed again
    storage.reap(now=T0 + 11)
    again = storage.claim("w2", ["default"], limit=1, now=T0 + 12, ids=[batch[0].id])[0]
    # Then every token is distinct, the new one too, and the attempt counts up
    assert len(tokens) == 3
    assert again.lease_token not in tokens
    assert again.attempt == 2


def test_claim_marks_expired_tasks_instead_of_returning_them(storage: Storage) -> None:
    # Given a task that expires at T0+50 and one that never expires
    stale = enqueue_one(storage, expires_at=T0 + 50, priority=9)
    fresh = enqueue_one(storage)
    # When a worker claims after the expiry
    claimed = storage.claim("w1", ["default"], limit=10, now=T0 + 60)
    # Then only the fresh one is handed out; the stale one ends expired, with a reason
    assert [t.id for t in claimed] == [fresh]
    expired = row(storage, stale)
    assert expired.state == EXPIRED and expired.reason
    assert storage.claim("w1", ["default"], limit=10, now=T0 + 60) == []


def test_concurrent_claimers_never_share_a_task(storage: Storage) -> None:
    # Given 200 pending tasks and eight threads claiming through one store
    ids = storage.enqueue([new_task() for _ in range(200)], now=T0)
    claimed: list[list[str]] = [[] for _ in range(8)]

    def claimer(mine: list[str]) -> None:
        while batch := storage.claim(f"w{id(mine)}", ["default"], limit=5, now=T0 + 1):
            mine.extend(t.id for t in batch)

    threads = [threading.Thread(target=claimer, args=(mine,)) for mine in claimed]
    # When they all claim until the queue is empty
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    # Then every task was claimed exactly once
    everything = [task_id for mine in claimed for task_id in mine]
    assert sorted(everything) == sorted(ids)


@pytest.mark.only_storage("sqlite")
def test_sqlite_claimers_on_two_store_objects_never_share_a_task(storage: Storage, store_dir: Path) -> None:
    from liteq.storage.sqlite import SqliteStorage

    # Given 200 pending tasks and a second store object on the same directory
    ids = storage.enqueue([new_task() for _ in range(200)], now=T0)
    claimed: list[list[str]] = [[] for _ in range(6)]
    with SqliteStorage(str(store_dir)) as other:
        stores = [storage, other] * 3

        def claimer(store: Storage, mine: list[str]) -> None:
            while batch := store.claim(f"w{id(mine)}", ["default"], limit=3, now=T0 + 1):
                mine.extend(t.id for t in batch)

        threads = [threading.Thread(target=claimer, args=pair) for pair in zip(stores, claimed, strict=False)]
        # When threads claim through both until the queue is empty
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(20)
    # Then every task was claimed exactly once
    assert sorted(task_id for mine in claimed for task_id in mine) == sorted(ids)


# -- leases: extend, complete, release, reap, progress -------------------------------------------


def test_extend_pushes_the_deadline_and_refuses_lost_leases(storage: Storage) -> None:
    # Given two running tasks
    storage.enqueue([new_task(), new_task()], now=T0)
    a, b = storage.claim("w1", ["default"], limit=2, lease=10, now=T0)
    # When the first lease is extended and the second with a wrong token
    result = storage.extend("w1", [(a.id, a.lease_token), (b.id, "not-the-token")], lease=30, now=T0 + 5)
    # Then only the first is pushed to now + lease, and it survives a reap at the old deadline
    assert result == [True, False]
    assert row(storage, a.id).lease_deadline == T0 + 35
    assert row(storage, b.id).lease_deadline == T0 + 10
    assert storage.reap(now=T0 + 20) == [b.id]
    assert row(storage, a.id).state == RUNNING


def test_extend_after_completion_is_refused(storage: Storage) -> None:
    enqueue_one(storage)
    task = claim_one(storage)
    finish(storage, task, now=T0 + 1)
    assert storage.extend("w1", [(task.id, task.lease_token)], lease=30, now=T0 + 2) == [False]


def test_complete_records_success_and_failure(storage: Storage) -> None:
    # Given two running tasks
    storage.enqueue([new_task(), new_task()], now=T0)
    ok, bad = storage.claim("w1", ["default"], limit=2, now=T0)
    # When one succeeds and one fails, in one batch
    result = storage.complete(
        [
            Outcome(ok.id, ok.lease_token, SUCCEEDED, result=b"\x00result"),
            Outcome(bad.id, bad.lease_token, FAILED, error=b"\x00traceback", reason="raised"),
        ],
        now=T0 + 7,
    )
    # Then both are recorded with their bytes and finish time
    assert result == [True, True]
    done, failed = row(storage, ok.id), row(storage, bad.id)
    assert (done.state, done.result, done.finished_at) == (SUCCEEDED, b"\x00result", T0 + 7)
    assert (failed.state, failed.error, failed.reason, failed.finished_at) == (
        FAILED,
        b"\x00traceback",
        "raised",
        T0 + 7,
    )


def test_complete_with_a_stale_token_is_refused_and_changes_nothing(storage: Storage) -> None:
    # Given a running task
    enqueue_one(storage)
    task = claim_one(storage)
    before = row(storage, task.id)
    # When an outcome with a wrong token (and one for an unknown id) arrives
    result = storage.complete(
        [Outcome(task.id, "stale", SUCCEEDED, result=b"r"), Outcome("unknown", "t", SUCCEEDED)], now=T0 + 1
    )
    # Then both are refused and the row is untouched
    assert result == [False, False]
    assert row(storage, task.id) == before


def test_complete_with_cancelled_or_expired_state_keeps_the_reason(storage: Storage) -> None:
    storage.enqueue([new_task(), new_task()], now=T0)
    a, b = storage.claim("w1", ["default"], limit=2, now=T0)
    outcomes = [
        Outcome(a.id, a.lease_token, CANCELLED, reason="by user"),
        Outcome(b.id, b.lease_token, EXPIRED, reason="late"),
    ]
    assert storage.complete(outcomes, now=T0 + 1) == [True, True]
    assert (row(storage, a.id).state, row(storage, a.id).reason) == (CANCELLED, "by user")
    assert (row(storage, b.id).state, row(storage, b.id).reason) == (EXPIRED, "late")


def test_retry_outcome_with_future_run_at_schedules_the_task(storage: Storage) -> None:
    # Given a running task with three attempts
    task_id = enqueue_one(storage, max_attempts=3)
    task = claim_one(storage)
    # When the worker asks for a retry at T0+100
    finish(storage, task, SCHEDULED, run_at=T0 + 100, error=b"first failure", now=T0 + 5)
    # Then the task waits, scheduled, until then, and its old lease is dead
    assert (row(storage, task_id).state, row(storage, task_id).run_at) == (SCHEDULED, T0 + 100)
    assert storage.next_run_at(["default"]) == T0 + 100
    assert storage.claim("w1", ["default"], now=T0 + 99) == []
    assert storage.complete([Outcome(task.id, task.lease_token, SUCCEEDED)], now=T0 + 99) == [False]
    again = claim_one(storage, now=T0 + 101)
    assert (again.id, again.attempt) == (task_id, 2)


def test_retry_outcome_with_past_run_at_makes_the_task_pending(storage: Storage) -> None:
    task_id = enqueue_one(storage, max_attempts=3)
    finish(storage, claim_one(storage), SCHEDULED, run_at=T0 + 1, now=T0 + 5)
    assert row(storage, task_id).state == PENDING
    assert claim_one(storage, now=T0 + 5).attempt == 2


def test_history_keeps_errors_of_earlier_attempts(storage: Storage) -> None:
    # Given a task that failed once with a retry, then for good
    task_id = enqueue_one(storage, max_attempts=2)
    finish(storage, claim_one(storage), SCHEDULED, run_at=T0, error=b"boom 1", now=T0 + 1)
    finish(storage, claim_one(storage, now=T0 + 2), FAILED, error=b"boom 2", now=T0 + 3)
    # When it is read with and without history
    plain, full = row(storage, task_id), row(storage, task_id, history=True)
    # Then the last error is the row's, and history lists the earlier ones, oldest first
    assert plain.error == full.error == b"boom 2"
    assert plain.errors == []
    assert full.errors[:1] == [b"boom 1"]


def test_release_hands_tasks_back_without_counting_the_attempt(storage: Storage) -> None:
    # Given two running tasks
    storage.enqueue([new_task(), new_task()], now=T0)
    a, b = storage.claim("w1", ["default"], limit=2, now=T0)
    # When the worker shuts down and hands them back (one with a wrong token)
    released = storage.release([(a.id, a.lease_token), (b.id, "wrong")])
    # Then only the matching lease is released, to pending, with the attempt uncounted
    assert released == 1
    assert (row(storage, a.id).state, row(storage, a.id).attempts) == (PENDING, 0)
    assert row(storage, b.id).state == RUNNING
    assert claim_one(storage, now=T0 + 1).attempt == 1
    assert storage.complete([Outcome(a.id, a.lease_token, SUCCEEDED)], now=T0 + 2) == [False]


def test_release_without_uncount_counts_the_attempt(storage: Storage) -> None:
    enqueue_one(storage, max_attempts=3)
    task = claim_one(storage)
    assert storage.release([(task.id, task.lease_token)], uncount=False) == 1
    assert row(storage, task.id).state == PENDING
    assert claim_one(storage, now=T0 + 1).attempt == 2


def test_reap_returns_expired_leases_to_pending(storage: Storage) -> None:
    # Given a running task with a 10 s lease and attempts to spare
    task_id = enqueue_one(storage, max_attempts=3)
    claim_one(storage, lease=10)
    # When the reaper runs before and after the deadline
    early = storage.reap(now=T0 + 9)
    late = storage.reap(now=T0 + 11)
    # Then it touches the task only after, putting it back to pending with the attempt counted
    assert (early, late) == ([], [task_id])
    reaped = row(storage, task_id)
    assert (reaped.state, reaped.attempts) == (PENDING, 1)
    assert claim_one(storage, now=T0 + 12).attempt == 2


def test_reap_at_max_attempts_fails_with_worker_lost(storage: Storage) -> None:
    task_id = enqueue_one(storage, max_attempts=1)
    claim_one(storage, lease=10)
    assert storage.reap(now=T0 + 11) == [task_id]
    lost = row(storage, task_id)
    assert (lost.state, lost.reason) == (FAILED, "worker lost")
    assert storage.claim("w1", ["default"], now=T0 + 12) == []


def test_reap_by_owner_takes_all_its_leases_regardless_of_deadline(storage: Storage) -> None:
    # Given two tasks leased by w1 and one by w2, all far from their deadline
    storage.enqueue([new_task(max_attempts=3) for _ in range(3)], now=T0)
    mine = storage.claim("w1", ["default"], limit=2, lease=600, now=T0)
    theirs = claim_one(storage, owner="w2", lease=600)
    # When w1's leases are reaped (its supervisor saw it die)
    reaped = storage.reap(owner="w1", now=T0 + 1)
    # Then both of w1's tasks are pending again and w2's keeps running
    assert sorted(reaped) == sorted(t.id for t in mine)
    assert {row(storage, t.id).state for t in mine} == {PENDING}
    assert row(storage, theirs.id).state == RUNNING


def test_late_completion_after_reap_is_rejected(storage: Storage) -> None:
    # Given a task whose lease was reaped and that now runs on another worker
    task_id = enqueue_one(storage, max_attempts=3)
    lost = claim_one(storage, owner="w1", lease=10)
    storage.reap(now=T0 + 11)
    current = claim_one(storage, owner="w2", now=T0 + 12)
    # When the lost worker reports late, then the current one reports
    late = storage.complete([Outcome(lost.id, lost.lease_token, SUCCEEDED, result=b"late")], now=T0 + 13)
    on_time = storage.complete([Outcome(current.id, current.lease_token, SUCCEEDED, result=b"ok")], now=T0 + 14)
    # Then only the current worker's result is recorded
    assert (late, on_time) == ([False], [True])
    assert row(storage, task_id).result == b"ok"


def test_set_progress_needs_the_current_lease(storage: Storage) -> None:
    enqueue_one(storage)
    task = claim_one(storage)
    assert storage.set_progress(task.id, task.lease_token, b"\x00 40%") is True
    assert storage.set_progress(task.id, "stale", b"99%") is False
    assert row(storage, task.id).progress == b"\x00 40%"


# -- cancel and retry ----------------------------------------------------------------------------


def test_cancel_waiting_running_and_unknown_tasks(storage: Storage) -> None:
    # Given a pending, a scheduled and a running task
    pending, scheduled = enqueue_one(storage, priority=1), enqueue_one(storage, run_at=T0 + 100)
    running = enqueue_one(storage, priority=9)
    claim_one(storage)
    # When all of them and an unknown id are cancelled
    states = storage.cancel([pending, scheduled, running, "unknown"], now=T0 + 1)
    # Then waiting ones are cancelled and never claimed; the running one gets a request
    assert states == [CANCELLED, CANCELLED, RUNNING, None]
    assert storage.claim("w1", ["default"], limit=10, now=T0 + 200) == []
    assert row(storage, running).cancel_requested is True
    assert row(storage, pending).finished_at == T0 + 1


@pytest.mark.parametrize("how", ["reap", "reap-owner", "release"])
def test_cancel_request_is_honoured_when_the_running_task_comes_back(storage: Storage, how: str) -> None:
    # Given a running task (with attempts to spare) that a user asked to cancel
    task_id = enqueue_one(storage, max_attempts=3)
    task = claim_one(storage, lease=10)
    assert storage.cancel([task_id], now=T0 + 1) == [RUNNING]
    # When its lease comes back to the store without an outcome
    if how == "release":
        storage.release([(task.id, task.lease_token)])
    else:
        storage.reap(now=T0 + 11, owner="w1" if how == "reap-owner" else None)
    # Then it is not handed out again: the request was to cancel it
    assert storage.claim("w1", ["default"], limit=10, now=T0 + 12) == []
    assert row(storage, task_id).state == CANCELLED


def test_cancel_of_a_finished_task_reports_its_state(storage: Storage) -> None:
    task_id = enqueue_one(storage)
    finish(storage, claim_one(storage), now=T0 + 1)
    assert storage.cancel([task_id], now=T0 + 2) == [SUCCEEDED]
    assert row(storage, task_id).state == SUCCEEDED


def test_retry_puts_finished_tasks_back_with_a_fresh_budget(storage: Storage) -> None:
    # Given a task that failed after its only attempt, and a cancelled one
    failed = enqueue_one(storage, max_attempts=1)
    finish(storage, claim_one(storage), FAILED, error=b"e", now=T0 + 1)
    cancelled = enqueue_one(storage, now=T0 + 2)
    storage.cancel([cancelled], now=T0 + 2)
    # When both are retried by hand
    result = storage.retry([failed, cancelled], now=T0 + 3)
    # Then both are pending and claimable, with a whole attempt budget again
    assert result == [True, True]
    assert {row(storage, failed).state, row(storage, cancelled).state} == {PENDING}
    again = claim_one(storage, now=T0 + 4)
    assert again.id == failed
    assert again.max_attempts - again.attempt == 0


def test_retry_refuses_tasks_that_are_not_finished_or_unknown(storage: Storage) -> None:
    succeeded = enqueue_one(storage)
    finish(storage, claim_one(storage), now=T0 + 1)
    running = enqueue_one(storage, now=T0 + 2)
    claim_one(storage, now=T0 + 3)
    pending = enqueue_one(storage, now=T0 + 3)
    assert storage.retry([pending, running, succeeded, "unknown"], now=T0 + 4) == [False, False, False, False]
    assert row(storage, succeeded).state == SUCCEEDED


# -- purge and prune -----------------------------------------------------------------------------


def _populate(storage: Storage) -> dict[str, str]:
    """a-pending, a-done (succeeded), a-run (running), b-pending; returns {label: id}."""
    ids = {"a-done": enqueue_one(storage, queue="a", now=T0)}
    finish(storage, claim_one(storage, queues=("a",)), now=T0 + 1)
    ids["a-run"] = enqueue_one(storage, queue="a", now=T0 + 2)
    claim_one(storage, queues=("a",), now=T0 + 3)
    ids["a-pending"] = enqueue_one(storage, queue="a", now=T0 + 4)
    ids["b-pending"] = enqueue_one(storage, queue="b", now=T0 + 5)
    return ids


def _alive(storage: Storage, ids: dict[str, str]) -> set[str]:
    return {label for label, found in zip(ids, storage.get(list(ids.values())), strict=False) if found is not None}


@pytest.mark.parametrize(
    ("filters", "deleted"),
    [
        ({"queue": "a"}, {"a-done", "a-pending"}),
        ({"states": [PENDING]}, {"a-pending", "b-pending"}),
        ({"queue": "a", "states": {SUCCEEDED, PENDING}}, {"a-done", "a-pending"}),
        ({"states": [RUNNING]}, {"a-run"}),
        ({}, {"a-done", "a-pending", "b-pending"}),
    ],
    ids=["queue", "states", "queue-and-states", "running-named", "everything-not-running"],
)
def test_purge_deletes_what_matches_every_filter(storage: Storage, filters: dict[str, Any], deleted: set[str]) -> None:
    # Given tasks in two queues and several states
    ids = _populate(storage)
    # When purged with filters
    count = storage.purge(**filters)
    # Then exactly the matching tasks are gone, running ones only when named
    assert count == len(deleted)
    assert _alive(storage, ids) == set(ids) - deleted


def test_purge_by_ids_keeps_running_tasks(storage: Storage) -> None:
    ids = _populate(storage)
    assert storage.purge(ids=[ids["b-pending"], ids["a-run"]]) == 1
    assert _alive(storage, ids) == set(ids) - {"b-pending"}


@pytest.mark.parametrize("where", ["new-task", "outcome", "default"])
def test_prune_deletes_finished_tasks_past_their_result_ttl(storage: Storage, where: str) -> None:
    # Given a task finished at T0+10 whose result_ttl is set on the task, the outcome, or not at all
    ttl = {"new-task": 100.0, "outcome": 50.0, "default": 86_400.0}[where]
    task_id = enqueue_one(storage, result_ttl=100.0 if where == "new-task" else None)
    outcome_ttl = 50.0 if where == "outcome" else None
    finish(storage, claim_one(storage), result=b"r", result_ttl=outcome_ttl, now=T0 + 10)
    waiting = enqueue_one(storage, now=T0 - 10**6)
    # When pruning before and after the ttl has passed
    early = storage.prune(now=T0 + 10 + ttl - 1)
    kept = storage.get([task_id])[0]
    late = storage.prune(now=T0 + 10 + ttl + 1)
    # Then only the finished task goes, and only after its ttl
    assert (early, late) == (0, 1)
    assert kept is not None and kept.result == b"r" and kept.result_expires_at == T0 + 10 + ttl
    assert storage.get([task_id]) == [None]
    assert row(storage, waiting).state == PENDING


def test_prune_covers_every_finished_state_and_honours_limit(storage: Storage) -> None:
    # Given a failed, a cancelled and an expired task, each with a 10 s result_ttl
    storage.enqueue([new_task(result_ttl=10), new_task(result_ttl=10)], now=T0)
    finish(storage, claim_one(storage), FAILED, error=b"e", now=T0)
    cancelled = enqueue_one(storage, result_ttl=10)
    storage.cancel([cancelled], now=T0)
    enqueue_one(storage, result_ttl=10, expires_at=T0 + 1)
    storage.claim("w1", ["default"], limit=10, now=T0 + 2)
    running = storage.list(states=[RUNNING])
    # When pruning well after, two at a time
    first, second = storage.prune(now=T0 + 100, limit=2), storage.prune(now=T0 + 100, limit=2)
    # Then all three finished tasks went, and nothing else
    assert (first, second) == (2, 1)
    assert storage.list(states=[FAILED, CANCELLED, EXPIRED]) == []
    assert [r.id for r in storage.list()] == [r.id for r in running]


# -- reads ---------------------------------------------------------------------------------------


def test_get_keeps_order_and_returns_none_for_unknown_ids(storage: Storage) -> None:
    a, b = enqueue_one(storage), enqueue_one(storage)
    found = storage.get([b, "nope", a])
    assert [r.id if r else None for r in found] == [b, None, a]
    assert storage.get([]) == []


def test_list_filters_pages_and_leaves_out_bodies(storage: Storage) -> None:
    # Given five tasks in two queues under two names, enqueued over time, one finished
    ids = [
        enqueue_one(storage, queue=q, name=n, now=T0 + i)
        for i, (q, n) in enumerate([("a", "x"), ("b", "x"), ("a", "y"), ("a", "x"), ("b", "y")])
    ]
    finish(storage, storage.claim("w1", ["a"], now=T0 + 9, ids=[ids[0]])[0], result=b"r", now=T0 + 10)

    # When listed with each filter
    def listed(**filters: Any) -> list[str]:
        return [r.id for r in storage.list(**filters)]

    # Then rows come oldest first, matching every filter, paged, without payloads or results
    assert listed() == ids
    assert listed(queue="a") == [ids[0], ids[2], ids[3]]
    assert listed(name="y") == [ids[2], ids[4]]
    assert listed(queue="a", name="x", states=[PENDING]) == [ids[3]]
    assert listed(states=(SUCCEEDED,)) == [ids[0]]
    assert listed(limit=2) == ids[:2]
    assert listed(limit=2, offset=2) == ids[2:4]
    assert listed(offset=4) == ids[4:]
    assert all(r.payload is None and r.result is None for r in storage.list())


def test_list_returns_at_most_100_rows_by_default(storage: Storage) -> None:
    ids = storage.enqueue([new_task() for _ in range(120)], now=T0)
    assert [r.id for r in storage.list()] == ids[:100]


def _nonzero(counts: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    """Counts without zero entries: a store may or may not list empty states."""
    return {q: {s: n for s, n in states.items() if n} for q, states in counts.items()}


def test_counts_per_queue_and_state(storage: Storage) -> None:
    # Given an empty store
    assert _nonzero(storage.counts()) == {}
    # When tasks in several queues and states are added
    storage.enqueue([new_task("a"), new_task("a"), new_task("a"), new_task("b", run_at=T0 + 50)], now=T0)
    claim_one(storage, queues=("a",))
    # Then each queue counts its states
    assert _nonzero(storage.counts()) == {"a": {PENDING: 2, RUNNING: 1}, "b": {SCHEDULED: 1}}


def test_next_run_at_is_the_earliest_scheduled_time_in_the_queues(storage: Storage) -> None:
    # Given pending tasks, and scheduled ones in two queues
    storage.enqueue([new_task("a"), new_task("b")], now=T0)
    assert storage.next_run_at(["a", "b"]) is None
    storage.enqueue(
        [new_task("a", run_at=T0 + 300), new_task("a", run_at=T0 + 200), new_task("b", run_at=T0 + 100)], now=T0
    )
    # Then each query sees only its queues' scheduled tasks
    assert storage.next_run_at(["a"]) == T0 + 200
    assert storage.next_run_at(["a", "b"]) == T0 + 100
    assert storage.next_run_at(["c"]) is None


# -- workers -------------------------------------------------------------------------------------


def _worker(worker_id: str, heartbeat_at: float) -> WorkerInfo:
    return WorkerInfo(
        id=worker_id, host="box", pid=4242, concurrency=4, queues=["a", "b"], started_at=T0, heartbeat_at=heartbeat_at
    )


def test_worker_registration_heartbeat_and_unregister(storage: Storage) -> None:
    # Given two registered workers, one registered twice
    storage.register_worker(_worker("w1", T0))
    storage.register_worker(_worker("w1", T0))
    storage.register_worker(_worker("w2", T0 + 50))
    assert sorted(w.id for w in storage.workers()) == ["w1", "w2"]
    # When w1 beats twice with work done
    storage.heartbeat("w1", tasks_done=3, now=T0 + 55)
    storage.heartbeat("w1", tasks_done=2, now=T0 + 56)
    # Then its record is refreshed with every field kept
    (w1,) = [w for w in storage.workers() if w.id == "w1"]
    assert (w1.host, w1.pid, w1.concurrency, w1.queues, w1.started_at) == ("box", 4242, 4, ["a", "b"], T0)
    assert (w1.heartbeat_at, w1.tasks_done) == (T0 + 56, 5)
    # And unregistering forgets it
    storage.unregister_worker("w1")
    assert [w.id for w in storage.workers()] == ["w2"]


def test_heartbeat_records_the_worker_state(storage: Storage) -> None:
    # Given a registered worker, ok by default
    storage.register_worker(_worker("w1", T0))
    (w1,) = storage.workers()
    assert (w1.state, w1.state_reason, w1.state_since, w1.state_text()) == ("ok", None, None, "ok")
    # When it beats as degraded, then the state, reason and since are recorded with the beat
    storage.heartbeat(
        "w1", tasks_done=1, now=T0 + 5, state="degraded", state_reason="store busy during claim", state_since=T0 + 3
    )
    (w1,) = storage.workers()
    assert (w1.state, w1.state_reason, w1.state_since, w1.heartbeat_at, w1.tasks_done) == (
        "degraded",
        "store busy during claim",
        T0 + 3,
        T0 + 5,
        1,
    )
    assert w1.state_text().startswith("degraded: store busy during claim since ")
    # When it beats as ok again, then it reads ok
    storage.heartbeat("w1", now=T0 + 6)
    (w1,) = storage.workers()
    assert (w1.state, w1.state_reason, w1.state_since) == ("ok", None, None)


def test_worker_records_are_copies(storage: Storage) -> None:
    # Given a registered worker
    info = _worker("w1", T0)
    storage.register_worker(info)
    # When the caller mutates what it registered and what it read back
    info.queues.append("changed-after-register")
    storage.workers()[0].queues.append("changed-after-read")
    # Then the store still holds what was registered
    assert storage.workers()[0].queues == ["a", "b"]


def test_workers_leaves_out_stale_ones(storage: Storage) -> None:
    storage.register_worker(_worker("old", T0))
    storage.register_worker(_worker("new", T0 + 50))
    assert [w.id for w in storage.workers(stale_after=30, now=T0 + 60)] == ["new"]
    storage.heartbeat("old", now=T0 + 59)
    assert sorted(w.id for w in storage.workers(stale_after=30, now=T0 + 60)) == ["new", "old"]


# -- large values ----------------------------------------------------------------------------------


def test_large_payload_and_result_roundtrip_and_go_with_purge(storage: Storage) -> None:
    # Given a task with a 200 KB payload that returns a 200 KB result
    task_id = enqueue_one(storage, payload=BLOB)
    task = claim_one(storage)
    finish(storage, task, result=BLOB[::-1], now=T0 + 1)
    # Then both roundtrip exactly
    assert task.payload == BLOB
    stored = row(storage, task_id)
    assert (stored.payload, stored.result) == (BLOB, BLOB[::-1])
    # When the task is purged, it is gone with its values
    assert storage.purge(ids=[task_id]) == 1
    assert storage.get([task_id]) == [None]


def test_large_payload_survives_retries(storage: Storage) -> None:
    # Given a task with a 200 KB payload that asks for a retry, then fails for good
    task_id = enqueue_one(storage, payload=BLOB, max_attempts=2)
    finish(storage, claim_one(storage), SCHEDULED, run_at=T0 + 5, error=b"e1", now=T0 + 1)
    second = claim_one(storage, now=T0 + 6)
    finish(storage, second, FAILED, error=b"e2", now=T0 + 7)
    # When it is retried by hand
    assert storage.retry([task_id], now=T0 + 8) == [True]
    third = claim_one(storage, now=T0 + 9)
    # Then every run gets the payload back exactly
    assert second.payload == third.payload == BLOB


def test_large_values_go_with_prune(storage: Storage) -> None:
    task_id = enqueue_one(storage, payload=BLOB, result_ttl=5)
    finish(storage, claim_one(storage), result=BLOB, now=T0)
    assert storage.prune(now=T0 + 6) == 1
    assert storage.get([task_id]) == [None]


@pytest.mark.only_storage("sqlite")
def test_sqlite_blobs_are_deleted_with_their_tasks(storage: Storage, store_dir: Path) -> None:
    import diskcache

    # Given two finished tasks with large payloads and results, one purged and one pruned
    purged = enqueue_one(storage, payload=BLOB)
    finish(storage, claim_one(storage), result=BLOB, now=T0)
    enqueue_one(storage, payload=BLOB, result_ttl=5)
    finish(storage, claim_one(storage), result=BLOB, now=T0)
    storage.purge(ids=[purged])
    storage.prune(now=T0 + 6)
    # Then the blob cache beside the database holds nothing any more
    with diskcache.Cache(str(store_dir / "blobs")) as blobs:
        assert len(blobs) == 0


# -- change notification ---------------------------------------------------------------------------


def test_wait_returns_at_once_after_a_write(storage: Storage) -> None:
    # Given the version before an enqueue
    version = storage.version
    enqueue_one(storage)
    # When waiting on that version
    started = time.monotonic()
    new_version = storage.wait(version, timeout=10)
    # Then it returns the newer version without waiting
    assert new_version > version and new_version == storage.version
    assert time.monotonic() - started < 5


def test_wait_times_out_with_the_same_version_when_nothing_happens(storage: Storage) -> None:
    version = storage.version
    assert storage.wait(version, timeout=0.01) == version


def test_wait_wakes_a_waiting_thread_on_write(storage: Storage) -> None:
    # Given a thread waiting for a change
    version = storage.version
    seen: list[int] = []
    waiter = threading.Thread(target=lambda: seen.append(storage.wait(version, timeout=20)))
    waiter.start()
    # When another thread enqueues
    enqueue_one(storage)
    waiter.join(25)
    # Then the waiter sees the new version
    assert seen and seen[0] > version


@pytest.mark.only_storage("sqlite")
def test_sqlite_own_commits_skip_the_own_listener_but_wake_a_thread_waiting_on_it(storage: Storage) -> None:
    from liteq.wake import Waker

    # Given a listening store (a producer about to wait for a result) and another listener
    storage.listen()
    other = Waker(str(storage.wake_dir))
    try:
        # When this process enqueues
        enqueue_one(storage)
        # Then the other listener hears it, this process's own does not (its get() would wake for nothing)
        assert other.wait(10)
        assert storage._waker is not None and not storage._waker.wait(0)  # type: ignore[attr-defined]
        # And a thread blocked on the own listener still wakes on a commit by another thread
        version = storage.version
        seen: list[int] = []
        waiter = threading.Thread(target=lambda: seen.append(storage.wait(version, timeout=120)))
        waiter.start()
        wait_for(lambda: storage._blocked == 1, 10, "the waiter blocks on the socket")  # type: ignore[attr-defined]
        enqueue_one(storage, now=T0 + 1)
        waiter.join(30)
        assert not waiter.is_alive() and seen[0] > version
    finally:
        other.close()


def test_every_task_write_bumps_the_version(storage: Storage) -> None:
    def bumps(write: Any) -> Any:
        before = storage.version
        result = write()
        assert storage.version > before, write
        return result

    task_id = bumps(lambda: enqueue_one(storage, max_attempts=5))
    task = bumps(lambda: claim_one(storage))
    bumps(lambda: storage.release([(task.id, task.lease_token)]))
    bumps(lambda: claim_one(storage, lease=10))
    bumps(lambda: storage.reap(now=T0 + 11))
    task = bumps(lambda: claim_one(storage, now=T0 + 12))
    bumps(lambda: storage.complete([Outcome(task.id, task.lease_token, FAILED)], now=T0 + 13))
    bumps(lambda: storage.retry([task_id], now=T0 + 14))
    bumps(lambda: storage.cancel([task_id], now=T0 + 15))
    bumps(lambda: storage.purge(ids=[task_id]))


# -- life cycle ------------------------------------------------------------------------------------


def test_close_is_idempotent(storage: Storage) -> None:
    storage.close()
    storage.close()


@pytest.mark.only_storage("sqlite")
def test_sqlite_pickles_as_its_location(storage: Storage) -> None:
    # Given a store holding a task
    task_id = enqueue_one(storage, payload=b"\x00shared")
    # When it is pickled and unpickled (as for a spawned child)
    clone = pickle.loads(pickle.dumps(storage))
    try:
        # Then the copy opens the same store: it sees the task, and its writes are seen
        assert clone is not storage and clone.location == storage.location
        assert row(clone, task_id).payload == b"\x00shared"
        other = enqueue_one(clone, now=T0 + 1)
        assert row(storage, other).state == PENDING
        assert claim_one(clone, now=T0 + 2).id == task_id
        assert row(storage, task_id).state == RUNNING
    finally:
        clone.close()


@pytest.mark.only_storage("sqlite")
def test_sqlite_reopened_directory_keeps_committed_tasks(storage: Storage, store_dir: Path) -> None:
    from liteq.storage.sqlite import SqliteStorage

    # Given a task and a large result written, and the store closed
    task_id = enqueue_one(storage)
    finish(storage, claim_one(storage), result=BLOB, now=T0 + 1)
    storage.close()
    # When the directory is opened again
    with SqliteStorage(str(store_dir), durability="full") as reopened:
        # Then the task and its result are there
        stored = row(reopened, task_id)
        assert (stored.state, stored.result) == (SUCCEEDED, BLOB)


# -- inspection at scale: keyset pages, oldest pending, per-minute history ------------------------


def test_page_is_newest_first_filtered_and_keyset_paged(storage: Storage) -> None:
    # Given six tasks in two queues under three names, enqueued a second apart, two finished
    spec = [("a", "x"), ("b", "x"), ("a", "y"), ("a", "x"), ("b", "z"), ("a", "y")]
    ids = [enqueue_one(storage, queue=q, name=n, now=T0 + i) for i, (q, n) in enumerate(spec)]
    finish(storage, storage.claim("w1", ["a"], now=T0 + 9, ids=[ids[0]])[0], result=b"r", now=T0 + 10)
    finish(storage, storage.claim("w1", ["a"], now=T0 + 9, ids=[ids[2]])[0], FAILED, error=b"e", now=T0 + 10)

    def paged(**filters: Any) -> list[str]:
        return [r.id for r in storage.page(**filters)]

    # Then rows come newest first, matching every filter, without bodies
    assert paged() == ids[::-1]
    assert paged(queue="a") == [ids[5], ids[3], ids[2], ids[0]]
    assert paged(name="x") == [ids[3], ids[1], ids[0]]
    assert paged(states=[PENDING]) == [ids[5], ids[4], ids[3], ids[1]]
    assert paged(states=[SUCCEEDED, FAILED]) == [ids[2], ids[0]]
    assert paged(states=[PENDING], queue="a", name="y") == [ids[5]]
    assert paged(since=T0 + 2, until=T0 + 5) == [ids[4], ids[3], ids[2]]
    assert paged(states=[]) == []
    assert all(r.payload is None and r.result is None and r.error is None for r in storage.page())
    # And each page continues after the last id of the previous one, with or without filters
    assert paged(limit=2) == [ids[5], ids[4]]
    assert paged(limit=2, before=ids[4]) == [ids[3], ids[2]]
    assert paged(limit=2, before=ids[2]) == [ids[1], ids[0]]
    assert paged(limit=2, before=ids[0]) == []
    assert paged(states=[PENDING], limit=1, before=ids[4]) == [ids[3]]
    assert paged(queue="a", before=ids[3]) == [ids[2], ids[0]]
    # And a cursor that no longer exists gives an empty page, not an error
    assert paged(before="no-such-task") == []


def test_page_finds_a_tasks_successors_by_parent(storage: Storage) -> None:
    # Given a task, two successors linked to it and an unrelated task
    first = enqueue_one(storage, now=T0)
    later = [enqueue_one(storage, name=f"n{i}", parent_id=first, now=T0 + 1 + i) for i in range(2)]
    enqueue_one(storage, now=T0 + 5)
    # Then the parent filter lists the successors, newest first, combined with the other filters
    assert [r.id for r in storage.page(parent=first)] == later[::-1]
    assert [r.id for r in storage.page(parent=first, name="n0")] == [later[0]]
    assert [r.id for r in storage.page(parent=first, before=later[1])] == [later[0]]
    assert storage.page(parent=first, states=[SUCCEEDED]) == []


def test_page_merges_many_names_in_store_order(storage: Storage) -> None:
    # Given failed tasks spread over many names, among pending ones
    ids = [enqueue_one(storage, name=f"n{i % 7}", now=T0 + i) for i in range(40)]
    failed = ids[3::4]
    for task_id in failed:
        (task,) = storage.claim("w1", ["default"], now=T0 + 50, ids=[task_id])
        finish(storage, task, FAILED, error=b"e", now=T0 + 51)
    # When the failed ones are paged three at a time
    seen: list[str] = []
    before = None
    while True:
        rows = storage.page(states=[FAILED], limit=3, before=before)
        if not rows:
            break
        seen += [r.id for r in rows]
        before = rows[-1].id
    # Then every failed task comes once, newest first
    assert seen == failed[::-1]


def test_oldest_pending_per_queue(storage: Storage) -> None:
    # Given pending tasks in two queues (the first of "a" claimed) and a scheduled one in "c"
    a1 = enqueue_one(storage, queue="a", name="x", now=T0)
    a2 = enqueue_one(storage, queue="a", name="y", now=T0 + 1)
    enqueue_one(storage, queue="a", name="x", now=T0 + 2)
    b1 = enqueue_one(storage, queue="b", name="y", now=T0 + 3)
    enqueue_one(storage, queue="c", run_at=T0 + 100, now=T0 + 4)
    storage.claim("w1", ["a"], now=T0 + 5, ids=[a1])
    # Then each queue with a pending task names its first-stored one, with its enqueue time
    oldest = storage.oldest_pending()
    assert {q: r.id for q, r in oldest.items()} == {"a": a2, "b": b1}
    assert oldest["a"].enqueued_at == T0 + 1


def test_pending_tasks_of_many_priorities_and_queues_list_page_and_count_in_store_order(storage: Storage) -> None:
    # Given pending tasks of two names spread over priorities and queues, among running and failed ones
    spec = [("a", "x", 0), ("a", "y", 5), ("b", "x", 9), ("a", "x", 5), ("a", "x", -2), ("b", "y", 0), ("a", "x", 0)]
    ids = [enqueue_one(storage, queue=q, name=n, priority=p, now=T0 + i) for i, (q, n, p) in enumerate(spec)]
    running = storage.claim("w1", ["a"], now=T0 + 10, ids=[ids[1]])[0]
    finish(storage, storage.claim("w1", ["a"], now=T0 + 10, ids=[ids[6]])[0], FAILED, error=b"e", now=T0 + 11)
    pending = [ids[0], ids[2], ids[3], ids[4], ids[5]]

    def paged(**filters: Any) -> list[str]:
        return [r.id for r in storage.page(**filters)]

    def listed(**filters: Any) -> list[str]:
        return [r.id for r in storage.list(**filters)]

    # Then pages are newest first and lists oldest first whatever the priorities, alone or with other states
    assert paged(states=[PENDING]) == pending[::-1]
    assert paged(states=[PENDING], name="x") == [ids[4], ids[3], ids[2], ids[0]]
    assert paged(states=[PENDING], queue="a", name="x") == [ids[4], ids[3], ids[0]]
    assert paged(states=[PENDING, FAILED], name="x") == [ids[6], ids[4], ids[3], ids[2], ids[0]]
    assert paged(name="y") == [ids[5], running.id]
    assert paged(states=[PENDING], name="x", limit=2, before=ids[3]) == [ids[2], ids[0]]
    assert listed(name="x") == [ids[0], ids[2], ids[3], ids[4], ids[6]]
    assert listed(name="x", states=[PENDING], queue="a") == [ids[0], ids[3], ids[4]]
    assert listed(name="x", states=[PENDING, FAILED], limit=2, offset=3) == [ids[4], ids[6]]
    assert listed(name="y", states=[RUNNING]) == [running.id]
    assert listed(name="nothing") == []
    # And the oldest pending task of a queue is the first stored, not the first of the top priority
    assert {q: r.id for q, r in storage.oldest_pending().items()} == {"a": ids[0], "b": ids[2]}
    assert _nonzero(storage.counts()) == {"a": {PENDING: 3, RUNNING: 1, FAILED: 1}, "b": {PENDING: 2}}


def test_a_large_batch_of_plain_tasks_is_stored_in_order_with_its_fields(storage: Storage) -> None:
    # Given a batch of plain tasks larger than one statement holds, under two names and priorities
    tasks = [
        new_task(name=f"n{i % 2}", payload=f"p{i}".encode(), priority=i % 3 // 2, max_attempts=2) for i in range(250)
    ]
    # When it is stored
    ids = storage.enqueue(tasks, now=T0)
    # Then every row has its fields, pending since the enqueue
    assert ids == [t.id for t in tasks]
    for t, r in zip(tasks, storage.get(ids), strict=True):
        assert r is not None
        assert (r.name, r.queue, r.priority, r.max_attempts, r.state) == (t.name, "default", t.priority, 2, PENDING)
        assert (r.enqueued_at, r.run_at, r.expires_at, r.idempotency_key, r.lock_key) == (T0, T0, None, None, None)
    assert [r.payload for r in storage.get(ids[:3])] == [b"p0", b"p1", b"p2"]
    # And claims take them by priority, then in the batch's order
    claimed = [c.id for c in storage.claim("w1", ["default"], limit=250, now=T0 + 1)]
    assert claimed == [t.id for t in tasks if t.priority == 1] + [t.id for t in tasks if t.priority == 0]


def test_a_batch_of_plain_and_other_tasks_keeps_its_order(storage: Storage) -> None:
    # Given a batch mixing plain tasks with ones that have a key, a start time, an expiry or limits
    tasks = [
        new_task(),
        new_task(idempotency_key="k1"),
        new_task(),
        new_task(),
        new_task(expires_at=T0 + 100, timeout=5.0, result_ttl=60.0),
        new_task(run_at=T0 + 50),
        new_task(priority=2, max_attempts=3),
    ]
    # When it is stored
    ids = storage.enqueue(tasks, now=T0)
    # Then every task is stored with its fields, and claims follow the batch's order
    assert ids == [t.id for t in tasks]
    stored = storage.get(ids)
    assert [r.state if r else None for r in stored] == [PENDING] * 5 + [SCHEDULED, PENDING]
    assert [r.idempotency_key if r else None for r in stored] == [None, "k1", None, None, None, None, None]
    assert stored[4] is not None and stored[4].expires_at == T0 + 100
    assert stored[6] is not None and (stored[6].priority, stored[6].max_attempts) == (2, 3)
    claimed = storage.claim("w1", ["default"], limit=10, now=T0 + 1)
    assert [c.id for c in claimed] == [ids[6], ids[0], ids[1], ids[2], ids[3], ids[4]]


def test_stats_count_every_finish_per_minute_with_latency(storage: Storage) -> None:
    # Given tasks enqueued at T0 and finished in two different minutes, in several ways
    base = T0 - T0 % 60
    ok1 = enqueue_one(storage, name="x", now=base)
    ok2 = enqueue_one(storage, name="x", now=base)
    bad = enqueue_one(storage, name="y", now=base)
    lost = enqueue_one(storage, name="y", now=base)
    waiting = enqueue_one(storage, name="x", queue="q2", now=base)
    finish(storage, storage.claim("w1", ["default"], now=base, ids=[ok1])[0], result=b"r", now=base + 10)
    finish(storage, storage.claim("w1", ["default"], now=base, ids=[ok2])[0], result=b"r", now=base + 30)
    finish(storage, storage.claim("w1", ["default"], now=base, ids=[bad])[0], FAILED, error=b"e", now=base + 70)
    storage.claim("w1", ["default"], now=base, ids=[lost], lease=5)
    storage.reap(now=base + 80)  # one attempt only: the lost task fails
    storage.cancel([waiting], now=base + 90)
    # Then each minute counts its finishes per queue, name and state, with end-to-end latency
    rows = storage.stats(since=base)
    got = {
        (r["minute"], r["queue"], r["name"], r["state"]): (r["count"], r["latency_sum"], r["latency_max"]) for r in rows
    }
    assert got == {
        (base, "default", "x", SUCCEEDED): (2, 40.0, 30.0),
        (base + 60, "default", "y", FAILED): (2, 150.0, 80.0),
        (base + 60, "q2", "x", CANCELLED): (1, 90.0, 90.0),
    }
    assert [r["minute"] for r in rows] == sorted(r["minute"] for r in rows)
    # And the window selects minutes by their start
    assert {r["minute"] for r in storage.stats(since=base + 1)} == {base + 60}
    assert {r["minute"] for r in storage.stats(since=base, until=base + 60)} == {base}
    # And the history outlives the tasks: purged and pruned tasks still count
    storage.purge(states=[SUCCEEDED, FAILED, CANCELLED])
    assert len(storage.stats(since=base)) == 3
    assert sum(r["count"] for r in storage.stats(since=base)) == 5
    # And longer buckets add the minutes up
    (hourly,) = [r for r in storage.stats(since=base, bucket=3600) if r["state"] == FAILED]
    assert hourly["minute"] == base - base % 3600 and (hourly["count"], hourly["latency_max"]) == (2, 80.0)


def test_stats_count_a_retried_task_each_time_it_finishes(storage: Storage) -> None:
    # Given a task that failed, was retried by hand and succeeded
    base = T0 - T0 % 60
    task_id = enqueue_one(storage, now=base)
    finish(storage, claim_one(storage, now=base), FAILED, error=b"e", now=base + 1)
    assert storage.retry([task_id], now=base + 2) == [True]
    finish(storage, claim_one(storage, now=base + 3), now=base + 4)
    # Then both finishes are in the history
    assert sorted((r["state"], r["count"]) for r in storage.stats(since=base)) == [(FAILED, 1), (SUCCEEDED, 1)]


def test_stats_older_than_their_memory_are_pruned(storage: Storage) -> None:
    from liteq.storage.contract import STATS_MEMORY

    # Given a finish long ago and one now
    old = enqueue_one(storage, now=T0 - STATS_MEMORY - 120)
    finish(storage, storage.claim("w1", ["default"], now=T0, ids=[old])[0], now=T0 - STATS_MEMORY - 120)
    enqueue_one(storage, now=T0)
    finish(storage, claim_one(storage, now=T0), now=T0)
    # When the store is pruned
    storage.prune(now=T0)
    # Then only the recent minute is left
    assert [r["count"] for r in storage.stats(since=0)] == [1]


def test_counts_stay_exact_through_every_transition(storage: Storage) -> None:
    # Given tasks moved through claim, finish, retry, cancel, reap and purge
    ids = storage.enqueue([new_task("a") for _ in range(4)] + [new_task("b", run_at=T0 + 50)], now=T0)
    finish(storage, storage.claim("w1", ["a"], now=T0, ids=[ids[0]])[0], FAILED, error=b"e", now=T0 + 1)
    storage.retry([ids[0]], now=T0 + 2)
    storage.cancel([ids[1]], now=T0 + 2)
    storage.claim("w1", ["a"], now=T0 + 3, ids=[ids[2]], lease=1)
    storage.reap(now=T0 + 10)
    storage.claim("w1", ["b"], now=T0 + 60)
    storage.purge(states=[CANCELLED])
    # Then counts match the rows one by one
    expected: dict[str, dict[str, int]] = {}
    for r in storage.list(limit=1000):
        expected.setdefault(r.queue, {}).setdefault(r.state, 0)
        expected[r.queue][r.state] += 1
    assert _nonzero(storage.counts()) == expected == {"a": {PENDING: 2, FAILED: 1}, "b": {RUNNING: 1}}


@pytest.mark.only_storage("sqlite")
def test_sqlite_history_and_counts_survive_a_reopen_and_an_upgrade(storage: Storage, store_dir: Path) -> None:
    import sqlite3

    from liteq.storage.sqlite import SqliteStorage

    # Given finished and pending tasks in a store, closed
    base = T0 - T0 % 60
    enqueue_one(storage, now=base)
    enqueue_one(storage, now=base)
    finish(storage, claim_one(storage, now=base), now=base + 5)
    storage.close()
    # When it is reopened, the history and counts are there
    with SqliteStorage(str(store_dir)) as reopened:
        assert [(r["state"], r["count"]) for r in reopened.stats(since=base)] == [(SUCCEEDED, 1)]
        assert _nonzero(reopened.counts()) == {"default": {PENDING: 1, SUCCEEDED: 1}}
    # And a store from before the counts table fills it from its rows when upgraded
    conn = sqlite3.connect(store_dir / "liteq.sqlite3")
    with conn:
        # (the counts triggers of version 5, and those that replaced them in version 7)
        for trigger in ("task_counts_insert", "task_counts_delete", "task_counts_update", "task_stats_finish",
                        "task_counts_enter", "task_counts_leave"):  # fmt: skip
            conn.execute(f"DROP TRIGGER IF EXISTS {trigger}")
        conn.execute("DROP TABLE task_counts")
        conn.execute("DROP TABLE task_stats")
        conn.execute("DROP INDEX tasks_by_name")
        for column in ("state", "state_reason", "state_since"):  # version 6 (worker health) came later
            conn.execute(f"ALTER TABLE workers DROP COLUMN {column}")
        conn.execute("PRAGMA user_version = 4")
    conn.close()
    with SqliteStorage(str(store_dir)) as upgraded:
        assert _nonzero(upgraded.counts()) == {"default": {PENDING: 1, SUCCEEDED: 1}}
        assert upgraded.page(states=[PENDING])[0].state == PENDING


def _old_store(directory: Path, version: int) -> None:
    """A store of schema ``version`` with two pending tasks, a running, a succeeded and a failed one,
    moved there by plain updates as that version's triggers saw them."""
    import sqlite3

    from liteq.storage.sqlite.schema import MIGRATIONS, statements

    directory.mkdir()
    conn = sqlite3.connect(directory / "liteq.sqlite3", isolation_level=None)
    for v in range(version):
        for statement in statements(MIGRATIONS[v]):
            conn.execute(statement)
    conn.execute(f"PRAGMA user_version = {version}")
    for i, state in enumerate([PENDING, PENDING, RUNNING, SUCCEEDED, FAILED]):
        conn.execute(
            "INSERT INTO tasks (id, name, queue, state, run_at, enqueued_at, payload) VALUES (?,?,?,?,?,?,?)",
            (f"t{i}", "tasks.add", "default", PENDING, T0, T0, b"p"),
        )
        finished = T0 + 1 if state in (SUCCEEDED, FAILED) else None
        conn.execute("UPDATE tasks SET state = ?, finished_at = ? WHERE id = ?", (state, finished, f"t{i}"))
    conn.close()


def _move_on_and_recount(storage: Storage) -> None:
    """Claim and finish a task, retry the failed one, purge the succeeded: the counts still match
    the rows one by one."""
    task = claim_one(storage, now=T0 + 2)
    finish(storage, task, now=T0 + 3)
    storage.retry(["t4"], now=T0 + 4)
    storage.purge(states=[SUCCEEDED])
    recount: dict[str, dict[str, int]] = {}
    for r in storage.list(limit=1000):
        recount.setdefault(r.queue, {}).setdefault(r.state, 0)
        recount[r.queue][r.state] += 1
    assert _nonzero(storage.counts()) == recount == {"default": {PENDING: 2, RUNNING: 1}}


@pytest.mark.only_storage("sqlite")
def test_sqlite_counts_stay_exact_across_the_upgrade_that_moved_active_counts_to_indexes(
    storage: Storage, store_dir: Path
) -> None:
    from liteq.storage.sqlite import SqliteStorage

    storage.close()
    # Given a version 6 store, whose triggers counted every state, with pending, running and finished tasks
    _old_store(store_dir.parent / "v6", 6)
    # When it is opened by this liteq and its tasks move on
    with SqliteStorage(str(store_dir.parent / "v6")) as upgraded:
        expected = {"default": {PENDING: 2, RUNNING: 1, SUCCEEDED: 1, FAILED: 1}}
        assert _nonzero(upgraded.counts()) == expected
        # Then the counts still match the rows one by one
        _move_on_and_recount(upgraded)


@pytest.mark.only_storage("sqlite")
def test_sqlite_upgrade_takes_pending_tasks_out_of_the_list_index(storage: Storage, store_dir: Path) -> None:
    import sqlite3

    from liteq.storage.sqlite import SqliteStorage

    storage.close()
    # Given a version 8 store, whose list index held every task, with pending, running and finished tasks
    old = store_dir.parent / "v8"
    _old_store(old, 8)
    # When it is opened by this liteq
    with SqliteStorage(str(old)) as upgraded:
        # Then the list index leaves pending tasks out, and every read finds them as before
        conn = sqlite3.connect(old / "liteq.sqlite3")
        (sql,) = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'tasks_by_name'").fetchone()
        indexed = conn.execute("SELECT count(*) FROM tasks INDEXED BY tasks_by_name WHERE state <> 'pending'")
        assert "WHERE state <> 'pending'" in sql and indexed.fetchone()[0] == 3
        conn.close()
        assert [r.id for r in upgraded.page(states=[PENDING])] == ["t1", "t0"]
        assert [r.id for r in upgraded.page(name="tasks.add")] == ["t4", "t3", "t2", "t1", "t0"]
        assert [r.id for r in upgraded.list(name="tasks.add", states=[PENDING, FAILED])] == ["t0", "t1", "t4"]
        assert upgraded.oldest_pending()["default"].id == "t0"
        # And tasks moving on keep the pages right
        task = claim_one(upgraded, now=T0 + 10)
        assert task.id == "t0"
        finish(upgraded, task, FAILED, error=b"e", now=T0 + 11)
        assert [r.id for r in upgraded.page(states=[FAILED, PENDING])] == ["t4", "t1", "t0"]
        assert _nonzero(upgraded.counts()) == {"default": {PENDING: 1, RUNNING: 1, SUCCEEDED: 1, FAILED: 2}}


@pytest.mark.only_storage("sqlite")
def test_sqlite_a_claim_runs_no_trigger_and_counts_stay_exact_across_the_version_8_upgrade(
    storage: Storage, store_dir: Path
) -> None:
    from liteq.storage.sqlite import SqliteStorage

    storage.close()
    # Given a version 7 store, whose history triggers ran for every change of state, with pending,
    # running and finished tasks
    _old_store(store_dir.parent / "v7", 7)
    # When this liteq opens it
    with SqliteStorage(str(store_dir.parent / "v7")) as upgraded:
        # Then a claim runs no trigger program (none watches what a claim sets)
        plan = upgraded.db.read(
            "EXPLAIN UPDATE tasks SET state = 'running', attempts = attempts + 1, lease_owner = 'w', "
            "lease_token = 'x', lease_deadline = 1.0, started_at = 1.0 WHERE seq = 1"
        )
        assert "Program" not in {row["opcode"] for row in plan}
        assert _nonzero(upgraded.counts()) == {"default": {PENDING: 2, RUNNING: 1, SUCCEEDED: 1, FAILED: 1}}
        # And as its tasks move on, the counts still match the rows one by one
        _move_on_and_recount(upgraded)
        # And the finish among those moves entered the history once, beside the older ones
        finishes: dict[str, int] = {}
        for r in upgraded.stats(since=T0 - 3600):
            finishes[r["state"]] = finishes.get(r["state"], 0) + r["count"]
        assert finishes == {SUCCEEDED: 2, FAILED: 1}


@pytest.mark.only_storage("sqlite")
def test_sqlite_a_pool_reclaims_its_own_leases_after_the_upgrade_that_dropped_the_owner_index(
    storage: Storage, store_dir: Path
) -> None:
    import sqlite3

    from liteq.storage.sqlite import SqliteStorage

    storage.close()
    # Given a version 9 store whose running task is leased by pool w1
    _old_store(store_dir.parent / "v9", 9)
    conn = sqlite3.connect(store_dir.parent / "v9" / "liteq.sqlite3", isolation_level=None)
    conn.execute(
        "UPDATE tasks SET lease_owner = 'w1', lease_token = 'tok', lease_deadline = ? WHERE id = 't2'", (T0 + 600,)
    )
    conn.close()
    # When this liteq opens it
    with SqliteStorage(str(store_dir.parent / "v9")) as upgraded:
        # Then no claim or finish writes an owner index any more, and w1's restart still takes
        # back its lease, through the index of running tasks
        indexes = {r["name"] for r in upgraded.db.read("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert "tasks_owner" not in indexes and "tasks_running" in indexes
        assert upgraded.reap(owner="w2", now=T0 + 1) == []
        assert upgraded.reap(owner="w1", now=T0 + 1) == ["t2"]
        assert row(upgraded, "t2").state == PENDING


# -- canvas: cancel and manual retry of dependent tasks -------------------------------------------------


def _chain(storage: Storage) -> tuple[str, str, str]:
    """Three tasks, each waiting for the one before (a chain as the canvas stores it)."""
    a = new_task(max_attempts=1)
    b = new_task(depends_on=[a.id])
    c = new_task(depends_on=[b.id])
    storage.enqueue([a, b, c], now=T0)
    return a.id, b.id, c.id


def test_release_of_a_cancelled_task_fails_its_dependents(storage: Storage) -> None:
    # Given a running first step that a user cancelled, with two steps waiting behind it
    a, b, c = _chain(storage)
    task = claim_one(storage, now=T0 + 1)
    assert storage.cancel([a], now=T0 + 2) == [RUNNING]
    # When its pool hands it back without running it (a prefetched task on shutdown)
    assert storage.release([(task.id, task.lease_token)]) == 1
    # Then it is cancelled and what waited for it failed with it, naming it; nothing is left waiting
    assert row(storage, a).state == CANCELLED
    for dependent in (b, c):
        found = row(storage, dependent)
        assert (found.state, found.reason) == (FAILED, f"dependency failed: {a}")
    assert storage.claim("w1", ["default"], limit=10, now=T0 + 3) == []


def test_retry_of_a_chain_failed_by_cascade_restores_the_waiting_order(storage: Storage) -> None:
    # Given a chain whose first step failed, failing the two after it
    a, b, c = _chain(storage)
    finish(storage, claim_one(storage, now=T0 + 1), FAILED, error=b"e", now=T0 + 2)
    assert row(storage, c).state == FAILED
    # When every failed step is retried by hand, in any order
    assert storage.retry([c, a, b], now=T0 + 3) == [True, True, True]
    # Then they run one after the other again: only the first is claimable, each success frees the next
    order = []
    for step in range(3):
        claimed = storage.claim("w1", ["default"], limit=10, now=T0 + 4 + step)
        assert len(claimed) == 1, claimed
        order.append(claimed[0].id)
        finish(storage, claimed[0], now=T0 + 4 + step)
    assert order == [a, b, c]


def test_retry_of_a_step_whose_dependency_stays_failed_is_refused(storage: Storage) -> None:
    _, b, _ = _chain(storage)
    finish(storage, claim_one(storage, now=T0 + 1), FAILED, error=b"e", now=T0 + 2)
    # A later step cannot run while the step it needs stays failed: it is not retried alone
    assert storage.retry([b], now=T0 + 3) == [False]
    assert row(storage, b).state == FAILED


def test_capabilities_are_declared_and_keep_their_promise(storage: Storage, store_dir: Path) -> None:
    """What differs between stores is declared on the class, and what is declared works."""
    kind = type(storage).__name__
    shared, wakeup, checkpoint = {
        "SqliteStorage": (True, True, True),
        "MemoryStorage": (False, False, False),
        "RemoteStorage": (True, True, False),
    }[kind]
    assert (storage.shared_between_processes, storage.supports_cross_process_wakeup) == (shared, wakeup)
    assert storage.supports_checkpoint is checkpoint
    # Only a store in a local directory names it.
    assert storage.local_path == (str(store_dir.resolve()) if kind == "SqliteStorage" else None)
    if kind != "RemoteStorage":  # asking a remote store for its wake-up directory subscribes to pushes
        assert (storage.wake_dir is not None) is wakeup
    storage.checkpoint()  # a no-op where there is nothing to fold back, never an error
    storage.skip_wake_in_this_thread("/nonexistent")
