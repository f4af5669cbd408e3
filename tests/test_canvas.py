"""Canvas (issue 5, DESIGN.md §6): signatures, chain, group, chord, map/starmap/chunks, nesting.

Everything here runs in this process, on both stores (SQLite directory and ``memory://``) and in
both in-process modes: ``immediate=True`` (each canvas runs inside ``delay()``) and "burst"
(``delay()`` only stores the canvas; ``app.run_until_empty()`` runs it). Tests that need to look at
a canvas half-way through use burst mode only. The last section checks the store-level contract the
canvas is built on (``NewTask.depends_on``, ``group_id``/``group_index``, ``group_members``) through
the :class:`~liteq.storage.contract.Storage` API, with the test clock passed as ``now=``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from liteq import (
    ConfigurationError,
    GroupResult,
    LiteQ,
    Result,
    ResultExpired,
    ResultTimeout,
    SerializationError,
    Signature,
    StorageError,
    StoreBusy,
    StoreUnavailable,
    Task,
    TaskCancelled,
    TaskFailed,
    Worker,
    chain,
    chord,
    group,
)
from liteq.message import ErrorInfo
from liteq.storage.contract import Storage
from liteq.storage.records import NewTask, Outcome
from liteq.storage.states import CANCELLED, FAILED, PENDING, RUNNING, SCHEDULED, SUCCEEDED
from tests import canvas_tasks as ct
from tests.pool_support import RunLog

pytestmark = pytest.mark.timeout(60)

#: The qualified type name a failing canvas step reports.
CANVAS_ERROR = "tests.canvas_tasks.CanvasError"
#: A second queue, for ``sig.set(queue=...)``.
OTHER_QUEUE = "canvas-other"
#: Seconds any wait on a result may take before the test fails (everything here is in-process).
WAIT = 5.0


# -- fixtures ------------------------------------------------------------------------------------


@dataclass
class Env:
    """An app with the canvas tasks registered, and how to run what it sent."""

    app: LiteQ
    immediate: bool
    add: Task[Any, Any]
    mul: Task[Any, Any]
    double: Task[Any, Any]
    square: Task[Any, Any]
    total: Task[Any, Any]
    collect: Task[Any, Any]
    echo: Task[Any, Any]
    constant: Task[Any, Any]
    fail: Task[Any, Any]
    flaky: Task[Any, Any]
    logged_collect: Task[Any, Any]

    def drain(self) -> None:
        """Run everything due (in burst mode; in immediate mode it already ran)."""
        if not self.immediate:
            self.app.run_until_empty(queues=[self.app.default_queue, OTHER_QUEUE])

    def stored(self) -> int:
        """How many tasks the store holds."""
        return sum(self.app.stats()["states"].values())


def _env(app: LiteQ) -> Env:
    return Env(
        app=app,
        immediate=app.immediate,
        add=app.task(ct.add),
        mul=app.task(ct.mul),
        double=app.task(ct.double),
        square=app.task(ct.square),
        total=app.task(ct.total),
        collect=app.task(ct.collect),
        echo=app.task(ct.echo),
        constant=app.task(ct.constant),
        fail=app.task(ct.fail),
        # Retried at once, so burst mode runs the retry in the same run_until_empty().
        flaky=app.task(retries=1, retry_backoff=0)(ct.flaky),
        logged_collect=app.task(ct.logged_collect),
    )


@pytest.fixture(params=("immediate", "burst"))
def env(request: pytest.FixtureRequest, make_any_app: Callable[..., LiteQ]) -> Env:
    """Canvas tasks on an app of each store kind, in each in-process mode."""
    return _env(make_any_app(immediate=request.param == "immediate"))


@pytest.fixture
def burst(make_any_app: Callable[..., LiteQ]) -> Env:
    """Canvas tasks on an app of each store kind; nothing runs until ``drain()``."""
    return _env(make_any_app())


def _store_kind(request: pytest.FixtureRequest) -> str:
    params = request.node.callspec.params
    return str(params.get("make_any_app", params.get("storage")))


def _run_ids(app: LiteQ, *ids: str) -> int:
    """Run, once, those of these tasks that are runnable now, in this process; return how many ran."""
    worker = Worker(app, batch=len(ids))
    try:
        return worker.run_once(ids=list(ids))
    finally:
        worker.close()


def _row(app: LiteQ, r: Result) -> Any:
    row = app.storage.get([r.id], history=True)[0]
    assert row is not None
    return row


def _never_started(app: LiteQ, r: Result) -> bool:
    row = _row(app, r)
    return bool(row.attempts == 0 and row.started_at is None)


# -- signatures ------------------------------------------------------------------------------------


def test_s_is_a_frozen_call_that_sends_nothing_until_delay(env: Env) -> None:
    # Given a signature
    sig = env.add.s(1, 2)

    # Then it names the task and its arguments, and nothing is stored yet
    assert isinstance(sig, Signature)
    assert (sig.name, sig.args, sig.kwargs, sig.immutable) == ("tests.canvas_tasks.add", (1, 2), {}, False)
    assert env.stored() == 0

    # When it is sent
    r = sig.delay()
    env.drain()

    # Then it runs like add.delay(1, 2)
    assert isinstance(r, Result)
    assert r.get(timeout=WAIT) == 3


def test_signature_delay_and_apply_async_append_arguments(env: Env) -> None:
    # Given partial signatures
    # When they are sent with more arguments
    r1 = env.add.s(2).delay(3)
    r2 = env.echo.s(1, a=1).apply_async((2,), {"b": 2})
    env.drain()

    # Then the extra arguments follow the signature's own
    assert r1.get(timeout=WAIT) == 5
    assert r2.get(timeout=WAIT) == [[1, 2], {"a": 1, "b": 2}]


def test_signature_set_gives_queue_and_priority_and_returns_a_copy(env: Env) -> None:
    # Given a signature with call options
    base = env.add.s(1, 2)
    sig = base.set(queue=OTHER_QUEUE, priority=7)

    # Then set() returned a copy and left the original alone
    assert sig is not base and base.options == {} and sig.options == {"queue": OTHER_QUEUE, "priority": 7}

    # When it is sent, and another one whose apply_async options override set()'s
    r = sig.delay()
    r2 = env.add.s(2, 2).set(priority=1).apply_async(priority=9, task_id="canvas-fixed-id")
    env.drain()

    # Then the stored tasks carry those options, and they ran
    assert (_row(env.app, r).queue, _row(env.app, r).priority) == (OTHER_QUEUE, 7)
    assert r2.id == "canvas-fixed-id" and _row(env.app, r2).priority == 9
    assert r.get(timeout=WAIT) == 3 and r2.get(timeout=WAIT) == 4


def test_set_options_apply_to_each_step_of_a_chain(env: Env) -> None:
    # Given a chain whose steps set their own queue and priority
    r = chain(env.add.s(1, 2).set(queue=OTHER_QUEUE), env.double.s().set(priority=3)).delay()

    # When it runs
    env.drain()

    # Then each step was stored with its options and the chain still flowed
    assert r.parent is not None
    first, last = _row(env.app, r.parent), _row(env.app, r)
    assert (first.queue, first.priority) == (OTHER_QUEUE, 0)
    assert (last.queue, last.priority) == (env.app.default_queue, 3)
    assert r.get(timeout=WAIT) == 6


def test_si_ignores_the_parent_result(env: Env) -> None:
    # Given chains whose second step is immutable, and one whose second step is not
    ignored = chain(env.add.s(1, 2), env.constant.si(10)).delay()
    piped = (env.add.s(1, 2) | env.echo.si(5)).delay()
    fed = (env.add.s(1, 2) | env.echo.s(5)).delay()

    # When they run
    env.drain()

    # Then the immutable step got only its own arguments, the other one got 3 first
    assert env.constant.si(10).immutable
    assert ignored.get(timeout=WAIT) == 10
    assert piped.get(timeout=WAIT) == [[5], {}]
    assert fed.get(timeout=WAIT) == [[3, 5], {}]
    # And the immutable step still waited for its parent
    assert ignored.parent is not None and ignored.parent.get(timeout=WAIT) == 3


# -- chains ----------------------------------------------------------------------------------------


def test_chain_passes_each_result_as_the_next_first_argument(env: Env) -> None:
    # Given a chain of three steps
    r = chain(env.add.s(1, 2), env.mul.s(10), env.add.s(5)).delay()

    # When it runs
    env.drain()

    # Then the last result is returned: (1 + 2) * 10 + 5
    assert isinstance(r, Result)
    assert r.get(timeout=WAIT) == 35
    # And .parent walks back along the chain to the first step, which has no parent
    assert isinstance(r.parent, Result) and r.parent.get(timeout=WAIT) == 30
    assert isinstance(r.parent.parent, Result) and r.parent.parent.get(timeout=WAIT) == 3
    assert r.parent.parent.parent is None
    # And the store links each step to its parent
    assert _row(env.app, r).parent_id == r.parent.id
    assert _row(env.app, r.parent).parent_id == r.parent.parent.id


def test_pipe_operator_builds_the_same_chain(env: Env) -> None:
    # Given chains written with | (signatures, chains and nested chains)
    three = env.add.s(1, 2) | env.double.s() | env.square.s()
    joined = chain(env.add.s(1, 1), env.double.s()) | chain(env.double.s(), env.square.s())

    # Then they are flat chains
    assert isinstance(three, chain) and len(three.steps) == 3
    assert isinstance(joined, chain) and len(joined.steps) == 4

    # When they run
    r1, r2 = three.delay(), joined.delay()
    env.drain()

    # Then each result fed the next step: ((1 + 2) * 2) ** 2 and ((1 + 1) * 2 * 2) ** 2
    assert r1.get(timeout=WAIT) == 36
    assert r2.get(timeout=WAIT) == 64
    assert r1.parent is not None and r1.parent.get(timeout=WAIT) == 6


def test_chain_is_stored_at_once_and_later_steps_wait(burst: Env) -> None:
    # Given a chain sent in burst mode
    r = chain(burst.add.s(1, 2), burst.double.s(), burst.square.s()).delay()
    assert r.parent is not None and r.parent.parent is not None
    first, mid = r.parent.parent, r.parent

    # Then every step is stored before anything ran: the first is due, the others wait
    assert burst.stored() == 3
    assert [first.state, mid.state, r.state] == [PENDING, SCHEDULED, SCHEDULED]
    # And get() on the last step times out while nothing runs
    with pytest.raises(ResultTimeout):
        r.get(timeout=0.05)

    # When only the first step runs
    assert _run_ids(burst.app, first.id, mid.id, r.id) == 1

    # Then only the next step became due
    assert [first.state, mid.state, r.state] == [SUCCEEDED, PENDING, SCHEDULED]
    burst.drain()
    assert r.get(timeout=WAIT) == 36


def test_countdown_on_a_later_chain_step_still_delays_it(burst: Env) -> None:
    # Given a chain whose second step has a one-minute countdown
    r = chain(burst.add.s(1, 2), burst.double.s().set(countdown=60)).delay()

    # When everything due now runs
    burst.drain()

    # Then the first step ran but the second waits for its countdown
    assert r.parent is not None and r.parent.get(timeout=WAIT) == 3
    assert r.state == SCHEDULED


def test_a_canvas_that_does_not_encode_stores_nothing(env: Env) -> None:
    # Given a chain whose last step has an argument msgpack cannot encode
    bad = chain(env.add.s(1, 2), env.echo.s(object()))

    # When it is sent, Then it is refused and no step is stored (one batch, all or nothing)
    with pytest.raises(SerializationError):
        bad.delay()
    assert env.stored() == 0

    # And a canvas that uses one task id twice is refused before anything is stored
    twice = group(env.add.s(1, 1).set(task_id="dup"), env.add.s(2, 2).set(task_id="dup"))
    with pytest.raises(ConfigurationError, match="used twice"):
        twice.delay()
    assert env.stored() == 0


def test_idempotency_keys_and_unique_tasks_are_refused_as_canvas_steps(env: Env) -> None:
    # Given a step with an idempotency key, and a unique task: deduplicating either inside a
    # workflow would leave the next step waiting on a task that was never stored
    unique_add = env.app.task(name="canvas.unique_add", unique=True)(ct.add)
    # When they are sent as canvas steps, then the caller is told, and nothing is written
    with pytest.raises(ConfigurationError, match="idempotency_key and unique"):
        chain(env.add.s(1, 2).set(idempotency_key="canvas-key"), env.double.s()).delay()
    with pytest.raises(ConfigurationError, match="idempotency_key and unique"):
        chain(unique_add.s(5, 5), env.double.s()).delay()
    assert env.app.stats()["states"] == {}


def test_empty_chain_and_unbound_signatures_are_refused(env: Env) -> None:
    # When a chain has no step, or no signature bound to an app, Then it is refused
    with pytest.raises(ConfigurationError):
        chain()
    with pytest.raises(ConfigurationError):
        chain(Signature("tests.canvas_tasks.add", (1, 2))).delay()
    assert env.stored() == 0


def test_failure_in_the_middle_of_a_chain_fails_the_rest_with_its_error(env: Env) -> None:
    # Given a chain whose second step raises
    r = chain(env.add.s(1, 2), env.fail.s(message="mid-chain"), env.double.s(), env.square.s()).delay()
    assert r.parent is not None and r.parent.parent is not None and r.parent.parent.parent is not None
    first, failing, after = r.parent.parent.parent, r.parent.parent, r.parent

    # When it runs
    env.drain()

    # Then getting the last result raises TaskFailed with the original type and message, at once
    with pytest.raises(TaskFailed) as caught:
        r.get(timeout=WAIT)
    exc = caught.value
    assert not isinstance(exc, ResultTimeout)
    assert (exc.type, exc.message, exc.task_id) == (CANVAS_ERROR, "mid-chain", r.id)
    assert "dependency failed" in exc.reason
    # And the step right after the failure names it in its reason
    with pytest.raises(TaskFailed) as caught_after:
        after.get(timeout=WAIT)
    assert caught_after.value.reason == f"dependency failed: {failing.id}"
    assert caught_after.value.type == CANVAS_ERROR
    # And the failing step failed as itself, the first succeeded, the rest never ran
    with pytest.raises(TaskFailed) as caught_failing:
        failing.get(timeout=WAIT)
    assert caught_failing.value.reason == "error"
    assert first.get(timeout=WAIT) == 3
    assert _never_started(env.app, after) and _never_started(env.app, r)
    assert r.failed() and r.state == FAILED


def test_every_step_after_a_failure_names_the_failed_step(request: pytest.FixtureRequest, env: Env) -> None:
    # Given a chain whose second step raises, with two steps after it
    r = chain(env.add.s(1, 2), env.fail.s(message="root cause"), env.double.s(), env.square.s()).delay()
    assert r.parent is not None and r.parent.parent is not None
    failing = r.parent.parent

    # When it runs
    env.drain()

    # Then the last step's reason names the step that failed (whose error it carries)
    with pytest.raises(TaskFailed) as caught:
        r.get(timeout=WAIT)
    assert caught.value.reason == f"dependency failed: {failing.id}"


def test_cancelling_a_waiting_step_fails_what_comes_after(burst: Env) -> None:
    # Given a chain sent in burst mode
    r = chain(burst.add.s(1, 2), burst.double.s(), burst.square.s()).delay()
    assert r.parent is not None and r.parent.parent is not None
    first, mid = r.parent.parent, r.parent

    # When its waiting middle step is cancelled
    assert mid.cancel() is True

    # Then it is cancelled and the step after it failed at once, naming it
    assert mid.state == CANCELLED and r.state == FAILED
    with pytest.raises(TaskCancelled):
        mid.get(timeout=WAIT)
    with pytest.raises(TaskFailed) as caught:
        r.get(timeout=WAIT)
    assert caught.value.reason == f"dependency failed: {mid.id}"
    # And only the first step runs afterwards
    assert burst.app.run_until_empty() == 1
    assert first.get(timeout=WAIT) == 3
    assert _never_started(burst.app, mid) and _never_started(burst.app, r)


def test_cancelling_the_first_step_fails_the_whole_chain(burst: Env) -> None:
    # Given a chain sent in burst mode
    r = chain(burst.add.s(1, 2), burst.double.s(), burst.square.s()).delay()
    assert r.parent is not None and r.parent.parent is not None
    first = r.parent.parent

    # When its first (pending) step is cancelled
    assert first.cancel() is True

    # Then nothing runs and every later step failed (not cancelled); the next one names it
    assert burst.app.run_until_empty() == 0
    for step in (r.parent, r):
        with pytest.raises(TaskFailed) as caught:
            step.get(timeout=WAIT)
        assert not isinstance(caught.value, TaskCancelled)
        assert caught.value.reason.startswith("dependency failed: ")
    assert r.parent.info().reason == f"dependency failed: {first.id}"


@pytest.mark.parametrize("error", [StoreUnavailable, StoreBusy], ids=["unavailable", "busy"])
def test_a_step_whose_input_read_meets_a_transient_store_error_runs_later_instead_of_failing(
    burst: Env, monkeypatch: pytest.MonkeyPatch, error: type[StorageError]
) -> None:
    # Found by the soak (cluster mode, server SIGSTOPped): a step reads its input's result from
    # the store before it runs; a store that does not answer at that moment is not a missing result.
    # Given a chain whose first step has succeeded
    r = chain(burst.add.s(1, 2), burst.double.s()).delay()
    assert r.parent is not None
    first = r.parent
    assert _run_ids(burst.app, first.id) == 1 and first.get(timeout=WAIT) == 3

    # When the second step runs while the store fails the read of its input once
    storage = burst.app.storage
    real_get = storage.get
    failed: list[str] = []

    def get_once_failing(ids: Any, **kwargs: Any) -> Any:
        if list(ids) == [first.id] and not failed:
            failed.append(first.id)
            raise error(f"{storage.location}: a transient fault injected by the test", path=storage.location)
        return real_get(ids, **kwargs)

    monkeypatch.setattr(storage, "get", get_once_failing)
    _run_ids(burst.app, r.id)
    monkeypatch.undo()
    assert failed == [first.id]

    # Then the step did not fail for good: once the store answers, it runs and gets its input
    row = _row(burst.app, r)
    assert row.state != FAILED, f"failed for good on a transient store error: {row.reason}"
    for _ in range(3):
        burst.app.run_until_empty(now=time.time() + 3600)
    assert r.get(timeout=WAIT) == 6


# -- groups ----------------------------------------------------------------------------------------


def test_group_of_a_generator_returns_results_in_group_order(env: Env) -> None:
    # Given a group built from a generator, members prioritised so the last ones run first
    g = group(env.square.s(i).set(priority=i) for i in range(6))
    assert len(g.members) == 6

    # When it is sent and runs
    gr = g.delay()
    env.drain()

    # Then the handle is a GroupResult whose results and values follow the group's order
    assert isinstance(gr, GroupResult)
    assert len(gr) == 6 and all(isinstance(r, Result) for r in gr.results)
    assert list(gr) == gr.results
    assert gr.get(timeout=WAIT) == [0, 1, 4, 9, 16, 25]
    assert [r.get(timeout=WAIT) for r in gr.results] == [0, 1, 4, 9, 16, 25]
    assert gr.ready() and gr.successful() and not gr.failed()
    assert gr.completed_count() == 6 and gr.finished_count() == 6
    assert gr.progress == 1.0
    # And the store lists the members in that order
    assert env.app.storage.group_members(gr.id) == [r.id for r in gr.results]


def test_group_reports_progress_while_it_runs(burst: Env) -> None:
    # Given a group of five sent in burst mode
    gr = group(burst.square.s(i) for i in range(5)).delay()

    # Then nothing is done yet
    assert not gr.ready() and gr.completed_count() == 0 and gr.progress == 0.0
    with pytest.raises(ResultTimeout, match="5 of 5"):
        gr.get(timeout=0.05)

    # When two members run
    worker = Worker(burst.app, batch=1)
    try:
        assert worker.run_until_empty(max_tasks=2) == 2
    finally:
        worker.close()

    # Then the progress shows two of five
    assert gr.completed_count() == 2 and gr.progress == pytest.approx(0.4) and not gr.ready()
    # And once the rest ran, all of it
    burst.drain()
    assert gr.ready() and gr.progress == 1.0 and gr.get(timeout=WAIT) == [0, 1, 4, 9, 16]


def test_group_with_a_failed_member(env: Env) -> None:
    # Given a group whose middle member raises
    gr = group(env.square.s(2), env.fail.s(message="member"), env.square.s(3)).delay()

    # When it runs
    env.drain()

    # Then it is ready and failed; completed_count counts successes, progress every finish
    assert gr.ready() and gr.failed() and not gr.successful()
    assert gr.completed_count() == 2 and gr.finished_count() == 3 and gr.progress == 1.0
    # And get() raises the member's error; without propagation the error takes its place
    with pytest.raises(TaskFailed) as caught:
        gr.get(timeout=WAIT)
    assert (caught.value.type, caught.value.message, caught.value.task_id) == (
        CANVAS_ERROR,
        "member",
        gr.results[1].id,
    )
    values = gr.get(timeout=WAIT, propagate=False)
    assert values[0] == 4 and values[2] == 9 and isinstance(values[1], TaskFailed)


def test_an_empty_group_has_no_app_to_send_to(env: Env) -> None:
    # When a group with no member (so no signature bound to an app) is sent, Then it is refused
    with pytest.raises(ConfigurationError, match="bound to an app"):
        group([]).delay()
    assert env.stored() == 0


def test_group_result_by_id_in_the_same_app(env: Env) -> None:
    # Given a group and a chord that ran
    gr = group(env.add.s(i, i) for i in range(3)).delay()
    body = chord([env.square.s(2), env.square.s(3)], env.total.s()).delay()
    env.drain()
    assert isinstance(body.parent, GroupResult)

    # When their handles are rebuilt from the ids
    again = env.app.group_result(gr.id)
    header = env.app.group_result(body.parent.id)

    # Then they hold the same members in order, with the same values
    assert again.results == gr.results and again.get(timeout=WAIT) == [0, 2, 4]
    assert header.get(timeout=WAIT) == [4, 9] and body.get(timeout=WAIT) == 13
    # And an unknown id is reported, not an empty group
    with pytest.raises(ResultExpired):
        env.app.group_result("no-such-group")


@pytest.mark.parametrize("immediate", [True, False], ids=["immediate", "burst"])
def test_group_result_by_id_after_the_caller_restarts(make_app: Callable[..., LiteQ], immediate: bool) -> None:
    # Given a caller that sent a group and a chord on a directory store, then went away
    first = _env(make_app(immediate=immediate))
    gr = group(first.square.s(i) for i in range(4)).delay()
    body = chord([first.add.s(1, 1), first.add.s(2, 2)], first.collect.s()).delay()
    assert isinstance(body.parent, GroupResult)
    group_id, header_id, member_ids = gr.id, body.parent.id, [r.id for r in gr.results]
    first.app.close()

    # When a new app on the same directory rebuilds them by id (and a worker runs what is left)
    second = _env(make_app())
    again = second.app.group_result(group_id)
    second.app.run_until_empty()

    # Then the rebuilt group has the same members in order, with their values and progress
    assert [r.id for r in again.results] == member_ids
    assert again.get(timeout=WAIT) == [0, 1, 4, 9]
    assert again.ready() and again.completed_count() == 4 and again.progress == 1.0
    assert second.app.group_result(header_id).get(timeout=WAIT) == [2, 4]
    assert second.app.result(body.id).get(timeout=WAIT) == [2, 4]


# -- chords ----------------------------------------------------------------------------------------


def test_chord_body_receives_the_list_in_order_and_runs_once(env: Env, tmp_path: Path) -> None:
    # Given a chord whose members run in reverse order (priorities) and whose body logs its runs
    log = RunLog(tmp_path / "runs.log")
    header = [env.add.s(i, i).set(priority=i) for i in range(5)]
    r = chord(header, env.logged_collect.s(log.path)).delay()

    # When it runs
    env.drain()

    # Then the body got every member's result in header order, and ran exactly once
    assert r.get(timeout=WAIT) == [0, 2, 4, 6, 8]
    assert log.runs_per_key() == {"body": 1}
    assert _row(env.app, r).attempts == 1
    # And its parent is the header's GroupResult
    assert isinstance(r.parent, GroupResult) and r.parent.get(timeout=WAIT) == [0, 2, 4, 6, 8]


def test_chord_body_waits_for_every_member(burst: Env) -> None:
    # Given a chord of three members sent in burst mode
    r = chord([burst.add.s(1, 1), burst.add.s(2, 2), burst.add.s(3, 3)], burst.total.s()).delay()
    assert isinstance(r.parent, GroupResult)
    a, b, c = r.parent.results

    # When two members ran
    assert _run_ids(burst.app, a.id, b.id, r.id) == 2

    # Then the body still waits, and cannot even be run by id
    assert r.state == SCHEDULED and _never_started(burst.app, r)

    # When the last member ran, Then the body became due in that same completion
    assert _run_ids(burst.app, c.id) == 1
    assert r.state == PENDING
    burst.drain()
    assert r.get(timeout=WAIT) == 12


def test_chord_failed_member_fails_the_chord_at_once(burst: Env) -> None:
    # Given a chord sent in burst mode whose middle member raises
    r = chord(
        [burst.add.s(1, 1), burst.fail.s(message="bad member"), burst.add.s(2, 2)], burst.logged_collect.s("unused")
    ).delay()
    assert isinstance(r.parent, GroupResult)
    ok1, bad, ok2 = r.parent.results

    # When only the failing member has run
    assert _run_ids(burst.app, bad.id) == 1

    # Then the chord's result already failed, with the member's error and its id, without waiting
    with pytest.raises(TaskFailed) as caught:
        r.get(timeout=WAIT)
    exc = caught.value
    assert (exc.type, exc.message) == (CANVAS_ERROR, "bad member")
    assert exc.reason == f"dependency failed: {bad.id}" and bad.id in str(exc)
    assert ok1.state == PENDING and ok2.state == PENDING
    # And when the other members run, the body still never runs
    burst.drain()
    assert ok1.get(timeout=WAIT) == 2 and ok2.get(timeout=WAIT) == 4
    assert r.state == FAILED and _never_started(burst.app, r)


def test_chord_failed_member_never_hangs(env: Env, tmp_path: Path) -> None:
    # Given a chord with a failing member and a body that logs its runs
    log = RunLog(tmp_path / "runs.log")
    header = [env.square.s(i) for i in range(4)] + [env.fail.s(message="member 4")]
    r = chord(header, env.logged_collect.s(log.path)).delay()
    assert isinstance(r.parent, GroupResult)

    # When it runs
    env.drain()

    # Then get(timeout) raises TaskFailed (not ResultTimeout) with the member's type, message and id
    with pytest.raises(TaskFailed) as caught:
        r.get(timeout=WAIT)
    assert (caught.value.type, caught.value.message) == (CANVAS_ERROR, "member 4")
    assert r.parent.results[4].id in caught.value.reason
    # And the body never ran; the other members did
    assert log.runs_per_key() == {}
    assert r.parent.completed_count() == 4


def test_empty_chord_header_calls_the_body_with_an_empty_list(env: Env) -> None:
    # When chords with no members are sent
    listed = chord([], env.collect.s()).delay()
    summed = chord(group([]), env.total.s()).delay()
    env.drain()

    # Then their bodies ran with []
    assert listed.get(timeout=WAIT) == []
    assert summed.get(timeout=WAIT) == 0


def test_chord_member_that_fails_then_succeeds_on_retry(env: Env, tmp_path: Path) -> None:
    # Given a chord whose middle member fails its first attempt (retries=1)
    log = RunLog(tmp_path / "runs.log")
    r = chord([env.add.s(1, 1), env.flaky.s(5), env.add.s(2, 2)], env.logged_collect.s(log.path)).delay()
    assert isinstance(r.parent, GroupResult)
    flaky = r.parent.results[1]

    # When it runs
    env.drain()

    # Then the body ran once, with the retried member's value in its place
    assert r.get(timeout=WAIT) == [2, 5, 4]
    assert log.runs_per_key() == {"body": 1}
    # And the member took two attempts, the first one's error kept in its history
    row = _row(env.app, flaky)
    assert row.state == SUCCEEDED and row.attempts == 2
    errors = [ErrorInfo.decode(e) for e in row.errors]
    assert [e.type for e in errors if e is not None] == [CANVAS_ERROR]


def test_chord_body_si_and_chord_piped_on(env: Env) -> None:
    # Given a chord whose body ignores the list, and a chord followed by another step
    ignored = chord([env.square.s(2), env.square.s(3)], env.constant.si("all done")).delay()
    piped = (chord([env.square.s(2), env.square.s(3)], env.total.s()) | env.double.s()).delay()

    # When they run
    env.drain()

    # Then the immutable body got no list, and the step after the chord got the body's result
    assert ignored.get(timeout=WAIT) == "all done"
    assert piped.get(timeout=WAIT) == 26


# -- map, starmap, chunks ----------------------------------------------------------------------------


def test_map_and_starmap(env: Env) -> None:
    # When a task is mapped over items and star-mapped over argument tuples
    squares = env.square.map(range(5))
    sums = env.add.starmap([(1, 2), (3, 4), (5, 6)])
    env.drain()

    # Then each is a group with one task per item, values in order
    assert isinstance(squares, GroupResult) and len(squares) == 5
    assert squares.get(timeout=WAIT) == [0, 1, 4, 9, 16]
    assert sums.get(timeout=WAIT) == [3, 7, 11]


def test_map_starmap_chunks_over_no_items_give_an_empty_group(env: Env) -> None:
    # When a task is mapped, star-mapped and chunked over nothing
    results = [env.square.map([]), env.add.starmap([]), env.square.chunks([], 3)]
    env.drain()

    # Then each is an empty, finished group
    for gr in results:
        assert isinstance(gr, GroupResult) and len(gr) == 0
        assert gr.get(timeout=WAIT) == [] and gr.ready()


def test_chunks_run_fewer_tasks_than_items(env: Env) -> None:
    # When a task runs over ten items in chunks of four
    gr = env.square.chunks(range(10), 4)
    env.drain()

    # Then three tasks ran, each returning its chunk's results
    assert isinstance(gr, GroupResult) and len(gr) == 3
    assert env.stored() == 3
    assert gr.get(timeout=WAIT) == [[0, 1, 4, 9], [16, 25, 36, 49], [64, 81]]


def test_chunks_with_star_and_bad_sizes(env: Env) -> None:
    # When a two-argument task runs over pairs in chunks of two, unpacking each pair
    gr = env.add.chunks([(i, i) for i in range(5)], 2, star=True)
    env.drain()

    # Then each chunk's results come back as a list
    assert len(gr) == 3 and gr.get(timeout=WAIT) == [[0, 2], [4, 6], [8]]
    # And a chunk size that is not a positive integer is refused
    for n in (0, -1, True, 1.5):
        with pytest.raises(ConfigurationError):
            env.square.chunks(range(3), n)  # type: ignore[arg-type]


def test_chunk_with_a_failing_item_fails_that_chunk_only(env: Env) -> None:
    # When a chunked run hits an item that raises
    gr = env.fail.chunks([1, 2, 3], 2)
    ok = env.double.chunks([1, 2, 3], 2)
    env.drain()

    # Then the chunks report the task's error; other chunked runs are unaffected
    values = gr.get(timeout=WAIT, propagate=False)
    assert all(isinstance(v, TaskFailed) and v.type == CANVAS_ERROR for v in values)
    assert ok.get(timeout=WAIT) == [[2, 4], [6]]


# -- nesting ---------------------------------------------------------------------------------------


def test_chord_inside_a_chain(env: Env) -> None:
    # Given add -> chord(header of two multiplications, total) -> double
    r = chain(env.add.s(1, 1), chord([env.mul.s(2), env.mul.s(3)], env.total.s()), env.double.s()).delay()

    # When it runs
    env.drain()

    # Then each member got add's result, the body the list, the last step the body's result
    assert r.get(timeout=WAIT) == 2 * (2 * 2 + 2 * 3)
    body = r.parent
    assert isinstance(body, Result) and body.get(timeout=WAIT) == 10


def test_parent_links_of_a_chord_inside_a_chain_pass_through_its_header(env: Env) -> None:
    # Given add -> chord(header of two multiplications, total) -> double
    r = chain(env.add.s(1, 1), chord([env.mul.s(2), env.mul.s(3)], env.total.s()), env.double.s()).delay()
    env.drain()

    # Then .parent walks double -> total -> the header group -> add
    body = r.parent
    assert isinstance(body, Result) and body.get(timeout=WAIT) == 10
    header = body.parent
    assert isinstance(header, GroupResult) and header.get(timeout=WAIT) == [4, 6]
    assert isinstance(header.parent, Result) and header.parent.get(timeout=WAIT) == 2


def test_chord_whose_body_is_a_chain_or_a_group(env: Env) -> None:
    # Given a chord whose body is a chain, and one whose body is a group
    chained = chord([env.square.s(2), env.square.s(3)], env.total.s() | env.double.s()).delay()
    grouped = chord([env.square.s(2), env.square.s(3)], group(env.total.s(), env.collect.s())).delay()

    # When they run
    env.drain()

    # Then the body chain's first step got the list; each body group member got the list
    assert chained.get(timeout=WAIT) == 26
    assert isinstance(grouped, GroupResult) and grouped.get(timeout=WAIT) == [13, [4, 9]]


def test_parent_links_of_a_chord_whose_body_is_a_chain(env: Env) -> None:
    # Given chord(header, total | double)
    r = chord([env.square.s(2), env.square.s(3)], env.total.s() | env.double.s()).delay()
    env.drain()

    # Then .parent walks double -> total -> the header group
    assert isinstance(r.parent, Result) and r.parent.get(timeout=WAIT) == 13
    assert isinstance(r.parent.parent, GroupResult) and r.parent.parent.get(timeout=WAIT) == [4, 9]


def test_group_of_chains(env: Env) -> None:
    # Given a group whose members are chains (and one plain signature)
    gr = group(
        chain(env.add.s(1, 2), env.double.s()),
        env.add.s(5, 5) | env.square.s(),
        env.constant.si(7),
    ).delay()

    # When it runs
    env.drain()

    # Then each member's value is its chain's last result, in group order
    assert isinstance(gr, GroupResult) and len(gr) == 3
    assert gr.get(timeout=WAIT) == [6, 100, 7]
    first_chain_last = gr.results[0]
    assert isinstance(first_chain_last.parent, Result) and first_chain_last.parent.get(timeout=WAIT) == 3


def test_chain_ending_in_a_group(env: Env) -> None:
    # Given add -> group(double, square, echo("x"))
    gr = chain(env.add.s(1, 2), group(env.double.s(), env.square.s(), env.echo.s("x"))).delay()

    # When it runs
    env.drain()

    # Then every member received add's result first; the group's parent is add's result
    assert isinstance(gr, GroupResult)
    assert gr.get(timeout=WAIT) == [6, 9, [[3, "x"], {}]]
    assert isinstance(gr.parent, Result) and gr.parent.get(timeout=WAIT) == 3


def test_chain_with_a_group_in_the_middle(env: Env) -> None:
    # Given add -> group(double, square) -> total
    r = chain(env.add.s(1, 2), group(env.double.s(), env.square.s()), env.total.s()).delay()

    # When it runs
    env.drain()

    # Then the members each got 3 and the next step got their list: 6 + 9
    assert r.get(timeout=WAIT) == 15
    assert isinstance(r.parent, GroupResult) and r.parent.get(timeout=WAIT) == [6, 9]
    assert isinstance(r.parent.parent, Result) and r.parent.parent.get(timeout=WAIT) == 3


def test_group_of_chords(env: Env) -> None:
    # Given a group of two chords
    gr = group(
        chord([env.add.s(1, 1), env.add.s(2, 2)], env.total.s()),
        chord([env.square.s(3)], env.collect.s()),
    ).delay()

    # When it runs
    env.drain()

    # Then each member's value is its chord body's result
    assert gr.get(timeout=WAIT) == [6, [9]]


def test_failure_inside_a_nested_canvas_reaches_the_end(env: Env) -> None:
    # Given add -> chord(with a failing member) -> double
    r = chain(
        env.add.s(1, 1), chord([env.mul.s(2), env.fail.s(message="nested")], env.total.s()), env.double.s()
    ).delay()

    # When it runs
    env.drain()

    # Then the last step fails with the member's error, at once
    with pytest.raises(TaskFailed) as caught:
        r.get(timeout=WAIT)
    assert (caught.value.type, caught.value.message) == (CANVAS_ERROR, "nested")
    assert isinstance(r.parent, Result) and _never_started(env.app, r.parent) and _never_started(env.app, r)


def test_a_group_member_must_end_in_one_task(env: Env) -> None:
    # When a group member is a chain that ends in a group, Then it is refused and nothing is stored
    with pytest.raises(ConfigurationError, match="group member"):
        group(chain(env.add.s(1, 2), group(env.double.s(), env.square.s()))).delay()
    assert env.stored() == 0


def test_cancelling_a_chord_header_fails_the_body(burst: Env) -> None:
    # Given a chord sent in burst mode
    r = chord([burst.square.s(i) for i in range(3)], burst.total.s()).delay()
    assert isinstance(r.parent, GroupResult)

    # When its header is cancelled
    assert r.parent.cancel() == 3

    # Then the body failed at once, and nothing runs
    with pytest.raises(TaskFailed) as caught:
        r.get(timeout=WAIT)
    assert caught.value.reason.startswith("dependency failed: ")
    assert burst.app.run_until_empty() == 0


# -- the store's contract for dependencies and groups --------------------------------------------------

T0 = 2_000_000_000.0
"""The contract tests' clock (as in ``tests/test_storage_contract.py``)."""
Q = "q"


