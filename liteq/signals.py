"""SIGINT/SIGTERM for a foreground worker: the first stops gracefully, a second one stops at once.

The handlers are installed for as long as a pool runs in the foreground (``liteq worker``,
``app.run_worker()``) and the previous ones put back after, and only from the main thread (the
only one Python lets set handlers).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Protocol

__all__ = ["Stoppable", "stopping_on_signals"]


class Stoppable(Protocol):
    """A pool that can install its own stop handlers (see :meth:`WorkerPool.install_signal_handlers`)."""

    def install_signal_handlers(self) -> None:
        """Make SIGINT/SIGTERM stop it."""
        ...


@contextlib.contextmanager
def stopping_on_signals(pool: Stoppable) -> Iterator[None]:
    """While the block runs, SIGINT/SIGTERM stop ``pool``; the previous handlers are restored after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
    try:
        pool.install_signal_handlers()
        yield
    finally:
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGTERM, previous[1])
