"""Shared fixtures: every storage the contract suite runs against."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from liteq.storage.contract import Storage

if TYPE_CHECKING:
    from liteq import LiteQ

#: Every store the contract suite (``tests/test_storage_contract.py``) runs against.
STORAGE_KINDS = ("sqlite", "memory", "remote")


def pytest_addoption(parser: pytest.Parser) -> None:
    # The soak's options (read by tests/soak/conftest.py) live here, in the first conftest pytest
    # loads, so that `pytest --soak-seed 7` works from the repository root too.
    group = parser.getgroup("liteq soak")
    group.addoption("--soak-seconds", type=float, default=None, help="seconds of faults in tests/soak, per mode [50]")
    group.addoption("--soak-seed", type=int, action="append", default=None, help="a soak seed (repeatable)")


def pytest_configure(config: pytest.Config) -> None:
    # Registered so that ``filterwarnings = error`` does not turn the marker into an error.
    config.addinivalue_line(
        "markers", "only_storage(*kinds): run a `storage` test only for these kinds, skip the others"
    )


def open_storage(kind: str, directory: Path, server_url: str | None = None) -> Storage:
    """Open a fresh store of ``kind``; ``directory`` is where a store on disk keeps its files.
    ``remote`` connects to ``server_url`` (a real ``liteq serve``) and empties its store first."""
    # Imported lazily: each store's tests run even while another store fails to import.
    if kind == "sqlite":
        from liteq.storage.sqlite import SqliteStorage

        return SqliteStorage(str(directory))
    if kind == "memory":
        from liteq.storage.memory import MemoryStorage

        return MemoryStorage()
    if kind == "remote":
        from liteq.cluster.remote import RemoteStorage

        assert server_url is not None
        remote = RemoteStorage(server_url)
        remote.reset()
        return remote
    raise AssertionError(f"unknown storage kind {kind!r}")


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    """The directory a store on disk lives in (not created: the store creates it)."""
    return tmp_path / "store"


@pytest.fixture(scope="session")
def contract_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``liteq serve`` on 127.0.0.1 port 0, shared by the contract tests of the remote store
    (each test empties its store first). Started in test mode: it honours the clients' ``now``
    (the contract drives time) and accepts ``reset``."""
    from tests.cluster_support import start_server

    server = start_server(tmp_path_factory.mktemp("contract-server") / "store", "--test-mode")
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(params=STORAGE_KINDS)
def storage(request: pytest.FixtureRequest, store_dir: Path) -> Iterator[Storage]:
    """One open store of each kind, closed after the test.

    ``@pytest.mark.only_storage("sqlite")`` skips the other kinds for tests of one store's extras.
    """
    kind: str = request.param
    marker = request.node.get_closest_marker("only_storage")
    if marker is not None and kind not in marker.args:
        pytest.skip(f"{request.node.originalname} is specific to {', '.join(marker.args)} storage, not {kind}")
    url = request.getfixturevalue("contract_server") if kind == "remote" else None
    store = open_storage(kind, store_dir, url)
    try:
        yield store
    finally:
        store.close()


# -- apps ----------------------------------------------------------------------------------------

#: The stores the app-level tests run against: a directory (SQLite) and ``memory://``.
APP_KINDS = ("sqlite", "memory")


@pytest.fixture
def make_app(tmp_path: Path) -> Iterator[Callable[..., LiteQ]]:
    """A factory of apps: ``make_app(**options)`` opens ``LiteQ(tmp_path / "store", **options)``.

    ``make_app(store, **options)`` opens another store (``"memory://"``, a URL, a second app on the
    same directory). Every app it made is closed after the test, newest first.
    """
    apps: list[LiteQ] = []

    def make(store: str | Path | None = None, **options: Any) -> LiteQ:
        from liteq import LiteQ  # lazily, like the stores above

        app = LiteQ(tmp_path / "store" if store is None else store, **options)
        apps.append(app)
        return app

    try:
        yield make
    finally:
        for app in reversed(apps):
            app.close()


@pytest.fixture
def make_memory_app(make_app: Callable[..., LiteQ]) -> Callable[..., LiteQ]:
    """Like :func:`make_app`, on a fresh ``memory://`` store."""

    def make(**options: Any) -> LiteQ:
        return make_app("memory://", **options)

    return make


@pytest.fixture(params=APP_KINDS)
def make_any_app(request: pytest.FixtureRequest, make_app: Callable[..., LiteQ]) -> Callable[..., LiteQ]:
    """Like :func:`make_app`, once per kind of store in :data:`APP_KINDS`."""
    kind: str = request.param

    def make(**options: Any) -> LiteQ:
        return make_app("memory://" if kind == "memory" else None, **options)

    return make


# -- processes (pool tests) ---------------------------------------------------------------------


@pytest.fixture
def reaper(tmp_path: Path) -> Iterator[Any]:
    """A :class:`tests.pool_support.Reaper`: processes the test starts, killed by pid at teardown."""
    from tests.pool_support import Reaper

    r = Reaper(tmp_path)
    try:
        yield r
    finally:
        r.cleanup()


@pytest.fixture
def runlog(tmp_path: Path) -> Any:
    """A :class:`tests.pool_support.RunLog` at ``tmp_path / "runs.log"``: what tasks ran, where, which attempt."""
    from tests.pool_support import RunLog

    return RunLog(tmp_path / "runs.log")


@pytest.fixture
def gate(tmp_path: Path) -> Any:
    """A :class:`tests.pool_support.Gate`: release files for blocking tasks; everything is released at teardown."""
    from tests.pool_support import Gate

    g = Gate(tmp_path / "gate")
    try:
        yield g
    finally:
        g.release_all()
