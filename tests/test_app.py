"""The LiteQ API above the store: construction, tasks, enqueue, results, retries, the in-process worker.

Time is driven with ``now=`` (``run_until_empty(now=...)``, ``storage.prune(now=...)``), never slept.
Most behaviour runs on both a directory store and ``memory://`` (``make_any_app``).
"""

from __future__ import annotations

import pickle
import signal
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from liteq import (
    DEFAULT_STORE,
    ConfigurationError,
    ErrorInfo,
    LiteQ,
    LiteQError,
    Progress,
    Result,
    ResultExpired,
    ResultTimeout,
    Retry,
    SerializationError,
    Signature,
    SoftTimeLimit,
    Task,
    TaskCancelled,
    TaskExpired,
    TaskFailed,
    UnknownTask,
    Worker,
    current,
)
from liteq.message import encode_call
from liteq.serializer import dumps_msgpack
from liteq.storage.records import NewTask, TaskRow
from tests import tasks

pytestmark = pytest.mark.timeout(60)

MakeApp = Callable[..., LiteQ]


# -- helpers -------------------------------------------------------------------------------------


def row(app: LiteQ, task_id: str) -> TaskRow:
    """The stored row of a task (which must exist)."""
    (found,) = app.storage.get([task_id])
    assert found is not None, f"task {task_id} is not in the store"
    return found


def total(app: LiteQ) -> int:
    """How many tasks the store holds, in any state."""
    return sum(app.stats()["states"].values())


def raw_task(app: LiteQ, name: str, payload: bytes, queue: str = "default") -> str:
    """Enqueue a task straight through the storage contract, bypassing the app's checks."""
    task_id = uuid.uuid4().hex
    (stored,) = app.storage.enqueue([NewTask(id=task_id, name=name, queue=queue, payload=payload, max_attempts=1)])
    return stored


# -- construction ----------------------------------------------------------------------------------


def test_directory_store_is_created(tmp_path: Path, make_app: MakeApp) -> None:
    # Given a directory that does not exist yet
    target = tmp_path / "nested" / "jobs"
    # When an app opens it
    app = make_app(target)
    # Then the directory holds the database, and the app works on it
    assert (target / "liteq.sqlite3").exists()
    assert app.task(tasks.add).delay(1, 2).state == "pending"


def test_sqlite_url_with_absolute_path(tmp_path: Path, make_app: MakeApp) -> None:
    # Given a sqlite:/// URL naming an absolute directory
    target = tmp_path / "url-store"
    # When an app opens it and a task runs
    app = make_app(f"sqlite://{target}")
    add = app.task(tasks.add)
    r = add.delay(2, 3)
    app.run_until_empty()
    # Then the store lives in that directory
    assert (target / "liteq.sqlite3").exists()
    assert r.get(timeout=5) == 5


def test_memory_store(make_memory_app: MakeApp) -> None:
    # Given an app on memory://
    app = make_memory_app()
    add = app.task(tasks.add)
    # When a task is queued and drained
    r = add.delay(20, 22)
    assert app.run_until_empty() == 1
    # Then the result is there, and nothing was written to disk
    assert r.get(timeout=5) == 42
    assert app.storage.location == "memory://"


@pytest.mark.parametrize(
    ("store", "words"),
    [
        ("ftp://host/dir", ["unknown store scheme", "'ftp'", "sqlite:///abs/dir", "memory://"]),
        ("redis://localhost:6379", ["unknown store scheme", "'redis'"]),
        ("sqlite://relative/dir", ["absolute path", "three slashes"]),
        ("", ["empty"]),
    ],
)
def test_bad_store_urls_raise_configuration_error(store: str, words: list[str]) -> None:
    # Given a store URL that names nothing liteq can open
    # When an app is created on it
    with pytest.raises(ConfigurationError) as caught:
        LiteQ(store)
    # Then the message says what is wrong and what to pass instead
    for word in words:
        assert word in str(caught.value)


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"serializer": "json"}, ["serializer", "'msgpack'", "'pickle'", "'json'"]),
        ({"durability": "fast"}, ["durability", "'normal'", "'full'", "'fast'"]),
        ({"result_ttl": -1}, ["result_ttl", ">= 0"]),
        ({"result_ttl": float("nan")}, ["result_ttl"]),
        ({"result_ttl": "1h"}, ["result_ttl"]),
        ({"default_queue": ""}, ["default_queue", "non-empty"]),
        ({"lease": 0}, ["lease", "> 0"]),
        ({"max_payload_size": 0}, ["max_payload_size", "positive"]),
        ({"busy_timeout": -1}, ["busy_timeout", ">= 0"]),
        ({"blob_threshold": 0}, ["blob_threshold", "positive"]),
    ],
)
def test_bad_options_raise_configuration_error(tmp_path: Path, options: dict[str, Any], words: list[str]) -> None:
    # Given an option value that makes no sense
    # When an app is created with it
    with pytest.raises(ConfigurationError) as caught:
        LiteQ(tmp_path / "store", **options)
    # Then the message names the option and what it should be
    for word in words:
        assert word in str(caught.value)


def test_configuration_error_is_a_liteq_error_and_a_value_error(tmp_path: Path) -> None:
    # Given / When a bad option
    with pytest.raises(ConfigurationError) as caught:
        LiteQ(tmp_path / "store", durability="fast")
    # Then it can be caught as the library root or as a ValueError
    assert isinstance(caught.value, LiteQError)
    assert isinstance(caught.value, ValueError)


def test_result_ttl_accepts_a_timedelta(make_app: MakeApp) -> None:
    # Given / When an app with a timedelta result_ttl
    app = make_app(result_ttl=timedelta(minutes=2))
    # Then it is kept as float seconds
    assert app.result_ttl == 120.0


def test_app_is_a_context_manager_and_close_is_idempotent(tmp_path: Path) -> None:
    # Given an app used as a context manager
    with LiteQ(tmp_path / "store") as app:
        app.task(tasks.add).delay(1, 1)
    # When it is closed again
    app.close()
    # Then nothing breaks, and the task was committed for the next app on that directory
    with LiteQ(tmp_path / "store") as again:
        assert again.stats()["states"] == {"pending": 1}


# -- the task decorator --------------------------------------------------------------------------


def test_task_decorator_without_arguments(make_app: MakeApp) -> None:
    # Given an app
    app = make_app()

    # When a function is decorated with bare @app.task
    @app.task
    def double(x: int) -> int:
        return 2 * x

    # Then it is a Task, still callable in place, registered under module.qualname
    assert isinstance(double, Task)
    assert double(4) == 8
    assert double.name == f"{__name__}.test_task_decorator_without_arguments.<locals>.double"
    assert app.tasks[double.name] is double
    assert double.__name__ == "double"


def test_task_decorator_with_options(make_app: MakeApp) -> None:
    # Given an app
    app = make_app()

    # When a function is decorated with @app.task(...)
    @app.task(name="math.triple", queue="math", priority=5, retries=2, timeout=30, expires=timedelta(minutes=1))
    def triple(x: int) -> int:
        return 3 * x

    # Then the name and options are kept, durations as float seconds
    assert triple.name == "math.triple"
    assert triple.options.queue == "math"
    assert triple.options.priority == 5
    assert triple.options.retries == 2
    assert triple.options.timeout == 30.0
    assert triple.options.expires == 60.0
    assert app.get_task("math.triple") is triple
    assert "math" in app.queues()


