"""The soak's final checks: the oracle (what producers were told, what runs were logged, which
faults were injected) against the store's final rows. Each check returns readable problems; the
test fails with all of them and the seed."""

from __future__ import annotations

import itertools
import math
import sqlite3
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from liteq.message import decode_call
from liteq.serializer import loads
from liteq.storage.contract import Storage
from liteq.storage.records import TaskRow
from liteq.storage.states import FINISHED_STATES, SUCCEEDED
from tests.soak.actors import CHAIN_STEPS, CHORD_MEMBERS
from tests.soak.config import SCHEDULES
from tests.soak.oracle import Fault, Run, Told, explaining

#: Reasons a task may end failed when a fault hit one of its runs.
FAULT_REASONS = ("timeout", "worker lost")
#: The reason of a canvas step failed because a task it waits for failed (followed by that id).
CASCADE = "dependency failed:"


@dataclass
class Stored:
    """A stored task with what its payload and result say."""

    row: TaskRow
    key: str
    value: Any = None
    run: str | None = None  # "attempt:pid" of the run the store recorded


def load_rows(storage: Storage) -> dict[str, Stored]:
    """Every task of the store, with its key (from the payload) and its recorded result."""
    ids = [r.id for r in storage.list(limit=10**9)]
    out: dict[str, Stored] = {}
    for at in range(0, len(ids), 500):
        for row in storage.get(ids[at : at + 500]):
            if row is None:
                continue
            key = "?"
            if row.payload is not None:
                key = str(decode_call(row.payload, allow_pickle=False).kwargs.get("key", "?"))
            s = Stored(row, key)
            if row.state == SUCCEEDED and row.result is not None:
                result = loads(row.result, allow_pickle=False)
                if isinstance(result, list) and len(result) == 2:
                    s.value, s.run = result
            out[row.id] = s
    return out


def load_slots(db_path: str) -> list[tuple[str, float, str]]:
    """``(schedule, slot, task id)`` of every periodic slot the store remembers (read-only)."""
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        return [tuple(r) for r in conn.execute("SELECT schedule, slot, task_id FROM periodic_slots ORDER BY slot")]
    finally:
        conn.close()


def _explained_failure(
    s: Stored, stored: dict[str, Stored], runs: dict[str, list[Run]], faults: list[Fault], depth: int = 0
) -> bool:
    """A task that ended failed because a fault hit one of its runs (a paused child killed as timed
    out, a run lost too often), or because such a task was its dependency (canvas cascade)."""
    if s.row.state != "failed" or depth > 20:
        return False
    reason = s.row.reason or ""
    if reason.startswith(CASCADE):
        dep = stored.get(reason[len(CASCADE) :].strip())
        return dep is not None and _explained_failure(dep, stored, runs, faults, depth + 1)
    if reason not in FAULT_REASONS:
        return False
    mine = runs.get(s.row.id, [])
    return not mine or any(explaining(faults, r, r.end or math.inf) for r in mine)


