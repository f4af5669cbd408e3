"""Contract tests for the store operations behind task controls and periodic schedules.

Every test runs on each store in ``conftest.STORAGE_KINDS`` (the ``storage`` fixture) and drives the
clock with ``now=``: unique keys, lock keys, periodic slots and schedule state, rate limits in claim.
"""

from __future__ import annotations

import itertools

import pytest

from liteq.storage.contract import Storage
from liteq.storage.records import NewTask, Outcome, TaskRow

pytestmark = pytest.mark.timeout(60)

Q = "default"
#: In the future on purpose: a cluster server reaps expired leases by its own (real) clock every
#: tick, so with a past ``NOW`` every lease these tests hand out would already be expired to it and a
#: tick landing mid-test would hand a claimed task back.
NOW = 2_000_000_000.0
_ids = itertools.count(1)


def new(name: str = "t", **fields: object) -> NewTask:
    """A task with a fresh, time-ordered-enough id (``00000001``...) and a few bytes of payload."""
    return NewTask(id=f"{next(_ids):032d}", name=name, queue=Q, payload=b"\x90", max_attempts=3, **fields)  # type: ignore[arg-type]


def row(storage: Storage, task_id: str) -> TaskRow:
    """The stored row of ``task_id``, which must exist."""
    (found,) = storage.get([task_id])
    assert found is not None, task_id
    return found


def succeed(storage: Storage, claimed_id: str, token: str, now: float = NOW) -> None:
    """Complete a claimed task as succeeded."""
    assert storage.complete([Outcome(claimed_id, token, "succeeded", result=b"\xc0")], now=now) == [True]


# -- unique keys ----------------------------------------------------------------------------------


def test_unique_key_returns_the_waiting_task(storage: Storage) -> None:
    # Given a pending task with a unique key
    first = new(unique_key="k")
    (a,) = storage.enqueue([first], now=NOW)
    # When another task with the same key is enqueued, and one with another key
    (b,) = storage.enqueue([new(unique_key="k")], now=NOW)
    (c,) = storage.enqueue([new(unique_key="other")], now=NOW)
    # Then the same key returns the waiting task's id and stores nothing; another key is stored
    assert a == first.id and b == a and c != a
    assert len(storage.list(limit=100)) == 2


def test_unique_key_dedups_a_scheduled_task(storage: Storage) -> None:
    # Given a task with a unique key scheduled for later
    (a,) = storage.enqueue([new(unique_key="k", run_at=NOW + 600)], now=NOW)
    assert row(storage, a).state == "scheduled"
    # When the same key is enqueued to run now
    (b,) = storage.enqueue([new(unique_key="k")], now=NOW)
    # Then the scheduled task is returned
    assert b == a and len(storage.list(limit=100)) == 1


def test_unique_key_in_one_batch_stores_one(storage: Storage) -> None:
    # Given a batch with two tasks of one unique key
    batch = [new(unique_key="k"), new(unique_key="k"), new()]
    # When it is enqueued
    ids = storage.enqueue(batch, now=NOW)
    # Then both entries get the first one's id
    assert ids == [batch[0].id, batch[0].id, batch[2].id]
    assert len(storage.list(limit=100)) == 2


def test_unique_key_frees_once_the_task_runs_or_finishes(storage: Storage) -> None:
    # Given a task with a unique key, claimed by a worker (running)
    (a,) = storage.enqueue([new(unique_key="k")], now=NOW)
    (claimed,) = storage.claim("w", [Q], now=NOW)
    # When the same key is enqueued while it runs
    (b,) = storage.enqueue([new(unique_key="k")], now=NOW + 1)
    # Then a new task is stored (only pending and scheduled tasks dedup)
    assert b != a
    # When the first finishes and the key is enqueued again
    succeed(storage, claimed.id, claimed.lease_token, NOW + 2)
    (c,) = storage.enqueue([new(unique_key="k")], now=NOW + 3)
    # Then the second (still pending) is returned
    assert c == b
    # When the second is cancelled, the key is free again
    storage.cancel([b], now=NOW + 4)
    (d,) = storage.enqueue([new(unique_key="k")], now=NOW + 5)
    assert d not in (a, b)