def test_default_name_is_module_and_qualname(make_app: MakeApp) -> None:
    # Given a module-level function in an importable module
    app = make_app()
    # When it is registered without a name
    add = app.task(tasks.add)
    # Then its name is module.qualname
    assert add.name == f"{tasks.__name__}.add"


def test_default_queue_applies_to_tasks(make_app: MakeApp) -> None:
    # Given an app whose default queue is "main"
    app = make_app(default_queue="main")
    add = app.task(tasks.add)
    # When a task without a queue is sent
    r = add.delay(1, 2)
    # Then it lands in "main"
    assert add.options.queue == "main"
    assert row(app, r.id).queue == "main"
    assert app.run_until_empty() == 1


def test_two_tasks_with_one_name_raise(make_app: MakeApp) -> None:
    # Given a task registered as "dup"
    app = make_app()
    app.task(name="dup")(tasks.add)
    # When another function is registered under the same name
    with pytest.raises(ConfigurationError) as caught:
        app.task(name="dup")(tasks.echo)
    # Then the error names it and says how to fix it; the first registration stands
    assert "'dup'" in str(caught.value)
    assert "name=" in str(caught.value)
    assert app.tasks["dup"].fn is tasks.add


def test_registering_one_function_twice_raises(make_app: MakeApp) -> None:
    # Given a function registered under its default name
    app = make_app()
    app.task(tasks.add)
    # When / Then registering it again is refused
    with pytest.raises(ConfigurationError, match="two tasks are named"):
        app.task(tasks.add)


def test_task_decorator_refuses_a_non_callable(make_app: MakeApp) -> None:
    # Given an app
    app = make_app()
    # When / Then decorating something that is not a function is refused
    with pytest.raises(ConfigurationError, match="needs a function"):
        app.task(42)  # type: ignore[call-overload]


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"retries": -1}, ["retries", ">= 0"]),
        ({"retries": 1.5}, ["retries", "integer"]),
        ({"retries": True}, ["retries", "integer"]),
        ({"priority": "high"}, ["priority", "integer"]),
        ({"timeout": 0}, ["timeout", "> 0"]),
        ({"timeout": -3}, ["timeout"]),
        ({"soft_timeout": 10, "timeout": 5}, ["soft_timeout", "shorter than timeout"]),
        ({"expires": -1}, ["expires", ">= 0"]),
        ({"result_ttl": "soon"}, ["result_ttl"]),
        ({"retry_backoff": -2}, ["retry_backoff"]),
        ({"max_attempts": 0}, ["max_attempts", ">= 1"]),
        ({"queue": ""}, ["queue", "non-empty"]),
        ({"retry": 3}, ["unknown task option", "'retry'"]),
    ],
)
def test_bad_task_options_raise_at_decoration(make_app: MakeApp, options: dict[str, Any], words: list[str]) -> None:
    # Given an app
    app = make_app()
    # When a task is declared with a bad option
    with pytest.raises(ConfigurationError) as caught:
        app.task(**options)(tasks.add)
    # Then the message names the option; nothing is registered
    for word in words:
        assert word in str(caught.value)
    assert app.tasks == {}


# -- enqueue: delay and apply_async --------------------------------------------------------------


def test_delay_stores_a_pending_task(make_any_app: MakeApp) -> None:
    # Given a task
    app = make_any_app()
    add = app.task(tasks.add)
    # When it is delayed
    r = add.delay(2, 3)
    # Then a Result comes back and the task waits, not ready
    assert isinstance(r, Result)
    assert r.state == "pending"
    assert not r.ready()
    assert not r.successful()
    assert row(app, r.id).name == add.name


def test_delay_then_run_until_empty_succeeds(make_any_app: MakeApp) -> None:
    # Given two queued tasks
    app = make_any_app()
    add = app.task(tasks.add)
    r1, r2 = add.delay(2, 3), add.delay(x=10, y=-1)
    # When the app drains in this process
    ran = app.run_until_empty()
    # Then both ran, and their results are readable (twice)
    assert ran == 2
    assert r1.get(timeout=5) == 5
    assert r2.get(timeout=5) == 9
    assert r2.get() == 9
    assert r1.state == "succeeded"
    assert r1.ready() and r1.successful()


def test_run_until_empty_on_an_empty_store_returns_zero(make_any_app: MakeApp) -> None:
    # Given an app with nothing queued
    app = make_any_app()
    # When / Then draining runs nothing
    assert app.run_until_empty() == 0


def test_countdown_schedules_the_task(make_any_app: MakeApp) -> None:
    # Given a task sent with a countdown of a minute
    app = make_any_app()
    add = app.task(tasks.add)
    before = time.time()
    r = add.apply_async((1, 2), countdown=60)
    # When the app drains now
    ran_now = app.run_until_empty()
    # Then nothing ran: the task is scheduled a minute out
    assert ran_now == 0
    assert r.state == "scheduled"
    assert before + 60 <= row(app, r.id).run_at <= time.time() + 60
    # And when the clock passes the countdown, it runs
    assert app.run_until_empty(now=time.time() + 61) == 1
    assert r.get(timeout=5) == 3


def test_countdown_accepts_a_timedelta(make_any_app: MakeApp) -> None:
    # Given / When a countdown as a timedelta
    app = make_any_app()
    add = app.task(tasks.add)
    before = time.time()
    r = add.apply_async((1, 2), countdown=timedelta(minutes=5))
    # Then it means the same seconds
    assert before + 300 <= row(app, r.id).run_at <= time.time() + 300


def test_eta_schedules_the_task(make_any_app: MakeApp) -> None:
    # Given a task sent with an aware eta an hour out, in a non-UTC zone
    app = make_any_app()
    add = app.task(tasks.add)
    eta = datetime.now(timezone(timedelta(hours=-5))) + timedelta(hours=1)
    r = add.apply_async((1, 2), eta=eta)
    # When the app drains now, then after the eta
    assert app.run_until_empty() == 0
    assert r.state == "scheduled"
    assert row(app, r.id).run_at == pytest.approx(eta.timestamp())
    assert app.run_until_empty(now=eta.timestamp() + 1) == 1
    # Then it ran only once the eta passed
    assert r.get(timeout=5) == 3


def test_naive_eta_raises_and_writes_nothing(make_any_app: MakeApp) -> None:
    # Given a task
    app = make_any_app()
    add = app.task(tasks.add)
    # When it is sent with a naive eta
    with pytest.raises(ConfigurationError) as caught:
        add.apply_async((1, 2), eta=datetime.now() + timedelta(hours=1))
    # Then the error says to pass an aware datetime, and nothing is stored
    assert "naive" in str(caught.value)
    assert "timezone-aware" in str(caught.value)
    assert total(app) == 0


def test_countdown_and_eta_together_raise(make_any_app: MakeApp) -> None:
    # Given a task
    app = make_any_app()
    add = app.task(tasks.add)
    # When / Then both countdown and eta are refused
    with pytest.raises(ConfigurationError, match="countdown or eta"):
        add.apply_async((1, 2), countdown=5, eta=datetime.now(timezone.utc))
    assert total(app) == 0


@pytest.mark.parametrize(
    ("options", "word"),
    [
        ({"countdown": -1}, "countdown"),
        ({"expires": -5}, "expires"),
        ({"priority": "high"}, "priority"),
        ({"priority": 1.5}, "priority"),
        ({"queue": ""}, "queue"),
        ({"retries": -1}, "retries"),
        ({"retries": "3"}, "retries"),
        ({"idempotency_key": 42}, "idempotency_key"),
        ({"expires": datetime(2030, 1, 1)}, "naive"),
    ],
)
def test_bad_apply_async_options_raise(make_any_app: MakeApp, options: dict[str, Any], word: str) -> None:
    # Given a task
    app = make_any_app()
    add = app.task(tasks.add)
    # When it is sent with a bad per-call option
    with pytest.raises(ConfigurationError) as caught:
        add.apply_async((1, 2), **options)
    # Then the error names the option, and nothing is written
    assert word in str(caught.value)
    assert total(app) == 0


