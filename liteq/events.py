"""What a pool supervisor waits on: every child's pipe and process sentinel, the store's wake-up
socket, and its own self-pipe (a stop request, a source change), in one wait.

One selector lives as long as the pool (``multiprocessing.connection.wait`` builds one per call);
on Windows, which cannot select on pipes, ``wait`` is used instead.

DESIGN NOTE — spinning before sleeping. A round trip through an idle pool (a producer enqueues,
the supervisor claims and hands the task to a child, the child answers, the supervisor records the
outcome, the producer reads it) is a chain of process wake-ups, and on a virtual machine a wake-up
is the dearest step of the chain: the sender exits to the hypervisor to interrupt a halted virtual
CPU and the sleeper waits for it to be scheduled again (`perf` shows the CPUs idle for most of
such a round trip although every step waits for the one before). A supervisor that keeps
polling its selector (with a zero timeout) for a moment before it sleeps is found awake when its
child answers or the producer's next task arrives, and neither wake-up is paid. :meth:`EventWait.wait` polls for at
most ``spin`` seconds (never past its timeout), and :class:`~liteq.pool.WorkerPool` asks for it
only where it costs nothing another process or thread needs: right after activity (an idle pool
never spins), while its children leave a CPU free, when the loop runs in a process of its own (a
pool in an application's thread would hold that application's GIL while it polls), and over a
store whose events reach it straight from the kernel (over a cluster server a reader thread
delivers them, and would wait for the GIL the poll holds). And only while polling pays:
:class:`Spinner` remembers how the pool's recent waits of each kind (a child running a task, or
none) ended, and polls only while most of them ended within the spin, so tasks that arrive at
random a millisecond apart, or run longer than the spin, soon cost no polling at all.
"""

from __future__ import annotations

import selectors
import socket
import sys
import time
from collections.abc import Iterable
from multiprocessing.connection import wait
from typing import Any

from .children import Child, drain
from .wake import Waker

__all__ = ["EventWait", "Spinner"]

#: Weight of the newest wait in a :class:`Spinner`'s estimate of how often polling pays.
SPIN_LEARNING = 0.125
#: While polling does not pay, one eligible wait in this many polls all the same: a wait that
#: sleeps also pays for its wake-up, so only polling shows whether events come within the spin.
SPIN_PROBE = 8


class Spinner:
    """Decides how long each wait of a pool may poll before it sleeps (see the module doc).

    For each kind of wait (a child running a task, or none running) it keeps a running estimate
    of the share of recent waits that ended with an event within ``spin`` seconds, learned from
    every wait that follows activity; it polls while that share is at least half, and one wait in
    :data:`SPIN_PROBE` otherwise.
    """

    def __init__(self, spin: float, cpus: int) -> None:
        self.spin = spin
        self.cpus = cpus
        #: Share of recent waits that ended within the spin, for waits with / without a busy child.
        self.quick = {True: 1.0, False: 1.0}
        self._skipped = {True: 0, False: 0}
        self._kind: bool | None = None

    def before(self, *, active: bool, busy: int) -> float:
        """The spin for the next wait: 0 unless the last wait returned events (``active``: more
        may follow at once), the ``busy`` children leave a CPU free, and polling has paid lately."""
        if self.spin <= 0 or not active or busy >= self.cpus:
            self._kind = None
            return 0.0
        kind = self._kind = busy > 0
        if self.quick[kind] >= 0.5:
            return self.spin
        self._skipped[kind] += 1
        if self._skipped[kind] >= SPIN_PROBE:
            self._skipped[kind] = 0
            return self.spin
        return 0.0

    def after(self, waited: float, got_events: bool) -> None:
        """Learn from the wait just done: it took ``waited`` seconds and returned events or not."""
        kind = self._kind
        if kind is None:
            return
        hit = 1.0 if got_events and waited <= self.spin else 0.0
        self.quick[kind] += (hit - self.quick[kind]) * SPIN_LEARNING


class EventWait:
    """The supervisor's wait. :meth:`wait` returns ``("conn", child)`` for a child with messages,
    ``("dead", child)`` for a child that exited, and ``("waker", None)`` when another process's
    commit may have made work; self-pipe bytes are drained on the way."""

    def __init__(self) -> None:
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.waker: Waker | None = None
        self._selector: selectors.BaseSelector | None = None
        if sys.platform != "win32":
            self._selector = selectors.DefaultSelector()
            self._selector.register(self._wake_r, selectors.EVENT_READ, ("wake", None))

    def add_waker(self, waker: Waker) -> None:
        """Also wait on the store's wake-up socket."""
        self.waker = waker
        if self._selector is not None and waker.sock is not None:
            self._selector.register(waker.sock, selectors.EVENT_READ, ("waker", None))

    def watch(self, c: Child) -> None:
        """Wait on a new child's pipe and sentinel too."""
        if self._selector is not None:
            self._selector.register(c.conn.fileno(), selectors.EVENT_READ, ("conn", c))
            self._selector.register(c.process.sentinel, selectors.EVENT_READ, ("dead", c))

    def unwatch(self, c: Child) -> None:
        """Stop waiting on a buried child."""
        if self._selector is not None:
            for fd in (c.conn.fileno(), c.process.sentinel):
                try:
                    self._selector.unregister(fd)
                except (KeyError, ValueError):
                    pass

    def poke(self, why: bytes) -> None:
        """End the current wait from another thread or a signal handler."""
        try:
            self._wake_w.send(why)
        except OSError:
            pass

    def wait(self, timeout: float, children: Iterable[Child], spin: float = 0.0) -> list[tuple[str, Any]]:
        """Wait up to ``timeout`` seconds; return the events that are ready (see the class doc).

        With ``spin``, poll without sleeping for up to that long first (see the module doc)."""
        if self._selector is not None:
            select = self._selector.select
            timeout = max(timeout, 0.0)
            keys: list[tuple[selectors.SelectorKey, int]] = []
            if spin > 0 and timeout > 0:
                started = time.monotonic()
                end = started + min(spin, timeout)
                while not keys and time.monotonic() < end:
                    keys = select(0)
                timeout = max(timeout - (time.monotonic() - started), 0.0)
            if not keys:
                keys = select(timeout)
            ready = [key.data for key, _ in keys]
        else:
            ready = self._ready_portable(timeout, children)
        out = []
        for kind, c in ready:
            if kind == "wake":
                drain(self._wake_r)
            elif kind == "waker":
                if self.waker is not None and b"w" in self.waker.drain():
                    out.append((kind, c))
            else:
                out.append((kind, c))
        return out

    def _ready_portable(self, timeout: float, children: Iterable[Child]) -> list[tuple[str, Any]]:
        # Windows cannot select() on pipes: multiprocessing's wait() knows how to wait there.
        handles: dict[Any, tuple[str, Any]] = {self._wake_r: ("wake", None)}
        if self.waker is not None and self.waker.sock is not None:
            handles[self.waker.sock] = ("waker", None)
        for c in children:
            handles[c.conn] = ("conn", c)
            handles[c.process.sentinel] = ("dead", c)
        return [handles[h] for h in wait(list(handles), timeout=max(timeout, 0))]

    def close(self) -> None:
        """Release the selector, the wake-up socket and the self-pipe."""
        if self._selector is not None:
            self._selector.close()
        if self.waker is not None:
            self.waker.close()
        self._wake_r.close()
        self._wake_w.close()
