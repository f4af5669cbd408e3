"""The pytest plugin that liteq ships (``liteq.testing``), used as an application would."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from liteq import LiteQ, TaskFailed
from liteq.testing import drain, wait_all
from tests import tasks

pytestmark = pytest.mark.timeout(60)


def test_liteq_app_and_worker_fixtures_run_tasks(liteq_app: LiteQ, liteq_worker: Callable[..., int]) -> None:
    # Given a task on the plugin's app, queued twice
    add = liteq_app.task(tasks.add)
    results = [add.delay(1, 2), add.delay(3, 4)]
    # When the worker fixture drains the queue
    ran = liteq_worker()
    # Then both ran and their results are readable
    assert ran == 2
    assert wait_all(results) == [3, 7]


def test_liteq_immediate_runs_at_delay(liteq_immediate: LiteQ) -> None:
    # Given an immediate app
    add = liteq_immediate.task(tasks.add)
    # When a task is queued, then it has already run
    assert add.delay(2, 2).get(timeout=1) == 4


def test_wait_all_reraises_failures(liteq_app: LiteQ) -> None:
    # Given a failing task that ran
    fail = liteq_app.task(tasks.fail)
    r = fail.delay("nope")
    drain(liteq_app)
    # Then the join re-raises it
    with pytest.raises(TaskFailed, match="nope"):
        wait_all([r])


def test_plugin_is_registered_as_an_entry_point() -> None:
    # The fixtures reach other projects through the pytest11 entry point.
    from importlib.metadata import entry_points

    names = {ep.name: ep.value for ep in entry_points(group="pytest11")}
    assert names.get("liteq") == "liteq.testing"