def test_priority_orders_the_runs(make_any_app: MakeApp) -> None:
    # Given tasks sent low priority first, then high
    app = make_any_app()
    order: list[str] = []

    @app.task
    def record(label: str) -> None:
        order.append(label)

    record.apply_async(("low",), priority=0)
    record.apply_async(("mid",), priority=5)
    record.apply_async(("high",), priority=9)
    # When the app drains
    app.run_until_empty()
    # Then the highest priority ran first
    assert order == ["high", "mid", "low"]


def test_task_priority_option_is_the_default_and_per_call_overrides(make_any_app: MakeApp) -> None:
    # Given a task declared with priority 3
    app = make_any_app()
    add = app.task(priority=3)(tasks.add)
    # When it is sent plainly and with a per-call priority
    plain = add.delay(1, 1)
    urgent = add.apply_async((1, 1), priority=8)
    # Then each row carries its priority
    assert row(app, plain.id).priority == 3
    assert row(app, urgent.id).priority == 8


def test_queue_routes_the_task(make_any_app: MakeApp) -> None:
    # Given a task sent to queue "high"
    app = make_any_app()
    add = app.task(tasks.add)
    r = add.apply_async((1, 2), queue="high")
    # When a worker drains only the default queue
    assert app.run_until_empty(queues=["default"]) == 0
    # Then it waits in "high", and a worker on "high" runs it
    assert row(app, r.id).queue == "high"
    assert app.stats()["queues"] == {"high": {"pending": 1}}
    assert app.run_until_empty(queues=["high"]) == 1
    assert r.get(timeout=5) == 3


def test_task_queue_option_is_consumed_by_default(make_any_app: MakeApp) -> None:
    # Given a task declared on queue "math"
    app = make_any_app()
    add = app.task(queue="math")(tasks.add)
    r = add.delay(1, 2)
    # When the app drains without naming queues
    # Then the queues of registered tasks are consumed
    assert app.run_until_empty() == 1
    assert r.get(timeout=5) == 3


def test_idempotency_key_creates_one_task(make_any_app: MakeApp) -> None:
    # Given a task sent with an idempotency key
    app = make_any_app()
    add = app.task(tasks.add)
    first = add.apply_async((1, 2), idempotency_key="order-42")
    # When the same enqueue is retried (after a timeout, say), even with other arguments
    again = add.apply_async((1, 2), idempotency_key="order-42")
    other = add.apply_async((5, 5), idempotency_key="order-42")
    # Then one task exists, and every call got its id
    assert first.id == again.id == other.id
    assert total(app) == 1
    app.run_until_empty()
    assert other.get(timeout=5) == 3


def test_expires_turns_a_late_task_expired(make_any_app: MakeApp) -> None:
    # Given a task that must start within 5 seconds
    app = make_any_app()
    add = app.task(tasks.add)
    r = add.apply_async((1, 2), expires=5)
    # When no worker takes it until 10 seconds later
    ran = app.run_until_empty(now=time.time() + 10)
    # Then it never ran, ended expired, and get says so
    assert ran == 0
    assert r.state == "expired"
    assert r.ready() and not r.successful()
    with pytest.raises(TaskExpired) as caught:
        r.get(timeout=5)
    assert caught.value.reason == "expired"
    assert isinstance(caught.value, TaskFailed)


def test_expires_in_time_still_runs(make_any_app: MakeApp) -> None:
    # Given a task declared to expire after a minute
    app = make_any_app()
    add = app.task(expires=60)(tasks.add)
    r = add.delay(1, 2)
    # When a worker takes it in time
    app.run_until_empty()
    # Then it runs normally
    assert r.get(timeout=5) == 3
    assert row(app, r.id).expires_at is not None


def test_expires_as_aware_datetime(make_any_app: MakeApp) -> None:
    # Given a task sent with an absolute expiry
    app = make_any_app()
    add = app.task(tasks.add)
    deadline = datetime.now(timezone.utc) + timedelta(seconds=30)
    r = add.apply_async((1, 2), expires=deadline)
    # When a worker comes only after it
    app.run_until_empty(now=deadline.timestamp() + 1)
    # Then the task expired
    assert row(app, r.id).expires_at == pytest.approx(deadline.timestamp())
    assert r.state == "expired"


def test_run_until_empty_keeps_going_past_a_batch_of_expired_tasks(make_any_app: MakeApp) -> None:
    # Given 20 tasks that will have expired (more than one claim batch of 16) and one that will not
    app = make_any_app()
    add = app.task(tasks.add)
    late = [add.apply_async((i, i), expires=1) for i in range(20)]
    fresh = add.delay(1, 2)
    # When a worker drains 10 seconds later
    ran = app.run_until_empty(now=time.time() + 10)
    # Then every late task expired, and the fresh one still ran
    assert {r.state for r in late} == {"expired"}
    assert ran == 1
    assert fresh.state == "succeeded"


def test_retries_override_per_call(make_any_app: MakeApp) -> None:
    # Given a task declared without retries, sent with retries=2
    app = make_any_app()
    attempts: list[int] = []

    @app.task(retry_backoff=0)
    def flaky() -> None:
        attempts.append(current().attempt)
        raise ValueError(f"attempt {current().attempt}")

    r = flaky.apply_async(retries=2)
    # When the app drains
    app.run_until_empty()
    # Then it ran three times and failed with the last error
    assert attempts == [1, 2, 3]
    with pytest.raises(TaskFailed) as caught:
        r.get(timeout=5)
    assert caught.value.message == "attempt 3"


def test_result_ttl_per_call(make_any_app: MakeApp) -> None:
    # Given a task sent with a short result_ttl
    app = make_any_app()
    add = app.task(tasks.add)
    r = add.apply_async((1, 2), result_ttl=30)
    # When it finishes
    app.run_until_empty()
    # Then its result expires 30 seconds after it finished
    found = row(app, r.id)
    assert found.finished_at is not None and found.result_expires_at is not None
    assert found.result_expires_at - found.finished_at == pytest.approx(30)


# -- signatures and enqueue_many -----------------------------------------------------------------


def test_signature_delay(make_any_app: MakeApp) -> None:
    # Given a signature with some arguments frozen
    app = make_any_app()
    add = app.task(tasks.add)
    sig = add.s(10)
    # When it is sent with the rest
    r = sig.delay(5)
    app.run_until_empty()
    # Then the call had all of them
    assert isinstance(sig, Signature)
    assert sig.name == add.name and sig.args == (10,)
    assert r.get(timeout=5) == 15


def test_signature_set_options(make_any_app: MakeApp) -> None:
    # Given a signature with call options
    app = make_any_app()
    add = app.task(tasks.add)
    sig = add.s(1, 2).set(queue="high", priority=7)
    # When it is sent
    r = sig.delay()
    # Then the options apply, and the original signature is unchanged
    assert row(app, r.id).queue == "high"
    assert row(app, r.id).priority == 7
    assert add.s(1, 2).options == {}