def _new(*deps: str, group_id: str | None = None, index: int | None = None, **fields: Any) -> NewTask:
    fields.setdefault("max_attempts", 3)
    return NewTask(
        id=uuid.uuid4().hex,
        name="canvas.step",
        queue=Q,
        payload=b"payload",
        depends_on=list(deps) if deps else None,
        group_id=group_id,
        group_index=index,
        **fields,
    )


def _enqueue(storage: Storage, *tasks: NewTask, now: float = T0) -> list[str]:
    return storage.enqueue(list(tasks), now=now)


def _state(storage: Storage, task_id: str) -> str:
    row = storage.get([task_id])[0]
    assert row is not None
    return row.state


def _claim(storage: Storage, *ids: str, now: float = T0) -> dict[str, str]:
    """Claim ``ids`` (by id) and return ``{id: lease token}``."""
    claimed = storage.claim("w", [Q], limit=len(ids), now=now, ids=list(ids))
    assert sorted(c.id for c in claimed) == sorted(ids)
    return {c.id: c.lease_token for c in claimed}


def _finish(storage: Storage, task_id: str, state: str = SUCCEEDED, *, error: bytes | None = None) -> None:
    (token,) = _claim(storage, task_id).values()
    result = b"r" if state == SUCCEEDED else None
    assert storage.complete([Outcome(task_id, token, state, result=result, error=error)], now=T0 + 1) == [True]