def test_unique_key_does_not_cross_idempotency(storage: Storage) -> None:
    # Given a unique task and a task with an idempotency key only
    (a,) = storage.enqueue([new(unique_key="k")], now=NOW)
    (b,) = storage.enqueue([new(idempotency_key="i")], now=NOW)
    # When each is enqueued again
    (a2,) = storage.enqueue([new(unique_key="k")], now=NOW)
    (b2,) = storage.enqueue([new(idempotency_key="i")], now=NOW)
    # Then each dedups on its own key
    assert (a2, b2) == (a, b)


# -- lock keys ------------------------------------------------------------------------------------


def test_two_same_key_tasks_in_one_claim_batch_only_one_is_claimed(storage: Storage) -> None:
    # Given two pending tasks holding one lock key, and one with another key
    a, b, c = new(lock_key="L"), new(lock_key="L"), new(lock_key="M")
    storage.enqueue([a, b, c], now=NOW)
    # When one claim asks for all of them
    claimed = storage.claim("w", [Q], limit=10, now=NOW)
    # Then the oldest of the key and the other key are claimed; the second waits, attempts unchanged
    assert sorted(t.id for t in claimed) == sorted([a.id, c.id])
    waiting = row(storage, b.id)
    assert waiting.state == "pending" and waiting.attempts == 0
    assert waiting.lease_owner is None and waiting.lease_token is None and waiting.started_at is None


def test_a_held_lock_keeps_same_key_tasks_waiting_until_completion(storage: Storage) -> None:
    # Given a running task holding lock "L" and a second "L" task behind it
    a, b = new(lock_key="L"), new(lock_key="L")
    storage.enqueue([a], now=NOW)
    (held,) = storage.claim("w1", [Q], now=NOW)
    storage.enqueue([b, new()], now=NOW)
    # When other workers claim
    others = storage.claim("w2", [Q], limit=10, now=NOW + 1)
    # Then they get everything but the locked task, which stays pending with no attempt counted
    assert b.id not in [t.id for t in others] and len(others) == 1
    assert row(storage, b.id).state == "pending" and row(storage, b.id).attempts == 0
    assert storage.claim("w2", [Q], limit=10, now=NOW + 2) == []
    # When the holder completes (even as a failure), the lock is free
    assert storage.complete(
        [Outcome(held.id, held.lease_token, "failed", error=b"\xc0", reason="boom")], now=NOW + 3
    ) == [True]
    (next_,) = storage.claim("w2", [Q], limit=10, now=NOW + 4)
    # Then the waiting task runs
    assert next_.id == b.id and next_.attempt == 1


def test_a_lock_is_freed_when_its_task_is_retried_later(storage: Storage) -> None:
    # Given a running "L" task and another waiting for the lock
    a, b = new(lock_key="L"), new(lock_key="L")
    storage.enqueue([a, b], now=NOW)
    (held,) = storage.claim("w", [Q], limit=10, now=NOW)
    # When the holder is put back for a retry later
    storage.complete([Outcome(held.id, held.lease_token, "scheduled", run_at=NOW + 100)], now=NOW + 1)
    # Then the other task takes the lock
    (got,) = storage.claim("w", [Q], limit=10, now=NOW + 2)
    assert got.id == b.id
    # ... and the retry waits for it even once due
    assert storage.claim("w", [Q], limit=10, now=NOW + 200) == []
    succeed(storage, got.id, got.lease_token, NOW + 201)
    (retry,) = storage.claim("w", [Q], limit=10, now=NOW + 202)
    assert retry.id == a.id and retry.attempt == 2


