"""The soak's cast of processes and the seeded nemesis that hurts them.

:class:`Cast` starts and restarts every process of the soak (pools, producers, the scheduler) with
:class:`tests.pool_support.Reaper`, so each is killed by its pid at teardown whatever happens.
:class:`Nemesis` draws its faults from ``random.Random(seed)``: what comes next, when, for how long
and which target (by index into the sorted list of live candidates), so a seed replays the same
plan. Each fault window is recorded (:func:`tests.soak.oracle.write_fault`) with the pids it hit.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from tests.pool_support import Reaper
from tests.soak.oracle import Fault, write_fault
from tests.test_store_faults import fill

logger = logging.getLogger("tests.soak")

#: Seconds after a supervisor's SIGKILL during which its orphans may still start a queued task
#: (children look for their supervisor every 0.5 s).
ORPHAN_GRACE = 1.5
#: At most this many faults at once.
MAX_CONCURRENT = 4
#: Mean seconds between two faults.
MEAN_GAP = 1.0
#: The pool whose wall clock the nemesis steps (the ``app.workers()`` host), and by how much.
CLOCKED_SLOT = "pool-c"
STEP = 120.0


@dataclass
class Proc:
    """One process of the soak."""

    role: str  # "pool", "producer", "scheduler" or "server"
    slot: str  # what it stands for across restarts: "pool-a", "producer-1"...
    name: str  # this incarnation: "pool-a.2"
    popen: subprocess.Popen[bytes]
    ps: psutil.Process
    killed: bool = False  # by the nemesis
    stopped: bool = False  # SIGSTOPped by the nemesis right now
    restart_at: float | None = None
    seen_exit: bool = False

    @property
    def pid(self) -> int:
        """The process id."""
        return self.popen.pid

    def alive(self) -> bool:
        """True while the process runs."""
        return self.popen.poll() is None

    def signal(self, sig: int) -> bool:
        """Send ``sig`` if this very process still runs (psutil checks the pid was not reused)."""
        try:
            self.ps.send_signal(sig)
        except psutil.Error:
            return False
        return True

    def family(self) -> list[int]:
        """This pid and every live descendant's (a pool's fork server, children, resource tracker)."""
        try:
            return [self.pid, *(p.pid for p in self.ps.children(recursive=True))]
        except psutil.Error:
            return [self.pid]

    def workers(self) -> list[psutil.Process]:
        """A pool's task-running children (not its fork server, zygote or resource tracker)."""
        out = []
        try:
            own = self.ps.cmdline()
            for p in self.ps.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    cmd = " ".join(p.cmdline())
                    if "resource_tracker" in cmd or (p.ppid() == self.pid and "forkserver" in cmd):
                        continue
                    if p.ppid() == self.pid and p.cmdline() == own and p.children():
                        continue  # the zygote: a fork of the supervisor whose children run the tasks
                    out.append(p)
        except psutil.Error:
            pass
        return sorted(out, key=lambda p: p.pid)


def silent(pools: list[Proc], beats: dict[int, float], since: float) -> list[Proc]:
    """The running pools among ``pools`` with no heartbeat (``beats``: pid -> last heartbeat) at or
    after ``since``: not registered yet (still starting), or not beating (still degraded, or stuck)."""
    return [p for p in pools if p.alive() and beats.get(p.pid, -math.inf) < since]


@dataclass
class Death:
    """A process that exited while it should have run (not a fault the nemesis injected)."""

    name: str
    role: str
    code: int | None
    at: float
    stderr_tail: str


@dataclass
class Cast:
    """Every process of the soak, by role; restarts what the nemesis killed."""

    reaper: Reaper
    env: dict[str, str]
    commands: dict[str, Callable[[int], list[str]]]  # slot -> argv of its n-th incarnation
    roles: dict[str, str]
    procs: list[Proc] = field(default_factory=list)
    deaths: list[Death] = field(default_factory=list)
    generation: dict[str, int] = field(default_factory=dict)

    def start(self, slot: str) -> Proc:
        """Start (or restart) ``slot``."""
        n = self.generation[slot] = self.generation.get(slot, 0) + 1
        name = f"{slot}.{n}"
        popen = self.reaper.popen(self.commands[slot](n), name=name, env=self.env)
        proc = Proc(self.roles[slot], slot, name, popen, psutil.Process(popen.pid))
        self.procs.append(proc)
        return proc

    def stdout(self, name: str) -> str:
        """What the incarnation ``name`` printed so far."""
        return (self.reaper.tmp / f"{name}.out").read_text(errors="replace")

    def current(self, role: str | None = None) -> list[Proc]:
        """The latest incarnation of each slot (of ``role``)."""
        latest: dict[str, Proc] = {}
        for p in self.procs:
            latest[p.slot] = p
        return [p for p in latest.values() if role is None or p.role == role]

    def live(self, role: str) -> list[Proc]:
        """Running, not stopped processes of ``role``, in slot order."""
        return sorted((p for p in self.current(role) if p.alive() and not p.stopped), key=lambda p: p.slot)

    def watch(self, now: float) -> None:
        """Note processes that exited by themselves; restart what is due."""
        for p in self.current():
            if not p.alive() and not p.seen_exit:
                p.seen_exit = True
                code = p.popen.returncode
                if p.killed:
                    continue
                if p.role == "producer" and code == 0:
                    continue  # finished its keys
                tail = self.reaper.stderr(p.name)[-3000:]
                self.deaths.append(Death(p.name, p.role, code, now, tail))
                logger.error("%s exited with %s by itself:\n%s", p.name, code, tail)
                p.restart_at = now + 0.5  # keep the soak going; the death is reported at the end
            if p.restart_at is not None and now >= p.restart_at:
                p.restart_at = None
                self.start(p.slot)


