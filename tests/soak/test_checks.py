"""The soak's checks catch what they claim to: each test feeds :func:`tests.soak.checks.check` a
small oracle and store with one defect planted (fast; no processes)."""

from __future__ import annotations

from typing import Any

import pytest

from liteq.storage.records import TaskRow
from tests.soak.checks import Stored, check
from tests.soak.oracle import GRACE, STORE_GRACE, Fault, Run, Told

SPAN = (1000.0, 1100.0)


def _row(task_id: str, name: str = "tests.soak.soak_app.work", state: str = "succeeded", **fields: Any) -> TaskRow:
    fields.setdefault("attempts", 1)
    return TaskRow(task_id, name, "default", state, 0, b"", 1000.0, 1000.0, max_attempts=5, **fields)


def _world() -> dict[str, Any]:
    """One plain key told, stored and run once: no problem."""
    return {
        "told": {"k1": Told("k1", "plain", 1, [["A"]])},
        "runs": {"A": [Run("A", 1, "t1", 100, 1001.0, "work", "k1", 1001.1, "ok")]},
        "faults": [],
        "stored": {"A": Stored(_row("A", idempotency_key="k1"), "k1", "w", "1:100")},
        "slots": [],
    }


def _problems(world: dict[str, Any]) -> list[str]:
    return check(world["told"], world["runs"], world["faults"], world["stored"], world["slots"], SPAN)[0]


def test_a_clean_world_has_no_problem() -> None:
    assert _problems(_world()) == []


def test_an_acknowledged_task_missing_or_unfinished_is_lost() -> None:
    world = _world()
    del world["stored"]["A"]
    del world["runs"]["A"]
    assert [p for p in _problems(world) if p.startswith("lost:")] == ["lost: A: acknowledged but not in the store"]
    world = _world()
    world["stored"]["A"] = Stored(_row("A", state="running", idempotency_key="k1"), "k1")
    assert any("still running" in p for p in _problems(world))


def test_a_task_no_producer_sent_is_unexpected() -> None:
    world = _world()
    world["stored"]["B"] = Stored(_row("B"), "k9", "w", "1:100")
    assert any(p.startswith("unexpected: B") for p in _problems(world))


def test_two_tasks_for_one_idempotency_key_are_reported() -> None:
    world = _world()
    world["told"]["k1"].ids.append(["B"])
    world["stored"]["B"] = Stored(_row("B", idempotency_key="k1"), "k1", "w", "1:100")
    found = _problems(world)
    assert any("told different ids" in p for p in found)
    assert any("2 stored tasks, expected 1" in p for p in found)


@pytest.mark.parametrize("explained", [False, True])
def test_a_second_run_needs_a_fault_on_the_first_runs_process(explained: bool) -> None:
    world = _world()
    world["runs"]["A"] = [
        Run("A", 1, "t1", 100, 1001.0, "work", "k1"),
        Run("A", 2, "t2", 200, 1010.0, "work", "k1", 1010.1, "ok"),
    ]
    world["stored"]["A"] = Stored(_row("A", idempotency_key="k1", attempts=2), "k1", "w", "2:200")
    # a fault on another process, or before the first run started, explains nothing
    world["faults"] = [Fault("kill-child", "x", 1005.0, 1005.0, [300]), Fault("lock", "s", 990.0, 995.0, [])]
    if explained:
        world["faults"].append(Fault("kill-child", "pool-a.1 child 100", 1005.0, 1005.0, [100]))
    found = [p for p in _problems(world) if "ran again" in p]
    assert found == ([] if explained else [found[0]]) and (explained or "attempt 2 pid 200" in found[0])


def test_the_planned_failure_of_a_first_attempt_is_not_a_duplicate() -> None:
    world = _world()
    world["runs"]["A"] = [
        Run("A", 1, "t1", 100, 1001.0, "work", "k1", 1001.1, "raised:RuntimeError"),
        Run("A", 2, "t2", 100, 1002.0, "work", "k1", 1002.1, "ok"),
    ]
    world["stored"]["A"] = Stored(_row("A", idempotency_key="k1", attempts=2), "k1", "w", "2:100")
    assert _problems(world) == []


def test_an_outcome_of_a_stale_claim_or_of_no_logged_run_is_reported() -> None:
    world = _world()
    world["stored"]["A"] = Stored(_row("A", idempotency_key="k1", attempts=2), "k1", "w", "1:100")
    assert any("a stale run's outcome was accepted" in p for p in _problems(world))
    world = _world()
    world["stored"]["A"].run = "1:555"
    assert any("never saw end ok" in p for p in _problems(world))


def test_a_slot_off_the_grid_or_a_periodic_task_without_a_slot_is_reported() -> None:
    world = _world()
    world["stored"]["P"] = Stored(_row("P", name="tests.soak.soak_app.beat"), "beat-2s", "beat-2s", "1:100")
    world["runs"]["P"] = [Run("P", 1, "t", 100, 1002.0, "periodic", "beat-2s", 1002.1, "ok")]
    assert any("has no slot row" in p for p in _problems(world))
    world["slots"] = [("beat-2s", 1002.0, "P")]
    assert _problems(world) == []
    world["slots"].append(("beat-2s", 1003.0, "Q"))
    assert any("not on its 2.0s grid" in p for p in _problems(world))


