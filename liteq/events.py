"""What a pool supervisor waits on: every child's pipe and process sentinel, the store's wake-up
socket, and its own self-pipe (a stop request, a source change), in one wait.

One selector lives as long as the pool (``multiprocessing.connection.wait`` builds one per call);
on Windows, which cannot select on pipes, ``wait`` is used instead.
"""

from __future__ import annotations

import selectors
import socket
import sys
from collections.abc import Iterable
from multiprocessing.connection import wait
from typing import Any

from .children import Child, drain
from .wake import Waker

__all__ = ["EventWait"]


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

    def wait(self, timeout: float, children: Iterable[Child]) -> list[tuple[str, Any]]:
        """Wait up to ``timeout`` seconds; return the events that are ready (see the class doc)."""
        if self._selector is not None:
            ready = [key.data for key, _ in self._selector.select(max(timeout, 0))]
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
