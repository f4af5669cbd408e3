"""The store is private by default, and wake-up sockets live where no other user can plant or read them.

- A store directory liteq creates is 0700 and its files 0600, whatever the umask (``mode=`` overrides).
- Listener sockets live in ``<store>/wake``, or for a store whose path is too long for a socket
  address, in a per-user runtime directory; a symlink or a directory another user owns there is
  refused at once with a clear error (never used, never waited on).
"""

from __future__ import annotations

import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from liteq import ConfigurationError, LiteQ
from liteq.cli import EXIT_ERROR
from liteq.storage.sqlite import DB_FILENAME, SqliteStorage
from liteq.wake import runtime_dir, wake_dir
from tests import tasks
from tests.support import run_in_session

MakeApp = Callable[..., LiteQ]
NOBODY = 65534
needs_root = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0, reason="chown to another user needs root"
)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def loose_umask() -> Iterator[None]:
    """The common umask (022), under which default-created files are readable by everyone."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path (pytest's are too long for a socket address under them)."""
    path = Path(tempfile.mkdtemp(prefix="lq"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def private_runtime(short_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A runtime directory of this test's own (so nothing is shared with other runs)."""
    run = short_dir / "run"
    run.mkdir(mode=0o700)
    run.chmod(0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(run))
    return run


def use_store(app: LiteQ) -> None:
    """Write a small task and a blob-sized one, and run them: every file of the store exists."""
    echo = app.task(tasks.echo)
    echo.delay("x")
    echo.delay("y" * 200_000)
    app.storage.listen()
    assert app.run_until_empty() == 2


@pytest.mark.parametrize(
    ("mode", "dirs", "files"), [(None, 0o700, 0o600), (0o750, 0o750, 0o640), (0o770, 0o770, 0o660)]
)
def test_a_new_store_is_private_and_mode_overrides(
    make_app: MakeApp, short_dir: Path, loose_umask: None, mode: int | None, dirs: int, files: int
) -> None:
    # Given a store created under umask 022, with the default mode or another one
    store = short_dir / "store"
    app = make_app(store, **({} if mode is None else {"mode": mode}))
    # When it is used (database, WAL, shared memory, blobs, wake-up sockets)
    use_store(app)
    assert wake_dir(str(store)) == str(store / "wake")
    # Then its directories have the mode's bits and its files the same without execute
    for d in (store, store / "blobs", store / "wake"):
        assert mode_of(d) == dirs, d
    for f in (DB_FILENAME, f"{DB_FILENAME}-wal", f"{DB_FILENAME}-shm", "blobs/cache.db"):
        assert mode_of(store / f) == files, f


def test_an_existing_store_directory_keeps_its_permissions(make_app: MakeApp, tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    store.chmod(0o755)
    make_app()
    assert mode_of(store) == 0o755


@pytest.mark.parametrize("mode", [0o644, 0o600, -1, 0o1777, "0700", True])
def test_mode_that_locks_out_the_owner_is_refused(tmp_path: Path, mode: object) -> None:
    with pytest.raises(ConfigurationError, match="mode"):
        SqliteStorage(tmp_path / "store", mode=mode)  # type: ignore[arg-type]
    assert not (tmp_path / "store").exists()


def long_store(tmp_path: Path) -> Path:
    """A store whose ``wake`` path is too long for a socket address."""
    return tmp_path / ("x" * 60) / ("y" * 60)


def test_sockets_of_a_long_store_path_go_to_a_private_runtime_dir_not_a_shared_temp_path(
    tmp_path: Path, private_runtime: Path
) -> None:
    # Given a store whose own wake directory would not fit a socket address
    store = SqliteStorage(long_store(tmp_path))
    try:
        # When a process listens on it
        store.listen()
        # Then its socket lives in this user's runtime directory, private
        directory = Path(wake_dir(store.path))
        assert directory.parent == private_runtime
        assert mode_of(directory) == 0o700
        assert any(p.suffix == ".sock" for p in directory.iterdir())
    finally:
        store.close()


def test_without_a_runtime_dir_the_fallback_is_per_user_and_private(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    path = runtime_dir()
    assert os.path.basename(path) == f"liteq-{os.geteuid()}"


@needs_root
@pytest.mark.parametrize("where", ["runtime", "store"])
def test_a_wake_dir_owned_by_another_user_is_refused_at_once(
    make_app: MakeApp, tmp_path: Path, private_runtime: Path, where: str
) -> None:
    # Given a wake-up directory another user created where this store's sockets would go
    store = long_store(tmp_path) if where == "runtime" else private_runtime.parent / "store"
    app = make_app(store)
    planted = Path(wake_dir(app.storage.location))
    planted.mkdir(mode=0o777, exist_ok=True)
    os.chown(planted, NOBODY, NOBODY)
    # When a real `liteq worker STORE` starts (it binds its wake-up socket)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(private_runtime)}
    code, _, err = run_in_session(
        [sys.executable, "-m", "liteq", "worker", str(store), "-c", "1"],
        cwd=Path(__file__).resolve().parent.parent,
        env=env,
        timeout=60,
        what="a worker facing a foreign wake-up directory",
    )
    # Then it exits at once with one line naming the directory and its owner; nothing was bound there
    assert code == EXIT_ERROR, err
    assert f"{planted} belongs to uid {NOBODY}" in err and "Traceback" not in err
    assert not any(planted.iterdir())
    # And in-process, listening is refused the same way
    with pytest.raises(ConfigurationError, match="belongs to uid"):
        app.storage.listen()


def test_a_symlinked_wake_dir_is_refused(make_app: MakeApp, short_dir: Path) -> None:
    app = make_app(short_dir / "store")
    elsewhere = short_dir / "elsewhere"
    elsewhere.mkdir()
    (short_dir / "store" / "wake").symlink_to(elsewhere)
    with pytest.raises(ConfigurationError, match="symlink"):
        app.storage.listen()
    assert not any(elsewhere.iterdir())


@needs_root
def test_a_runtime_dir_open_to_others_is_refused(
    tmp_path: Path, short_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given no private runtime directory, and the per-user temp fallback made world-writable by someone
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setattr("tempfile.tempdir", str(short_dir))
    base = short_dir / f"liteq-{os.geteuid()}"
    base.mkdir(mode=0o777)
    base.chmod(0o777)
    store = SqliteStorage(long_store(tmp_path))
    try:
        with pytest.raises(ConfigurationError, match="open to other users"):
            store.listen()
    finally:
        store.close()