def _assert_dep_failed(storage: Storage, task_id: str, dep: str, error: bytes | None) -> None:
    row = storage.get([task_id])[0]
    assert row is not None
    assert (row.state, row.reason, row.error) == (FAILED, f"dependency failed: {dep}", error)
    assert row.attempts == 0 and row.started_at is None
    assert row.finished_at is not None and row.result_expires_at is not None


def test_contract_dependent_waits_scheduled_with_no_start_time(storage: Storage) -> None:
    # Given a task and one that depends on it
    a = _new()
    b = _new(a.id)
    _enqueue(storage, a, b)

    # Then the dependent is scheduled, and nothing claims it, however late the clock
    assert _state(storage, b.id) == SCHEDULED
    assert [c.id for c in storage.claim("w", [Q], limit=10, now=T0 + 1e9)] == [a.id]
    assert storage.claim("w", [Q], limit=10, now=T0 + 2e9) == []
    # And no idle worker is woken for it: next_run_at ignores waiting tasks
    assert storage.next_run_at([Q]) is None
    # And claiming it by id (immediate mode) does not take it either
    assert storage.claim("w", [Q], limit=10, now=T0, ids=[b.id]) == []
    assert _state(storage, b.id) == SCHEDULED


def test_contract_next_run_at_still_sees_timed_tasks_beside_waiting_ones(storage: Storage) -> None:
    # Given a waiting dependent and a task scheduled for later
    a = _new()
    later = _new(run_at=T0 + 50)
    _enqueue(storage, a, _new(a.id), later)

    # Then next_run_at is the timed task's start
    assert storage.next_run_at([Q]) == T0 + 50


