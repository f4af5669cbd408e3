"""``current()``: what a running task knows about itself."""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from .exceptions import LiteQError
from .message import Progress
from .serializer import Serializer
from .storage.contract import Storage

__all__ = ["RunningTask", "TaskContext", "TaskSource", "current"]


class RunningTask(Protocol):
    """A registered task as the code running it sees it: its function."""

    @property
    def fn(self) -> Callable[..., Any]:
        """The task's function."""
        ...


class TaskSource(Protocol):
    """What runs a task (a worker's :class:`~liteq.runtime.Runtime`): its store and its tasks."""

    @property
    def storage(self) -> Storage:
        """The store the task came from."""
        ...

    @property
    def serializer(self) -> Serializer:
        """Encodes results."""
        ...

    def get_task(self, name: str) -> RunningTask:
        """The task registered as ``name``."""
        ...


_current: contextvars.ContextVar[TaskContext | None] = contextvars.ContextVar("liteq_current", default=None)


@dataclass
class TaskContext:
    """The running task: ``id``, ``name``, ``queue``, ``attempt`` (1-based) and ``retries_left``."""

    id: str
    name: str
    queue: str
    attempt: int
    retries_left: int
    _report: Callable[[Progress], None] | None = field(default=None, repr=False)
    app: TaskSource | None = field(default=None, repr=False)
    """What runs the task: the worker's :class:`~liteq.runtime.Runtime` (its store, serializer and tasks)."""

    def progress(self, fraction: float, message: str = "") -> None:
        """Report progress; the caller sees it as ``Result.progress``. ``fraction`` is clamped to [0, 1]."""
        if self._report is not None:
            self._report(Progress(min(max(float(fraction), 0.0), 1.0), str(message)))


def current() -> TaskContext:
    """The context of the task running in this thread; raises :class:`LiteQError` outside a task."""
    ctx = _current.get()
    if ctx is None:
        raise LiteQError("liteq.current() was called outside a running task")
    return ctx


def _enter(ctx: TaskContext) -> contextvars.Token[TaskContext | None]:
    return _current.set(ctx)


def _leave(token: contextvars.Token[TaskContext | None]) -> None:
    _current.reset(token)
