"""The nemesis ends what it started: a fault whose end needs a restart ends after the run too."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.soak.nemesis import Nemesis, _Open, silent
from tests.soak.oracle import Fault, read_faults


class _Cast:
    """A cast with one killed server that listens again once watched past its restart time."""

    def __init__(self, restart_at: float) -> None:
        self.restart_at = restart_at
        self.listening = False

    def watch(self, now: float) -> None:
        if now >= self.restart_at:
            self.listening = True


@pytest.mark.timeout(30)
def test_a_server_killed_just_before_the_end_is_restarted_by_end_all(tmp_path: Path) -> None:
    # The nemesis killed the server with a restart due after its run ended (CI seed 73098 failed this way:
    # end_all waited for a server that only the run loop's watch would have restarted).
    cast = _Cast(restart_at=time.time() + 0.2)
    nemesis: Any = Nemesis.__new__(Nemesis)
    nemesis.cast = cast
    nemesis.oracle_dir = str(tmp_path)
    fault = Fault("kill-server", "server.3", time.time(), time.time(), [])
    nemesis.open = [_Open(fault, cast.restart_at, lambda: time.time() if cast.listening else None)]
    nemesis.end_all()
    assert nemesis.open == []
    assert [f.kind for f in read_faults(str(tmp_path))] == ["kill-server"]


class _Pool:
    """A pool process as :func:`silent` sees it."""

    def __init__(self, pid: int, running: bool) -> None:
        self.pid = pid
        self.running = running

    def alive(self) -> bool:
        return self.running


def test_the_end_waits_for_each_running_pool_to_beat_after_the_faults() -> None:
    # CI seed 646925 (cluster): a pool restarted 0.1 s before the liveness check had no heartbeat yet,
    # and the SIGTERM that ends the soak killed it mid-start-up. Seed 359665 (local): a pool the last
    # store faults left degraded was checked 1 s after them, before its next retry round.
    beating, degraded, starting, gone = _Pool(10, True), _Pool(20, True), _Pool(30, True), _Pool(40, False)
    pools: list[Any] = [beating, degraded, starting, gone]
    assert silent(pools, {10: 101.0, 20: 99.0, 40: 50.0}, since=100.0) == [degraded, starting]
    assert silent(pools, {10: 101.0, 20: 102.0, 30: 103.0}, since=100.0) == []
