"""A module no test app registers: importing it creates the file ``LITEQ_TEST_CANARY`` names, so a
test can prove a worker never imported a module just because a stored task named it."""

from __future__ import annotations

import os
from pathlib import Path

Path(os.environ.get("LITEQ_TEST_CANARY", os.devnull)).touch()


def run() -> None:
    """Never meant to run."""
