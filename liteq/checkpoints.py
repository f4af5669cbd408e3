"""Checkpoints of a store's write-ahead log, off the path of any commit a caller waits on.

Used by a pool's supervisor and by the cluster server, each for the store it writes: SQLite's own
automatic checkpoint runs inside the commit that fills the log, and pays an fsync there.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from .exceptions import LiteQError

__all__ = ["CHECKPOINT_INTERVAL", "Checkpointer"]

logger = logging.getLogger("liteq.checkpoints")

#: Seconds between WAL checkpoints done in the background.
CHECKPOINT_INTERVAL = 0.5


class Checkpointer:
    """Checkpoints the store's WAL off the task path, so no commit a producer waits on pays for it.

    A background thread where children do not fork from this process; inline between pool
    iterations under ``fork`` (forking a process whose other thread is inside SQLite is unsafe).
    """

    def __init__(self, storage: Any, *, inline: bool) -> None:
        self.checkpoint = storage.checkpoint if storage.supports_checkpoint else None
        self.inline = inline
        self.thread: threading.Thread | None = None
        self.stopped = threading.Event()
        self.next_at = 0.0

    def start(self) -> None:
        """Start the background thread (unless inline or the store has no WAL)."""
        checkpoint = self.checkpoint
        if checkpoint is None or self.inline:
            return

        def loop() -> None:
            while not self.stopped.wait(CHECKPOINT_INTERVAL):
                try:
                    checkpoint()
                except LiteQError:  # busy or full: the next round, or a committing connection, does it
                    logger.debug("background checkpoint failed", exc_info=True)

        self.thread = threading.Thread(target=loop, name="liteq-checkpoint", daemon=True)
        self.thread.start()

    def maybe_inline(self, mono: float, *, busy: bool) -> None:
        """Under ``fork``: checkpoint now if it is due and no child holds a task."""
        if self.checkpoint is None or not self.inline or busy or mono < self.next_at:
            return
        self.next_at = mono + CHECKPOINT_INTERVAL
        try:
            self.checkpoint()
        except LiteQError:
            logger.debug("checkpoint failed", exc_info=True)

    def stop(self) -> None:
        """Stop the background thread. Idempotent."""
        self.stopped.set()
        if self.thread is not None:
            self.thread.join()
            self.thread = None