def test_enqueue_many_in_order(make_any_app: MakeApp) -> None:
    # Given signatures and (task, args, kwargs) tuples
    app = make_any_app()
    add = app.task(tasks.add)
    echo = app.task(tasks.echo)
    calls = [add.s(1, 2), (echo, ("a",), {"k": 1}), add.s(3, 4).set(queue="high")]
    # When they are enqueued in one batch
    results = app.enqueue_many(calls)
    app.run_until_empty(queues=["default", "high"])
    # Then the results come back in order
    assert [r.get(timeout=5) for r in results] == [3, [("a",), {"k": 1}], 7]


def test_enqueue_many_ids_are_unique_and_sort_in_the_batchs_order(make_any_app: MakeApp) -> None:
    # Given two batches of one task sent one after the other
    app = make_any_app()
    add = app.task(tasks.add)
    before = int(time.time() * 1000)
    first = [r.id for r in app.enqueue_many([add.s(i, i) for i in range(300)])]
    second = [r.id for r in app.enqueue_many([add.s(i, i) for i in range(300)])]
    # Then every id is 32 hex digits starting with the batch's millisecond, unique, and a batch's
    # ids sort in its order (its rows go into the id index as one run)
    ids = first + second
    assert len(set(ids)) == 600 and all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    assert int(first[0][:12], 16) >= before
    assert first == sorted(first) and second == sorted(second)
    assert [r.state if r else None for r in app.storage.get(ids)] == ["pending"] * 600


def test_enqueue_many_is_atomic(make_any_app: MakeApp) -> None:
    # Given a batch whose middle call has an argument that cannot be serialized
    app = make_any_app()
    add = app.task(tasks.add)
    calls = [add.s(1, 2), add.s(1, lambda: 2), add.s(3, 4)]
    # When the batch is enqueued
    with pytest.raises(SerializationError) as caught:
        app.enqueue_many(calls)
    # Then it names the argument, and nothing of the batch is written
    assert caught.value.path == "args[1]"
    assert total(app) == 0


def test_enqueue_many_with_a_bad_option_writes_nothing(make_any_app: MakeApp) -> None:
    # Given a batch whose middle call has a naive eta
    app = make_any_app()
    add = app.task(tasks.add)
    calls = [add.s(1, 2), add.s(2, 3).set(eta=datetime(2030, 1, 1)), add.s(3, 4)]
    # When / Then it is refused as a whole
    with pytest.raises(ConfigurationError):
        app.enqueue_many(calls)
    assert total(app) == 0


def test_enqueue_many_of_nothing(make_any_app: MakeApp) -> None:
    # Given / When an empty batch
    app = make_any_app()
    # Then nothing happens
    assert app.enqueue_many([]) == []


# -- stats and purge ------------------------------------------------------------------------------


def test_stats_counts_by_state_and_queue(make_any_app: MakeApp) -> None:
    # Given tasks in two queues, in several states
    app = make_any_app()
    add = app.task(tasks.add)
    bad = app.task(tasks.fail)
    add.delay(1, 1)
    bad.delay()
    add.apply_async((1, 1), queue="high")
    add.apply_async((1, 1), countdown=3600)
    app.run_until_empty(queues=["default"])
    add.delay(2, 2)
    # When stats are read
    stats = app.stats()
    # Then states and queues are counted
    assert stats["states"] == {"succeeded": 1, "failed": 1, "pending": 2, "scheduled": 1}
    assert stats["queues"] == {
        "default": {"succeeded": 1, "failed": 1, "pending": 1, "scheduled": 1},
        "high": {"pending": 1},
    }
    assert stats["workers"] == []


def test_stats_of_an_empty_store(make_any_app: MakeApp) -> None:
    # Given / When an empty store
    app = make_any_app()
    # Then stats are empty but complete
    assert app.stats() == {"states": {}, "queues": {}, "workers": []}


def test_purge_everything(make_any_app: MakeApp) -> None:
    # Given finished and waiting tasks
    app = make_any_app()
    add = app.task(tasks.add)
    done = add.delay(1, 1)
    app.run_until_empty()
    waiting = add.delay(2, 2)
    # When the store is purged
    deleted = app.purge()
    # Then they are gone, results too
    assert deleted == 2
    assert total(app) == 0
    with pytest.raises(ResultExpired):
        done.get(timeout=1)
    with pytest.raises(ResultExpired):
        _ = waiting.state


def test_purge_by_queue_and_state(make_any_app: MakeApp) -> None:
    # Given tasks in two queues, some finished
    app = make_any_app()
    add = app.task(tasks.add)
    add.delay(1, 1)
    app.run_until_empty()
    add.delay(2, 2)
    keep = add.apply_async((3, 3), queue="high")
    # When only finished tasks of "default" are purged
    assert app.purge(queue="default", states=["succeeded"]) == 1
    # Then the rest stay; a queue filter purges one queue
    assert app.stats()["states"] == {"pending": 2}
    assert app.purge(queue="default") == 1
    assert app.stats()["queues"] == {"high": {"pending": 1}}
    assert keep.state == "pending"


# -- results ------------------------------------------------------------------------------------


def test_result_from_a_second_app_on_the_same_directory(tmp_path: Path, make_app: MakeApp) -> None:
    # Given a task run by one app
    producer = make_app()
    add = producer.task(tasks.add)
    r = add.delay(19, 23)
    producer.run_until_empty()
    # When a second app on the same directory rebuilds the handle from the id
    reader = make_app(tmp_path / "store")
    again = reader.result(r.id)
    # Then it reads the same outcome
    assert again == r
    assert again.state == "succeeded"
    assert again.get(timeout=5) == 42


def test_second_app_runs_what_the_first_queued(make_app: MakeApp, tmp_path: Path) -> None:
    # Given a producer app and a worker app on one directory, both knowing the task
    producer = make_app()
    worker_app = make_app(tmp_path / "store")
    add = producer.task(tasks.add)
    worker_app.task(tasks.add)
    r = add.delay(1, 2)
    # When the worker app drains
    assert worker_app.run_until_empty() == 1
    # Then the producer sees the result
    assert r.get(timeout=5) == 3


def test_get_timeout_raises_result_timeout(make_any_app: MakeApp) -> None:
    # Given a queued task and no worker
    app = make_any_app()
    add = app.task(tasks.add)
    r = add.delay(1, 2)
    # When the caller waits briefly
    started = time.monotonic()
    with pytest.raises(ResultTimeout) as caught:
        r.get(timeout=0.05)
    # Then it times out promptly, saying the state, and the task is still there
    assert time.monotonic() - started < 5
    assert "pending" in str(caught.value)
    assert isinstance(caught.value, TimeoutError)
    assert r.state == "pending"


def test_get_propagate_false_returns_the_error(make_any_app: MakeApp) -> None:
    # Given a failed task
    app = make_any_app()
    bad = app.task(tasks.fail)
    r = bad.delay("nope")
    app.run_until_empty()
    # When the caller asks for the outcome without raising
    outcome = r.get(timeout=5, propagate=False)
    # Then it gets the TaskFailed
    assert isinstance(outcome, TaskFailed)
    assert outcome.message == "nope"


def test_task_failed_carries_type_message_traceback(make_any_app: MakeApp) -> None:
    # Given a task that raises ValueError
    app = make_any_app()
    bad = app.task(tasks.fail)
    r = bad.delay("bad input")
    # When it runs
    app.run_until_empty()
    # Then get raises TaskFailed with the remote type, message and traceback text
    assert r.state == "failed"
    assert r.ready() and not r.successful()
    with pytest.raises(TaskFailed) as caught:
        r.get(timeout=5)
    exc = caught.value
    assert exc.task_id == r.id
    assert exc.type == "ValueError"
    assert exc.message == "bad input"
    assert exc.reason == "error"
    assert "Traceback (most recent call last)" in exc.traceback
    assert "ValueError: bad input" in exc.traceback
    assert "in fail" in exc.traceback
    assert "ValueError: bad input" in str(exc)