def test_a_chord_callback_stored_twice_is_reported() -> None:
    world = _world()
    ids = ["M0", "M1", "M2", "M3", "C"]
    world["told"]["c1"] = Told("c1", "chord", 1, [ids])
    for i, tid in enumerate(ids[:-1]):
        world["stored"][tid] = Stored(_row(tid, name="tests.soak.soak_app.square"), "c1", i * i, "1:100")
        world["runs"][tid] = [Run(tid, 1, "t", 100, 1002.0, "member", "c1", 1002.1, "ok")]
    world["stored"]["C"] = Stored(_row("C", name="tests.soak.soak_app.total"), "c1", 14, "1:100")
    world["runs"]["C"] = [Run("C", 1, "t", 100, 1003.0, "callback", "c1", 1003.1, "ok")]
    assert _problems(world) == []
    world["stored"]["C2"] = Stored(_row("C2", name="tests.soak.soak_app.total"), "c1", 14, "1:100")
    found = _problems(world)
    assert any("chord c1: 2 callback tasks" in p for p in found)


def test_a_failure_is_explained_only_by_a_fault_on_its_run_or_on_its_failed_dependency() -> None:
    world = _world()
    world["told"]["c2"] = Told("c2", "chain", 1, [["S1", "S2", "S3"]])
    world["stored"]["S1"] = Stored(_row("S1", name="tests.soak.soak_app.first", state="failed", reason="timeout"), "c2")
    world["runs"]["S1"] = [Run("S1", 1, "t", 100, 1002.0, "step", "c2")]
    for tid in ("S2", "S3"):
        row = _row(tid, name="tests.soak.soak_app.step", state="failed", reason="dependency failed: S1")
        world["stored"][tid] = Stored(row, "c2")
    assert len([p for p in _problems(world) if p.startswith("lost:")]) == 3
    world["faults"] = [Fault("stop-child", "pool-a.1 child 100", 1003.0, 1013.0, [100])]
    assert _problems(world) == []


@pytest.mark.parametrize(("late", "explained"), [(1.0, True), (GRACE + 1.0, False)])
def test_a_stale_run_of_a_paused_pool_is_explained_only_just_after_its_pause(late: float, explained: bool) -> None:
    # Given a task run by pool B (pid 200) while pool A (pid 100), paused until 1010, held a stale claim
    # of it that A's child started `late` seconds after it resumed
    world = _world()
    world["runs"]["A"] = [
        Run("A", 2, "t2", 200, 1009.0, "work", "k1", 1009.1, "ok"),
        Run("A", 1, "t1", 100, 1010.0 + late, "work", "k1", 1010.1 + late, "ok"),
    ]
    world["stored"]["A"] = Stored(_row("A", idempotency_key="k1", attempts=2), "k1", "w", "2:200")
    world["faults"] = [Fault("stop-supervisor", "pool-a.1", 1000.0, 1010.0, [99, 100])]
    found = [p for p in _problems(world) if "ran again" in p]
    assert (found == []) is explained, found


@pytest.mark.parametrize(("late", "explained"), [(1.1, True), (STORE_GRACE + 1.0, False)])
def test_a_run_started_just_after_a_store_fault_on_a_lease_that_ran_out_is_explained(
    late: float, explained: bool
) -> None:
    # Given a task pool A (pid 100) claimed before the server went away until 1010: its child started
    # the run `late` seconds after the server was back, before A's first retry round told it that the
    # lease it could not extend had run out, and pool B (pid 200) ran the task again (CI seed 617431)
    world = _world()
    world["runs"]["A"] = [
        Run("A", 1, "t1", 100, 1010.0 + late, "work", "k1", 1010.1 + late, "ok"),
        Run("A", 2, "t2", 200, 1011.0 + late, "work", "k1", 1011.1 + late, "ok"),
    ]
    world["stored"]["A"] = Stored(_row("A", idempotency_key="k1", attempts=2), "k1", "w", "2:200")
    world["faults"] = [Fault("kill-server", "server.2", 1005.0, 1010.0, [])]
    found = [p for p in _problems(world) if "ran again" in p]
    assert (found == []) is explained, found


def _beats(world: dict[str, Any], slots: list[float]) -> None:
    """Periodic ``beat-2s`` tasks fired for ``slots``, each stored with its slot row."""
    for k, slot in enumerate(slots):
        tid = f"B{k}"
        world["stored"][tid] = Stored(_row(tid, name="tests.soak.soak_app.beat"), "beat-2s", "beat-2s", "1:100")
        world["runs"][tid] = [Run(tid, 1, "t", 100, slot, "periodic", "beat-2s", slot + 0.1, "ok")]
        world["slots"].append(("beat-2s", slot, tid))


def test_slots_fired_early_by_a_clock_stepped_forward_are_not_counted_against_the_span() -> None:
    # Given every 2-s slot of the span fired once, and a pool whose clock ran 120 s ahead that fired
    # five slots of the next two minutes early (each slot still once)
    world = _world()
    on_time = [SPAN[0] + 2 * k for k in range(1, 51)]
    _beats(world, on_time + [SPAN[1] + 20 + 2 * k for k in range(5)])
    world["faults"] = [Fault("clock-step", "pool-c.1 +120s", 1050.0, 1053.0, [7], explains=False, clock_step=120.0)]
    # Then nothing is reported: early is not twice
    assert _problems(world) == []
    # But the same early slots with no forward step of the clock are
    world["faults"] = [Fault("clock-step", "pool-c.1 -120s", 1050.0, 1053.0, [7], explains=False, clock_step=-120.0)]
    assert any("ahead of real time" in p for p in _problems(world))
    # And more slots inside the span than it holds still are
    world = _world()
    _beats(world, on_time + [SPAN[0] - 2 * k for k in range(1, 5)])
    assert any("at most" in p for p in _problems(world))