def test_contract_success_of_all_deps_makes_it_pending_in_the_same_complete(storage: Storage) -> None:
    # Given a task waiting for two others
    a1, a2 = _new(), _new()
    b = _new(a1.id, a2.id)
    _enqueue(storage, a1, a2, b)
    tokens = _claim(storage, a1.id, a2.id)

    # When the first succeeds, Then it still waits
    assert storage.complete([Outcome(a1.id, tokens[a1.id], SUCCEEDED, result=b"1")], now=T0 + 1) == [True]
    assert _state(storage, b.id) == SCHEDULED
    assert storage.claim("w", [Q], limit=10, now=T0 + 2) == []

    # When the second succeeds, Then the same complete() made it pending, and it can be claimed
    assert storage.complete([Outcome(a2.id, tokens[a2.id], SUCCEEDED, result=b"2")], now=T0 + 3) == [True]
    assert _state(storage, b.id) == PENDING
    assert [c.id for c in storage.claim("w", [Q], limit=10, now=T0 + 4)] == [b.id]


def test_contract_deps_completed_in_one_batch(storage: Storage) -> None:
    # Given a task waiting for two others (listed twice: counted once)
    a1, a2 = _new(), _new()
    b = _new(a1.id, a2.id, a1.id)
    _enqueue(storage, a1, a2, b)
    tokens = _claim(storage, a1.id, a2.id)

    # When both succeed in one complete() call
    storage.complete([Outcome(i, t, SUCCEEDED, result=b"x") for i, t in tokens.items()], now=T0 + 1)

    # Then it is pending
    assert _state(storage, b.id) == PENDING