def test_task_failed_names_a_qualified_type(make_any_app: MakeApp) -> None:
    # Given a task that raises an exception class from a module
    app = make_any_app()
    bad = app.task(tasks.fail_custom)
    r = bad.delay("custom")
    # When it runs
    app.run_until_empty()
    # Then the type is module-qualified
    with pytest.raises(TaskFailed) as caught:
        r.get(timeout=5)
    assert caught.value.type == f"{tasks.__name__}.CustomError"


def test_result_expired_after_result_ttl(make_any_app: MakeApp) -> None:
    # Given an app keeping results a minute, and a task that finished an hour ago (injected clock)
    app = make_any_app(result_ttl=60)
    add = app.task(tasks.add)
    r = add.delay(1, 2)
    app.run_until_empty(now=time.time() - 3600)
    # When the result is read now
    # Then it is refused as expired, never returned as None
    with pytest.raises(ResultExpired) as caught:
        r.get(timeout=5)
    assert "result_ttl" in str(caught.value)
    with pytest.raises(ResultExpired):
        _ = r.state


def test_result_readable_until_pruned(make_any_app: MakeApp) -> None:
    # Given a finished task with the default TTL
    app = make_any_app()
    add = app.task(tasks.add)
    r = add.delay(1, 2)
    app.run_until_empty()
    # When it is read, then pruned a day and more later
    assert r.get(timeout=5) == 3
    assert app.storage.prune(now=time.time() + 60) == 0
    assert r.get(timeout=5) == 3
    assert app.storage.prune(now=time.time() + 25 * 3600) == 1
    # Then reading raises ResultExpired
    with pytest.raises(ResultExpired) as caught:
        r.get(timeout=5)
    assert r.id in str(caught.value)


def test_task_result_ttl_option(make_any_app: MakeApp) -> None:
    # Given a task declared to keep its result 10 seconds
    app = make_any_app()
    add = app.task(result_ttl=10)(tasks.add)
    r = add.delay(1, 2)
    started = time.time()
    app.run_until_empty(now=started)
    # When the store is pruned 11 seconds later by a worker's maintenance
    app.run_until_empty(now=started + 11)
    # Then the result is gone
    with pytest.raises(ResultExpired):
        r.get(timeout=5)


def test_result_of_an_unknown_id_raises_result_expired(make_any_app: MakeApp) -> None:
    # Given an id no task has
    app = make_any_app()
    r = app.result("0" * 32)
    # When / Then every read says so
    with pytest.raises(ResultExpired):
        _ = r.state
    with pytest.raises(ResultExpired):
        r.get(timeout=1)
    with pytest.raises(ResultExpired):
        r.cancel()


def test_ignore_result(make_any_app: MakeApp) -> None:
    # Given a task whose result is ignored
    app = make_any_app()
    add = app.task(ignore_result=True)(tasks.add)
    r = add.delay(1, 2)
    # When it runs
    app.run_until_empty()
    # Then it succeeded, with no value stored
    assert r.successful()
    assert r.get(timeout=5) is None


def test_cancel_pending_task(make_any_app: MakeApp) -> None:
    # Given a pending task
    app = make_any_app()
    add = app.task(tasks.add)
    r = add.delay(1, 2)
    # When it is cancelled
    assert r.cancel() is True
    # Then it never runs, and get raises TaskCancelled
    assert app.run_until_empty() == 0
    assert r.state == "cancelled"
    assert r.ready() and not r.successful()
    with pytest.raises(TaskCancelled) as caught:
        r.get(timeout=5)
    assert caught.value.state == "cancelled"
    assert isinstance(caught.value, TaskFailed)


def test_cancel_scheduled_task(make_any_app: MakeApp) -> None:
    # Given a task scheduled an hour out
    app = make_any_app()
    add = app.task(tasks.add)
    r = add.apply_async((1, 2), countdown=3600)
    # When it is cancelled and the hour passes
    assert r.cancel() is True
    assert app.run_until_empty(now=time.time() + 7200) == 0
    # Then it never ran
    assert r.state == "cancelled"


def test_cancel_finished_task_returns_false(make_any_app: MakeApp) -> None:
    # Given a finished task
    app = make_any_app()
    add = app.task(tasks.add)
    r = add.delay(1, 2)
    app.run_until_empty()
    # When it is cancelled
    # Then nothing changes
    assert r.cancel() is False
    assert r.get(timeout=5) == 3


# -- immediate mode -------------------------------------------------------------------------------


def test_immediate_runs_at_delay(make_any_app: MakeApp) -> None:
    # Given an app in immediate mode
    app = make_any_app(immediate=True)
    add = app.task(tasks.add)
    # When a task is delayed
    r = add.delay(2, 3)
    # Then it has already run, through the store
    assert r.state == "succeeded"
    assert r.get(timeout=0) == 5
    assert app.stats()["states"] == {"succeeded": 1}


def test_immediate_runs_retries(make_any_app: MakeApp) -> None:
    # Given an immediate app and a task that fails twice, then succeeds
    app = make_any_app(immediate=True)
    attempts: list[int] = []

    @app.task(retries=3, retry_backoff=60)
    def flaky() -> str:
        attempts.append(current().attempt)
        if len(attempts) < 3:
            raise ValueError("not yet")
        return "done"

    # When it is delayed
    r = flaky.delay()
    # Then every attempt ran in the caller (backoff ignored), and it succeeded
    assert attempts == [1, 2, 3]
    assert r.get(timeout=0) == "done"


def test_immediate_failure_is_recorded_not_raised(make_any_app: MakeApp) -> None:
    # Given an immediate app and a failing task
    app = make_any_app(immediate=True)
    bad = app.task(retries=1, retry_backoff=0)(tasks.fail)
    # When it is delayed, the caller is not interrupted
    r = bad.delay("broken")
    # Then the failure is in the result
    with pytest.raises(TaskFailed, match="broken"):
        r.get(timeout=0)


def test_immediate_enqueue_many(make_any_app: MakeApp) -> None:
    # Given an immediate app
    app = make_any_app(immediate=True)
    add = app.task(tasks.add)
    # When a batch is enqueued
    results = app.enqueue_many([add.s(i, i) for i in range(5)])
    # Then every call has run
    assert [r.get(timeout=0) for r in results] == [0, 2, 4, 6, 8]


def test_immediate_ignores_countdown(make_any_app: MakeApp) -> None:
    # Given an immediate app (eager mode, like Celery's)
    app = make_any_app(immediate=True)
    add = app.task(tasks.add)
    # When a task is sent with a countdown
    r = add.apply_async((1, 2), countdown=3600)
    # Then it ran at once anyway
    assert r.get(timeout=0) == 3


# -- inside a task: current() ---------------------------------------------------------------------


def test_current_gives_id_name_attempt_retries_left(make_any_app: MakeApp) -> None:
    # Given a task with 2 retries that records its context and fails until its last attempt
    app = make_any_app()
    seen: list[tuple[str, str, str, int, int]] = []

    @app.task(name="ctx.probe", retries=2, retry_backoff=0)
    def probe() -> int:
        ctx = current()
        seen.append((ctx.id, ctx.name, ctx.queue, ctx.attempt, ctx.retries_left))
        if ctx.retries_left:
            raise ValueError("again")
        return ctx.attempt

    r = probe.delay()
    # When it runs to the end
    app.run_until_empty()
    # Then each attempt saw its own number and what was left
    assert seen == [
        (r.id, "ctx.probe", "default", 1, 2),
        (r.id, "ctx.probe", "default", 2, 1),
        (r.id, "ctx.probe", "default", 3, 0),
    ]
    assert r.get(timeout=5) == 3


