"""Options of the soak: how long the nemesis runs and with which seeds.

``--soak-seconds N`` (or ``LITEQ_SOAK_SECONDS``): seconds of faults per mode (default 50, which keeps
both modes together under about three minutes). ``--soak-seed S`` (repeatable, or ``LITEQ_SOAK_SEEDS=1,2,3``):
one test per seed; without one, a fresh seed is drawn and printed, and every failure message
names it so that ``--soak-seed S`` replays the same fault plan. The options are registered in
``tests/conftest.py``, so they work whichever paths pytest is given.
"""

from __future__ import annotations

import os
import random

import pytest

#: Seconds of faults by default.
DEFAULT_SECONDS = 50.0
#: Seconds the test may take beyond the fault phase: start-up, drain, stop and checks.
OVERHEAD = 150.0


def soak_seconds(config: pytest.Config) -> float:
    """Seconds of faults, from the option, the environment or the default."""
    value = config.getoption("--soak-seconds", default=None)
    if value is None:
        value = float(os.environ.get("LITEQ_SOAK_SECONDS", DEFAULT_SECONDS))
    return float(value)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "soak_seed" not in metafunc.fixturenames:
        return
    seeds = metafunc.config.getoption("--soak-seed", default=None)
    if not seeds and os.environ.get("LITEQ_SOAK_SEEDS"):
        seeds = [int(s) for s in os.environ["LITEQ_SOAK_SEEDS"].replace(",", " ").split()]
    if not seeds:
        seeds = [random.SystemRandom().randrange(1, 10**6)]
    metafunc.parametrize("soak_seed", seeds, ids=[f"seed{s}" for s in seeds])


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # pytest-timeout reads the marker at run time: the bound follows the chosen duration.
    for item in items:
        if "soak_seed" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.timeout(soak_seconds(config) + OVERHEAD))