def test_contract_a_retry_of_a_dep_keeps_the_dependent_waiting(storage: Storage) -> None:
    # Given a task waiting for another
    a = _new()
    b = _new(a.id)
    _enqueue(storage, a, b)

    # When the dependency's attempt fails and is rescheduled (a retry)
    (token,) = _claim(storage, a.id).values()
    retry = Outcome(a.id, token, SCHEDULED, error=b"first", reason="error", run_at=T0 + 10)
    assert storage.complete([retry], now=T0 + 1) == [True]

    # Then the dependent still waits; when the retry succeeds, it becomes pending
    assert _state(storage, b.id) == SCHEDULED
    _finish(storage, a.id)
    assert _state(storage, b.id) == PENDING


def test_contract_a_stale_completion_of_a_dep_changes_nothing(storage: Storage) -> None:
    # Given a running dependency and its dependent
    a = _new()
    b = _new(a.id)
    _enqueue(storage, a, b)
    _claim(storage, a.id)

    # When an outcome with a wrong lease token arrives
    assert storage.complete([Outcome(a.id, "not-the-token", FAILED, error=b"e")], now=T0 + 1) == [False]

    # Then the dependent still waits
    assert _state(storage, a.id) == RUNNING and _state(storage, b.id) == SCHEDULED


def test_contract_failure_of_a_dep_fails_dependents_recursively(storage: Storage) -> None:
    # Given a -> b -> c, and d waiting for a and for an independent task
    a, other = _new(), _new()
    b = _new(a.id)
    c = _new(b.id)
    d = _new(a.id, other.id)
    _enqueue(storage, a, other, b, c, d)

    # When a fails
    _finish(storage, a.id, FAILED, error=b"error of a")

    # Then every task that waited on it, directly or not, failed with its reason and error bytes
    _assert_dep_failed(storage, b.id, a.id, b"error of a")
    _assert_dep_failed(storage, d.id, a.id, b"error of a")
    row = storage.get([c.id])[0]
    assert row is not None and (row.state, row.error) == (FAILED, b"error of a")
    assert row.reason is not None and row.reason.startswith("dependency failed: ")
    # And the independent task is untouched
    assert _state(storage, other.id) == PENDING