def test_current_outside_a_task_raises() -> None:
    # Given no running task
    # When / Then current() refuses
    with pytest.raises(LiteQError, match="outside a running task"):
        current()


def test_progress_is_seen_as_result_progress(make_any_app: MakeApp) -> None:
    # Given a task that reports progress and reads it back through its own Result while running
    app = make_any_app()
    seen_while_running: list[Progress | None] = []

    @app.task
    def long_job() -> str:
        ctx = current()
        ctx.progress(0.4, "parsing")
        seen_while_running.append(app.result(ctx.id).progress)
        ctx.progress(0.9, "saving")
        return "ok"

    r = long_job.delay()
    assert r.progress is None
    # When it runs
    app.run_until_empty()
    # Then the caller saw the progress while it ran, and the last one stays
    assert seen_while_running == [Progress(0.4, "parsing")]
    assert r.progress == Progress(0.9, "saving")
    assert r.get(timeout=5) == "ok"


def test_progress_fraction_is_clamped(make_any_app: MakeApp) -> None:
    # Given a task that reports out-of-range fractions
    app = make_any_app()
    seen: list[Progress | None] = []

    @app.task
    def sloppy() -> None:
        ctx = current()
        ctx.progress(-3)
        seen.append(app.result(ctx.id).progress)
        ctx.progress(7, "over")

    r = sloppy.delay()
    # When it runs
    app.run_until_empty()
    # Then the fractions were clamped to [0, 1]
    assert seen == [Progress(0.0, "")]
    assert r.progress == Progress(1.0, "over")


# -- retries -------------------------------------------------------------------------------------


def test_retry_countdown(make_any_app: MakeApp) -> None:
    # Given a task that asks to be retried in 30 seconds on its first attempt
    app = make_any_app()

    @app.task(retries=1)
    def polite() -> int:
        if current().attempt == 1:
            raise Retry(countdown=30)
        return current().attempt

    r = polite.delay()
    t0 = time.time()
    # When it runs once
    assert app.run_until_empty(now=t0) == 1
    # Then it waits 30 seconds, scheduled, and runs after them
    assert r.state == "scheduled"
    assert row(app, r.id).run_at == pytest.approx(t0 + 30)
    assert app.run_until_empty(now=t0 + 29) == 0
    assert app.run_until_empty(now=t0 + 30) == 1
    assert r.get(timeout=5) == 2


def test_retry_countdown_timedelta(make_any_app: MakeApp) -> None:
    # Given a task retrying with a timedelta countdown
    app = make_any_app()

    @app.task(retries=1)
    def polite() -> None:
        if current().attempt == 1:
            raise Retry(countdown=timedelta(minutes=2))

    r = polite.delay()
    t0 = time.time()
    # When it runs once
    app.run_until_empty(now=t0)
    # Then the retry is two minutes out
    assert row(app, r.id).run_at == pytest.approx(t0 + 120)


def test_retry_eta(make_any_app: MakeApp) -> None:
    # Given a task that asks to be retried at an aware datetime
    app = make_any_app()
    eta = datetime.now(timezone.utc) + timedelta(hours=2)

    @app.task(retries=1)
    def later() -> str:
        if current().attempt == 1:
            raise Retry(eta=eta)
        return "later"

    r = later.delay()
    # When it runs once
    app.run_until_empty()
    # Then it is scheduled at that time, and runs once it comes
    assert r.state == "scheduled"
    assert row(app, r.id).run_at == pytest.approx(eta.timestamp())
    assert app.run_until_empty(now=eta.timestamp() + 1) == 1
    assert r.get(timeout=5) == "later"


def test_retry_with_naive_eta_is_refused() -> None:
    # Given / When a Retry with a naive datetime
    # Then it is refused where it is raised
    with pytest.raises(ConfigurationError, match="timezone-aware"):
        Retry(eta=datetime(2030, 1, 1))


def test_retry_records_the_given_exception(make_any_app: MakeApp) -> None:
    # Given a task that always asks for a retry with its cause
    app = make_any_app()

    @app.task(max_attempts=2)
    def stubborn() -> None:
        raise Retry(countdown=0, exc=ConnectionError("server down"))

    r = stubborn.delay()
    # When it runs out of attempts
    app.run_until_empty()
    # Then it failed with that cause
    with pytest.raises(TaskFailed) as caught:
        r.get(timeout=5)
    assert caught.value.type == "ConnectionError"
    assert caught.value.message == "server down"


def test_retries_with_backoff_end_failed_with_the_last_error(make_any_app: MakeApp) -> None:
    # Given a task with 2 retries, a 10 s backoff and no jitter, failing every time
    app = make_any_app()

    @app.task(retries=2, retry_backoff=10, retry_jitter=False)
    def doomed() -> None:
        raise ValueError(f"failure {current().attempt}")

    r = doomed.delay()
    t0 = time.time()
    # When it runs, then the clock passes each backoff: 10 s, then 20 s
    assert app.run_until_empty(now=t0) == 1
    assert r.state == "scheduled"
    assert row(app, r.id).run_at == pytest.approx(t0 + 10)
    assert app.run_until_empty(now=t0 + 9) == 0
    assert app.run_until_empty(now=t0 + 10) == 1
    assert row(app, r.id).run_at == pytest.approx(t0 + 30)
    assert app.run_until_empty(now=t0 + 30) == 1
    # Then it failed after three attempts, with the last error
    assert r.state == "failed"
    assert row(app, r.id).attempts == 3
    with pytest.raises(TaskFailed) as caught:
        r.get(timeout=5)
    assert caught.value.type == "ValueError"
    assert caught.value.message == "failure 3"
    assert app.run_until_empty(now=t0 + 10_000) == 0


def test_every_attempt_error_is_kept(make_any_app: MakeApp) -> None:
    # Given a task that failed on every one of its 3 attempts
    app = make_any_app()

    @app.task(retries=2, retry_backoff=0)
    def doomed() -> None:
        raise ValueError(f"failure {current().attempt}")

    r = doomed.delay()
    app.run_until_empty()
    # When its full record is read
    info = r.info()
    # Then each attempt's error is there
    assert len(info.errors) == 3


def test_retry_jitter_stays_within_half_to_full_backoff(make_any_app: MakeApp) -> None:
    # Given a task with a 100 s backoff and jitter
    app = make_any_app()
    bad = app.task(retries=1, retry_backoff=100)(tasks.fail)
    r = bad.delay()
    t0 = time.time()
    # When it fails once
    app.run_until_empty(now=t0)
    # Then the retry waits between 50 and 100 seconds
    assert t0 + 50 <= row(app, r.id).run_at <= t0 + 100


# -- failures that are not the task's exception ----------------------------------------------------


def test_unknown_task_name_fails_with_reason(make_any_app: MakeApp) -> None:
    # Given a task stored under a name this app does not register (in a module that imports)
    app = make_any_app()
    app.task(tasks.add)
    payload = encode_call(app.serializer, (), {}, {})
    task_id = raw_task(app, f"{tasks.__name__}.not_registered", payload)
    # When a worker runs it
    app.run_until_empty()
    # Then it failed visibly, with the reason and what to do
    r = app.result(task_id)
    assert r.state == "failed"
    with pytest.raises(TaskFailed) as caught:
        r.get(timeout=5)
    assert caught.value.reason == "unknown task"
    assert caught.value.type == "liteq.exceptions.UnknownTask"
    assert "not_registered" in caught.value.message
    assert row(app, task_id).payload == payload  # kept for a manual retry


