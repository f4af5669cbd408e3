"""The default store, SQLite, by domain: see :mod:`.store` for how the modules fit together."""

from __future__ import annotations

from .schema import (
    DB_FILENAME,
    DEFAULT_BLOB_THRESHOLD,
    DEFAULT_BUSY_TIMEOUT,
    DEFAULT_RESULT_TTL,
    MIGRATIONS,
    SCHEMA_VERSION,
)
from .store import SqliteStorage

__all__ = [
    "DB_FILENAME",
    "DEFAULT_BLOB_THRESHOLD",
    "DEFAULT_BUSY_TIMEOUT",
    "DEFAULT_RESULT_TTL",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "SqliteStorage",
]