def test_a_lock_held_by_a_dead_worker_is_released_with_its_lease(storage: Storage) -> None:
    # Given a worker that claimed an "L" task under a 5 s lease and died without completing it
    a, b = new(lock_key="L"), new(lock_key="L")
    storage.enqueue([a, b], now=NOW)
    (lost,) = storage.claim("dead", [Q], limit=10, lease=5.0, now=NOW)
    assert storage.claim("alive", [Q], limit=10, now=NOW + 4) == []
    # When the lease runs out and the store reaps it
    assert storage.reap(now=NOW + 6) == [lost.id]
    # Then another worker can take the lock: the reaped task (oldest) runs again, then the other
    (again,) = storage.claim("alive", [Q], limit=10, now=NOW + 7)
    assert again.id == a.id and again.attempt == 2
    succeed(storage, again.id, again.lease_token, NOW + 8)
    (then,) = storage.claim("alive", [Q], limit=10, now=NOW + 9)
    assert then.id == b.id


def test_a_lock_is_released_when_the_worker_hands_its_tasks_back(storage: Storage) -> None:
    # Given a worker holding lock "L" and a second "L" task waiting
    a, b = new(lock_key="L"), new(lock_key="L")
    storage.enqueue([a, b], now=NOW)
    (held,) = storage.claim("w", [Q], limit=10, now=NOW)
    # When it releases the lease (a graceful shutdown before the task started)
    assert storage.release([(held.id, held.lease_token)]) == 1
    # Then the lock is free: the oldest task is claimable again, uncounted
    (got,) = storage.claim("w2", [Q], limit=10, now=NOW + 1)
    assert got.id == a.id and got.attempt == 1


def test_a_lock_key_and_a_claim_by_ids(storage: Storage) -> None:
    # Given a running "L" task and a second one
    a, b = new(lock_key="L"), new(lock_key="L")
    storage.enqueue([a, b], now=NOW)
    storage.claim("w", [Q], limit=10, now=NOW)
    # When a claim restricted to ids asks for the second (immediate mode)
    got = storage.claim("w", [Q], ids=[b.id], now=NOW + 1)
    # Then it does not break the lock either
    assert got == [] and row(storage, b.id).state == "pending"


# -- periodic slots and schedule state ---------------------------------------------------------------


def test_a_slot_is_stored_once(storage: Storage) -> None:
    # Given a registered schedule and a slot fired once
    storage.register_schedules(["s"], now=NOW)
    first = new("p", slot=("s", NOW + 60))
    (a,) = storage.enqueue([first], now=NOW + 60.5)
    # When other schedulers fire the same slot (another task id), alone or in a batch
    (b,) = storage.enqueue([new("p", slot=("s", NOW + 60))], now=NOW + 61)
    c, d = storage.enqueue([new("p", slot=("s", NOW + 60)), new("p", slot=("s", NOW + 120))], now=NOW + 121)
    # Then each gets the first firing's id and only new slots store a task
    assert a == first.id and b == a and c == a and d != a
    assert len(storage.list(name="p", limit=100)) == 2


def test_the_same_slot_time_of_two_schedules_is_two_slots(storage: Storage) -> None:
    # Given two schedules firing at one instant
    storage.register_schedules(["s1", "s2"], now=NOW)
    # When both fire it
    ids = storage.enqueue([new("p", slot=("s1", NOW + 60)), new("p", slot=("s2", NOW + 60))], now=NOW + 60)
    # Then both are stored
    assert len(set(ids)) == 2


def test_a_refused_batch_does_not_consume_its_slot(storage: Storage) -> None:
    # Given a batch firing a slot that also holds a task id already stored (refused as a whole)
    (existing,) = storage.enqueue([new()], now=NOW)
    storage.register_schedules(["s"], now=NOW)
    dup = NewTask(id=existing, name="p", queue=Q, payload=b"\x90", max_attempts=1)
    with pytest.raises(Exception):  # noqa: B017 - the store's own error type; what matters is what follows
        storage.enqueue([new("p", slot=("s", NOW + 60)), dup], now=NOW + 60)
    # When the slot fires again
    (again,) = storage.enqueue([new("p", slot=("s", NOW + 60))], now=NOW + 61)
    # Then it is stored now: the refused batch left no slot behind, and last_slot was not moved
    assert row(storage, again).name == "p"
    assert storage.schedule_states(["s"])["s"].last_slot == NOW + 60