def test_unknown_task_from_another_app(make_app: MakeApp, tmp_path: Path) -> None:
    # Given a producer that knows a task the worker app does not
    producer = make_app()
    worker_app = make_app(tmp_path / "store")

    @producer.task(name="only.in.producer")
    def secret() -> None:
        pass

    r = secret.delay()
    # When the worker app drains
    worker_app.run_until_empty()
    # Then the task failed as unknown, and the importing problem is named
    with pytest.raises(TaskFailed) as caught:
        r.get(timeout=5)
    assert caught.value.reason == "unknown task"
    assert "only.in" in caught.value.message


def test_get_task_of_unknown_name_raises_unknown_task(make_any_app: MakeApp) -> None:
    # Given an app allowed to import the (missing) module the name points at
    app = make_any_app(include=["nowhere.to.be"])
    # When / Then looking up a name nobody registered
    with pytest.raises(UnknownTask) as caught:
        app.get_task("nowhere.to.be.found")
    assert "'nowhere.to.be.found'" in str(caught.value)
    assert "importing 'nowhere.to.be'" in str(caught.value)


def test_undecodable_payload_fails_with_reason(make_any_app: MakeApp) -> None:
    # Given a registered task whose stored payload is garbage
    app = make_any_app()
    add = app.task(tasks.add)
    task_id = raw_task(app, add.name, b"\x00not a payload")
    good = add.delay(1, 2)
    # When a worker runs them
    app.run_until_empty()
    # Then the garbage failed with a reason, and the worker kept going
    with pytest.raises(TaskFailed) as caught:
        app.result(task_id).get(timeout=5)
    assert caught.value.reason == "undecodable payload"
    assert caught.value.type == "liteq.exceptions.SerializationError"
    assert good.get(timeout=5) == 3


def test_unserializable_result_fails_with_repr_and_worker_keeps_working(make_any_app: MakeApp) -> None:
    # Given a task that returns an object msgpack cannot encode, then a normal task
    app = make_any_app()
    weird = app.task(tasks.returns_unserializable)
    add = app.task(tasks.add)
    bad = weird.delay()
    good = add.delay(1, 2)
    # When a worker runs both
    assert app.run_until_empty() == 2
    # Then the first failed, naming the value's repr and type, and the second succeeded
    with pytest.raises(TaskFailed) as caught:
        bad.get(timeout=5)
    assert caught.value.reason == "unserializable result"
    assert caught.value.type == "liteq.exceptions.SerializationError"
    assert "<object object at" in caught.value.message
    assert "builtins.object" in caught.value.message
    assert good.get(timeout=5) == 3


def test_result_over_the_payload_limit_fails(make_any_app: MakeApp) -> None:
    # Given an app with a 1 KiB payload limit and a task returning 4 KiB
    app = make_any_app(max_payload_size=1024)
    ident = app.task(tasks.identity)

    @app.task
    def big() -> bytes:
        return b"x" * 4096

    r = big.delay()
    ok = ident.delay("small")
    # When it runs
    app.run_until_empty()
    # Then it failed as an unserializable result, and the next task was fine
    with pytest.raises(TaskFailed) as caught:
        r.get(timeout=5)
    assert caught.value.reason == "unserializable result"
    assert "limit" in caught.value.message
    assert ok.get(timeout=5) == "small"


# -- pickle ---------------------------------------------------------------------------------------


def test_pickle_serializer_is_opt_in(make_any_app: MakeApp) -> None:
    # Given an app with serializer="pickle"
    app = make_any_app(serializer="pickle")
    make_point = app.task(tasks.make_point)
    ident = app.task(tasks.identity)
    # When tasks take and return arbitrary picklable objects
    r1 = make_point.delay(1, 2)
    r2 = ident.delay(tasks.Point(3, 4))
    app.run_until_empty()
    # Then they round-trip
    assert r1.get(timeout=5) == tasks.Point(1, 2)
    assert r2.get(timeout=5) == tasks.Point(3, 4)


def test_msgpack_app_refuses_objects_pickle_would_take(make_any_app: MakeApp) -> None:
    # Given the default msgpack app
    app = make_any_app()
    ident = app.task(tasks.identity)
    # When / Then an arbitrary object is refused in the caller
    with pytest.raises(SerializationError) as caught:
        ident.delay(tasks.Point(1, 2))
    assert caught.value.path == "args[0]"
    assert caught.value.type_name == f"{tasks.__name__}.Point"
    assert total(app) == 0


def test_msgpack_app_refuses_a_pickle_payload(make_app: MakeApp, tmp_path: Path) -> None:
    # Given a pickle producer and a msgpack worker on the same directory, both knowing the task
    producer = make_app(serializer="pickle")
    worker_app = make_app(tmp_path / "store")
    ident = producer.task(tasks.identity)
    worker_app.task(tasks.identity)
    r = ident.delay(tasks.Point(1, 2))
    # When the msgpack worker drains
    worker_app.run_until_empty()
    # Then it refused to unpickle: failed as undecodable, saying why
    with pytest.raises(TaskFailed) as caught:
        r.get(timeout=5)
    assert caught.value.reason == "undecodable payload"
    assert "pickle" in caught.value.message


def test_msgpack_app_refuses_a_pickle_result(make_app: MakeApp, tmp_path: Path) -> None:
    # Given a result written by a pickle app
    producer = make_app(serializer="pickle")
    point = producer.task(tasks.make_point)
    r = point.delay(1, 2)
    producer.run_until_empty()
    # When a msgpack app on the same store reads it
    reader = make_app(tmp_path / "store")
    # Then it refuses to unpickle it
    with pytest.raises(SerializationError, match="pickle"):
        reader.result(r.id).get(timeout=5)


# -- the in-process worker ------------------------------------------------------------------------


def test_worker_run_once_runs_one_batch(make_any_app: MakeApp) -> None:
    # Given three queued tasks and a worker claiming two at a time
    app = make_any_app()
    add = app.task(tasks.add)
    results = [add.delay(i, i) for i in range(3)]
    worker = Worker(app, batch=2)
    try:
        # When it runs one iteration, then another, then a third
        first, second, third = worker.run_once(), worker.run_once(), worker.run_once()
    finally:
        worker.close()
    # Then two ran, then one, then none
    assert (first, second, third) == (2, 1, 0)
    assert worker.tasks_done == 3
    assert [r.get(timeout=5) for r in results] == [0, 2, 4]


def test_worker_run_once_respects_now(make_any_app: MakeApp) -> None:
    # Given a task scheduled in a minute
    app = make_any_app()
    add = app.task(tasks.add)
    r = add.apply_async((1, 2), countdown=60)
    worker = Worker(app)
    try:
        # When the worker iterates now and a minute later
        assert worker.run_once() == 0
        assert worker.run_once(now=time.time() + 61) == 1
    finally:
        worker.close()
    # Then it ran only then
    assert r.get(timeout=5) == 3


@pytest.mark.parametrize(("options", "word"), [({"batch": 0}, "batch"), ({"lease": 0}, "lease")])
def test_worker_options_are_checked(make_any_app: MakeApp, options: dict[str, Any], word: str) -> None:
    # Given / When a worker with a bad option
    app = make_any_app()
    # Then it is refused
    with pytest.raises(ConfigurationError, match=word):
        Worker(app, **options)


