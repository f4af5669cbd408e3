"""Task options come from one list (liteq.options.OPTIONS): what it says is what every entry point takes."""

from __future__ import annotations

from pathlib import Path

import pytest

from liteq import ConfigurationError, LiteQ, TaskTimedOut
from liteq.options import DECLARED, OPTIONS, PER_CALL, STORED
from tests import pool_tasks

pytestmark = pytest.mark.timeout(60)


def test_a_call_sets_its_own_hard_timeout_and_the_pool_enforces_it(tmp_path: Path) -> None:
    # Given a task declared with a generous hard limit, and one declared with none
    app = LiteQ(tmp_path / "store")
    generous = app.task(name="options.generous", timeout=3600)(pool_tasks.sleep_forever)
    unlimited = app.task(name="options.unlimited")(pool_tasks.sleep_forever)
    try:
        with app.workers(2):
            # When each is sent with a short per-call timeout (Celery's apply_async(time_limit=...))
            short = [t.apply_async(timeout=0.5) for t in (generous, unlimited)]
            # Then the call's limit is the one stored and enforced: both runs are killed as timed out
            for result in short:
                with pytest.raises(TaskTimedOut):
                    result.get(timeout=30)
    finally:
        app.close()


def test_a_per_call_timeout_is_checked_like_a_declared_one(tmp_path: Path) -> None:
    # Given a task
    with LiteQ(tmp_path / "store") as app:
        sleeper = app.task(pool_tasks.sleep_forever)
        # When a call gives a timeout that is not a duration
        # Then it is refused before anything is stored, naming the option
        with pytest.raises(ConfigurationError, match="timeout"):
            sleeper.apply_async(timeout=float("nan"))
        assert app.stats()["states"] == {}


def test_an_option_not_in_the_list_is_refused_everywhere(tmp_path: Path) -> None:
    # Given a task
    with LiteQ(tmp_path / "store") as app:
        add = app.task(pool_tasks.add)
        # When an option the list does not have is given to a call, a signature or a declaration
        # Then each refuses it with a ConfigurationError naming it
        with pytest.raises(ConfigurationError, match="colour"):
            add.apply_async((1, 2), colour="red")
        with pytest.raises(ConfigurationError, match="colour"):
            add.s(1, 2).set(colour="red")
        with pytest.raises(ConfigurationError, match="colour"):
            app.task(name="options.bad", colour="red")(pool_tasks.add)


def test_every_entry_point_takes_what_the_list_says(tmp_path: Path) -> None:
    # Given the one list of options
    names = {o.name for o in OPTIONS}
    # When its views are read
    # Then they are the list's own entries, and each stored option is a column of the task's row
    assert set(DECLARED) | set(PER_CALL) == names
    with LiteQ(tmp_path / "store") as app:
        add = app.task(pool_tasks.add)
        row = app.producer.build(add, (1, 2), {}, now=0.0)
        assert all(hasattr(row, name) for name in STORED)
        # And the docstrings list them
        assert all(f"``{name}``" in (app.task.__doc__ or "") for name in DECLARED)
        assert all(f"``{name}``" in (add.apply_async.__doc__ or "") for name in PER_CALL)
