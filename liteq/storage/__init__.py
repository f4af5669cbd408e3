"""Stores: the contract (:mod:`.contract`, over the states of :mod:`.states` and the records of
:mod:`.records`, guarded by :mod:`.checks`) and its local implementations.

:func:`open_storage` turns what a user passes to ``LiteQ(...)`` into a store: a directory path,
``sqlite:///abs/dir``, ``memory://`` or ``liteq://host:port`` (cluster mode, imported lazily so that
``liteq`` never depends on ``liteq.cluster`` otherwise).
"""

from __future__ import annotations

import os
from typing import Any

from ..exceptions import ConfigurationError
from .contract import Storage
from .memory import MemoryStorage
from .records import ClaimedTask, NewTask, Outcome, TaskRow, WorkerInfo
from .sqlite import SqliteStorage

__all__ = [
    "ClaimedTask",
    "MemoryStorage",
    "NewTask",
    "Outcome",
    "SqliteStorage",
    "Storage",
    "TaskRow",
    "WorkerInfo",
    "open_storage",
]


def open_storage(target: str | os.PathLike[str] | Storage, **options: Any) -> Storage:
    """Open the store that ``target`` names; options go to the store's constructor."""
    if isinstance(target, Storage):
        return target
    text = os.fspath(target)
    if text.startswith("memory://"):
        return MemoryStorage(**{k: v for k, v in options.items() if k == "result_ttl"})
    if text.startswith("liteq://") or text.startswith("liteqs://"):
        try:
            from liteq.cluster.remote import RemoteStorage  # type: ignore[import-not-found,unused-ignore]
        except ImportError as exc:
            raise ConfigurationError(
                f"{text!r} names a cluster server, but this liteq has no cluster client installed"
            ) from exc
        return RemoteStorage(text, **options)  # type: ignore[no-any-return,unused-ignore]
    if text.startswith("sqlite://"):
        path = text[len("sqlite://") :]
        if not path.startswith("/"):
            raise ConfigurationError(f"store URL {text!r} needs an absolute path: sqlite:///abs/dir (three slashes)")
        text = path
    elif "://" in text:
        scheme = text.split("://", 1)[0]
        raise ConfigurationError(
            f"unknown store scheme {scheme!r} in {text!r}; use a directory path, sqlite:///abs/dir, "
            "memory:// or liteq://host:port"
        )
    if not text:
        raise ConfigurationError("store path is empty; pass a directory such as 'jobs'")
    return SqliteStorage(text, **options)