def test_schedule_state_records_registration_and_the_last_slot(storage: Storage) -> None:
    # Given a schedule registered at NOW
    storage.register_schedules(["s"], now=NOW)
    st = storage.schedule_states(["s"])["s"]
    assert (st.name, st.paused, st.last_slot, st.last_fired_at, st.last_task_id) == ("s", False, NOW, None, None)
    # When it is registered again later (another pool starting)
    storage.register_schedules(["s"], now=NOW + 500)
    # Then nothing changes: the first registration time stays the last slot
    assert storage.schedule_states(["s"])["s"].last_slot == NOW
    # When slots fire, out of order
    t120 = new("p", slot=("s", NOW + 120))
    storage.enqueue([t120], now=NOW + 121)
    storage.enqueue([new("p", slot=("s", NOW + 60))], now=NOW + 122)
    # Then last_slot is the newest slot, with when it fired and its task
    st = storage.schedule_states(["s"])["s"]
    assert st.last_slot == NOW + 120
    assert st.last_fired_at is not None and st.last_fired_at >= NOW + 121
    assert st.last_task_id is not None


def test_schedule_states_lists_known_schedules_only(storage: Storage) -> None:
    # Given two registered schedules
    storage.register_schedules(["a", "b"], now=NOW)
    # When states are read by name and in full
    # Then unknown names are left out, and None means all
    assert set(storage.schedule_states(["a", "zzz"])) == {"a"}
    assert set(storage.schedule_states()) == {"a", "b"}
    assert storage.schedule_states([]) == {}


def test_pause_and_resume_skip_the_slots_missed_while_paused(storage: Storage) -> None:
    # Given a schedule that fired slot NOW+60
    storage.register_schedules(["s"], now=NOW)
    storage.enqueue([new("p", slot=("s", NOW + 60))], now=NOW + 60)
    # When it is paused
    assert storage.set_schedule_paused("s", True, now=NOW + 70) is True
    st = storage.schedule_states(["s"])["s"]
    # Then it is paused and its last slot is kept
    assert st.paused is True and st.last_slot == NOW + 60
    # When it is resumed an hour later
    assert storage.set_schedule_paused("s", False, now=NOW + 3670) is True
    st = storage.schedule_states(["s"])["s"]
    # Then it runs again from the resume time: what was missed while paused is skipped
    assert st.paused is False and st.last_slot == NOW + 3670


def test_resuming_a_running_schedule_changes_nothing(storage: Storage) -> None:
    # Given a schedule that is not paused
    storage.register_schedules(["s"], now=NOW)
    # When it is "resumed" later, or paused twice
    assert storage.set_schedule_paused("s", False, now=NOW + 999) is True
    # Then its last slot is untouched (a resume only skips slots missed while paused)
    assert storage.schedule_states(["s"])["s"].last_slot == NOW
    assert storage.set_schedule_paused("s", True, now=NOW + 1000) is True
    assert storage.set_schedule_paused("s", True, now=NOW + 1001) is True
    assert storage.schedule_states(["s"])["s"].paused is True


def test_pausing_an_unknown_schedule_is_false(storage: Storage) -> None:
    # Given no schedules
    # When an unknown one is paused or resumed
    # Then the store says so and records nothing
    assert storage.set_schedule_paused("nope", True, now=NOW) is False
    assert storage.set_schedule_paused("nope", False, now=NOW) is False
    assert storage.schedule_states() == {}


def test_a_paused_slot_enqueue_still_dedups(storage: Storage) -> None:
    # Given a fired slot, then a pause
    storage.register_schedules(["s"], now=NOW)
    (a,) = storage.enqueue([new("p", slot=("s", NOW + 60))], now=NOW + 60)
    storage.set_schedule_paused("s", True, now=NOW + 61)
    # When a lagging scheduler fires that slot again
    (b,) = storage.enqueue([new("p", slot=("s", NOW + 60))], now=NOW + 62)
    # Then it still dedups
    assert b == a


# -- rate limits in claim ------------------------------------------------------------------------------


