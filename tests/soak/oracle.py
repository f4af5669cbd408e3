"""The soak's oracle: append-only logs kept outside the store, and the reading of them.

Every process writes its own files in the oracle directory, one line per event, each with a single
``O_APPEND`` write (a SIGKILL loses at most the line being written; a torn last line is ignored):

- ``runs-<pid>.log``, written by task bodies::

      start <task id> <attempt> <lease token> <pid> <time> <kind> <key>
      end <task id> <attempt> <lease token> <outcome> <pid> <time>

- ``told-<pid>.log``, written by producers: ``send <key> <time> <shape>`` before a call, and
  ``told <key> <time> <id> [<id> ...]`` with every id the call returned once it returned;
- ``faults.jsonl``, written by the nemesis: one window per line (``kind``, ``target``, ``start``,
  ``end``, ``pids`` of the processes it hit, or ``global``).
"""

from __future__ import annotations

import glob
import json
import os
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from liteq import TaskContext
from liteq.health import DEGRADED_RETRY_MAX
from tests.faultprocs import append_line
from tests.soak.config import LEASE


def _dir() -> str:
    return os.environ["LITEQ_SOAK_ORACLE"]


def lease_token(ctx: TaskContext) -> str:
    """The lease token this run holds: from the context where it carries one, else the task's row
    as the run starts (the claim that started this run wrote it; a later claim needs a pause
    longer than the lease first)."""
    token = getattr(ctx, "lease_token", None)
    if token:
        return str(token)
    try:
        assert ctx.app is not None
        row = ctx.app.storage.get([ctx.id])[0]
    except Exception as exc:  # a store fault must not change what the run does; log what we know
        return f"?{type(exc).__name__}"
    return (row.lease_token or "?") if row is not None else "?gone"


@dataclass
class Run:
    """One run of a task body, as logged (``end`` fields are None when no end was logged)."""

    task_id: str
    attempt: int
    token: str
    pid: int
    start: float
    kind: str
    key: str
    end: float | None = None
    outcome: str | None = None

    @classmethod
    def begin(cls, ctx: TaskContext, kind: str, key: str) -> Run:
        """Log the start of the running task's body; returns the run, whose :meth:`end` logs the end."""
        run = cls(ctx.id, ctx.attempt, lease_token(ctx), os.getpid(), time.time(), kind, key)
        append_line(
            os.path.join(_dir(), f"runs-{run.pid}.log"),
            f"start {run.task_id} {run.attempt} {run.token} {run.pid} {run.start:.6f} {kind} {key}",
        )
        return run

    def finish(self, outcome: str) -> None:
        """Log the end of this run with its outcome (``ok`` or ``raised:<type>``)."""
        self.end, self.outcome = time.time(), outcome
        append_line(
            os.path.join(_dir(), f"runs-{self.pid}.log"),
            f"end {self.task_id} {self.attempt} {self.token} {outcome} {self.pid} {self.end:.6f}",
        )

    def label(self) -> str:
        """How a failure message names this run."""
        done = f"ended {self.outcome} at {self.end:.3f}" if self.end is not None else "never ended"
        return f"attempt {self.attempt} pid {self.pid} token {self.token} started {self.start:.3f}, {done}"


@dataclass
class Told:
    """What the producers were told about one key: every call's returned ids, and whether a call was sent."""

    key: str
    shape: str = ""
    sent: int = 0
    ids: list[list[str]] = field(default_factory=list)


@dataclass
class Fault:
    """One fault window of the nemesis."""

    kind: str
    target: str
    start: float
    end: float
    pids: list[int]
    note: str = ""
    explains: bool = True
    """False for a fault liteq promises to hide (a clock step): a duplicate run in it is not explained."""
    clock_step: float = 0.0
    """Seconds a clock-step fault moved its pool's clock (forward is positive); 0 for other faults."""

    @property
    def is_global(self) -> bool:
        """A fault on the store itself (a lock, a full disk): any run may feel it."""
        return not self.pids

    def describe(self) -> str:
        """One line for failure messages."""
        hit = "the store" if self.is_global else f"pids {self.pids}"
        return f"{self.kind} {self.target} [{self.start:.3f}, {self.end:.3f}] on {hit}{' ' + self.note if self.note else ''}"


