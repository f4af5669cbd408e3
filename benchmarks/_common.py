"""What every benchmark module shares: the figure it reports and the context it runs in.

A benchmark module is a ``bench_*.py`` file in this directory with a ``run(ctx)`` function that
returns a list of :class:`Figure`. ``run.py`` imports every such module, runs them one after the
other in one process, prints one table and writes ``results/latest.json``.
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PASS, MISS, INFO = "PASS", "MISS", "INFO"


@dataclass
class Figure:
    """One measured number, the reference it is judged against and the verdict.

    ``ok`` is True (PASS), False (MISS) or None (reported for information: a reference figure or a
    benchmark the issue sets no target for).
    """

    group: str
    name: str
    value: float
    unit: str
    reference: str = ""
    target: str = ""
    ok: bool | None = None
    runs: list[float] = field(default_factory=list)
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> str:
        return INFO if self.ok is None else (PASS if self.ok else MISS)


@dataclass
class Context:
    """Where and how hard to run. ``workdir`` is on the disk a user's store would live on."""

    workdir: Path
    repeats: int = 3
    #: Multiplies task counts; 1.0 is the issue's sizes. Smaller values are for smoke runs only.
    scale: float = 1.0
    verbose: bool = True
    _seq: int = 0

    def n(self, count: int, floor: int = 10) -> int:
        """``count`` scaled by :attr:`scale` (never below ``floor``)."""
        return max(floor, int(count * self.scale))

    def fresh(self, label: str) -> Path:
        """A new empty directory under the work dir."""
        self._seq += 1
        path = self.workdir / f"{self._seq:03d}-{label}"
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        return path

    def log(self, message: str) -> None:
        if self.verbose:
            print(f"  [{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def median(values: list[float]) -> float:
    return statistics.median(values)


def timed(fn: Callable[[], Any]) -> float:
    """Seconds ``fn()`` took (wall clock, perf_counter)."""
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def remove(path: os.PathLike[str] | str) -> None:
    shutil.rmtree(path, ignore_errors=True)