def test_claim_admits_one_start_per_interval_and_reschedules_the_rest(storage: Storage) -> None:
    # Given three tasks of a task limited to one start a second, and one unlimited task
    limited = [new("r") for _ in range(3)]
    free = new("free")
    storage.enqueue([*limited, free], now=NOW)
    limits = {"r": 1.0}
    # When a worker claims them all at NOW
    got = storage.claim("w", [Q], limit=10, now=NOW, limits=limits)
    # Then one limited task and the free one start; the others wait as scheduled at the next turn,
    # with no attempt counted and no lease
    assert sorted(t.id for t in got) == sorted([limited[0].id, free.id])
    for t in limited[1:]:
        r = row(storage, t.id)
        assert (r.state, r.run_at, r.attempts, r.lease_token) == ("scheduled", NOW + 1.0, 0, None)
    # When claims come before the turn, then at it, then at the next
    assert storage.claim("w", [Q], limit=10, now=NOW + 0.5, limits=limits) == []
    at_turn = storage.claim("w", [Q], limit=10, now=NOW + 1.0, limits=limits)
    next_turn = storage.claim("w", [Q], limit=10, now=NOW + 2.0, limits=limits)
    # Then one starts per turn, oldest first
    assert [t.id for t in at_turn] == [limited[1].id]
    assert [t.id for t in next_turn] == [limited[2].id]
    assert row(storage, limited[2].id).attempts == 1


def test_the_rate_is_shared_by_every_claimer(storage: Storage) -> None:
    # Given tasks limited to 5 a second
    ids = storage.enqueue([new("r") for _ in range(20)], now=NOW)
    limits = {"r": 5.0}
    # When two workers alternate claims every 0.05 s for 5 simulated seconds
    starts: dict[str, float] = {}
    for k in range(101):
        now = NOW + 0.05 * k
        for t in storage.claim(f"w{k % 2}", [Q], limit=4, now=now, limits=limits):
            starts[t.id] = now
            succeed(storage, t.id, t.lease_token, now)
    # Then all ran, each start at least 0.2 s after the previous one, whichever worker claimed it
    assert set(starts) == set(ids)
    times = sorted(starts.values())
    assert all(b - a >= 0.2 - 1e-6 for a, b in itertools.pairwise(times)), times
    assert 19 * 0.2 - 1e-6 <= times[-1] - times[0] <= 19 * 0.25


def test_a_rate_limit_without_limits_in_the_claim_is_not_applied(storage: Storage) -> None:
    # Given three tasks of a rate-limited name
    storage.enqueue([new("r") for _ in range(3)], now=NOW)
    # When a claim passes no limits (a worker that does not know the task)
    got = storage.claim("w", [Q], limit=10, now=NOW)
    # Then nothing is held back
    assert len(got) == 3


def test_a_rate_limited_task_that_expired_while_waiting_ends_expired(storage: Storage) -> None:
    # Given two limited tasks, the second expiring before its turn
    a = new("r")
    b = new("r", expires_at=NOW + 0.5)
    storage.enqueue([a, b], now=NOW)
    limits = {"r": 1.0}
    storage.claim("w", [Q], limit=10, now=NOW, limits=limits)
    assert row(storage, b.id).state == "scheduled"
    # When its turn comes after it expired
    got = storage.claim("w", [Q], limit=10, now=NOW + 1.0, limits=limits)
    # Then it ends expired (visibly) instead of running
    assert got == []
    assert row(storage, b.id).state == "expired"


@pytest.mark.parametrize("rate", [0.5, 2.0, 10.0])
def test_rate_limit_spacing_matches_the_rate(storage: Storage, rate: float) -> None:
    # Given 5 tasks limited to `rate` starts a second
    storage.enqueue([new("r") for _ in range(5)], now=NOW)
    # When a worker claims whenever the store says the next one is due
    starts = []
    now = NOW
    for _ in range(20):
        for t in storage.claim("w", [Q], limit=10, now=now, limits={"r": rate}):
            starts.append(now)
            succeed(storage, t.id, t.lease_token, now)
        nxt = storage.next_run_at([Q])
        if nxt is None:
            break
        now = max(now, nxt)
    # Then the starts are exactly 1/rate apart
    assert starts == pytest.approx([NOW + i / rate for i in range(5)])
