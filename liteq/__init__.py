"""liteq: a task queue that needs no infrastructure.

Tasks and results live in a local SQLite store; a process pool runs them. See the README and
``docs/`` for the guide.
"""

from __future__ import annotations

from .app import DEFAULT_QUEUE, DEFAULT_RESULT_TTL, DEFAULT_STORE, LiteQ
from .canvas import chain, chord, group
from .context import TaskContext, current
from .exceptions import (
    AuthenticationError,
    ConfigurationError,
    LiteQError,
    ProtocolError,
    ResultError,
    ResultExpired,
    ResultTimeout,
    SchemaVersionError,
    SerializationError,
    SoftTimeLimit,
    StorageError,
    StoreBusy,
    StoreCorrupt,
    StoreFull,
    StoreMoved,
    StoreReadOnly,
    StoreUnavailable,
    TaskCancelled,
    TaskError,
    TaskExpired,
    TaskFailed,
    TaskTimedOut,
    UnknownTask,
)
from .message import ErrorInfo, Progress
from .result import GroupResult, Result
from .retries import Retry
from .storage import MemoryStorage, SqliteStorage, Storage
from .task import Signature, Task
from .worker import Worker

__version__ = "0.1.0"

__all__ = [
    # application and tasks
    "LiteQ",
    "Task",
    "Signature",
    "Result",
    "GroupResult",
    "Progress",
    "ErrorInfo",
    "current",
    "TaskContext",
    "Retry",
    "Worker",
    # canvas
    "chain",
    "group",
    "chord",
    # stores
    "Storage",
    "SqliteStorage",
    "MemoryStorage",
    # defaults
    "DEFAULT_QUEUE",
    "DEFAULT_RESULT_TTL",
    "DEFAULT_STORE",
    # errors
    "LiteQError",
    "ConfigurationError",
    "SchemaVersionError",
    "StorageError",
    "StoreBusy",
    "StoreFull",
    "StoreReadOnly",
    "StoreCorrupt",
    "StoreMoved",
    "StoreUnavailable",
    "SerializationError",
    "TaskError",
    "UnknownTask",
    "TaskFailed",
    "TaskTimedOut",
    "TaskCancelled",
    "TaskExpired",
    "SoftTimeLimit",
    "ResultError",
    "ResultTimeout",
    "ResultExpired",
    "ProtocolError",
    "AuthenticationError",
    "__version__",
]
