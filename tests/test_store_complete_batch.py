"""Completions flushed as one batch (what the pool sends): the SQLite store finishes the tasks of
a batch in one set-based statement, and each outcome is still fenced by its own lease token.

These run on every store (the ``storage`` fixture), so the batched path agrees with the others.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from liteq.storage.contract import Storage
from liteq.storage.records import NewTask, Outcome
from liteq.storage.states import FAILED, PENDING, RUNNING, SCHEDULED, SUCCEEDED

pytestmark = pytest.mark.timeout(60)

T0 = 2_000_000_000.0
#: More than one set-based statement's worth of outcomes (the SQLite store's ``FINISH_CHUNK``).
BATCH = 130


def new_task(**fields: Any) -> NewTask:
    return NewTask(id=uuid.uuid4().hex, name="tasks.add", queue="default", payload=b"p", **fields)


def test_a_stale_completion_in_a_batch_is_refused_while_the_rest_are_accepted(storage: Storage) -> None:
    # Given a task whose lease expired and was taken over by a second worker
    (victim_id,) = storage.enqueue([new_task(max_attempts=3)], now=T0)
    (victim,) = storage.claim("w1", ["default"], lease=1, now=T0)
    # and many more tasks leased by the first worker
    storage.enqueue([new_task() for _ in range(BATCH)], now=T0)
    tasks = storage.claim("w1", ["default"], limit=BATCH, lease=60, now=T0)
    assert len(tasks) == BATCH
    assert storage.reap(now=T0 + 5) == [victim_id]
    (retaken,) = storage.claim("w2", ["default"], lease=60, now=T0 + 5)
    assert retaken.id == victim_id and retaken.lease_token != victim.lease_token
    # When the first worker flushes one batch: its outcomes, the victim's with the old token in the
    # middle, another with a wrong token in the second statement's share, and an unknown id
    outcomes = [Outcome(t.id, t.lease_token, SUCCEEDED, result=b"r" + t.id.encode()) for t in tasks]
    outcomes.insert(50, Outcome(victim.id, victim.lease_token, SUCCEEDED, result=b"stale"))
    wrong = tasks[120]
    outcomes[121] = Outcome(wrong.id, "not-the-token", SUCCEEDED, result=b"stale")
    outcomes.append(Outcome("unknown", "t", SUCCEEDED))
    applied = storage.complete(outcomes, now=T0 + 6)
    # Then exactly the stale ones are refused, each at its own place
    refused = {50, 121, len(outcomes) - 1}
    assert applied == [i not in refused for i in range(len(outcomes))]
    # and the refused tasks are untouched: the victim still runs under the second worker's lease
    victim_row, wrong_row = storage.get([victim_id, wrong.id])
    assert victim_row is not None and wrong_row is not None
    assert (victim_row.state, victim_row.lease_owner, victim_row.lease_token) == (RUNNING, "w2", retaken.lease_token)
    assert (wrong_row.state, wrong_row.lease_token, wrong_row.result) == (RUNNING, wrong.lease_token, None)
    # while every accepted one finished with its own result and time
    for t in tasks:
        if t.id == wrong.id:
            continue
        (r,) = storage.get([t.id])
        assert r is not None
        assert (r.state, r.result, r.finished_at, r.lease_token) == (SUCCEEDED, b"r" + t.id.encode(), T0 + 6, None)
    # and the history counts only the accepted ones
    assert sum(s["count"] for s in storage.stats(since=T0 - 60)) == BATCH - 1
    assert storage.counts()["default"][SUCCEEDED] == BATCH - 1
    # And the second worker's completion of the victim is still accepted
    assert storage.complete([Outcome(retaken.id, retaken.lease_token, SUCCEEDED)], now=T0 + 7) == [True]


def test_the_same_task_twice_in_a_batch_applies_only_the_first(storage: Storage) -> None:
    storage.enqueue([new_task(), new_task()], now=T0)
    a, b = storage.claim("w1", ["default"], limit=2, now=T0)
    applied = storage.complete(
        [
            Outcome(a.id, a.lease_token, SUCCEEDED, result=b"first"),
            Outcome(b.id, b.lease_token, SUCCEEDED),
            Outcome(a.id, a.lease_token, FAILED, error=b"second"),
        ],
        now=T0 + 1,
    )
    assert applied == [True, True, False]
    (row,) = storage.get([a.id], history=True)
    assert row is not None and (row.state, row.result, row.errors) == (SUCCEEDED, b"first", [])


def test_a_mixed_batch_keeps_errors_retries_locks_and_dependencies(storage: Storage) -> None:
    # Given running tasks: one holding a lock another waits for, one a chain step waits for,
    # one that will fail and one that will be retried, plus a stale one
    storage.enqueue([new_task(lock_key="L", priority=5)], now=T0)
    storage.enqueue([new_task(lock_key="L")], now=T0)
    locked = storage.claim("w1", ["default"], limit=5, now=T0)
    assert len(locked) == 1  # the second lock holder waits
    (first,) = locked
    (parent_id,) = storage.enqueue([new_task(priority=4)], now=T0)
    (child_id,) = storage.enqueue([new_task(depends_on=[parent_id])], now=T0)
    storage.enqueue([new_task(priority=3), new_task(priority=2, max_attempts=2), new_task(priority=1)], now=T0)
    parent, failing, retried, stale = storage.claim("w1", ["default"], limit=4, now=T0)
    assert parent.id == parent_id
    # When they all complete in one batch
    applied = storage.complete(
        [
            Outcome(first.id, first.lease_token, SUCCEEDED),
            Outcome(failing.id, failing.lease_token, FAILED, error=b"boom", reason="raised"),
            Outcome(stale.id, "stale", SUCCEEDED),
            Outcome(retried.id, retried.lease_token, SCHEDULED, error=b"again", run_at=T0 + 100),
            Outcome(parent.id, parent.lease_token, SUCCEEDED, result=b"p"),
        ],
        now=T0 + 1,
    )
    # Then each is applied as on its own
    assert applied == [True, True, False, True, True]
    rows = dict(zip(["failing", "retried", "child", "stale"],
                    storage.get([failing.id, retried.id, child_id, stale.id], history=True), strict=True))  # fmt: skip
    assert rows["failing"] is not None and (rows["failing"].state, rows["failing"].errors) == (FAILED, [b"boom"])
    assert rows["retried"] is not None and (rows["retried"].state, rows["retried"].errors) == (SCHEDULED, [b"again"])
    assert rows["stale"] is not None and rows["stale"].state == RUNNING
    assert rows["child"] is not None and rows["child"].state == PENDING  # the chain link counted down
    # and the lock came free: the task waiting for it (and the chain step) can be claimed now
    claimed = {t.id for t in storage.claim("w2", ["default"], limit=5, now=T0 + 2)}
    assert child_id in claimed and len(claimed) == 2
