"""A store in this process's memory, for tests and immediate mode (see :mod:`.store`)."""

from .store import DEFAULT_RESULT_TTL, MemoryStorage

__all__ = ["DEFAULT_RESULT_TTL", "MemoryStorage"]