def test_contract_recursive_failure_names_the_failed_task(request: pytest.FixtureRequest, storage: Storage) -> None:
    # Given a -> b -> c
    a = _new()
    b = _new(a.id)
    c = _new(b.id)
    _enqueue(storage, a, b, c)

    # When a fails
    _finish(storage, a.id, FAILED, error=b"error of a")

    # Then c's reason names a, whose error it carries
    _assert_dep_failed(storage, c.id, a.id, b"error of a")


def test_contract_cancelling_a_dep_fails_dependents(storage: Storage) -> None:
    # Given a -> b -> c, all waiting
    a = _new()
    b = _new(a.id)
    c = _new(b.id)
    _enqueue(storage, a, b, c)

    # When a is cancelled
    assert storage.cancel([a.id], now=T0 + 1) == [CANCELLED]

    # Then b and c failed (a cancel has no error bytes)
    _assert_dep_failed(storage, b.id, a.id, None)
    assert _state(storage, c.id) == FAILED


def test_contract_cancelling_a_waiting_dependent(storage: Storage) -> None:
    # Given a -> b -> c
    a = _new()
    b = _new(a.id)
    c = _new(b.id)
    _enqueue(storage, a, b, c)

    # When the waiting middle task is cancelled
    assert storage.cancel([b.id], now=T0 + 1) == [CANCELLED]

    # Then the task after it failed, the one before is untouched, and a's success changes neither
    _assert_dep_failed(storage, c.id, b.id, None)
    _finish(storage, a.id)
    assert _state(storage, b.id) == CANCELLED and _state(storage, c.id) == FAILED


