"""The deadline heap a pool's loop waits on (liteq.deadlines): named timers, moved and cancelled,
the nearest on top, the due ones popped in order. Time is a parameter: no clock is read here."""

from __future__ import annotations

import random

import pytest

from liteq.deadlines import AT_ONCE, Deadlines

pytestmark = pytest.mark.timeout(30)


def test_an_empty_heap_waits_the_idle_time() -> None:
    # Given no timer
    d = Deadlines()
    # Then there is no next instant, nothing is due, and a wait lasts the idle time
    assert d.next_at() is None
    assert d.due(1e9) == []
    assert d.next_timeout(5.0, idle=1.5) == 1.5
    assert len(d) == 0


def test_the_nearest_timer_is_the_wait_timeout() -> None:
    # Given three timers
    d = Deadlines()
    d.schedule("heartbeat", 15.0)
    d.schedule("extend", 12.0)
    d.schedule(("child", 0), 20.0)
    # Then the wait ends at the nearest, and never goes below zero once it is past
    assert d.next_at() == 12.0
    assert d.next_timeout(10.0) == 2.0
    assert d.next_timeout(13.0) == 0.0
    assert len(d) == 3 and "extend" in d and ("child", 0) in d


def test_due_pops_the_timers_due_earliest_first_and_leaves_the_rest() -> None:
    # Given timers at 3, 1, 2 and 9
    d = Deadlines()
    for name, at in (("c", 3.0), ("a", 1.0), ("b", 2.0), ("later", 9.0)):
        d.schedule(name, at)
    # When the due ones are taken at 3
    due = d.due(3.0)
    # Then those at 3 or before come out in time order, and only the later one stays
    assert due == ["a", "b", "c"]
    assert list(d) == ["later"] and d.next_at() == 9.0
    assert d.due(3.0) == []


def test_ties_come_out_in_scheduling_order() -> None:
    # Given three timers at the same instant
    d = Deadlines()
    for name in ("first", "second", "third"):
        d.schedule(name, 5.0)
    # Then they come out in the order they were set
    assert d.due(5.0) == ["first", "second", "third"]


def test_rescheduling_moves_a_timer_either_way() -> None:
    # Given a timer at 10
    d = Deadlines()
    d.schedule("claim", 10.0)
    # When it is moved later, then earlier than it first was
    d.schedule("claim", 30.0)
    assert d.next_at() == 30.0 and d.due(10.0) == []
    d.schedule("claim", 4.0)
    # Then only its latest instant counts, and it comes out once
    assert d.at("claim") == 4.0
    assert d.due(100.0) == ["claim"]
    assert d.due(100.0) == [] and d.next_at() is None


def test_cancel_removes_a_timer_and_returns_its_instant() -> None:
    # Given two timers
    d = Deadlines()
    d.schedule("stop", 3.0)
    d.schedule("heartbeat", 8.0)
    # When the nearer one is cancelled (and a timer that is not set)
    assert d.cancel("stop") == 3.0
    assert d.cancel("stop") is None
    assert d.cancel("never set") is None
    # Then the wait ends at the other one, and the cancelled one is never due
    assert d.next_at() == 8.0
    assert d.due(9.0) == ["heartbeat"]


def test_scheduling_none_cancels() -> None:
    # Given a timer
    d = Deadlines()
    d.schedule("claim", 1.0)
    # When it is set to None (its owner has nothing to do)
    d.schedule("claim", None)
    # Then it is gone
    assert "claim" not in d and d.next_at() is None and d.at("claim") is None


def test_at_once_is_due_whatever_the_clock_says() -> None:
    # Given a timer due at once beside an ordinary one
    d = Deadlines()
    d.schedule("flush", AT_ONCE)
    d.schedule("heartbeat", 5.0)
    # Then the wait is zero and it is due at any instant
    assert d.next_timeout(-1e9) == 0.0
    assert d.is_due("flush", -1e9) and not d.is_due("heartbeat", 4.9)
    assert d.due(0.0) == ["flush"]


def test_a_timer_moved_on_every_iteration_keeps_the_heap_small() -> None:
    # Given a loop that moves one timer ten thousand times (the claim timer on every iteration)
    # beside a few that stay
    d = Deadlines()
    for i in range(3):
        d.schedule(f"job{i}", 1e6 + i)
    for i in range(10_000):
        d.schedule("claim", float(i))
    # Then the stale entries were dropped on the way: the heap stays a few times the live timers
    assert len(d._heap) <= 3 * len(d) + 16
    assert d.next_at() == 9_999.0 and len(d) == 4


def test_setting_the_same_instant_again_adds_no_entry() -> None:
    # Given a timer re-armed with an unchanged instant on every iteration
    d = Deadlines()
    for _ in range(100):
        d.schedule("stop", 7.0)
    # Then the heap holds one entry
    assert len(d._heap) == 1


def test_clear_cancels_everything() -> None:
    d = Deadlines()
    d.schedule("a", 1.0)
    d.schedule("b", 2.0)
    d.clear()
    assert len(d) == 0 and d.next_at() is None and d.due(10.0) == []


@pytest.mark.parametrize("seed", range(5))
def test_random_operations_agree_with_a_plain_dict(seed: int) -> None:
    # Given random schedules, moves, cancels and pops against a dict model
    rng = random.Random(seed)
    d = Deadlines()
    model: dict[str, float] = {}
    now = 0.0
    for _ in range(3_000):
        name = f"t{rng.randrange(20)}"
        op = rng.random()
        if op < 0.55:
            at = now + rng.uniform(-1.0, 10.0)
            d.schedule(name, at)
            model[name] = at
        elif op < 0.7:
            assert d.cancel(name) == model.pop(name, None)
        else:
            now += rng.uniform(0.0, 2.0)
            expected = sorted((at, n) for n, at in model.items() if at <= now)
            got = d.due(now)
            # Then the due timers are those of the model, earliest first
            assert [at for at, _ in expected] == [model[n] for n in got]
            assert sorted(got) == sorted(n for _, n in expected)
            for n in got:
                del model[n]
        # And the top is always the model's earliest instant
        assert d.next_at() == (min(model.values()) if model else None)
        assert len(d) == len(model)
