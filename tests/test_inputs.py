"""Bad input is refused where it enters: the API, the CLI, the store layer and from inside a task.

NaN, infinities, negative and absurd (more than ten years) times and durations raise a
``ConfigurationError`` naming the argument; from inside a task the task fails with that reason; no
row is ever stored at ``+inf`` nor does one bad outcome make a batched flush fail.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from liteq import ConfigurationError, LiteQ, Retry, TaskFailed
from liteq.cli import EXIT_USAGE, main
from liteq.inputs import MAX_DELAY
from liteq.storage.contract import Storage
from liteq.storage.records import NewTask, Outcome
from liteq.storage.states import FAILED, SCHEDULED
from tests import input_tasks, tasks

MakeApp = Callable[..., LiteQ]

NAN, INF = float("nan"), float("inf")
ELEVEN_YEARS = 11 * 365 * 86400.0
FAR = datetime.now(timezone.utc) + timedelta(days=11 * 365)

# (what is called, the bad value, what the error must name)
BAD_DURATIONS = [NAN, INF, -INF, -1.0, ELEVEN_YEARS]


@pytest.mark.parametrize("value", BAD_DURATIONS, ids=["nan", "inf", "-inf", "negative", "11y"])
@pytest.mark.parametrize(
    ("call", "names"),
    [
        (lambda t, v: t.apply_async((1, 2), countdown=v), "countdown"),
        (lambda t, v: t.apply_async((1, 2), expires=v), "expires"),
        (lambda t, v: t.apply_async((1, 2), result_ttl=v), "result_ttl"),
        (lambda t, v: t.s(1, 2).set(countdown=v).delay(), "countdown"),
        (lambda t, v: t.app.enqueue_many([t.s(1, 2).set(countdown=v)]), "countdown"),
        (lambda t, v: Retry(countdown=v), "Retry(countdown=...)"),
        (lambda t, v: LiteQ("memory://", lease=v), "lease"),
        (lambda t, v: t.app.task(name="x.timeout", timeout=v)(tasks.noop), "timeout"),
        (lambda t, v: t.app.task(name="x.expires", expires=v)(tasks.noop), "expires"),
        (lambda t, v: t.app.task(name="x.rate", rate_limit=v)(tasks.noop), "rate_limit"),
    ],
    ids=["countdown", "expires", "result_ttl", "signature", "enqueue_many", "Retry", "lease", "timeout",
         "task-expires", "rate_limit"],
)  # fmt: skip
def test_api_refuses_bad_durations_naming_the_argument(
    make_any_app: MakeApp, call: Callable[[Any, float], Any], names: str, value: float
) -> None:
    # Given a registered task
    app = make_any_app()
    add = app.task(tasks.add)
    if names == "rate_limit" and value == ELEVEN_YEARS:
        value = 1 / ELEVEN_YEARS  # a rate "absurd" the other way: one start in eleven years
    if names in ("lease", "timeout", "rate_limit") and value == -1.0:
        value = 0.0 if names != "rate_limit" else -1.0
    # When the bad value is passed, then a ConfigurationError (a ValueError) names the argument
    with pytest.raises(ConfigurationError) as caught:
        call(add, value)
    assert isinstance(caught.value, ValueError)
    assert names.split("(")[0] in str(caught.value)
    # And nothing was stored
    assert app.storage.counts() == {}


@pytest.mark.parametrize(
    "call",
    [
        lambda t: t.apply_async((1, 2), eta=FAR),
        lambda t: t.apply_async((1, 2), expires=FAR),
        lambda t: Retry(eta=FAR),
    ],
    ids=["eta", "expires", "Retry-eta"],
)
def test_api_refuses_times_more_than_ten_years_ahead(make_any_app: MakeApp, call: Callable[[Any], Any]) -> None:
    app = make_any_app()
    add = app.task(tasks.add)
    with pytest.raises(ConfigurationError, match="ten years"):
        call(add)
    assert app.storage.counts() == {}


def test_ten_years_is_the_bound_not_a_year_less(make_app: MakeApp) -> None:
    # A long but sane delay still works (a yearly job scheduled a few years ahead)
    app = make_app()
    add = app.task(tasks.add)
    r = add.apply_async((1, 2), countdown=MAX_DELAY - 86400)
    assert app.storage.get([r.id])[0].state == SCHEDULED  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("field", "value"),
    [("run_at", NAN), ("run_at", INF), ("expires_at", NAN), ("result_ttl", INF), ("result_ttl", -1.0),
     ("release_delay", NAN), ("timeout", NAN), ("soft_timeout", -1.0), ("rate_limit", INF), ("max_attempts", 0)],
)  # fmt: skip
def test_store_refuses_a_batch_holding_a_bad_row(storage: Storage, field: str, value: Any) -> None:
    # Given a batch of a good task and one whose field is impossible (a stored row or a frame
    # that went round the app's checks)
    now = time.time()
    good = NewTask(id="a" * 32, name="tasks.add", queue="default", payload=b"x")
    bad = NewTask(id="b" * 32, name="tasks.add", queue="default", payload=b"x", **{field: value})
    # When it is enqueued, then it is refused naming the field, and nothing is written
    with pytest.raises(ConfigurationError, match=field):
        storage.enqueue([good, bad], now=now)
    assert storage.get(["a" * 32, "b" * 32]) == [None, None]


@pytest.mark.parametrize("lease", [NAN, INF, 0.0, -5.0])
def test_store_refuses_a_bad_lease(storage: Storage, lease: float) -> None:
    storage.enqueue([NewTask(id="a" * 32, name="tasks.add", queue="default", payload=b"x")])
    with pytest.raises(ConfigurationError, match="lease"):
        storage.claim("w", ["default"], lease=lease)
    (claimed,) = storage.claim("w", ["default"], lease=30)
    with pytest.raises(ConfigurationError, match="lease"):
        storage.extend("w", [(claimed.id, claimed.lease_token)], lease=lease)


@pytest.mark.parametrize("run_at", [NAN, INF, time.time() + ELEVEN_YEARS])
def test_a_bad_outcome_fails_its_task_and_the_rest_of_the_batch_applies(storage: Storage, run_at: float) -> None:
    # Given two running tasks
    ids = storage.enqueue(
        [NewTask(id=c * 32, name="tasks.add", queue="default", payload=b"x", max_attempts=3) for c in "ab"]
    )
    claimed = {c.id: c for c in storage.claim("w", ["default"], limit=2, lease=30)}
    a, b = claimed[ids[0]], claimed[ids[1]]
    # When one outcome asks for a retry at an impossible time, flushed with a good one
    applied = storage.complete(
        [
            Outcome(a.id, a.lease_token, SCHEDULED, run_at=run_at, reason="error"),
            Outcome(b.id, b.lease_token, "succeeded", result=b"r"),
        ]
    )
    # Then the batch applied; the bad one failed saying why, and nothing waits at +inf
    assert applied == [True, True]
    row_a, row_b = storage.get(ids)
    assert row_a is not None and row_a.state == FAILED and "invalid outcome" in (row_a.reason or "")
    assert math.isfinite(row_a.run_at)
    assert row_b is not None and row_b.state == "succeeded"


@pytest.mark.parametrize(
    ("fn", "args", "words"),
    [
        (input_tasks.retry_after, [NAN], "Retry(countdown=...)"),
        (input_tasks.retry_after, [INF], "Retry(countdown=...)"),
        (input_tasks.retry_after, [-3], "Retry(countdown=...)"),
        (input_tasks.retry_after, [ELEVEN_YEARS], "ten years"),
        (input_tasks.retry_at, [time.time() + ELEVEN_YEARS], "Retry(eta=...)"),
    ],
    ids=["nan", "inf", "negative", "11y", "eta-11y"],
)
def test_bad_retry_from_inside_a_task_fails_it_with_that_reason(
    make_any_app: MakeApp, fn: Callable[..., Any], args: list[Any], words: str
) -> None:
    # Given a task with retries left that asks for an impossible retry
    app = make_any_app()
    task = app.task(retries=3)(fn)
    r = task.delay(*args)
    # When a worker runs it
    app.run_until_empty()
    # Then it failed at once (no retry scheduled), its error naming the argument
    with pytest.raises(TaskFailed) as caught:
        r.get(timeout=5)
    assert caught.value.reason == "invalid input"
    assert caught.value.type == "liteq.exceptions.ConfigurationError"
    assert words in caught.value.message
    row = app.storage.get([r.id])[0]
    assert row is not None and row.attempts == 1 and math.isfinite(row.run_at)


def test_bad_countdown_of_an_enqueue_inside_a_task_fails_the_task(make_app: MakeApp, tmp_path: Path) -> None:
    app = make_app()
    task = app.task(retries=2)(input_tasks.enqueue_later)
    r = task.delay(str(tmp_path / "store"), NAN)
    app.run_until_empty()
    with pytest.raises(TaskFailed) as caught:
        r.get(timeout=5)
    assert caught.value.reason == "invalid input" and "countdown" in caught.value.message
    assert app.storage.counts()["default"] == {"failed": 1}


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-1", str(ELEVEN_YEARS), "soon"])
@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["enqueue", "tests.pool_app:app", "tests.pool_tasks.add", "--countdown"], "--countdown"),
        (["worker", "STORE", "--shutdown-timeout"], "--shutdown-timeout"),
    ],
    ids=["enqueue-countdown", "worker-shutdown-timeout"],
)
def test_cli_refuses_bad_duration_flags(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], flag: str, value: str
) -> None:
    # When a duration flag is given NaN, an infinity, a negative or absurd value
    args = [a.replace("STORE", str(tmp_path / "store")) for a in argv]
    code = main([*args, value])
    err = capsys.readouterr().err
    # Then it is a usage error naming the flag, and no store was touched
    assert code == EXIT_USAGE, err
    assert flag in err
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize("option", ["busy_timeout", "result_ttl"])
@pytest.mark.parametrize("value", [NAN, INF, -1.0])
def test_store_options_refuse_bad_durations(tmp_path: Path, option: str, value: float) -> None:
    from liteq.storage.sqlite import SqliteStorage

    with pytest.raises(ConfigurationError, match=option):
        SqliteStorage(tmp_path / "store", **{option: value})


@pytest.mark.parametrize("size", ["9" * 400, "0", "0.1"])
def test_cli_refuses_absurd_sizes(tmp_path: Path, capsys: pytest.CaptureFixture[str], size: str) -> None:
    code = main(["worker", str(tmp_path / "store"), "--max-memory-per-child", size])
    err = capsys.readouterr().err
    assert code == EXIT_USAGE, err
    assert "size" in err and "Traceback" not in err
