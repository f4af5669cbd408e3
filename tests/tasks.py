"""Importable task functions for the tests.

They are plain module-level functions: each test registers the ones it needs on its own app
(``app.task(tasks.add)``), so no app lives at import time and every test gets a fresh store. Being
module-level, they keep stable default names (``tasks.add``) and pickle by reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class CustomError(Exception):
    """An exception type defined outside the builtins, to check qualified type names."""


@dataclass(frozen=True)
class Point:
    """A value msgpack cannot encode but pickle can."""

    x: int
    y: int


def add(x: int, y: int) -> int:
    """Return ``x + y``."""
    return x + y


def echo(*args: Any, **kwargs: Any) -> Any:
    """Return the arguments as received: ``[args, kwargs]``."""
    return [args, kwargs]


def identity(value: Any) -> Any:
    """Return ``value`` unchanged (round trips through the store)."""
    return value


def fail(message: str = "boom") -> None:
    """Raise ``ValueError(message)``."""
    raise ValueError(message)


def fail_custom(message: str) -> None:
    """Raise :class:`CustomError`."""
    raise CustomError(message)


def returns_unserializable() -> object:
    """Return a value msgpack cannot encode."""
    return object()


def make_point(x: int, y: int) -> Point:
    """Return a :class:`Point` (needs the pickle serializer)."""
    return Point(x, y)


def noop() -> None:
    """Do nothing."""