# -- more: defaults, durability, soft limits, payload versions, retry budgets ----------------------


def test_default_store_is_a_directory_under_the_working_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a working directory
    monkeypatch.chdir(tmp_path)
    # When an app is created without a store
    with LiteQ() as app:
        app.task(tasks.add).delay(1, 2)
    # Then its store is the default directory there
    assert (tmp_path / DEFAULT_STORE / "liteq.sqlite3").exists()


def test_durability_full(make_app: MakeApp) -> None:
    # Given an app with durability="full"
    app = make_app(durability="full")
    add = app.task(tasks.add)
    # When a task runs
    r = add.delay(1, 2)
    app.run_until_empty()
    # Then it works as usual
    assert app.durability == "full"
    assert r.get(timeout=5) == 3


def test_task_is_still_callable_in_place(make_any_app: MakeApp) -> None:
    # Given a registered task
    app = make_any_app()
    add = app.task(tasks.add)
    # When it is called directly
    # Then it runs here, and nothing is queued
    assert add(2, 2) == 4
    assert total(app) == 0


def test_per_call_retries_zero_overrides_task_retries(make_any_app: MakeApp) -> None:
    # Given a task with 3 retries, sent with retries=0
    app = make_any_app()
    bad = app.task(retries=3, retry_backoff=0)(tasks.fail)
    r = bad.apply_async(("once",), retries=0)
    # When it runs
    app.run_until_empty()
    # Then it ran once and failed
    assert row(app, r.id).attempts == 1
    with pytest.raises(TaskFailed, match="once"):
        r.get(timeout=5)


def test_running_state_is_visible_from_inside(make_any_app: MakeApp) -> None:
    # Given a task that reads its own state
    app = make_any_app()
    seen: list[str] = []

    @app.task
    def look() -> None:
        seen.append(app.result(current().id).state)

    r = look.delay()
    # When it runs
    app.run_until_empty()
    # Then it was running while it ran
    assert seen == ["running"]
    assert r.successful()


def test_soft_timeout_raises_inside_the_task(make_app: MakeApp) -> None:
    # Given a task with a 50 ms soft limit that blocks far longer (interruptibly)
    app = make_app()
    caught: list[str] = []

    @app.task(soft_timeout=0.05)
    def slow() -> None:
        try:
            threading.Event().wait(30)
        except SoftTimeLimit:
            caught.append("soft limit")
            raise

    r = slow.delay()
    started = time.monotonic()
    # When it runs in this (main) thread
    app.run_until_empty()
    # Then the limit interrupted it, and it failed saying so
    assert time.monotonic() - started < 10
    assert caught == ["soft limit"]
    with pytest.raises(TaskFailed) as exc:
        r.get(timeout=5)
    assert exc.value.reason == "soft timeout"
    assert exc.value.type == "liteq.exceptions.SoftTimeLimit"


def test_soft_timeout_keeps_the_callers_alarm(make_app: MakeApp) -> None:
    # Given a caller with its own SIGALRM timer running (as pytest-timeout or an app might have)
    app = make_app()
    add = app.task(soft_timeout=5)(tasks.add)
    r = add.delay(1, 2)
    old_handler = signal.getsignal(signal.SIGALRM)
    old_timer = signal.getitimer(signal.ITIMER_REAL)
    fired: list[int] = []
    signal.signal(signal.SIGALRM, lambda signum, frame: fired.append(signum))
    signal.setitimer(signal.ITIMER_REAL, 1000)
    try:
        # When a task with a soft limit runs and finishes in time
        app.run_until_empty()
        remaining, _ = signal.getitimer(signal.ITIMER_REAL)
        handler = signal.getsignal(signal.SIGALRM)
    finally:
        signal.signal(signal.SIGALRM, old_handler)
        signal.setitimer(signal.ITIMER_REAL, *old_timer)
    # Then the caller's handler and timer are both still in place
    assert r.get(timeout=5) == 3
    assert handler is not old_handler
    assert remaining > 900
    assert fired == []


def test_payload_without_later_fields_still_loads(make_any_app: MakeApp) -> None:
    # Given a version-1 payload with only the args field (as an older writer might store)
    app = make_any_app()
    add = app.task(tasks.add)
    task_id = raw_task(app, add.name, dumps_msgpack({"v": 1, "a": [1, 2]}))
    extra_id = raw_task(app, add.name, dumps_msgpack({"v": 1, "a": [3], "k": {"y": 4}, "m": {}, "later": "x"}))
    # When a worker runs them
    app.run_until_empty()
    # Then missing fields got defaults and unknown ones were ignored
    assert app.result(task_id).get(timeout=5) == 3
    assert app.result(extra_id).get(timeout=5) == 7


def test_payload_from_a_newer_liteq_is_refused(make_any_app: MakeApp) -> None:
    # Given a payload of a version this liteq does not know
    app = make_any_app()
    add = app.task(tasks.add)
    task_id = raw_task(app, add.name, dumps_msgpack({"v": 99, "a": [1, 2]}))
    # When a worker runs it
    app.run_until_empty()
    # Then it fails as undecodable, saying why
    with pytest.raises(TaskFailed) as caught:
        app.result(task_id).get(timeout=5)
    assert caught.value.reason == "undecodable payload"
    assert "newer" in caught.value.message


def test_task_failed_pickles_with_its_fields(make_any_app: MakeApp) -> None:
    # Given a TaskFailed from a failed task
    app = make_any_app()
    bad = app.task(tasks.fail)
    r = bad.delay("pickled")
    app.run_until_empty()
    exc = r.get(timeout=5, propagate=False)
    # When it is pickled and loaded (to cross a process boundary)
    again = pickle.loads(pickle.dumps(exc))
    # Then every field survives
    assert type(again) is TaskFailed
    assert (again.task_id, again.type, again.message, again.reason, again.state) == (
        r.id,
        "ValueError",
        "pickled",
        "error",
        "failed",
    )
    assert again.traceback == exc.traceback


def test_retry_with_retries_left_schedules_and_records_the_error(make_any_app: MakeApp) -> None:
    # Given a task with one retry that asks for it with a cause
    app = make_any_app()

    @app.task(retries=1)
    def once_more() -> str:
        if current().attempt == 1:
            raise Retry(countdown=5, exc=ConnectionError("try later"))
        return "ok"

    r = once_more.delay()
    t0 = time.time()
    # When it runs once, then after the countdown
    app.run_until_empty(now=t0)
    assert r.state == "scheduled"
    app.run_until_empty(now=t0 + 5)
    # Then it succeeded, and the first attempt's error is on record
    assert r.get(timeout=5) == "ok"
    (first,) = r.info().errors
    error = ErrorInfo.decode(first)
    assert error is not None
    assert (error.type, error.message) == ("ConnectionError", "try later")


def test_explicit_retry_respects_the_retries_budget(make_any_app: MakeApp) -> None:
    # Given a task with 1 retry that always asks to be retried
    app = make_any_app()
    attempts: list[tuple[int, int]] = []

    @app.task(retries=1)
    def always_again() -> None:
        attempts.append((current().attempt, current().retries_left))
        raise Retry(countdown=0)

    r = always_again.delay()
    # When it runs until it stops
    app.run_until_empty()
    # Then it ran twice (the first run and its one retry), and then failed
    assert attempts == [(1, 1), (2, 0)]
    assert r.state == "failed"
