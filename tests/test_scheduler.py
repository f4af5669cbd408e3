"""Periodic tasks (issue 4, RELIABILITY.md G6 and the "Scheduling" fault tests).

Schedule maths is checked with tables and with oracles that do not reuse the code under test: cron
matches come from ``croniter.match`` on every wall-clock minute of a day, instants from ``zoneinfo``.
Schedulers are driven with an injected clock (``tick(now=...)``); the slot each firing claimed is
read back from the SQLite store's ``periodic_slots`` table, and every check compares it with the
slots the schedule owes. Real pools are used only where the pool is what is tested, and they are
waited on with a deadline, never a fixed sleep.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter

from liteq import ConfigurationError, LiteQ
from liteq.cli import main as cli_main
from liteq.scheduler import MAX_CATCH_UP, ON_TIME_GRACE, Schedule, Scheduler, due_slots
from liteq.storage.sqlite import DB_FILENAME
from tests import control_tasks, tasks
from tests.support import wait_for

pytestmark = pytest.mark.timeout(60)

MakeApp = Callable[..., LiteQ]
ROOT = Path(__file__).resolve().parent.parent
UTC = timezone.utc


# -- helpers -------------------------------------------------------------------------------------


def ts(text: str, tz: str = "UTC") -> float:
    """Epoch seconds of an ISO wall time (``2024-03-31T02:30``) in zone ``tz`` (or with its own offset)."""
    when = datetime.fromisoformat(text)
    if when.tzinfo is None:
        when = when.replace(tzinfo=ZoneInfo(tz))
    return when.timestamp()


def local(t: float, tz: str) -> str:
    """``t`` as an ISO wall time with offset in zone ``tz`` (``2024-03-31T03:30:00+02:00``)."""
    return datetime.fromtimestamp(t, ZoneInfo(tz)).isoformat()


def take(schedule: Schedule, after: float, n: int) -> list[float]:
    """The first ``n`` slots of ``schedule`` strictly after ``after``."""
    out = []
    for s in schedule.slots(after):
        out.append(s)
        if len(out) == n:
            break
    return out


def slots_between(schedule: Schedule, after: float, until: float) -> list[float]:
    """Every slot in ``(after, until]``."""
    out = []
    for s in schedule.slots(after):
        if s > until:
            break
        out.append(s)
    return out


def slot_rows(store_dir: Path) -> list[tuple[str, float, str]]:
    """``(schedule, slot, task_id)`` of every fired slot, read straight from the SQLite file."""
    uri = f"file:{store_dir / DB_FILENAME}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=30)) as conn:
        return list(conn.execute("SELECT schedule, slot, task_id FROM periodic_slots ORDER BY schedule, slot"))


def slot_rows_if_any(store_dir: Path) -> list[tuple[str, float, str]]:
    """:func:`slot_rows`, or nothing while another process is still creating the store."""
    try:
        return slot_rows(store_dir)
    except sqlite3.OperationalError:  # no file or no table yet
        return []


def task_count(app: LiteQ, name: str) -> int:
    """How many tasks named ``name`` the store holds, in any state."""
    return len(app.storage.list(name=name, limit=1_000_000))


# -- schedule maths: every=N -----------------------------------------------------------------------

T0 = ts("2024-06-01T00:00:00")  # a UTC midnight: a multiple of every period below


@pytest.mark.parametrize(
    ("every", "after", "expected"),
    [
        (60.0, T0, [T0 + 60, T0 + 120, T0 + 180]),  # strictly after a slot
        (60.0, T0 + 59.9, [T0 + 60, T0 + 120, T0 + 180]),
        (60.0, T0 + 60.1, [T0 + 120, T0 + 180, T0 + 240]),
        (3600.0, T0 + 1800, [T0 + 3600, T0 + 7200, T0 + 10800]),  # top of the hour, UTC
        (86400.0, T0 + 5, [T0 + 86400, T0 + 2 * 86400, T0 + 3 * 86400]),  # UTC midnights
        (7.0, 100.0, [105.0, 112.0, 119.0]),  # aligned to the epoch, not to the minute
        (0.5, 10.2, [10.5, 11.0, 11.5]),
        (300.0, T0 + 299.999, [T0 + 300, T0 + 600, T0 + 900]),
    ],
)
def test_every_slots_are_epoch_aligned(every: float, after: float, expected: list[float]) -> None:
    # Given an every=N schedule
    schedule = Schedule("s", "t", every=every)
    # When its first slots after a time are listed
    got = take(schedule, after, 3)
    # Then they are the multiples of N (since the epoch) strictly after that time
    assert got == pytest.approx(expected, abs=1e-6)
    assert schedule.next_after(after) == pytest.approx(expected[0], abs=1e-6)


def test_periodic_every_accepts_a_timedelta(make_memory_app: MakeApp) -> None:
    # Given a periodic task declared with every=timedelta(minutes=5)
    app = make_memory_app()
    app.periodic(every=timedelta(minutes=5))(tasks.noop)
    # When its schedule is inspected
    (schedule,) = app.schedules.values()
    # Then the period is 300 seconds and slots fall on five-minute marks
    assert schedule.every == 300.0
    assert take(schedule, T0 + 1, 2) == [T0 + 300, T0 + 600]


# -- schedule maths: cron ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cron", "after", "expected"),
    [
        ("*/15 * * * *", "2024-01-01T00:07", ["2024-01-01T00:15", "2024-01-01T00:30", "2024-01-01T00:45"]),
        ("*/15 * * * *", "2024-01-01T00:15", ["2024-01-01T00:30", "2024-01-01T00:45", "2024-01-01T01:00"]),
        ("0 0 * * *", "2024-02-28T12:00", ["2024-02-29T00:00", "2024-03-01T00:00", "2024-03-02T00:00"]),
        ("30 9 * * 1-5", "2024-01-05T10:00", ["2024-01-08T09:30", "2024-01-09T09:30", "2024-01-10T09:30"]),
        ("0 12 1 * *", "2024-01-31T13:00", ["2024-02-01T12:00", "2024-03-01T12:00", "2024-04-01T12:00"]),
        ("59 23 31 12 *", "2024-06-01T00:00", ["2024-12-31T23:59", "2025-12-31T23:59", "2026-12-31T23:59"]),
    ],
)
def test_cron_slots_in_utc(cron: str, after: str, expected: list[str]) -> None:
    # Given a cron schedule in UTC (the default zone)
    schedule = Schedule("s", "t", cron=cron)
    # When its first slots after a UTC time are listed
    got = take(schedule, ts(after), 3)
    # Then they are the matching UTC wall times, strictly after that time
    assert got == [ts(e) for e in expected]


@pytest.mark.parametrize(
    ("tz", "cron", "after", "expected"),
    [
        # Paris spring-forward 2024-03-31: 02:00 CET -> 03:00 CEST; 02:30 does not exist that day.
        (
            "Europe/Paris",
            "30 2 * * *",
            "2024-03-30T00:00",
            ["2024-03-30T02:30:00+01:00", "2024-03-31T03:30:00+02:00", "2024-04-01T02:30:00+02:00"],
        ),
        # Paris fall-back 2024-10-27: 02:00-03:00 happens twice; 02:30 runs at its first occurrence only.
        (
            "Europe/Paris",
            "30 2 * * *",
            "2024-10-26T00:00",
            ["2024-10-26T02:30:00+02:00", "2024-10-27T02:30:00+02:00", "2024-10-28T02:30:00+01:00"],
        ),
        # New York spring-forward 2024-03-10: 02:00 EST -> 03:00 EDT.
        (
            "America/New_York",
            "30 2 * * *",
            "2024-03-09T00:00",
            ["2024-03-09T02:30:00-05:00", "2024-03-10T03:30:00-04:00", "2024-03-11T02:30:00-04:00"],
        ),
        # New York fall-back 2024-11-03: 01:00-02:00 happens twice.
        (
            "America/New_York",
            "30 1 * * *",
            "2024-11-02T00:00",
            ["2024-11-02T01:30:00-04:00", "2024-11-03T01:30:00-04:00", "2024-11-04T01:30:00-05:00"],
        ),
        # A time outside the transition keeps its wall time while the UTC offset changes.
        (
            "Europe/Paris",
            "0 9 * * *",
            "2024-03-30T10:00",
            ["2024-03-31T09:00:00+02:00", "2024-04-01T09:00:00+02:00", "2024-04-02T09:00:00+02:00"],
        ),
        # Three wall slots inside the gap each run once, right after the gap, in order.
        (
            "Europe/Paris",
            "*/20 2 * * *",
            "2024-03-31T00:00",
            ["2024-03-31T03:00:00+02:00", "2024-03-31T03:20:00+02:00", "2024-03-31T03:40:00+02:00"],
        ),
        # The same three in the repeated hour run once each, at their first occurrence.
        (
            "Europe/Paris",
            "*/20 2 * * *",
            "2024-10-27T00:00",
            ["2024-10-27T02:00:00+02:00", "2024-10-27T02:20:00+02:00", "2024-10-27T02:40:00+02:00"],
        ),
        # Hourly across the gap: 02:00 (missing) runs once after the gap, together with 03:00.
        (
            "Europe/Paris",
            "0 * * * *",
            "2024-03-31T00:30",
            ["2024-03-31T01:00:00+01:00", "2024-03-31T03:00:00+02:00", "2024-03-31T04:00:00+02:00"],
        ),
        # Hourly across the repeated hour: 02:00 runs once, then 03:00 (one wall-clock hour later).
        (
            "America/New_York",
            "0 * * * *",
            "2024-11-03T00:30",
            ["2024-11-03T01:00:00-04:00", "2024-11-03T02:00:00-05:00", "2024-11-03T03:00:00-05:00"],
        ),
    ],
)
def test_cron_slots_in_a_zone_across_dst(tz: str, cron: str, after: str, expected: list[str]) -> None:
    # Given a cron schedule in a named zone
    schedule = Schedule("s", "t", cron=cron, tz=tz)
    # When its slots after a local wall time are listed
    got = take(schedule, ts(after, tz), 3)
    # Then they are the expected local times (offsets included: the instants are right)
    assert [local(s, tz) for s in got] == expected


def _instants_of(wall: datetime, zone: ZoneInfo) -> list[float]:
    """The instants at which the naive local time ``wall`` is shown (0 in a gap, 2 in a repeat)."""
    out = set()
    for fold in (0, 1):
        t = wall.replace(tzinfo=zone, fold=fold).timestamp()
        if datetime.fromtimestamp(t, zone).replace(tzinfo=None) == wall:
            out.add(t)
    return sorted(out)


DST_DAYS = [
    ("Europe/Paris", "2024-03-31"),  # spring forward, gap 02:00-03:00
    ("Europe/Paris", "2024-10-27"),  # fall back, 02:00-03:00 twice
    ("America/New_York", "2024-03-10"),  # spring forward, gap 02:00-03:00
    ("America/New_York", "2024-11-03"),  # fall back, 01:00-02:00 twice
    ("Europe/Paris", "2024-06-15"),  # an ordinary day, as a control
]
DST_CRONS = ["*/15 * * * *", "0 * * * *", "30 2 * * *", "0,30 1-3 * * *", "45 1 * * *", "*/7 2 * * *"]


@pytest.mark.parametrize(("tz", "day"), DST_DAYS)
@pytest.mark.parametrize("cron", DST_CRONS)
def test_each_wall_clock_slot_runs_once_on_dst_days(tz: str, day: str, cron: str) -> None:
    # Given a local-time cron schedule, and every wall-clock minute of a (DST) day that matches it,
    # found with croniter.match on naive wall times (not with the iterator under test)
    zone = ZoneInfo(tz)
    schedule = Schedule("s", "t", cron=cron, tz=tz)
    midnight = datetime.fromisoformat(day)
    walls = [
        midnight + timedelta(minutes=m) for m in range(24 * 60) if croniter.match(cron, midnight + timedelta(minutes=m))
    ]
    day_start = midnight.replace(tzinfo=zone).timestamp()
    day_end = (midnight + timedelta(days=1)).replace(tzinfo=zone).timestamp()

    # When Schedule.slots() is iterated over the day
    got = slots_between(schedule, day_start - 1, day_end - 1)

    # Then slots are strictly increasing
    assert got == sorted(set(got))
    shown = Counter(datetime.fromtimestamp(s, zone).replace(tzinfo=None) for s in got)
    # ... no wall-clock time is shown by two runs (a repeated hour runs once)
    assert not [w for w, n in shown.items() if n > 1], [local(s, tz) for s in got]
    gap_images = set()
    for wall in walls:
        instants = _instants_of(wall, zone)
        if instants:
            # ... every existing matching wall time runs exactly once (at one of its instants)
            hits = [s for s in got if s in instants]
            assert len(hits) == 1, f"{wall} ({tz}) ran {len(hits)} times: {[local(s, tz) for s in got]}"
        else:
            # ... a wall time in the gap runs once, just after the gap (same offset as before it)
            image = wall.replace(tzinfo=zone).timestamp()
            assert datetime.fromtimestamp(image, zone).replace(tzinfo=None) > wall
            assert got.count(image) == 1, f"gap slot {wall} ({tz}) did not run after the gap"
            gap_images.add(image)
    # ... and nothing else runs
    stray = [s for s in got if s not in gap_images and not croniter.match(cron, datetime.fromtimestamp(s, zone))]
    assert not stray, [local(s, tz) for s in stray]


@pytest.mark.parametrize(("tz", "first_day"), [("Europe/Paris", "2024-03-28"), ("America/New_York", "2024-10-31")])
def test_a_daily_local_job_runs_once_every_calendar_day(tz: str, first_day: str) -> None:
    # Given daily jobs at 01:30 and 02:30 local time (both hit a gap or a repeat in one of these weeks)
    zone = ZoneInfo(tz)
    start = datetime.fromisoformat(first_day).replace(tzinfo=zone).timestamp()
    end = start + 8 * 86400
    for cron in ("30 1 * * *", "30 2 * * *"):
        schedule = Schedule("s", "t", cron=cron, tz=tz)
        # When the slots of eight days around a DST change are listed
        got = slots_between(schedule, start, end)
        # Then each local calendar day gets exactly one run
        days = Counter(datetime.fromtimestamp(s, zone).date() for s in got)
        assert sorted(days.values()) == [1] * 8, (cron, [local(s, tz) for s in got])


# -- catch-up --------------------------------------------------------------------------------------

MINUTELY = Schedule("m", "t", every=60.0)


@pytest.mark.parametrize(
    ("catch_up", "now", "expected"),
    [
        ("coalesce", T0 + 30, []),
        ("coalesce", T0 + 60, [T0 + 60]),
        ("coalesce", T0 + 600.5, [T0 + 600]),  # ten missed slots: one run, the latest
        ("all", T0 + 30, []),
        ("all", T0 + 600.5, [T0 + 60 * k for k in range(1, 11)]),  # each missed slot, oldest first
        ("none", T0 + 600 + ON_TIME_GRACE / 2, [T0 + 600]),  # on time (within the grace): runs
        ("none", T0 + 600 + ON_TIME_GRACE * 2, []),  # late: skipped
        ("none", T0 + 3600 + 10, []),
    ],
)
def test_due_slots_per_catch_up_mode(catch_up: str, now: float, expected: list[float]) -> None:
    # Given a minutely schedule whose last fired slot is T0
    schedule = Schedule("m", "t", every=60.0, catch_up=catch_up)
    # When due slots are computed at `now`
    got = due_slots(schedule, T0, now)
    # Then the catch-up mode decides which of the missed slots fire
    assert got == expected


def test_due_slots_all_is_capped_per_tick() -> None:
    # Given a one-second schedule that missed more slots than one tick fires
    schedule = Schedule("s", "t", every=1.0, catch_up="all")
    # When due slots are computed twice, the second time from the last one fired
    first = due_slots(schedule, T0, T0 + 2500)
    second = due_slots(schedule, first[-1], T0 + 2500)
    # Then each tick fires at most MAX_CATCH_UP, oldest first, and the next tick carries on
    assert len(first) == MAX_CATCH_UP
    assert first[0] == T0 + 1 and first[-1] == T0 + MAX_CATCH_UP
    assert second[0] == T0 + MAX_CATCH_UP + 1


def test_cron_coalesce_after_days_asleep() -> None:
    # Given a five-minute cron in a zone, last fired three days ago
    schedule = Schedule("c", "t", cron="*/5 * * * *", tz="Europe/Paris")
    last = ts("2024-03-29T12:00", "Europe/Paris")
    now = ts("2024-04-01T12:07", "Europe/Paris")  # across the spring-forward night
    # When due slots are computed with each catch-up mode
    coalesced = due_slots(schedule, last, now)
    every_one = due_slots(Schedule("c", "t", cron="*/5 * * * *", tz="Europe/Paris", catch_up="all"), last, now)
    # Then coalesce fires only the latest slot, and "all" fires every slot of the 71 hours (DST lost one)
    assert [local(s, "Europe/Paris") for s in coalesced] == ["2024-04-01T12:05:00+02:00"]
    assert len(every_one) == (3 * 24 - 1) * 12 + 1
    assert every_one == sorted(set(every_one))


# -- configuration errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({"cron": "* * *"}, "invalid cron expression '\\* \\* \\*'"),
        ({"cron": "61 * * * *"}, "invalid cron expression"),
        ({"cron": "* * * * * * * *"}, "invalid cron expression"),
        ({"cron": "*/5 * * * * *"}, "invalid cron expression '\\*/5 \\* \\* \\* \\* \\*'; expected five fields"),
        ({"cron": "0 */5 * * * *"}, "expected five fields 'minute hour day month weekday'"),
        ({"cron": "*/5 * * * *", "tz": "Mars/Olympus_Mons"}, "unknown time zone 'Mars/Olympus_Mons'"),
        ({"every": 60, "tz": "Not/AZone"}, "unknown time zone"),
        ({"cron": "*/5 * * * *", "every": 60}, "exactly one of cron"),
        ({}, "exactly one of cron"),
        ({"every": timedelta(0)}, "every must be a positive duration"),
        ({"every": -5}, "every must be a number of seconds"),
        ({"every": 60, "catch_up": "sometimes"}, "catch_up must be one of"),
    ],
)
def test_invalid_schedule_fails_at_decoration_with_the_reason(
    make_memory_app: MakeApp, options: dict[str, Any], reason: str
) -> None:
    # Given an app
    app = make_memory_app()
    # When a periodic task is declared with a bad schedule
    # Then the decorator raises ConfigurationError saying what is wrong, and no schedule exists
    with pytest.raises(ConfigurationError, match=reason):
        app.periodic(**options)(tasks.noop)
    assert app.schedules == {}


def test_a_failed_periodic_declaration_can_be_corrected(make_memory_app: MakeApp) -> None:
    # Given an app where a periodic declaration failed on a typo
    app = make_memory_app()
    with pytest.raises(ConfigurationError):
        app.periodic(cron="*/5 * * *")(tasks.noop)
    # When the declaration is corrected and made again
    task = app.periodic(cron="*/5 * * * *")(tasks.noop)
    # Then it succeeds
    assert task.name in app.schedules


def test_two_schedules_with_one_name_are_refused(make_memory_app: MakeApp) -> None:
    # Given a periodic task
    app = make_memory_app()
    task = app.periodic(every=60)(tasks.noop)
    # When a second schedule is added to the same task without a name of its own
    # Then it is refused, and with name= it is accepted
    with pytest.raises(ConfigurationError, match="two schedules are named"):
        app.periodic(cron="0 * * * *")(task)
    app.periodic(cron="0 * * * *", name="hourly")(task)
    assert sorted(app.schedules) == sorted([task.name, "hourly"])


@pytest.mark.parametrize(
    "call",
    [
        lambda t: t.repeat(every=60, times=2, start=datetime(2030, 1, 1, 9, 0)),
        lambda t: t.repeat(every=60, until=datetime(2030, 1, 1, 9, 0)),
        lambda t: t.apply_async(eta=datetime(2030, 1, 1, 9, 0)),
    ],
    ids=["repeat-start", "repeat-until", "eta"],
)
def test_naive_datetimes_are_refused(make_memory_app: MakeApp, call: Callable[[Any], Any]) -> None:
    # Given a task
    app = make_memory_app()
    task = app.task(tasks.noop)
    # When a naive datetime is passed where a time is expected
    # Then ConfigurationError says it is naive, and nothing is stored
    with pytest.raises(ConfigurationError, match="naive datetime"):
        call(task)
    assert app.stats()["states"] == {}


# -- many schedulers, one store --------------------------------------------------------------------


def _register_shared_schedules(app: LiteQ) -> dict[str, Schedule]:
    """The schedules every scheduler of the five-schedulers test declares, by task name."""
    specs: list[tuple[str, dict[str, Any]]] = [
        ("minutely", {"every": timedelta(minutes=1)}),
        ("every-90-all", {"every": 90, "catch_up": "all"}),
        ("five-minutes", {"cron": "*/5 * * * *"}),
        ("paris-17", {"cron": "17 * * * *", "tz": "Europe/Paris"}),
        ("new-york-quarter", {"cron": "*/15 * * * *", "tz": "America/New_York", "catch_up": "none"}),
    ]
    for task_name, options in specs:
        app.periodic(**options)(app.task(name=task_name)(control_tasks.noop))
    return {s.task_name: s for s in app.schedules.values()}


@pytest.mark.parametrize("kind", ["sqlite", "memory"])
def test_five_schedulers_over_two_simulated_hours_fire_each_slot_once(
    make_app: MakeApp, tmp_path: Path, kind: str
) -> None:
    # Given five schedulers on one store, each declaring the same schedules: on SQLite five LiteQ
    # objects on one directory, in memory five Scheduler objects sharing one app
    apps = [make_app() for _ in range(5)] if kind == "sqlite" else [make_app("memory://")] * 5
    for app in {id(a): a for a in apps}.values():
        schedules = _register_shared_schedules(app)
    schedulers = [Scheduler(app) for app in apps]
    rng = random.Random(4)
    start = ts("2024-03-31T00:00:03")  # the night Paris springs forward, in UTC
    assert ON_TIME_GRACE >= 5.0

    # When they tick every 4 simulated seconds for two hours, in a random order each round, each
    # with its own clock skew of up to a second (so a catch_up="none" slot is never over its grace)
    step, skew = 4.0, 1.0
    rounds = int(2 * 3600 / step) + 1
    fired = []
    registered_at = None
    for k in range(rounds):
        order = list(range(5))
        rng.shuffle(order)
        for i in order:
            now = start + step * k + rng.uniform(0, skew)
            registered_at = now if registered_at is None else registered_at
            fired += [r.id for r in schedulers[i].tick(now=now)]
    end = start + step * (rounds - 1)  # every scheduler ticked at or after this time

    # Then every slot owed by each schedule was enqueued exactly once
    assert registered_at is not None
    assert len(fired) == len(set(fired))
    owed_total = 0
    for task_name, schedule in schedules.items():
        owed = slots_between(schedule, registered_at, end)
        if schedule.catch_up == "none":
            assert owed, task_name
        owed_total += len(owed)
        assert task_count(apps[0], task_name) in (len(owed), len(owed) + 1), task_name  # +1: a slot in (end, now]
        state = apps[0].storage.schedule_states([schedule.name])[schedule.name]
        assert state.last_slot is not None and state.last_slot >= owed[-1]
        if kind == "sqlite":
            rows = [(slot, tid) for name, slot, tid in slot_rows(tmp_path / "store") if name == schedule.name]
            got = [slot for slot, _ in rows]
            assert got[: len(owed)] == owed, task_name
            assert len(got) == len(set(got)) == task_count(apps[0], task_name)
            ids = {r.id for r in apps[0].storage.list(name=task_name, limit=10_000)}
            assert {tid for _, tid in rows} == ids
    assert owed_total <= len(fired) <= owed_total + len(schedules)
    # ... 120 minutes, 80 ninety-second slots, 24 five-minute slots, 2 at :17, 8 quarters
    assert len(slots_between(schedules["minutely"], registered_at, end)) == 120


def test_schedulers_sigkilled_mid_tick_lose_and_duplicate_no_slot(tmp_path: Path, make_app: MakeApp) -> None:
    # Given a store whose schedules are registered at a known simulated time T0
    store = tmp_path / "store"
    app = control_tasks.ticker_app(str(store))
    app.storage.register_schedules(list(app.schedules), now=control_tasks.TICKER_T0)
    rng = random.Random(7)
    kills = 0
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(n: int, mode: str = "loop") -> tuple[subprocess.Popen[bytes], Path]:
        ready = tmp_path / f"ready-{n}"
        with open(tmp_path / f"ticker-{n}.err", "wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tests.control_tasks", "ticker", str(store), str(ready), mode],
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        procs.append(proc)
        return proc, ready

    try:
        # When two scheduler processes tick over a simulated clock at once, and are SIGKILLed at
        # random points (mostly inside tick: computing slots or committing them), 12 times
        running = [spawn(n) for n in range(2)]
        n = 2
        while kills < 12:
            victim = rng.randrange(2)
            proc, ready = running[victim]
            wait_for(lambda: ready.exists() or proc.poll() is not None, 30, "a ticker to start ticking")  # noqa: B023
            assert proc.poll() is None, (tmp_path / f"ticker-{procs.index(proc)}.err").read_text()
            time.sleep(rng.uniform(0.0, 0.05))  # a random kill point, not a wait for state
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            kills += 1
            running[victim] = spawn(n)
            n += 1
        for proc, _ in running:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        # ... and then four tickers in turn that SIGKILL themselves right after computing the slots
        # of a tick, before the transaction that commits them
        for k in range(4):
            proc, _ = spawn(n + k, "suicide")
            assert proc.wait(timeout=30) == -signal.SIGKILL, (tmp_path / f"ticker-{n + k}.err").read_text()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)

    # ... and then one fresh scheduler ticks once, well after the last slot any of them reached
    newest = max(s.last_slot or 0.0 for s in app.storage.schedule_states().values())
    assert newest > control_tasks.TICKER_T0 + 3600, "the tickers barely ran; the test proved nothing"
    final = newest + 1000.0
    Scheduler(app).tick(now=final)

    # Then with catch_up="all" every slot in (T0, final] fired exactly once, each with its own task
    rows = slot_rows(store)
    assert len(rows) == len({(s, slot) for s, slot, _ in rows})
    for task_name, every, catch_up in control_tasks.TICKER_SCHEDULES:
        schedule = app.schedules[task_name]
        got = [slot for name, slot, _ in rows if name == task_name]
        ids = [tid for name, _, tid in rows if name == task_name]
        stored = {r.id for r in app.storage.list(name=task_name, limit=1_000_000)}
        # ... no task without its slot row, no slot row without its task (commit is all or nothing)
        assert set(ids) == stored and len(ids) == len(stored), task_name
        assert all(slot % every == 0 for slot in got), task_name
        if catch_up == "all":
            assert got == slots_between(schedule, control_tasks.TICKER_T0, final), task_name
        else:
            assert got == sorted(set(got)) and got[-1] == schedule.latest_at_or_before(final, 0.0), task_name


def test_missed_slots_coalesce_after_a_long_gap(make_app: MakeApp) -> None:
    # Given a store whose schedules were last driven at T0 (then no pool ran for five hours)
    first = make_app()
    for name, catch_up in (("coalesced", "coalesce"), ("each", "all"), ("on-time-only", "none")):
        first.periodic(every=60, catch_up=catch_up)(first.task(name=name)(control_tasks.noop))
    Scheduler(first).tick(now=T0)
    first.close()

    # When a scheduler restarts (a new LiteQ object on the same store) 30 seconds after a slot
    second = make_app()
    for name, catch_up in (("coalesced", "coalesce"), ("each", "all"), ("on-time-only", "none")):
        second.periodic(every=60, catch_up=catch_up)(second.task(name=name)(control_tasks.noop))
    scheduler = Scheduler(second)
    fired = scheduler.tick(now=T0 + 5 * 3600 + 30)
    again = scheduler.tick(now=T0 + 5 * 3600 + 31)

    # Then the missed slots run once in all for coalesce, once each for "all", not at all for "none"
    assert task_count(second, "coalesced") == 1
    assert task_count(second, "each") == 300
    assert task_count(second, "on-time-only") == 0
    assert len(fired) == 301 and again == []
    state = second.storage.schedule_states(["coalesced"])["coalesced"]
    assert state.last_slot == T0 + 5 * 3600


@pytest.mark.parametrize("kind", ["sqlite", "memory"])
def test_a_pool_whose_clock_ran_ahead_does_not_silence_the_other_schedulers(make_app: MakeApp, kind: str) -> None:
    # Given two schedulers on one store with a one-minute schedule, the first on time at T0
    apps = [make_app(), make_app()] if kind == "sqlite" else [make_app("memory://")] * 2
    for app in {id(a): a for a in apps}.values():
        app.periodic(every=60, name="minutely")(app.task(name="minutely")(control_tasks.noop))
    on_time, ahead = (Scheduler(app) for app in apps)
    on_time.tick(now=T0 + 1)
    # When the second ticks once with its clock ten minutes ahead (it fires the slot T0 + 600)
    ahead.tick(now=T0 + 600 + 1)
    # Then the scheduler on time still fires each slot of the next nine minutes as it comes
    fired = [r for minute in range(1, 10) for r in on_time.tick(now=T0 + 60 * minute + 1)]
    assert len(fired) == 9


def test_catch_up_all_beyond_the_per_tick_cap_fires_each_slot_once(make_app: MakeApp, tmp_path: Path) -> None:
    # Given a one-second schedule with catch_up="all", registered at T0
    app = make_app()
    app.periodic(every=1, catch_up="all")(app.task(name="each-second")(control_tasks.noop))
    scheduler = Scheduler(app)
    scheduler.tick(now=T0)
    # When the next ticks come 2,500 seconds later, one second apart
    counts = [len(scheduler.tick(now=T0 + 2500 + k)) for k in range(4)]
    # Then they fire at most MAX_CATCH_UP per tick and, together, each slot exactly once, oldest first
    assert max(counts) == MAX_CATCH_UP and sum(counts) == 2503
    got = [slot for _, slot, _ in slot_rows(tmp_path / "store")]
    assert got == [T0 + k for k in range(1, 2504)]


def test_catch_up_all_backlog_follows_on_the_next_tick(make_app: MakeApp) -> None:
    # Given an hourly schedule with catch_up="all" that missed 1,500 slots (two months asleep)
    app = make_app()
    app.periodic(every=3600, catch_up="all")(app.task(name="hourly")(control_tasks.noop))
    scheduler = Scheduler(app)
    scheduler.tick(now=T0)
    now = T0 + 1500 * 3600 + 60
    # When the scheduler ticks twice in a row, as the module doc says the rest follows on the next ticks
    first = scheduler.tick(now=now)
    due = scheduler.next_due()
    second = scheduler.tick(now=now + 1)
    # Then the next tick is due at once and fires the rest, without waiting an hour for the next slot
    assert due is not None and due <= now + 1
    assert (len(first), len(second)) == (MAX_CATCH_UP, 500)
    # And once caught up, the next tick waits for the next slot
    assert scheduler.next_due() == T0 + 1501 * 3600


def test_schedules_sharing_an_expression_walk_it_once_per_tick(
    make_memory_app: MakeApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given 40 schedules on one cron expression, 10 on another and 10 in another zone (a minute burst)
    app = make_memory_app()
    task = app.task(name="burst")(control_tasks.noop)
    for i in range(60):
        cron, tz = ("*/5 * * * *", "UTC") if i < 10 else ("* * * * *", "UTC" if i < 50 else "Asia/Kolkata")
        app.periodic(cron=cron, tz=tz, name=f"s{i}", args=())(task)
    scheduler = Scheduler(app)
    start = ts("2024-05-01T10:00:30")
    for minute in range(4):
        scheduler.tick(now=start + 30 + 60 * minute)  # on time at 10:01 ... 10:04
    walks: list[tuple[str | None, float]] = []
    next_after = Schedule.next_after

    def counting(self: Schedule, t: float) -> float:
        walks.append((self.cron, t))
        return next_after(self, t)

    monkeypatch.setattr(Schedule, "next_after", counting)
    # When the slot at 10:05 comes, due for all 60
    fired = scheduler.tick(now=ts("2024-05-01T10:05:00.002"))
    # Then each slot fires, each schedule's next slot is right, and each (expression, zone) is walked once
    assert len(fired) == 60
    slot = ts("2024-05-01T10:05")
    assert sorted(walks) == sorted([("*/5 * * * *", slot), ("* * * * *", slot), ("* * * * *", slot)])
    assert scheduler.next_due() == ts("2024-05-01T10:06")
    assert {name: at for name, at in scheduler._next.items() if name in ("s0", "s10", "s55")} == {
        "s0": ts("2024-05-01T10:10"),
        "s10": ts("2024-05-01T10:06"),
        "s55": ts("2024-05-01T10:06"),
    }


# -- pause and resume -------------------------------------------------------------------------------


def _beat_app(make_app: MakeApp) -> LiteQ:
    app = make_app()
    app.periodic(every=60, name="beat")(app.task(name="beat-task")(control_tasks.noop))
    return app


def test_pause_and_resume_through_the_api_survive_reopening(make_app: MakeApp) -> None:
    # Given a periodic schedule that fired once, then was paused
    first = _beat_app(make_app)
    now = time.time()
    Scheduler(first).tick(now=now)
    Scheduler(first).tick(now=now + 60)
    assert task_count(first, "beat-task") == 1
    first.pause_periodic("beat")
    first.close()

    # When the store is reopened by a new app (a restart) and its scheduler ticks for an hour
    second = _beat_app(make_app)
    info = second.periodic_info()
    fired = [r for t in range(120, 3600, 30) for r in Scheduler(second).tick(now=now + t)]
    # Then the schedule is still paused and nothing fired
    assert info[0]["name"] == "beat" and info[0]["paused"] is True
    assert fired == [] and task_count(second, "beat-task") == 1

    # When it is resumed and the store reopened again
    second.resume_periodic("beat")
    second.close()
    third = _beat_app(make_app)
    # Then it is not paused and fires again
    assert third.periodic_info()[0]["paused"] is False
    after = Scheduler(third).tick(now=time.time() + 3600)
    assert len(after) == 1 and task_count(third, "beat-task") == 2


def test_pausing_an_unknown_schedule_names_the_known_ones(make_memory_app: MakeApp) -> None:
    # Given an app with one schedule
    app = make_memory_app()
    app.periodic(every=60, name="beat")(app.task(name="beat-task")(control_tasks.noop))
    # When another name is paused
    # Then ConfigurationError names the schedules that exist
    with pytest.raises(ConfigurationError, match=r"no periodic schedule named 'nope'.*beat"):
        app.pause_periodic("nope")


def write_app_module(directory: Path, store: Path, every: float) -> str:
    """Write a module declaring schedule ``beat`` (every ``every`` s) on ``store``; return ``module:app``."""
    module = f"liteq_cli_app_{uuid.uuid4().hex[:8]}"
    (directory / f"{module}.py").write_text(
        textwrap.dedent(
            f"""
            from liteq import LiteQ
            from tests import control_tasks

            app = LiteQ({str(store)!r})
            app.periodic(every={every!r}, name="beat")(app.task(name="beat-task")(control_tasks.noop))
            """
        )
    )
    return f"{module}:app"


@pytest.fixture
def cli_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """``module:app`` for the CLI: a module in ``tmp_path`` declaring schedule ``beat`` on ``tmp_path/store``.

    The CLI closes the app after each command, so the module is forgotten after each call
    (:func:`run_cli`) and imported afresh, like a new ``liteq`` process would.
    """
    target = write_app_module(tmp_path, tmp_path / "store", 60.0)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield target
    sys.modules.pop(target.partition(":")[0], None)


def run_cli(target: str, *args: str) -> int:
    """Run ``liteq periodic TARGET ARGS...`` in this process; return the exit code."""
    try:
        return cli_main(["periodic", target, *args])
    finally:
        sys.modules.pop(target.partition(":")[0], None)


def test_pause_and_resume_through_the_cli_survive_reopening(
    make_app: MakeApp, cli_app: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a periodic schedule declared by an app module
    # When `liteq periodic module:app --pause beat` runs
    code = run_cli(cli_app, "--pause", "beat")
    # Then it exits 0, says so, and a new app on the store (a restarted pool) sees it paused
    assert code == 0
    assert "paused beat" in capsys.readouterr().out
    reopened = _beat_app(make_app)
    assert reopened.periodic_info()[0]["paused"] is True
    assert Scheduler(reopened).tick(now=time.time() + 600) == []
    reopened.close()

    # When `--json` lists the schedules
    assert run_cli(cli_app, "--json") == 0
    listed = json.loads(capsys.readouterr().out)
    # Then the pause shows there too
    assert [(i["name"], i["paused"]) for i in listed] == [("beat", True)]

    # When `--resume beat` runs
    assert run_cli(cli_app, "--resume", "beat") == 0
    assert "resumed beat" in capsys.readouterr().out
    # Then a new app sees it running again, and it fires
    again = _beat_app(make_app)
    assert again.periodic_info()[0]["paused"] is False
    assert len(Scheduler(again).tick(now=time.time() + 600)) == 1


def test_cli_pause_of_an_unknown_schedule_fails_with_a_message(
    cli_app: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given an app module with schedule "beat"
    # When `liteq periodic --pause` names another one
    code = run_cli(cli_app, "--pause", "nope")
    # Then it exits 1 with a one-line message naming it
    assert code == 1
    assert "no periodic schedule named 'nope'" in capsys.readouterr().err


def test_cli_lists_last_and_next_fire_times(
    make_app: MakeApp, cli_app: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a schedule that fired at a known time
    app = _beat_app(make_app)
    fired_at = (time.time() // 60) * 60 - 120 + 1  # one second after a slot, two minutes ago
    scheduler = Scheduler(app)
    scheduler.tick(now=fired_at - 61)
    (result,) = scheduler.tick(now=fired_at)

    # When `liteq periodic module:app` lists the schedules, as a table and as JSON
    assert run_cli(cli_app) == 0
    table = capsys.readouterr().out
    assert run_cli(cli_app, "--json") == 0
    (info,) = json.loads(capsys.readouterr().out)
    now = time.time()

    # Then it shows the last fire time and the next slot
    assert info["name"] == "beat" and info["every"] == 60.0 and info["paused"] is False
    assert info["last_slot"] == fired_at - 1
    assert info["last_fired_at"] == pytest.approx(fired_at)
    assert info["last_task_id"] == result.id
    assert now - 1 < info["next_slot"] <= now + 60 and info["next_slot"] % 60 == 0
    assert "beat" in table and "every 60.0s" in table
    fmt = "%Y-%m-%d %H:%M:%S UTC"
    assert datetime.fromtimestamp(fired_at, UTC).strftime(fmt) in table
    assert datetime.fromtimestamp(info["next_slot"], UTC).strftime(fmt) in table


def test_liteq_scheduler_command_fires_alone_and_stops_on_sigterm(tmp_path: Path, make_app: MakeApp) -> None:
    # Given an app module with a one-second schedule and no pool running
    target = write_app_module(tmp_path, tmp_path / "store", 1.0)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # When `liteq scheduler module:app` runs
    with open(tmp_path / "scheduler.err", "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "liteq", "scheduler", target], cwd=tmp_path, env=env, stderr=err)
    try:
        # Then it fires slots (enqueues tasks, which wait for a worker)
        wait_for(lambda: len(slot_rows_if_any(tmp_path / "store")) >= 2, 20, "`liteq scheduler` to fire two slots")
        # ... and on SIGTERM it exits cleanly
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0, (tmp_path / "scheduler.err").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    app = make_app()
    assert task_count(app, "beat-task") == len(slot_rows(tmp_path / "store"))
    assert {r.state for r in app.storage.list(name="beat-task")} == {"pending"}


# -- Task.repeat -------------------------------------------------------------------------------------


def test_repeat_times_queues_n_runs_every_period(make_memory_app: MakeApp) -> None:
    # Given a task and a start time in the future
    app = make_memory_app()
    task = app.task(tasks.add)
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(days=1)
    # When it is repeated 3 times, every hour
    results = task.repeat(1, 2, every=timedelta(hours=1), times=3, start=start)
    # Then three scheduled runs are stored an hour apart
    rows = app.storage.get([r.id for r in results])
    assert [r.run_at for r in rows if r] == [start.timestamp() + 3600 * i for i in range(3)]
    assert {r.state for r in rows if r} == {"scheduled"}
    # ... and each runs at its time, not before
    assert app.run_until_empty(now=start.timestamp() + 1) == 1
    assert app.run_until_empty(now=start.timestamp() + 7201) == 2
    assert [r.get(timeout=5) for r in results] == [3, 3, 3]


def test_repeat_from_now_runs_the_first_at_once(make_memory_app: MakeApp) -> None:
    # Given a task
    app = make_memory_app()
    task = app.task(tasks.add)
    # When it is repeated 3 times every minute from now
    results = task.repeat(2, 3, every=60, times=3)
    # Then the first is due now and the others wait
    assert [r.state for r in results] == ["pending", "scheduled", "scheduled"]
    assert app.run_until_empty() == 1
    assert results[0].get(timeout=5) == 5


@pytest.mark.parametrize(
    ("until_hours", "expected"),
    [(2.5, 3), (2.0, 3), (0.0, 1), (0.99, 1)],
)
def test_repeat_until_stops_at_the_deadline(make_memory_app: MakeApp, until_hours: float, expected: int) -> None:
    # Given a task and a start time
    app = make_memory_app()
    task = app.task(tasks.noop)
    start = datetime(2031, 5, 1, 8, 0, tzinfo=UTC)
    # When it is repeated every hour until a deadline
    results = task.repeat(every=3600, until=start + timedelta(hours=until_hours), start=start)
    # Then runs are queued up to and including the deadline, none after
    rows = app.storage.get([r.id for r in results])
    assert [r.run_at for r in rows if r] == [start.timestamp() + 3600 * i for i in range(expected)]


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({"every": 60, "times": 0}, "times must be an integer >= 1"),
        ({"every": 60}, "needs times=N or until"),
        ({"every": 0, "times": 2}, "every must be a positive duration"),
        ({"every": 60, "times": True}, "times must be an integer"),
    ],
)
def test_repeat_refuses_bad_options(make_memory_app: MakeApp, options: dict[str, Any], reason: str) -> None:
    # Given a task
    app = make_memory_app()
    task = app.task(tasks.noop)
    # When repeat() is called with bad options
    # Then it raises with the reason and stores nothing
    with pytest.raises(ConfigurationError, match=reason):
        task.repeat(**options)
    assert app.stats()["states"] == {}


# -- real pools -------------------------------------------------------------------------------------


def test_a_pool_fires_a_one_second_schedule(make_app: MakeApp, tmp_path: Path) -> None:
    # Given a periodic task every second
    app = make_app()
    app.periodic(every=timedelta(seconds=1))(app.task(name="pulse")(control_tasks.noop))
    # When a pool runs
    with app.workers(concurrency=1):
        # Then the schedule fires and its runs succeed within a deadline
        wait_for(lambda: len(app.storage.list(name="pulse", states=["succeeded"])) >= 2, 15, "two pulses to run")
    slots = [slot for _, slot, _ in slot_rows(tmp_path / "store")]
    assert slots == sorted(set(slots)) and all(s == int(s) for s in slots)


def test_two_pools_on_one_store_do_not_double_fire(make_app: MakeApp, tmp_path: Path) -> None:
    # Given two apps on one store, both declaring the same one-second schedule
    apps = [make_app() for _ in range(2)]
    for app in apps:
        app.periodic(every=timedelta(seconds=1))(app.task(name="pulse")(control_tasks.noop))
    # When each runs a pool (both drive the scheduler) until four slots fired
    began = time.time()
    with apps[0].workers(concurrency=1), apps[1].workers(concurrency=1):
        wait_for(lambda: len(slot_rows(tmp_path / "store")) >= 4, 20, "four one-second slots to fire")
        ended = time.time()
    # Then each slot produced one task and no more slots fired than seconds passed
    rows = slot_rows(tmp_path / "store")
    slots = [slot for _, slot, _ in rows]
    assert len(slots) == len(set(slots)) == task_count(apps[0], "pulse")
    assert len(slots) <= int(time.time()) - int(began) + 1
    assert all(s == int(s) and began - 1 < s <= time.time() for s in slots)
    assert ended - began < 20
