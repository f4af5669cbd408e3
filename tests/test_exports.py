"""The public API: what ``liteq.__all__`` promises is importable and documented."""

from __future__ import annotations

import importlib
import inspect
from typing import Any

import pytest

import liteq

pytestmark = pytest.mark.timeout(60)

#: Names DESIGN.md fixes for the core (canvas and the pool come in later issues).
CORE_NAMES = {
    "LiteQ",
    "Task",
    "Signature",
    "Result",
    "Retry",
    "current",
    "Worker",
    "Storage",
    "SqliteStorage",
    "MemoryStorage",
    "LiteQError",
    "ConfigurationError",
    "StorageError",
    "StoreBusy",
    "StoreFull",
    "StoreReadOnly",
    "StoreCorrupt",
    "StoreUnavailable",
    "SerializationError",
    "UnknownTask",
    "TaskFailed",
    "ResultTimeout",
    "ResultExpired",
}


def _public_objects() -> list[tuple[str, Any]]:
    return [(name, getattr(liteq, name)) for name in liteq.__all__ if not name.startswith("_")]


def _public_methods(cls: type) -> list[tuple[str, Any]]:
    """Methods and properties a liteq class defines itself (not inherited from builtins)."""
    found = []
    for klass in cls.__mro__:
        if not klass.__module__.startswith("liteq"):
            continue
        for name, member in vars(klass).items():
            if name.startswith("_"):
                continue
            if isinstance(member, (staticmethod, classmethod)):
                member = member.__func__
            if inspect.isfunction(member) or isinstance(member, property):
                found.append((f"{klass.__qualname__}.{name}", member))
    return found


def test_all_has_no_duplicates() -> None:
    # Given / When the public names
    # Then each is listed once
    assert len(liteq.__all__) == len(set(liteq.__all__))


@pytest.mark.parametrize("name", liteq.__all__)
def test_every_name_in_all_is_importable(name: str) -> None:
    # Given a name in liteq.__all__
    # When it is imported with from-import
    namespace: dict[str, Any] = {}
    exec(f"from liteq import {name}", namespace)
    # Then it is there, and is the attribute itself
    assert namespace[name] is getattr(liteq, name)


def test_star_import_gives_exactly_all() -> None:
    # Given / When a star import
    namespace: dict[str, Any] = {}
    exec("from liteq import *", namespace)
    # Then every listed name arrives
    assert set(liteq.__all__) <= set(namespace)


def test_core_names_are_exported() -> None:
    # Given / When the design card's core names
    # Then all are in __all__
    assert set(liteq.__all__) >= CORE_NAMES


def test_package_has_a_docstring_and_version() -> None:
    # Given / When the package
    # Then it says what it is and its version
    assert liteq.__doc__ and liteq.__doc__.strip()
    assert isinstance(liteq.__version__, str) and liteq.__version__


@pytest.mark.parametrize(("name", "obj"), [(n, o) for n, o in _public_objects() if callable(o)])
def test_every_public_callable_has_a_docstring(name: str, obj: Any) -> None:
    # Given a public class or function
    # When its docstring is read
    doc = inspect.getdoc(obj) if not inspect.isclass(obj) else obj.__dict__.get("__doc__")
    # Then it has one of its own
    assert doc and doc.strip(), f"liteq.{name} has no docstring"


@pytest.mark.parametrize(
    ("name", "member"),
    sorted(
        {
            qual: member
            for _, obj in _public_objects()
            if inspect.isclass(obj)
            for qual, member in _public_methods(obj)
        }.items()
    ),
)
def test_every_public_method_has_a_docstring(name: str, member: Any) -> None:
    # Given a public method or property of a public class
    # When its docstring is read
    doc = member.__doc__
    # Then it has one
    assert doc and doc.strip(), f"{name} has no docstring"


@pytest.mark.parametrize(
    "module",
    ["liteq.app", "liteq.task", "liteq.result", "liteq.worker", "liteq.serializer", "liteq.dashboard",
     "liteq.dashboard.api", "liteq.dashboard.server", "liteq.dashboard.history"],
)  # fmt: skip
def test_module_all_names_exist(module: str) -> None:
    # Given a module with its own __all__
    mod = importlib.import_module(module)
    # When / Then every name it lists exists
    assert mod.__doc__ and mod.__doc__.strip()
    for name in mod.__all__:
        assert hasattr(mod, name), f"{module}.__all__ lists {name!r}, which does not exist"