def test_contract_cancel_request_on_a_running_dep_then_outcome_cancelled(storage: Storage) -> None:
    # Given a running dependency and its dependent
    a = _new()
    b = _new(a.id)
    _enqueue(storage, a, b)
    (token,) = _claim(storage, a.id).values()

    # When a cancel is requested, the dependent still waits; when the task then ends cancelled
    assert storage.cancel([a.id], now=T0 + 1) == [RUNNING]
    assert _state(storage, b.id) == SCHEDULED
    assert storage.complete([Outcome(a.id, token, CANCELLED, reason="cancelled")], now=T0 + 2) == [True]

    # Then the dependent failed
    _assert_dep_failed(storage, b.id, a.id, None)


def test_contract_expiry_of_a_dep_fails_dependents(storage: Storage) -> None:
    # Given a dependency that expires before anyone claims it
    a = _new(expires_at=T0 + 5)
    b = _new(a.id)
    _enqueue(storage, a, b)

    # When a worker tries to claim it after it expired
    assert storage.claim("w", [Q], limit=10, now=T0 + 10) == []

    # Then it is expired and its dependent failed
    assert _state(storage, a.id) == "expired"
    _assert_dep_failed(storage, b.id, a.id, None)


def test_contract_reap_at_max_attempts_fails_dependents(storage: Storage) -> None:
    # Given a dependency on its last attempt whose worker vanished
    a = _new(max_attempts=1)
    b = _new(a.id)
    _enqueue(storage, a, b)
    storage.claim("w", [Q], limit=1, lease=10, now=T0, ids=[a.id])

    # When its lease runs out and it is reaped
    assert storage.reap(now=T0 + 60) == [a.id]

    # Then it failed as 'worker lost' and its dependent failed with it
    row = storage.get([a.id])[0]
    assert row is not None and (row.state, row.reason) == (FAILED, "worker lost")
    _assert_dep_failed(storage, b.id, a.id, row.error)


