"""Signals that land in ``execute()``'s own code (issue 9).

The pool's child raises :class:`TaskCancelled` from its SIGUSR1 handler and the soft limit raises
:class:`SoftTimeLimit` from SIGALRM. Landing between the task's set-up and the ``try`` that
records failures, or after the function returned, the exception used to escape ``execute()``
(the child died: "worker lost") or to turn a success into a retry. Each test delivers the real
signal to this process at exactly that point, by wrapping the step of ``execute()`` it follows.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from liteq import LiteQ
from liteq import worker as worker_module
from liteq.child import _cancel_running_task
from liteq.message import ErrorInfo
from liteq.storage.records import ClaimedTask
from liteq.worker import execute

pytestmark = pytest.mark.timeout(30)

MakeApp = Callable[..., LiteQ]


@pytest.fixture
def child_cancel_handler() -> Iterator[None]:
    """SIGUSR1 handled as in a pool child, for the length of the test."""
    previous = signal.signal(signal.SIGUSR1, _cancel_running_task)
    try:
        yield
    finally:
        signal.signal(signal.SIGUSR1, previous)


def _claimed(app: LiteQ, fn: Callable[..., Any], **options: Any) -> ClaimedTask:
    task = app.task(name="t", **options)(fn)
    task.delay()
    (claimed,) = app.storage.claim("w", ["default"], limit=1, lease=60.0)
    return claimed


def _signal_after(monkeypatch: pytest.MonkeyPatch, name: str, signum: int) -> None:
    """Deliver ``signum`` to this process right after ``liteq.worker.<name>`` returns."""
    real = getattr(worker_module, name)

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        out = real(*args, **kwargs)
        os.kill(os.getpid(), signum)
        return out

    monkeypatch.setattr(worker_module, name, wrapped)


def test_a_cancel_between_set_up_and_try_does_not_escape_and_the_task_never_starts(
    make_memory_app: MakeApp, monkeypatch: pytest.MonkeyPatch, child_cancel_handler: None
) -> None:
    # Given a task, and a cancel signal that lands right after execute() entered the task context
    app = make_memory_app()
    ran: list[int] = []
    claimed = _claimed(app, lambda: ran.append(1))
    _signal_after(monkeypatch, "_enter", signal.SIGUSR1)
    # When it is executed, then execute() returns an outcome (no "worker lost"), and the task never ran
    outcome = execute(app, claimed)
    assert ran == []
    info = ErrorInfo.decode(outcome.error)
    assert info is not None and info.type == "liteq.exceptions.TaskCancelled"


def test_a_cancel_after_the_function_returned_keeps_the_success(
    make_memory_app: MakeApp, monkeypatch: pytest.MonkeyPatch, child_cancel_handler: None
) -> None:
    # Given a task, and a cancel signal that lands right after it returned, as execute() cleans up
    app = make_memory_app()
    claimed = _claimed(app, lambda: 42)
    _signal_after(monkeypatch, "_leave", signal.SIGUSR1)
    # When it is executed, then the success is returned (the pool records the cancel it asked for)
    outcome = execute(app, claimed)
    assert outcome.state == "succeeded" and app.serializer.loads(outcome.result) == 42


def test_a_soft_limit_alarm_after_the_function_returned_keeps_the_success(
    make_memory_app: MakeApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a task with a soft limit, and its alarm landing just after the function returned
    app = make_memory_app()
    claimed = _claimed(app, lambda: "done", soft_timeout=30.0)
    real_exit = worker_module._SoftLimit.__exit__

    def late_alarm(self: Any, *exc: object) -> None:
        os.kill(os.getpid(), signal.SIGALRM)  # the alarm fires before the limit is disarmed
        real_exit(self, *exc)

    monkeypatch.setattr(worker_module._SoftLimit, "__exit__", late_alarm)
    # When it is executed, then it succeeded: no soft-timeout retry
    outcome = execute(app, claimed)
    assert outcome.state == "succeeded", outcome.reason
    assert app.serializer.loads(outcome.result) == "done"


def test_a_soft_limit_still_interrupts_a_running_task(make_memory_app: MakeApp) -> None:
    # Given a task that runs past its soft limit
    app = make_memory_app()

    def slow() -> None:
        import time

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            time.sleep(0.01)

    claimed = _claimed(app, slow, soft_timeout=0.2)
    # Then the limit is raised inside it and recorded
    outcome = execute(app, claimed)
    assert outcome.reason == "soft timeout"
