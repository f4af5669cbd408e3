"""Shared fixtures: every storage the contract suite runs against."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from liteq.storage.base import Storage

#: Every store the contract suite (``tests/test_storage_contract.py``) runs against.
STORAGE_KINDS = ("sqlite", "memory")


def pytest_configure(config: pytest.Config) -> None:
    # Registered so that ``filterwarnings = error`` does not turn the marker into an error.
    config.addinivalue_line(
        "markers", "only_storage(*kinds): run a `storage` test only for these kinds, skip the others"
    )


def open_storage(kind: str, directory: Path) -> Storage:
    """Open a fresh store of ``kind``; ``directory`` is where a store on disk keeps its files."""
    # Imported lazily: each store's tests run even while another store fails to import.
    if kind == "sqlite":
        from liteq.storage.sqlite import SqliteStorage

        return SqliteStorage(str(directory))
    if kind == "memory":
        from liteq.storage.memory import MemoryStorage

        return MemoryStorage()
    raise AssertionError(f"unknown storage kind {kind!r}")


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    """The directory a store on disk lives in (not created: the store creates it)."""
    return tmp_path / "store"


@pytest.fixture(params=STORAGE_KINDS)
def storage(request: pytest.FixtureRequest, store_dir: Path) -> Iterator[Storage]:
    """One open store of each kind, closed after the test.

    ``@pytest.mark.only_storage("sqlite")`` skips the other kinds for tests of one store's extras.
    """
    kind: str = request.param
    marker = request.node.get_closest_marker("only_storage")
    if marker is not None and kind not in marker.args:
        pytest.skip(f"{request.node.originalname} is specific to {', '.join(marker.args)} storage, not {kind}")
    store = open_storage(kind, store_dir)
    try:
        yield store
    finally:
        store.close()