def test_contract_reap_below_max_attempts_keeps_dependents_waiting(storage: Storage) -> None:
    # Given a dependency with attempts left whose worker vanished
    a = _new(max_attempts=3)
    b = _new(a.id)
    _enqueue(storage, a, b)
    storage.claim("w", [Q], limit=1, lease=10, now=T0, ids=[a.id])

    # When it is reaped, Then it goes back to pending and the dependent keeps waiting
    assert storage.reap(now=T0 + 60) == [a.id]
    assert _state(storage, a.id) == PENDING and _state(storage, b.id) == SCHEDULED


def test_contract_reap_of_a_cancel_requested_dep_fails_dependents(storage: Storage) -> None:
    # Given a running dependency with a cancel request, whose worker vanished
    a = _new()
    b = _new(a.id)
    _enqueue(storage, a, b)
    storage.claim("w", [Q], limit=1, lease=10, now=T0, ids=[a.id])
    storage.cancel([a.id], now=T0 + 1)

    # When it is reaped, Then it is cancelled and its dependent failed
    storage.reap(now=T0 + 60)
    assert _state(storage, a.id) == CANCELLED
    _assert_dep_failed(storage, b.id, a.id, None)


def test_contract_dependent_on_an_already_finished_dep(storage: Storage) -> None:
    # Given a task that failed, one that was cancelled and one that succeeded
    failed, cancelled, done = _new(), _new(), _new()
    _enqueue(storage, failed, cancelled, done)
    _finish(storage, failed.id, FAILED, error=b"old error")
    storage.cancel([cancelled.id], now=T0 + 1)
    _finish(storage, done.id)

    # When tasks depending on them are enqueued
    on_failed, on_cancelled, on_done = _new(failed.id), _new(cancelled.id), _new(done.id)
    _enqueue(storage, on_failed, on_cancelled, on_done, now=T0 + 2)

    # Then those on a failed or cancelled task fail at enqueue; the one on a success is due at once
    _assert_dep_failed(storage, on_failed.id, failed.id, b"old error")
    _assert_dep_failed(storage, on_cancelled.id, cancelled.id, None)
    assert _state(storage, on_done.id) == PENDING


def test_contract_dependents_of_a_task_failing_at_enqueue_fail_whatever_the_batch_order(storage: Storage) -> None:
    # Given a task that was cancelled
    gone = _new()
    _enqueue(storage, gone)
    storage.cancel([gone.id], now=T0 + 1)

    # When one batch holds c -> b -> gone, dependents listed before their dependencies
    b = _new(gone.id)
    c = _new(b.id)
    _enqueue(storage, c, b, now=T0 + 2)

    # Then both failed at enqueue: nothing is left waiting for a task that can no longer succeed
    assert _state(storage, b.id) == FAILED
    assert _state(storage, c.id) == FAILED


def test_contract_a_pruned_dependency_is_not_waited_for(storage: Storage) -> None:
    # Given a task that succeeded and whose result was pruned
    a = _new(result_ttl=10)
    _enqueue(storage, a)
    _finish(storage, a.id)
    assert storage.prune(now=T0 + 100) == 1

    # When a task depending on it is enqueued
    b = _new(a.id)
    _enqueue(storage, b, now=T0 + 101)

    # Then it does not wait for it
    assert _state(storage, b.id) == PENDING


def test_contract_dependency_later_in_the_same_batch(storage: Storage) -> None:
    # Given one batch listing a dependent before its dependency
    a = _new()
    b = _new(a.id)
    _enqueue(storage, b, a)

    # Then the dependent waits, and runs once the dependency succeeded
    assert _state(storage, b.id) == SCHEDULED
    _finish(storage, a.id)
    assert _state(storage, b.id) == PENDING


def test_contract_a_cancelled_waiting_task_retried_by_hand_can_be_claimed_by_id(
    request: pytest.FixtureRequest, storage: Storage
) -> None:
    # Given a waiting dependent that was cancelled, then retried by hand (``liteq retry``)
    a = _new()
    b = _new(a.id)
    _enqueue(storage, a, b)
    storage.cancel([b.id], now=T0 + 1)
    assert storage.retry([b.id], now=T0 + 2) == [True]
    assert _state(storage, b.id) == PENDING

    # When it is claimed by id, Then it is claimed like any pending task
    assert [c.id for c in storage.claim("w", [Q], limit=1, now=T0 + 3, ids=[b.id])] == [b.id]


def test_contract_group_members_in_index_order(storage: Storage) -> None:
    # Given a group whose members are enqueued out of index order, and an unrelated task
    gid = uuid.uuid4().hex
    members = [_new(group_id=gid, index=i) for i in range(4)]
    _enqueue(storage, members[2], members[0], members[3], _new(), members[1])

    # Then group_members lists them by index; an unknown group is empty
    assert storage.group_members(gid) == [m.id for m in members]
    assert storage.group_members("no-such-group") == []


def test_contract_purge_and_prune_remove_group_membership(storage: Storage) -> None:
    # Given a group of three finished members with a short result_ttl
    gid = uuid.uuid4().hex
    members = [_new(group_id=gid, index=i, result_ttl=10) for i in range(3)]
    _enqueue(storage, *members)
    for m in members:
        _finish(storage, m.id)

    # When one member is purged, Then it leaves the group
    assert storage.purge(ids=[members[1].id]) == 1
    assert storage.group_members(gid) == [members[0].id, members[2].id]

    # When the others are pruned past their ttl, Then the group is empty
    assert storage.prune(now=T0 + 100) == 2
    assert storage.group_members(gid) == []


def test_liteq_retry_of_a_chain_failed_by_cascade_runs_it_in_order_again(
    make_app: Callable[..., LiteQ], tmp_path: Path
) -> None:
    # Given a chain whose first step failed, failing the steps after it
    from liteq.cli import EXIT_OK, main

    app = make_app()
    fixed = tmp_path / "fixed"
    first, double, square = app.task(ct.fails_until), app.task(ct.double), app.task(ct.square)
    r = chain(first.s(str(fixed)), double.s(), square.s()).delay()
    app.run_until_empty()
    assert app.stats()["states"] == {"failed": 3}
    # When the cause is fixed and every failed task is retried with the CLI
    fixed.touch()
    assert main(["retry", str(tmp_path / "store"), "--all-failed"]) == EXIT_OK
    # Then only the first step is runnable; the others wait for it as before, and the chain completes
    assert app.stats()["states"] == {"pending": 1, "scheduled": 2}
    assert _run_ids(app, r.id) == 0
    app.run_until_empty()
    assert r.get(timeout=WAIT) == 4
