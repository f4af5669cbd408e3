"""What a pool owes the store, on a health state machine: outcomes, lease extensions, heartbeats,
reaping and pruning, periodic ticks and cancel checks.

:class:`Upkeep` is the store side of :class:`~liteq.pool.WorkerPool`; the pool keeps the process
side (children, pipes, assignment) and tells it what it holds through the :class:`Holder` protocol.
Every store call goes through :class:`~liteq.health.Health`: a busy, full, read-only or unreachable
store makes the pool degraded, not dead (see :mod:`liteq.health`).

Wall-clock steps. Lease deadlines and etas are stored as wall-clock instants: they must mean
the same to every process on the store (and a cluster server keeps its own clock for them).
A step of the wall clock (NTP, a VM resumed) moves every instant at once, so a forward step
makes every live lease look expired and a backward one delays the expiry of a dead pool's lease.
Rather than keep a second, per-host deadline (CLOCK_BOOTTIME) in every store, a pool watches for
steps: the wall clock minus the monotonic clock stays constant unless the wall clock stepped.
On a step it re-extends its own leases at once (re-basing them on the new wall clock) and holds
its own reaping for a lease (at least two heartbeat intervals), long enough for every live pool
on the host, which sees the same step, to re-base its leases too. So a forward step never makes a
running pool reap a live lease, a backward step delays a dead pool's lease by at most the step,
and an eta stored before a step fires early by at most the step. The limit of this choice: a
pool that starts within a lease after a forward step never saw the step and may reap leases not
yet re-based; a per-host CLOCK_BOOTTIME deadline in the store would close that gap.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from .deadlines import AT_ONCE, Deadlines
from .health import Health
from .storage.records import ClaimedTask, Outcome
from .storage.states import PENDING
from .worker import MAINTENANCE_INTERVAL

if TYPE_CHECKING:
    from .scheduler import Scheduler
    from .storage.contract import Storage

__all__ = ["CLOCK_STEP_TOLERANCE", "Holder", "Job", "Upkeep"]

logger = logging.getLogger("liteq.pool")

#: Seconds between checks for cancel requests on held tasks.
CANCEL_CHECK_INTERVAL = 1.0
#: Under load, outcomes wait at most this long (or for this many) to share one transaction.
FLUSH_DELAY = 0.01
FLUSH_BATCH = 64
#: A change of (wall clock - monotonic clock) beyond this many seconds is a wall-clock step.
CLOCK_STEP_TOLERANCE = 1.0
#: The tick timer is set again once the wall clock moved this many seconds against the monotonic one.
TICK_DRIFT = 0.005


class Job(str, enum.Enum):
    """The upkeep's timers in the pool's deadline heap (:mod:`liteq.deadlines`)."""

    EXTEND = "lease extension"
    HEARTBEAT = "heartbeat"
    REAP = "reap"
    PRUNE = "prune"
    TICK = "periodic tick"
    #: A wake-up for the cancel check while a child holds a task (it runs whenever it is due).
    CANCEL_CHECK = "cancel check"
    #: A wake-up for outcomes and progress (the pool writes them at the top of each iteration).
    FLUSH = "outcome flush"
    #: Degraded: the next retry round.
    RETRY = "retry round"


#: The timers of the ok state, parked while the pool is degraded.
PERIODIC = (Job.EXTEND, Job.HEARTBEAT, Job.REAP, Job.PRUNE, Job.TICK, Job.CANCEL_CHECK, Job.FLUSH)


class Holder(Protocol):
    """What the pool tells its upkeep about the tasks it holds."""

    def held(self) -> list[ClaimedTask]:
        """Every task the pool holds a lease on (buffered, queued in a child, running)."""

    def drop_lost(self, ids: set[str]) -> int:
        """Forget unstarted tasks whose lease passed to another pool; return how many."""

    def check_cancels(self) -> None:
        """Look for cancel requests on held tasks (a store read)."""

    def busy(self) -> bool:
        """True while any child holds a task."""

    def probe(self) -> None:
        """The store call that must get through before a degraded pool is ok again (a claim)."""


class NothingHeld:
    """The :class:`Holder` of an upkeep whose pool holds nothing (yet)."""

    def held(self) -> list[ClaimedTask]:
        """Nothing."""
        return []

    def drop_lost(self, ids: set[str]) -> int:
        """Nothing to drop."""
        return 0

    def check_cancels(self) -> None:
        """Nothing to check."""

    def busy(self) -> bool:
        """Never busy."""
        return False

    def probe(self) -> None:
        """Nothing to claim for."""


class Upkeep:
    """The store side of one pool (see the module doc). ``more_work`` is set whenever something
    it did may have made tasks claimable (a reap, a retry, a periodic slot)."""

    def __init__(
        self,
        worker_id: str,
        storage: Storage,
        holder: Holder | None,
        *,
        lease: float,
        heartbeat_interval: float,
        scheduler: Scheduler | None,
        clock: Callable[[], float] = time.time,
        deadlines: Deadlines | None = None,
    ) -> None:
        self.id = worker_id
        self.storage = storage
        #: What the pool holds; a pool sets it once its dispatch exists (built on this upkeep).
        self.holder: Holder = holder if holder is not None else NothingHeld()
        self.lease = lease
        self.heartbeat_interval = heartbeat_interval
        self.scheduler = scheduler
        self.clock = clock
        self.health = Health(f"worker {worker_id}", logger)
        self.outcomes: list[Outcome] = []
        self.progress: dict[str, tuple[str, bytes]] = {}
        self.tasks_done = 0
        self.more_work = False
        self.stopping = False
        self._beat_done = 0
        self._outcomes_since: float | None = None
        #: The pool's deadline heap; the periodic calls are its timers named by :class:`Job`.
        self.deadlines = deadlines if deadlines is not None else Deadlines()
        self._parked: dict[Job, float] = {}  # periodic calls' instants while degraded
        self._tick_skew = 0.0  # wall minus monotonic clock when the tick timer was set
        self._next_cancel_check = 0.0
        self._reap_hold_until = 0.0
        #: Start-up writes (reclaiming, registering) still to do: a pool may start degraded.
        self.pending_startup: Callable[[], None] | None = None
        self._extended_at = time.monotonic()  # when the store last confirmed the leases held
        self._skew = clock() - time.monotonic()

    def start(self, mono: float) -> None:
        """Arm the timers once the pool runs."""
        schedule = self.deadlines.schedule
        schedule(Job.EXTEND, mono + self.lease / 3)
        schedule(Job.HEARTBEAT, mono + self.heartbeat_interval)
        schedule(Job.REAP, mono)
        schedule(Job.PRUNE, mono)
        self._next_cancel_check = mono
        self._arm_tick()

    # -- outcomes ---------------------------------------------------------------------------------

    def defer_flush(self, mono: float) -> bool:
        """Hold outcomes briefly while children are busy, so one transaction records many.

        Never when nothing else is running (a lone task's producer is waiting: W3 latency), nor
        past FLUSH_DELAY or FLUSH_BATCH outcomes, nor while stopping.
        """
        if self.stopping or len(self.outcomes) >= FLUSH_BATCH:
            return False
        if not self.holder.busy():
            return False
        if self._outcomes_since is None:
            self._outcomes_since = mono
        return mono - self._outcomes_since < FLUSH_DELAY

    def flush(self, force: bool = False) -> None:
        """Write progress and outcomes (unless they may wait for company); raises store errors,
        and then keeps everything in hand for the next try."""
        if self.progress:  # before outcomes: a finished task's last progress must still land
            for task_id, (token, data) in list(self.progress.items()):
                self.storage.set_progress(task_id, token, data)
                del self.progress[task_id]
        if not self.outcomes or (not force and self.defer_flush(time.monotonic())):
            return
        outcomes = self.outcomes
        for o in outcomes:
            if o.state == PENDING and o.run_at == 0.0:
                o.run_at = None
        applied = self.storage.complete(outcomes, now=self.clock())
        self._outcomes_since = None
        self.outcomes = []
        for o, ok in zip(outcomes, applied, strict=True):
            if not ok:
                logger.warning("outcome of task %s rejected: its lease had passed to another worker", o.id)
        if any(o.state == PENDING for o in outcomes):
            self.more_work = True

    def flush_if_ok(self) -> None:
        """:meth:`flush` in the ok state, a store error making the pool degraded."""
        if self.health.ok:
            with self.health.guard("outcome flush"):
                self.flush()

    def _flush_all(self) -> None:
        self.flush(force=True)

    # -- timers -------------------------------------------------------------------------------------

    def timers(self, mono: float) -> None:
        """Run the periodic store calls due at ``mono`` (degraded, only the retry round), then
        leave this upkeep's timers in the pool's deadline heap set for the wait."""
        self._watch_clock(mono)
        if self.health.ok:
            self._run_due(mono)
        elif self.health.retry_due(mono):
            self._retry_round(mono)
        if self.health.ok:
            self.deadlines.cancel(Job.RETRY)
            if self.stopping:
                self.deadlines.cancel(Job.TICK)
            # Cancels matter to running tasks: an idle pool checks when it wakes anyway.
            self.deadlines.schedule(Job.CANCEL_CHECK, self._next_cancel_check if self.holder.busy() else None)
            self._arm_flush(mono)
        else:
            # Degraded: none of the periodic calls runs, so none may wake the loop; each keeps
            # its instant for the first round after the store is back.
            for job in PERIODIC:
                at = self.deadlines.cancel(job)
                if at is not None:
                    self._parked[job] = at
            self.deadlines.schedule(Job.RETRY, self.health.retry_at)

    def _run_due(self, mono: float) -> None:
        """The due periodic calls in a fixed order, each rescheduling itself; a failure (the pool
        is degraded) leaves the rest due for after the retry round."""
        health, due = self.health, self.deadlines.is_due
        if due(Job.EXTEND, mono):
            self.deadlines.schedule(Job.EXTEND, mono + self.lease / 3)
            with health.guard("lease extension"):
                self._extend()
        if health.ok and due(Job.HEARTBEAT, mono):
            self.deadlines.schedule(Job.HEARTBEAT, mono + self.heartbeat_interval)
            with health.guard("heartbeat"):
                self._beat()
        if health.ok and due(Job.REAP, mono) and self._not_held(Job.REAP, mono):
            # Expired leases (a dead pool's tasks) come back within half a lease; the probe is a
            # read of one index entry. Pruning finished tasks can wait longer.
            self.deadlines.schedule(Job.REAP, mono + min(MAINTENANCE_INTERVAL, max(1.0, self.lease / 2)))
            with health.guard("reap"):
                if self.storage.reap(now=self.clock()):
                    self.more_work = True
        if health.ok and due(Job.PRUNE, mono) and self._not_held(Job.PRUNE, mono):
            self.deadlines.schedule(Job.PRUNE, mono + MAINTENANCE_INTERVAL)
            with health.guard("prune"):
                self.storage.prune(now=self.clock())
        if health.ok and due(Job.TICK, mono) and self.scheduler is not None and not self.stopping:
            self._tick(self.scheduler)
        if health.ok and mono >= self._next_cancel_check:
            self._next_cancel_check = mono + CANCEL_CHECK_INTERVAL
            with health.guard("cancel check"):
                self.holder.check_cancels()

    def _not_held(self, job: Job, mono: float) -> bool:
        """False, and ``job`` moved to the end of the hold, while reaping is held after a clock step."""
        if mono >= self._reap_hold_until:
            return True
        self.deadlines.schedule(job, self._reap_hold_until)
        return False

    def _tick(self, scheduler: Scheduler) -> None:
        due = scheduler.next_due()
        now = self.clock()
        if due is not None and now >= due:
            # A failed tick leaves the scheduler's slots as they were: the same slot fires on
            # the first tick after the pool is back to ok.
            with self.health.guard("periodic tick"):
                if scheduler.tick(now=now):
                    self.more_work = True
        self._arm_tick()

    def _arm_tick(self) -> None:
        """Set the tick timer to the scheduler's next slot (epoch), seen on the monotonic clock."""
        if self.scheduler is None or self.stopping:
            return
        due = self.scheduler.next_due()
        now, mono = self.clock(), time.monotonic()
        self._tick_skew = now - mono
        self.deadlines.schedule(Job.TICK, None if due is None else mono + max(due - now, 0.0))

    def _watch_clock(self, mono: float) -> None:
        """Re-set the tick timer on drift; on a wall-clock step, re-extend now and hold reaping.

        The two clocks are read together: ``mono`` is when this iteration began, and a store call
        since then that waited on another process's lock would look like a forward step.
        """
        now = time.monotonic()
        skew = self.clock() - now
        # The tick timer turned an epoch slot into a monotonic instant: a wall clock that drifted
        # or stepped since moves the slot on the monotonic clock.
        if Job.TICK in self.deadlines and abs(skew - self._tick_skew) > TICK_DRIFT:
            self._arm_tick()
        step = skew - self._skew
        if abs(step) <= CLOCK_STEP_TOLERANCE:
            return
        self._skew = skew
        # Every pool on the host re-bases its leases on its next iteration, at most a heartbeat
        # interval away, and within its own extension period: hold for whichever is longer.
        hold = max(self.lease, 2 * self.heartbeat_interval)
        logger.warning(
            "worker %s: the wall clock stepped by %+.1fs; re-extending leases now and reaping nothing for %.0fs",
            self.id,
            step,
            hold,
        )
        self.deadlines.schedule(Job.EXTEND, mono)  # due in this iteration's round (at ``mono``)
        self._reap_hold_until = now + hold  # from when the step was seen

    def _arm_flush(self, mono: float) -> None:
        """Wake at once for progress and outcomes that may not wait for company, else when the
        held ones are due (the decision is :meth:`defer_flush`'s)."""
        at: float | None = None
        if self.progress or (self.outcomes and not self.defer_flush(mono)):
            at = AT_ONCE
        elif self.outcomes and self._outcomes_since is not None:
            at = self._outcomes_since + FLUSH_DELAY
        self.deadlines.schedule(Job.FLUSH, at)

    # -- the writes ---------------------------------------------------------------------------------

    def _retry_round(self, mono: float) -> None:
        """Degraded: try the writes that matter, in order; all through means ok again.

        The heartbeat goes first so that ``liteq status`` shows the degraded state (a store may
        keep it aside while its rows cannot be written), then the outcomes held in memory (at most
        one per task this pool holds, since it claims nothing meanwhile), then the leases, which
        also tells which buffered tasks another pool took over meanwhile.
        """
        health = self.health
        startup = [("start-up", self.pending_startup)] if self.pending_startup is not None else []
        for what, step in (
            *startup,
            ("heartbeat", self._beat),
            ("outcome flush", self._flush_all),
            ("lease extension", self._extend),
            # Last, the call a healthy pool cannot do without: a store may accept the writes
            # above without reaching its server (nothing to write, a heartbeat kept for later).
            ("claim", self.holder.probe),
        ):
            with health.guard(what) as guard:
                step()
            if guard.failed:
                return
        health.recovered(mono)
        self.more_work = True
        for job, at in self._parked.items():
            self.deadlines.schedule(job, at)
        self._parked.clear()
        self.deadlines.schedule(Job.EXTEND, mono + self.lease / 3)
        self.deadlines.schedule(Job.HEARTBEAT, mono)  # record "ok" at once
        self._next_cancel_check = mono
        self._arm_tick()

    def _beat(self) -> None:
        health = self.health
        self.storage.heartbeat(
            self.id,
            tasks_done=self.tasks_done - self._beat_done,
            now=self.clock(),
            state=health.state.value,
            state_reason=health.reason,
            state_since=health.since,
        )
        self._beat_done = self.tasks_done

    def confirm_leases(self, mono: float) -> None:
        """Before buffered tasks go to children: extend now if the leases were last confirmed
        half a lease ago or more (the pool was paused, or busy elsewhere). Their leases may have
        run out and passed to another pool meanwhile; starting them here would run them twice."""
        if self.health.ok and mono - self._extended_at >= self.lease / 2:
            self.deadlines.schedule(Job.EXTEND, mono + self.lease / 3)
            with self.health.guard("lease extension"):
                self._extend()

    def _extend(self) -> None:
        held = self.holder.held()
        started = time.monotonic()
        if not held:
            self._extended_at = started
            return
        leases = [(t.id, t.lease_token) for t in held]
        applied = self.storage.extend(self.id, leases, lease=self.lease, now=self.clock())
        self._extended_at = started
        lost = {t.id for t, ok in zip(held, applied, strict=True) if not ok}
        if not lost:
            return
        # An unstarted task whose lease passed to another pool (it expired during an outage)
        # must not start here too; a started one's outcome is fenced off by its token.
        dropped = self.holder.drop_lost(lost)
        logger.warning(
            "lost the lease of %d task(s) (%d unstarted, dropped); their outcomes will be rejected",
            len(lost),
            dropped,
        )

    def release(self, tasks: list[ClaimedTask]) -> bool:
        """Hand unstarted tasks back (uncounted); False when the store refused (degraded)."""
        if not self.health.ok:
            return False
        with self.health.guard("release") as guard:
            self.storage.release([(t.id, t.lease_token) for t in tasks])
        return not guard.failed

    def final_writes(self, timeout: float, gave_up: Callable[[], bool]) -> bool:
        """Record the last outcomes and hand back what is held, riding out store errors for up to
        ``timeout`` seconds or until ``gave_up()``; True when everything was written."""
        deadline = time.monotonic() + timeout
        while True:
            with self.health.guard("outcome flush") as guard:
                self.flush(force=True)
                held = self.holder.held()
                if held:
                    self.storage.release([(t.id, t.lease_token) for t in held])
            if not guard.failed:
                return True
            mono = time.monotonic()
            if mono >= deadline or gave_up():
                logger.error(
                    "worker %s stopping with %d outcome(s) not recorded (%s): those tasks run again once "
                    "their lease runs out",
                    self.id,
                    len(self.outcomes),
                    self.health.reason,
                )
                return False
            time.sleep(max(0.0, min(self.health.retry_at, deadline) - mono))