def _lines(pattern: str) -> list[list[str]]:
    out = []
    for path in sorted(glob.glob(pattern)):
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
        complete = text if text.endswith("\n") else text.rpartition("\n")[0]  # a torn last line is dropped
        out += [line.split() for line in complete.splitlines() if line.strip()]
    return out


def read_runs(directory: str) -> dict[str, list[Run]]:
    """Every logged run by task id, in start order."""
    runs: dict[tuple[str, int, int], Run] = {}
    ends: list[list[str]] = []
    for words in _lines(os.path.join(directory, "runs-*.log")):
        if words[0] == "start" and len(words) == 8:
            r = Run(words[1], int(words[2]), words[3], int(words[4]), float(words[5]), words[6], words[7])
            runs[(r.task_id, r.attempt, r.pid)] = r
        elif words[0] == "end" and len(words) == 7:
            ends.append(words)
    for words in ends:
        r = runs.get((words[1], int(words[2]), int(words[5])))
        if r is not None:
            r.outcome, r.end = words[4], float(words[6])
    by_task: dict[str, list[Run]] = defaultdict(list)
    for r in sorted(runs.values(), key=lambda r: r.start):
        by_task[r.task_id].append(r)
    return dict(by_task)


def read_told(directory: str) -> dict[str, Told]:
    """What the producers sent and were told, by key."""
    told: dict[str, Told] = {}
    for words in _lines(os.path.join(directory, "told-*.log")):
        if words[0] == "send" and len(words) == 4:
            t = told.setdefault(words[1], Told(words[1]))
            t.sent += 1
            t.shape = words[3]
        elif words[0] == "told" and len(words) >= 4:
            told.setdefault(words[1], Told(words[1])).ids.append(words[3:])
    return told


def write_fault(directory: str, fault: Fault) -> None:
    """Record one fault window."""
    append_line(os.path.join(directory, "faults.jsonl"), json.dumps(fault.__dict__))


def read_faults(directory: str) -> list[Fault]:
    """Every recorded fault window."""
    path = os.path.join(directory, "faults.jsonl")
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [Fault(**json.loads(line)) for line in f if line.strip()]


#: Seconds after a fault on a pool's processes during which its runs are still explained by it: a
#: resumed pool learns of leases lost in a pause at its next extension (every lease / 3), and a task
#: already queued in a child's pipe may start before that.
GRACE = LEASE / 3 + 1.0
#: Seconds after a fault on the store (a lost server, a lock, a full disk) during which runs are still
#: explained by it: a pool the fault made degraded cannot extend its leases, so one may run out, and
#: it learns so only at its first retry round once the store is back (at most the retry backoff's
#: cap later); a task queued in a child's pipe behind a running one may start before that.
STORE_GRACE = DEGRADED_RETRY_MAX


def explaining(faults: list[Fault], before: Run, until: float, after: Run | None = None) -> list[Fault]:
    """The fault windows that explain another run (``after``, starting at ``until``) of ``before``'s
    task: a window on the store overlapping that time, give or take :data:`STORE_GRACE` (a run that
    started just after the store came back, on a lease its pool could not extend); or one on
    ``before``'s process that overlaps it, give or take :data:`GRACE`; or one on ``after``'s process
    that it started in (or within :data:`GRACE` after: a stale claim the paused pool still held)."""

    def explains(f: Fault) -> bool:
        if not f.explains or f.start > until:
            return False
        if f.is_global:
            return f.end + STORE_GRACE >= before.start
        if before.pid in f.pids and f.end + GRACE >= before.start:
            return True
        return after is not None and after.pid in f.pids and after.start <= f.end + GRACE

    return [f for f in faults if explains(f)]


def summary(values: dict[str, Any]) -> str:
    """``k=v`` pairs for the test output."""
    return " ".join(f"{k}={v}" for k, v in values.items())