@dataclass
class _Open:
    """A fault in progress: what ends it, and when."""

    fault: Fault
    until: float
    end: Callable[[], float | None]  # returns the end time once the fault is over, else None


class Nemesis:
    """Injects seeded faults into a :class:`Cast` and a store; records each window."""

    def __init__(
        self,
        seed: int,
        cast: Cast,
        oracle_dir: str,
        db_path: str,
        busy_timeout: float,
        lease: float,
        tmpfs: Path | None,
        skipped: list[str],
        clock_file: Path | None = None,
    ) -> None:
        self.rng = random.Random(seed)
        self.cast = cast
        self.oracle_dir = oracle_dir
        self.db_path = db_path
        self.busy = busy_timeout
        self.lease = lease
        self.tmpfs = tmpfs
        self.open: list[_Open] = []
        self.count: dict[str, int] = {}
        self.weights = {
            "kill-child": 3,
            "stop-child": 2,
            "kill-supervisor": 1,
            "stop-supervisor": 2,
            "kill-producer": 2,
            "stop-producer": 1,
            "lock": 2,
        }
        if tmpfs is not None:
            self.weights["disk-full"] = 1
        self.clock_file = clock_file
        if clock_file is not None:
            self.weights["clock-step"] = 1
        if cast.current("server"):
            self.weights["kill-server"] = 1
            self.weights["stop-server"] = 1
        self.skipped = skipped
        self._next_at = 0.0
        self._lock_seq = 0

    # -- the loop ---------------------------------------------------------------------------------------

    def run(self, seconds: float) -> None:
        """Inject faults for ``seconds``, then end every open fault."""
        start = time.time()
        self._next_at = start + self.rng.expovariate(1 / MEAN_GAP)
        while time.time() < start + seconds:
            now = time.time()
            self.cast.watch(now)
            self._close_due(now)
            if now >= self._next_at:
                self._next_at = now + self.rng.expovariate(1 / MEAN_GAP)
                kind = self.rng.choices(list(self.weights), list(self.weights.values()))[0]
                pick, duration = self.rng.random(), self.rng.random()
                if len(self.open) < MAX_CONCURRENT:
                    self._inject(kind, pick, duration)
            time.sleep(0.02)
        self.end_all()

    def end_all(self) -> None:
        """End every fault in progress now (resume, release, free space)."""
        deadline = time.time() + 30
        while self.open and time.time() < deadline:
            # A server killed just before the end restarts only when the cast is watched.
            self.cast.watch(time.time())
            for o in self.open:
                o.until = min(o.until, time.time())
            self._close_due(time.time())
            time.sleep(0.02)
        assert not self.open, f"faults that would not end: {[o.fault.describe() for o in self.open]}"

    def _close_due(self, now: float) -> None:
        for o in list(self.open):
            if now < o.until:
                continue
            ended = o.end()
            if ended is None:
                continue
            o.fault.end = ended
            self.open.remove(o)
            write_fault(self.oracle_dir, o.fault)

    def _record(self, fault: Fault) -> None:
        self.count[fault.kind] = self.count.get(fault.kind, 0) + 1
        write_fault(self.oracle_dir, fault)

    # -- faults -----------------------------------------------------------------------------------------

    def _inject(self, kind: str, pick: float, duration: float) -> None:
        now = time.time()
        if kind in ("kill-child", "stop-child"):
            pools = self.cast.live("pool")
            if not pools:
                return
            pool = pools[int(pick * len(pools))]
            children = [c for c in pool.workers() if c.status() != psutil.STATUS_STOPPED]
            if not children:
                return
            child = children[int(pick * 1000) % len(children)]
            target = f"{pool.name} child {child.pid}"
            if kind == "kill-child":
                with contextlib.suppress(psutil.Error):
                    child.send_signal(signal.SIGKILL)
                    self._record(Fault(kind, target, now, time.time(), [child.pid]))  # ends once sent
                return
            with contextlib.suppress(psutil.Error):
                child.send_signal(signal.SIGSTOP)
                self._pause(Fault(kind, target, now, now, [child.pid]), 1 + 9 * duration, child.send_signal)
            return
        if kind in ("kill-supervisor", "stop-supervisor", "kill-producer", "stop-producer"):
            role = "pool" if kind.endswith("supervisor") else "producer"
            procs = self.cast.live(role)
            if not procs:
                return
            p = procs[int(pick * len(procs))]
            fault = Fault(kind, p.name, now, now, p.family())
            if kind.startswith("kill"):
                p.killed = True
                p.signal(signal.SIGKILL)
                p.restart_at = now + 0.5 + 1.5 * duration
                fault.end = time.time() + (ORPHAN_GRACE if role == "pool" else 0.0)
                self._record(fault)
                return
            if p.signal(signal.SIGSTOP):
                p.stopped = True

                def cont(sig: int, p: Proc = p) -> None:
                    p.signal(sig)
                    p.stopped = False

                longest = 10.0 if role == "pool" else 5.0
                self._pause(fault, 1 + (longest - 1) * duration, cont)
            return
        if kind in ("kill-server", "stop-server"):
            servers = self.cast.live("server")
            if not servers:
                return
            server = servers[0]
            # Every client loses the store: a global window, until the server listens again.
            fault = Fault(kind, server.name, now, now, [])
            if kind == "stop-server":
                if server.signal(signal.SIGSTOP):
                    server.stopped = True

                    def cont(sig: int, p: Proc = server) -> None:
                        p.signal(sig)
                        p.stopped = False

                    self._pause(fault, 1 + 3 * duration, cont)
                return
            server.killed = True
            server.signal(signal.SIGKILL)
            server.restart_at = now + 0.5 + 1.5 * duration

            def listening() -> float | None:
                latest = self.cast.current("server")[0]
                if latest is server or "listening on" not in self.cast.stdout(latest.name):
                    return None
                return time.time()

            self.count[kind] = self.count.get(kind, 0) + 1
            self.open.append(_Open(fault, server.restart_at, listening))
            return
        if kind == "clock-step":
            assert self.clock_file is not None
            hosts = [p for p in self.cast.live("pool") if p.slot == CLOCKED_SLOT]
            if not hosts:
                return
            step = STEP if pick < 0.5 else -STEP
            clock_file = self.clock_file
            clock_file.write_text(f"{step}")
            # liteq promises that a step moves no live lease and fires no eta early beyond the step:
            # a duplicate run during it is not explained.
            fault = Fault(
                kind, f"{hosts[0].name} {step:+g}s", now, now, hosts[0].family(), explains=False, clock_step=step
            )

            def back() -> float:
                clock_file.write_text("0")
                return time.time()

            self.count[kind] = self.count.get(kind, 0) + 1
            self.open.append(_Open(fault, now + 2 + 4 * duration, back))
            return
        if kind == "lock":
            self._lock_seq += 1
            times = os.path.join(self.oracle_dir, f"lock-{self._lock_seq}.times")
            hold = self.busy * (3 + 2 * duration)
            proc = self.cast.reaper.popen(
                [sys.executable, "-m", "tests.soak.actors", "hold-lock", self.db_path, f"{hold:.3f}", times],
                name=f"lock-{self._lock_seq}",
                env=self.cast.env,
            )
            fault = Fault(kind, f"BEGIN EXCLUSIVE {hold:.2f}s", now, now, [], f"(busy timeout {self.busy}s)")

            def released() -> float | None:
                if proc.poll() is None:
                    return None
                if proc.returncode != 0 or not os.path.exists(times):
                    fault.note += f" holder exited {proc.returncode} without holding the lock"
                    return time.time()
                locked, free = (float(x) for x in Path(times).read_text().split())
                fault.start = locked
                return free

            self.count[kind] = self.count.get(kind, 0) + 1
            self.open.append(_Open(fault, now + hold, released))
            return
        if kind == "disk-full":
            assert self.tmpfs is not None
            filler = self.tmpfs / "filler"
            fill(filler)
            fault = Fault(kind, str(self.tmpfs), now, now, [])

            def free() -> float:
                filler.unlink(missing_ok=True)
                return time.time()

            self.count[kind] = self.count.get(kind, 0) + 1
            self.open.append(_Open(fault, now + 1 + 2 * duration, free))
            return
        raise AssertionError(f"unknown fault {kind}")

    def _pause(self, fault: Fault, seconds: float, send: Callable[[int], object]) -> None:
        def resume() -> float:
            with contextlib.suppress(psutil.Error):
                send(signal.SIGCONT)
            return time.time()

        self.count[fault.kind] = self.count.get(fault.kind, 0) + 1
        self.open.append(_Open(fault, fault.start + seconds, resume))
