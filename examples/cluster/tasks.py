"""The tasks of the cluster example: one module that the remote worker and the producer both import.

The store is chosen at run time: the worker gets it from ``liteq worker tasks:app --connect URL``,
the producer from ``LITEQ_CLUSTER_URL``. Task names (``tasks.checksum``) are the same in both.
"""

from __future__ import annotations

import hashlib
import os
import socket

from liteq import LiteQ

app = LiteQ(os.environ.get("LITEQ_CLUSTER_URL", "memory://"))


@app.task
def checksum(text: str) -> dict[str, object]:
    """SHA-256 of ``text``, and which machine and process computed it."""
    return {"sha256": hashlib.sha256(text.encode()).hexdigest(), "host": socket.gethostname(), "pid": os.getpid()}