def check(
    told: dict[str, Told],
    runs: dict[str, list[Run]],
    faults: list[Fault],
    stored: dict[str, Stored],
    slots: list[tuple[str, float, str]],
    soak_span: tuple[float, float],
) -> tuple[list[str], dict[str, Any]]:
    """All the final checks; returns (problems, figures)."""
    problems: list[str] = []
    by_key: dict[str, list[Stored]] = defaultdict(list)
    for s in stored.values():
        by_key[s.key].append(s)

    # lost = 0: every acknowledged id is stored and finished, as succeeded (or failed by a fault)
    acked = {i for t in told.values() for call in t.ids for i in call}
    lost = []
    for i in sorted(acked):
        s = stored.get(i)
        if s is None:
            lost.append(f"{i}: acknowledged but not in the store")
        elif s.row.state not in FINISHED_STATES:
            lost.append(f"{i} ({s.key}): still {s.row.state} after the drain")
        elif s.row.state != SUCCEEDED and not _explained_failure(s, stored, runs, faults):
            lost.append(f"{i} ({s.key}): ended {s.row.state} ({s.row.reason}) with no fault on its runs")
    problems += [f"lost: {p}" for p in lost]

    # unexpected = 0: every stored task and every logged run belongs to a key a producer sent, or a schedule
    unexpected = [
        f"{s.row.id} {s.row.name} key {s.key}"
        for s in stored.values()
        if s.key not in SCHEDULES and (s.key not in told or not told[s.key].sent)
    ]
    unexpected += [
        f"run of {tid} ({rs[0].key}), a task not in the store" for tid, rs in runs.items() if tid not in stored
    ]
    problems += [f"unexpected: {u}" for u in unexpected]

    # one task per idempotency key (plain), one whole workflow per key (chains, chords)
    for key, t in told.items():
        calls = {tuple(call) for call in t.ids}
        rows = by_key.get(key, [])
        size = {"plain": 1, "chain": CHAIN_STEPS, "chord": CHORD_MEMBERS + 1}.get(t.shape, 1)
        if len(calls) > 1:
            problems.append(f"key {key}: producers were told different ids {sorted(calls)}")
        if len(rows) not in ((size,) if calls else (0, size)):
            problems.append(f"key {key} ({t.shape}): {len(rows)} stored tasks, expected {size}")
        if calls and {r.row.id for r in rows} != set(next(iter(calls))):
            problems.append(f"key {key}: stored ids {sorted(r.row.id for r in rows)} are not the told ones")
        if t.shape == "plain":
            keyed = [r for r in rows if r.row.idempotency_key == key]
            if len(keyed) != len(rows):
                problems.append(f"key {key}: a plain task stored without its idempotency key")

    # one recorded outcome per task: the recorded result names a run that ended ok, of the last claim
    for s in stored.values():
        if s.row.state != SUCCEEDED:
            continue
        if s.run is None:
            problems.append(f"{s.row.id} ({s.key}): succeeded without a run-stamped result")
            continue
        attempt, pid = (int(x) for x in s.run.split(":"))
        matching = [r for r in runs.get(s.row.id, []) if r.attempt == attempt and r.pid == pid]
        if not matching or matching[0].outcome != "ok":
            problems.append(f"{s.row.id} ({s.key}): recorded result of run {s.run}, which the oracle never saw end ok")
        if attempt != s.row.attempts:
            problems.append(
                f"{s.row.id} ({s.key}): recorded the outcome of attempt {attempt}, but the store counts "
                f"{s.row.attempts} claims (a stale run's outcome was accepted)"
            )

    # every duplicate run is explained by a fault on the store or on the process that ran the earlier one
    duplicates = explained = 0
    for tid, rs in runs.items():
        seen: set[tuple[int, str]] = set()
        for r in rs:
            if (r.attempt, r.token) in seen and not r.token.startswith("?"):
                problems.append(f"{tid} ({r.key}): claim attempt {r.attempt} token {r.token} started twice")
            seen.add((r.attempt, r.token))
        for before, after in itertools.pairwise(rs):
            if before.outcome == "raised:RuntimeError" and before.kind == "work" and before.attempt == 1:
                continue  # the planned failure of attempt 1, retried by policy
            duplicates += 1
            if explaining(faults, before, after.start, after):
                explained += 1
                continue
            problems.append(
                f"{tid} ({after.key}): ran again ({after.label()}) after {before.label()}, "
                "with no fault window on the store or on either process in between"
            )

    # every chord callback once, with the right value; every chain's last step with the right value
    chords = [k for k, t in told.items() if t.shape == "chord" and t.ids]
    for key in chords:
        callbacks = [s for s in by_key.get(key, []) if s.row.name.endswith(".total")]
        ok_runs = [r for s in callbacks for r in runs.get(s.row.id, []) if r.outcome == "ok"]
        want = sum(i * i for i in range(CHORD_MEMBERS))
        if len(callbacks) != 1:
            problems.append(f"chord {key}: {len(callbacks)} callback tasks")
        elif callbacks[0].row.state != SUCCEEDED:
            continue  # failed: reported above unless a fault explains it
        elif callbacks[0].value != want:
            problems.append(f"chord {key}: callback value {callbacks[0].value!r}, expected {want}")
        if not ok_runs:
            problems.append(f"chord {key}: the callback never ran to the end")

    # no periodic slot twice, none off the schedule's grid, every periodic task from a slot
    periodic = {s.row.id: s for s in stored.values() if s.key in SCHEDULES}
    slot_ids = {tid for _, _, tid in slots}
    seen_slots: set[tuple[str, float]] = set()
    for schedule, slot, tid in slots:
        every = SCHEDULES.get(schedule)
        if every is None:
            problems.append(f"slot of unknown schedule {schedule!r}")
            continue
        if (schedule, slot) in seen_slots:
            problems.append(f"periodic {schedule}: slot {slot} fired twice")
        seen_slots.add((schedule, slot))
        if abs(slot / every - round(slot / every)) > 1e-6:
            problems.append(f"periodic {schedule}: slot {slot:.3f} is not on its {every}s grid (a spurious slot)")
        if tid in periodic and periodic[tid].key != schedule:
            problems.append(f"periodic {schedule}: slot {slot} fired a task of {periodic[tid].key}")
    problems += [f"periodic task {tid} ({s.key}) has no slot row" for tid, s in periodic.items() if tid not in slot_ids]
    first, last = soak_span
    # A pool whose clock the nemesis stepped forward fires the slots of its clock, ahead of real
    # time (each still once, by its slot row): those are early, not extra, as long as the step
    # reaches them. The count against the span is of the slots it holds.
    ahead = max((f.clock_step for f in faults), default=0.0)
    for schedule, every in SCHEDULES.items():
        mine = [slot for name, slot, tid in slots if name == schedule and tid in periodic]
        early = [slot for slot in mine if slot > last]
        beyond = [slot for slot in early if slot > last + ahead]
        if beyond:
            problems.append(
                f"periodic {schedule}: {len(beyond)} slot(s) fired up to {max(beyond) - last:.0f}s ahead of real "
                f"time, beyond any forward step of a clock ({ahead:.0f}s)"
            )
        n = sum(1 for s in periodic.values() if s.key == schedule) - len(early)
        most = math.floor((last - first) / every) + 2
        if n > most:
            problems.append(f"periodic {schedule}: {n} tasks in {last - first:.0f}s, at most {most} slots")

    ended: dict[str, int] = defaultdict(int)
    for i in acked:
        if i in stored:
            ended[stored[i].row.state] += 1
    figures = {
        "acked_ids": len(acked),
        "acked_states": ",".join(f"{k}:{v}" for k, v in sorted(ended.items())),
        "keys": len(told),
        "stored": len(stored),
        "runs": sum(len(r) for r in runs.values()),
        "duplicates": duplicates,
        "explained": explained,
        "chords": len(chords),
        "periodic": len(periodic),
        "faults": len(faults),
    }
    return problems, figures
