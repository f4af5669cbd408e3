"""A module that leaves a mark when it is imported: the proof that a worker imported it.

The test points ``LITEQ_CANARY`` at a file; importing this module creates it.
"""

from __future__ import annotations

import os

from liteq import LiteQ

_mark = os.environ.get("LITEQ_CANARY")
if _mark:
    with open(_mark, "a", encoding="utf-8") as f:
        f.write(f"imported by {os.getpid()}\n")

app = LiteQ("memory://")


@app.task
def hello(name: str) -> str:
    """Greet ``name``."""
    return f"hello {name}"
