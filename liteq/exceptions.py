"""Every error liteq raises, under one root.

The tree::

    LiteQError
    ├── ConfigurationError          a bad option, name or URL: fix the call
    │   └── SchemaVersionError      the store was written by a newer liteq
    ├── StorageError                the store itself refused (names the path)
    │   ├── StoreBusy               locked past the busy timeout (says how long it waited)
    │   ├── StoreFull               the disk is full
    │   ├── StoreReadOnly           the file or directory is not writable
    │   ├── StoreCorrupt            the database file is damaged
    │   ├── StoreMoved              the store's directory vanished under a running process
    │   └── StoreUnavailable        the store cannot be reached now (cluster server down or unreachable)
    ├── SerializationError          a value cannot be encoded or decoded (names the path and type)
    ├── TaskError                   about a task
    │   ├── UnknownTask             no task registered under that name
    │   ├── TaskFailed              the task ended without success (type, message, traceback)
    │   │   ├── TaskTimedOut        it ran past its hard time limit
    │   │   ├── TaskCancelled       it was cancelled
    │   │   └── TaskExpired         it did not start before its ``expires``
    │   └── SoftTimeLimit           raised inside a task that ran past ``soft_timeout``
    ├── ResultError
    │   ├── ResultTimeout           ``Result.get(timeout=...)`` ran out of time
    │   └── ResultExpired           the result outlived its ``result_ttl`` (or the id is wrong)
    └── ProtocolError / AuthenticationError   cluster mode, see ``liteq.cluster``

Task control flow is not an error and is kept apart: :class:`~liteq.retries.Retry` is raised by a task to ask for
another attempt and never escapes the worker.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "ConfigurationError",
    "LiteQError",
    "ProtocolError",
    "ResultError",
    "ResultExpired",
    "ResultTimeout",
    "SchemaVersionError",
    "SerializationError",
    "SoftTimeLimit",
    "StorageError",
    "StoreBusy",
    "StoreCorrupt",
    "StoreFull",
    "StoreMoved",
    "StoreReadOnly",
    "StoreUnavailable",
    "TaskCancelled",
    "TaskError",
    "TaskExpired",
    "TaskFailed",
    "TaskTimedOut",
    "UnknownTask",
]


class LiteQError(Exception):
    """Root of every exception liteq raises on purpose."""


class ConfigurationError(LiteQError, ValueError):
    """An option, task name or store URL is invalid; the message says which and how to fix it."""


class SchemaVersionError(ConfigurationError):
    """The store was created by a newer liteq than the one running; upgrade liteq to open it."""


class StorageError(LiteQError):
    """The store refused an operation. ``path`` names the store; nothing partial was written."""

    def __init__(self, message: str, *, path: str = "") -> None:
        super().__init__(message)
        self.path = path


class StoreBusy(StorageError):
    """Another process held the store's write lock for longer than the busy timeout."""

    def __init__(self, message: str, *, path: str = "", waited: float = 0.0) -> None:
        super().__init__(message, path=path)
        self.waited = waited


class StoreFull(StorageError):
    """The disk holding the store is full; free space and retry (nothing partial was written)."""


class StoreReadOnly(StorageError):
    """The store's file or directory is not writable by this process."""


class StoreCorrupt(StorageError):
    """The store's database file is damaged; restore it from a backup or move it aside."""


class StoreMoved(StorageError):
    """The store's directory was removed or replaced while this process had it open."""


class StoreUnavailable(StorageError):
    """The store cannot be reached right now (a cluster server that is down or unreachable).

    Transient: a pool treats it like ``StoreBusy`` and keeps retrying; a caller may retry the call.
    """


class SerializationError(LiteQError, TypeError):
    """A value cannot be encoded (at enqueue, in the caller) or decoded (in the worker).

    ``path`` names where in the arguments the bad value sits, e.g. ``kwargs['f'][2]``.
    """

    def __init__(self, message: str, *, path: str = "", type_name: str = "") -> None:
        super().__init__(message)
        self.path = path
        self.type_name = type_name


class TaskError(LiteQError):
    """Base of errors about one task."""


class UnknownTask(TaskError, KeyError):
    """No task is registered under that name in this process."""

    def __str__(self) -> str:  # KeyError quotes its argument; we want the sentence as written.
        return str(self.args[0]) if self.args else ""


class TaskFailed(TaskError):
    """The task ended without success.

    Attributes carry what the worker recorded: ``type`` (the remote exception's qualified type
    name), ``message``, ``traceback`` (text), ``reason`` (``error``, ``timeout``, ``worker lost``,
    ``unknown task``, ``undecodable payload``, ``cancelled``, ``expired``...) and ``task_id``.
    """

    def __init__(
        self,
        task_id: str,
        *,
        type: str = "",
        message: str = "",
        traceback: str = "",
        reason: str = "error",
        state: str = "failed",
    ) -> None:
        self.task_id = task_id
        self.type = type
        self.message = message
        self.traceback = traceback
        self.reason = reason
        self.state = state
        detail = f"{type}: {message}" if type else message or reason
        super().__init__(f"task {task_id} {state} ({reason}): {detail}")

    def __reduce__(self) -> tuple[object, ...]:  # keep keyword-only fields across pickling
        return (
            _rebuild_task_failed,
            (type(self), self.task_id, self.type, self.message, self.traceback, self.reason, self.state),
        )


def _rebuild_task_failed(
    cls: type[TaskFailed], task_id: str, typ: str, message: str, tb: str, reason: str, state: str
) -> TaskFailed:
    return cls(task_id, type=typ, message=message, traceback=tb, reason=reason, state=state)


class TaskTimedOut(TaskFailed):
    """The task ran past its hard ``timeout`` and its worker process was killed."""


class TaskCancelled(TaskFailed):
    """The task was cancelled before it finished."""


class TaskExpired(TaskFailed):
    """The task did not start before its ``expires`` deadline."""


class SoftTimeLimit(TaskError):
    """Raised inside a task that runs past its ``soft_timeout``; catch it to clean up."""


class ResultError(LiteQError):
    """Base of errors about reading a result."""


class ResultTimeout(ResultError, TimeoutError):
    """``Result.get(timeout=...)`` ran out of time; the task goes on and the result can be read later."""


class ResultExpired(ResultError, LookupError):
    """The task's result is gone: it outlived ``result_ttl`` and was pruned, or the id never existed."""


class ProtocolError(LiteQError):
    """A cluster peer broke the wire protocol. ``ours`` is True when this side is at fault."""

    def __init__(self, message: str, *, ours: bool = False) -> None:
        super().__init__(message)
        self.ours = ours


class AuthenticationError(LiteQError):
    """The cluster handshake failed: wrong or missing token."""
