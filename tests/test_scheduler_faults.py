"""A periodic tick against a store that fails (issue 9): the slot fires on a later tick, once,
and no other slot fires. Before, ``tick()`` advanced its next time before the enqueue committed,
so a failed tick lost the slot (``liteq scheduler``) or, in a pool, fired a spurious ``(name, t+1)``.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from liteq import LiteQ, StoreBusy
from liteq.health import PoolState
from liteq.scheduler import Scheduler
from tests import control_tasks
from tests.support import wait_for

pytestmark = pytest.mark.timeout(60)

MakeApp = Callable[..., LiteQ]
HOUR = 3600.0
T0 = 1_717_200_000.0  # 2024-06-01T00:00:00Z, a multiple of an hour


def fail_enqueues(app: LiteQ, times: int) -> list[int]:
    """Make the next ``times`` enqueues of periodic slots raise ``StoreBusy``; return the failure counter."""
    real = app.storage.enqueue
    failed = [0]

    def enqueue(tasks: Any, *args: Any, **kwargs: Any) -> Any:
        if failed[0] < times and any(getattr(t, "slot", None) for t in tasks):
            failed[0] += 1
            raise StoreBusy("locked by the test", path="test", waited=0.0)
        return real(tasks, *args, **kwargs)

    app.storage.enqueue = enqueue  # type: ignore[method-assign]
    return failed


@pytest.mark.parametrize("catch_up", ["coalesce", "all", "none"])
def test_a_failed_tick_fires_the_same_slot_on_the_next_tick_once(make_memory_app: MakeApp, catch_up: str) -> None:
    # Given an hourly schedule registered at T0, and a store whose next slot enqueue fails
    app = make_memory_app()
    app.periodic(every=timedelta(hours=1), catch_up=catch_up)(app.task(name="hourly")(control_tasks.noop))
    scheduler = Scheduler(app)
    assert scheduler.tick(now=T0) == []
    failed = fail_enqueues(app, 1)
    # When the tick for slot T0+1h fails
    with pytest.raises(StoreBusy):
        scheduler.tick(now=T0 + HOUR + 0.5)
    assert failed[0] == 1 and app.stats()["states"] == {}
    # Then the next due time is still that slot, and the next tick fires it, once
    assert scheduler.next_due() == T0 + HOUR
    fired = scheduler.tick(now=T0 + HOUR + 1.5)
    assert len(fired) == 1
    # And no other slot fires on the following ticks, up to the next hour
    for k in range(2, 60):
        assert scheduler.tick(now=T0 + HOUR + k) == [], k
    state = app.storage.schedule_states(["hourly"])["hourly"]
    assert state.last_slot == T0 + HOUR
    assert app.stats()["states"] == {"pending": 1}
    assert scheduler.next_due() == T0 + 2 * HOUR


def test_postpone_holds_ticks_without_moving_the_slot(make_memory_app: MakeApp) -> None:
    app = make_memory_app()
    app.periodic(every=timedelta(hours=1))(app.task(name="hourly")(control_tasks.noop))
    scheduler = Scheduler(app)
    scheduler.tick(now=T0)
    scheduler.postpone(T0 + HOUR + 30)
    assert scheduler.next_due() == T0 + HOUR + 30
    assert len(scheduler.tick(now=T0 + HOUR + 30)) == 1
    assert app.storage.schedule_states(["hourly"])["hourly"].last_slot == T0 + HOUR
    assert scheduler.next_due() == T0 + 2 * HOUR


@pytest.mark.timeout(90)
@pytest.mark.parametrize("catch_up", ["coalesce", "all"])
def test_a_pool_whose_tick_fails_fires_the_slot_once_and_no_spurious_one(
    make_app: MakeApp, tmp_path: Path, catch_up: str
) -> None:
    # Given an hourly schedule whose last slot was two and a half hours ago, so slots are owed
    app = make_app()
    app.periodic(every=timedelta(hours=1), catch_up=catch_up)(app.task(name="hourly")(control_tasks.noop))
    now = time.time()
    app.storage.register_schedules(["hourly"], now=now - 2.5 * HOUR)
    owed = [s for s in (HOUR * (now // HOUR - k) for k in (2, 1, 0)) if now - 2.5 * HOUR < s <= now]
    expected = owed[-1:] if catch_up == "coalesce" else owed
    failed = fail_enqueues(app, 1)
    store = tmp_path / "store" / "liteq.sqlite3"

    def fired() -> list[float]:
        conn = sqlite3.connect(store)
        try:
            return sorted(r[0] for r in conn.execute("SELECT slot FROM periodic_slots WHERE schedule = 'hourly'"))
        finally:
            conn.close()

    # When a pool runs and its first tick fails on the store
    with app.workers(concurrency=1) as pool:
        wait_for(lambda: failed[0] == 1, 20, "the first tick to fail")
        failed_at = time.time()
        # Then the pool rides it out and fires the owed slots on a later tick
        wait_for(lambda: fired() == expected, 20, "the owed slots to fire")
        # And in the seconds after the failure, when the spurious slot (t + 1) used to fire, no
        # other slot fires: the slot table is the oracle, watched until then
        while time.time() < failed_at + 3:
            assert fired() == expected
        assert pool.state.value == "ok"
    state = app.storage.schedule_states(["hourly"])["hourly"]
    assert state.last_slot == owed[-1]


def test_liteq_scheduler_loop_rides_out_store_errors(make_memory_app: MakeApp) -> None:
    # Given the loop of `liteq scheduler` with a one-second schedule, on a store failing 3 times
    app = make_memory_app()
    app.periodic(every=timedelta(seconds=1))(app.task(name="pulse")(control_tasks.noop))
    scheduler = Scheduler(app)
    failed = fail_enqueues(app, 3)
    stop = threading.Event()
    states: list[PoolState] = []
    thread = threading.Thread(target=scheduler.run, args=(stop,), kwargs={"idle": 0.05})
    thread.start()
    try:
        # Then it goes degraded, stays alive, and fires again once the store is back
        wait_for(lambda: states.append(scheduler.health.state) or failed[0] == 3, 20, "three failed ticks")
        wait_for(lambda: app.stats()["states"].get("pending", 0) >= 2, 20, "slots to fire after the errors")
        assert thread.is_alive() and scheduler.health.ok
        assert PoolState.DEGRADED in states
    finally:
        stop.set()
        thread.join(10)
    slots_fired = [r.enqueued_at for r in app.storage.list(name="pulse", limit=100)]
    assert len(slots_fired) == len(set(slots_fired))
