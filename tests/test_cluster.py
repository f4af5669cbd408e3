"""Cluster mode end to end: real ``liteq serve`` processes on 127.0.0.1 port 0, producers through
``LiteQ("liteq://...")``, remote ``liteq worker --connect`` pools, the handshake and the CLI."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from liteq.cluster import auth
from liteq.cluster.protocol import PROTOCOL_VERSION, ClientConnection, decode_frames, encode_frame
from liteq.cluster.remote import RemoteStorage

from liteq import LiteQ
from liteq.exceptions import AuthenticationError, ConfigurationError, StoreUnavailable
from liteq.storage.records import NewTask
from tests import cluster_tasks, pool_tasks
from tests.cluster_support import TOKEN, ServerProcess, served, start_server
from tests.pool_support import ROOT, Reaper, RunLog, pool_env, run_worker_cmd
from tests.support import wait_for

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A ``liteq serve`` with a token, on a fresh store."""
    with served(tmp_path / "served") as proc:
        yield proc


@pytest.fixture
def remote_app(server: ServerProcess) -> Iterator[Callable[..., LiteQ]]:
    """A factory of producer apps on the server (closed after the test)."""
    apps: list[LiteQ] = []

    def make(**options: object) -> LiteQ:
        app = LiteQ(server.url, token=TOKEN, **options)  # type: ignore[arg-type]
        apps.append(app)
        return app

    try:
        yield make
    finally:
        for app in apps:
            app.close()


def _raw(server: ServerProcess) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    return sock


def _recv_frames(sock: socket.socket) -> list[dict[str, object]]:
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        if not chunk:
            break
        data += chunk
    return decode_frames(data)


def _task() -> NewTask:
    return NewTask(id=uuid.uuid4().hex, name="tests.pool_tasks.add", queue="default", payload=b"M\x92\x01\x02")


# -- handshake -----------------------------------------------------------------------------------


def test_right_token_connects_and_wrong_or_missing_token_is_refused(server: ServerProcess) -> None:
    # Given a server with a token: the right token works
    with RemoteStorage(server.url, token=TOKEN) as good:
        assert good.counts() == {}
    # When a client brings a wrong token, or none, then it gets AuthenticationError
    for token in ("wrong", ""):
        with RemoteStorage(server.url, token=token) as bad, pytest.raises(AuthenticationError, match="token"):
            bad.enqueue([_task()])
    # And nothing was created, and the token never appears in the server's output
    with RemoteStorage(server.url, token=TOKEN) as good:
        assert good.counts() == {}
    assert TOKEN not in server.text()


def test_commands_before_the_handshake_are_rejected_and_create_nothing(server: ServerProcess) -> None:
    # Given a raw connection that skips the handshake and sends an enqueue at once
    sock = _raw(server)
    args = {"tasks": [{"id": "x" * 32, "name": "t", "queue": "default", "payload": b"M\xc0"}]}
    sock.sendall(encode_frame({"t": "req", "id": 1, "op": "enqueue", "args": args}))
    frames = _recv_frames(sock)
    sock.close()
    # Then the server answers with its hello and one generic auth error, and closes
    assert frames[0]["t"] == "hello"
    assert frames[-1]["t"] == "error" and frames[-1]["code"] == "auth"
    with RemoteStorage(server.url, token=TOKEN) as good:
        assert good.get(["x" * 32]) == [None]


def test_a_replayed_handshake_is_rejected(server: ServerProcess) -> None:
    # Given a valid handshake recorded on one connection
    first = _raw(server)
    proto = ClientConnection(TOKEN)
    proto.receive_data(first.recv(65536))
    recorded = proto.data_to_send()
    first.sendall(recorded)
    assert [f["t"] for f in decode_frames(first.recv(65536))] == ["welcome"]
    first.close()
    # When it is replayed on a new connection (the server's nonce differs)
    second = _raw(server)
    second.recv(65536)
    second.sendall(recorded)
    frames = _recv_frames(second)
    second.close()
    # Then the server refuses it
    assert frames and frames[-1]["t"] == "error" and frames[-1]["code"] == "auth"


@contextlib.contextmanager
def _fake_server(serve: Callable[[socket.socket], None]) -> Iterator[int]:
    """A loopback port whose first connection is handed to ``serve`` in a thread; yields the port."""
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def accept() -> None:
        conn, _ = listener.accept()
        serve(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        thread.join(10)
        listener.close()


def test_a_client_refuses_a_server_that_cannot_prove_the_token(tmp_path: Path) -> None:
    # Given a fake server that answers the hello and then a welcome with a bogus proof
    def fake(conn: socket.socket) -> None:
        conn.sendall(encode_frame({"t": "hello", "v": PROTOCOL_VERSION, "nonce": auth.new_nonce()}))
        conn.recv(65536)
        conn.sendall(encode_frame({"t": "welcome", "proof": b"\x00" * 32}))
        conn.recv(65536)
        conn.close()

    # When a client connects, then the handshake fails with AuthenticationError
    with (
        _fake_server(fake) as port,
        RemoteStorage(f"liteq://127.0.0.1:{port}", token=TOKEN) as store,
        pytest.raises(AuthenticationError),
    ):
        store.counts()


def test_serve_refuses_a_non_loopback_bind_without_a_token(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "LITEQ_TOKEN"}
    proc = subprocess.run(
        [sys.executable, "-m", "liteq", "serve", str(tmp_path / "s"), "--bind", "0.0.0.0:0"],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert proc.returncode == 1
    assert "without a token" in proc.stderr and "--token-file" in proc.stderr


def test_serve_reads_the_token_from_a_file_and_never_prints_it(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text(TOKEN + "\n")
    env = {k: v for k, v in os.environ.items() if k != "LITEQ_TOKEN"}
    server = start_server(tmp_path / "s", "--token-file", str(secret), "--loglevel", "DEBUG", env=env)
    try:
        with RemoteStorage(server.url, token=TOKEN) as store:
            store.enqueue([_task()])
        with RemoteStorage(server.url, token="nope") as store, pytest.raises(AuthenticationError):
            store.counts()
    finally:
        server.stop()
    assert TOKEN not in server.text()


# -- producers and remote workers ---------------------------------------------------------------------


def test_producer_and_remote_worker_run_a_task_through_the_server(
    server: ServerProcess, remote_app: Callable[..., LiteQ], reaper: Reaper, tmp_path: Path
) -> None:
    # Given a remote worker pool (another process) connected to the server
    env = {**pool_env(tmp_path, lease=30), "LITEQ_TEST_STORE": server.url, "LITEQ_TOKEN": TOKEN}
    reaper.popen(run_worker_cmd(concurrency=1), name="remote-worker", env=env)
    app = remote_app()
    add = app.task(pool_tasks.add)
    # When a producer enqueues through the server
    result = add.delay(2, 3)
    # Then the remote worker runs it and the result comes back
    assert result.get(timeout=60) == 5
    # And the remote worker is listed with its host, pid and heartbeat
    workers = wait_for(lambda: app.stats()["workers"], 20, "the remote worker to register")
    assert workers[0]["pid"] != os.getpid() and workers[0]["host"] == socket.gethostname()


def test_liteq_worker_connect_runs_tasks_of_the_app(
    server: ServerProcess, remote_app: Callable[..., LiteQ], reaper: Reaper, tmp_path: Path
) -> None:
    # Given `liteq worker APP --connect URL`
    env = {**pool_env(tmp_path / "unused-local-store"), "LITEQ_TOKEN": TOKEN}
    reaper.popen(
        [sys.executable, "-m", "liteq", "worker", "tests.pool_app:app", "--connect", server.url, "-c", "1"],
        name="connect-worker",
        env=env,
    )
    app = remote_app()
    record = app.task(pool_tasks.record)
    log = RunLog(tmp_path / "runs.log")
    # When tasks are enqueued through the server, then the worker runs each once
    results = [record.delay(log.path, f"k{i}") for i in range(5)]
    assert [r.get(timeout=60) for r in results] == [f"k{i}" for i in range(5)]
    assert log.runs_per_key() == {f"k{i}": 1 for i in range(5)}


def test_wait_wakes_on_a_write_by_another_client_without_polling(server: ServerProcess) -> None:
    # Given a store waiting for changes with a long timeout
    with RemoteStorage(server.url, token=TOKEN) as waiter, RemoteStorage(server.url, token=TOKEN) as writer:
        waiter.listen()
        version = waiter.version
        import threading

        seen: list[float] = []

        def wait() -> None:
            waiter.wait(version, 60)
            seen.append(time.monotonic())

        thread = threading.Thread(target=wait)
        thread.start()
        # When another client writes
        started = time.monotonic()
        writer.enqueue([_task()])
        thread.join(30)
        # Then the waiter wakes on the server's push, long before its timeout
        assert seen and seen[0] - started < 10


def test_a_pickle_payload_is_refused_and_its_canary_never_runs(
    server: ServerProcess, remote_app: Callable[..., LiteQ], tmp_path: Path
) -> None:
    # Given a producer using the pickle serializer and an argument whose unpickling runs code
    canary = tmp_path / "canary"
    app = remote_app(serializer="pickle")
    echo = app.task(cluster_tasks.echo)
    # When it enqueues through a server started without --allow-pickle, then it is refused
    with pytest.raises(ConfigurationError, match="--allow-pickle"):
        echo.delay(cluster_tasks.Canary(str(canary)))
    # And nothing was stored, and the canary never ran (nobody unpickled the payload)
    assert app.stats()["states"].get("pending", 0) == 0
    assert not canary.exists()


def test_an_unregistered_task_name_fails_and_is_never_imported(
    server: ServerProcess, remote_app: Callable[..., LiteQ], reaper: Reaper, tmp_path: Path
) -> None:
    # Given a task stored under the name of a module no worker registered (importing it leaves a canary)
    canary = tmp_path / "imported"
    app = remote_app()
    unknown = app.task(cluster_tasks.echo, name="tests.cluster_canary.run")
    result = unknown.delay("x")
    env = {**pool_env(tmp_path), "LITEQ_TEST_STORE": server.url, "LITEQ_TOKEN": TOKEN}
    env["LITEQ_TEST_CANARY"] = str(canary)
    reaper.popen(run_worker_cmd(concurrency=1), name="remote-worker", env=env)
    # When a remote worker claims it, then it fails as an unknown task and the module is never imported
    wait_for(lambda: result.state == "failed", 60, "the task to fail")
    row = app.storage.get([result.id])[0]
    assert row is not None and row.reason == "unknown task"
    assert not canary.exists()


def test_the_server_unreachable_raises_store_unavailable(tmp_path: Path) -> None:
    # Given a port nobody listens on
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    # When a producer calls, then it gets StoreUnavailable (the pool's degraded state), not a hang
    with RemoteStorage(f"liteq://127.0.0.1:{port}", retry_window=0.2) as store, pytest.raises(StoreUnavailable):
        store.counts()


@pytest.mark.timeout(30)
def test_a_call_whose_server_closes_the_connection_before_replying_fails_at_once(tmp_path: Path) -> None:
    # Found by the soak (cluster mode, seed 617431): a producer's call (no reader thread) read the
    # server's close as "nothing yet" and spun until the request timeout (60 s) instead of failing.
    # Given a fake server that completes the handshake, reads one request and closes without replying
    from liteq.cluster.protocol import Request, ServerConnection

    def fake(conn: socket.socket) -> None:
        proto = ServerConnection(TOKEN)
        proto.start()
        conn.sendall(proto.data_to_send())
        while True:
            events = proto.receive_data(conn.recv(65536))
            conn.sendall(proto.data_to_send())
            if any(isinstance(e, Request) for e in events):
                break
        conn.close()

    # When a client calls it (with a request timeout longer than the test's)
    with _fake_server(fake) as port:
        store = RemoteStorage(f"liteq://127.0.0.1:{port}", token=TOKEN, request_timeout=600, retry_window=0)
        try:
            with pytest.raises(StoreUnavailable) as raised:
                store.counts()
        finally:
            store.close()
    # Then it fails as soon as the connection closes, saying so
    assert "the connection was lost" in str(raised.value)


def test_cli_status_takes_a_cluster_url(server: ServerProcess, remote_app: Callable[..., LiteQ]) -> None:
    app = remote_app()
    app.task(pool_tasks.add).delay(1, 2)
    out = subprocess.run(
        [sys.executable, "-m", "liteq", "status", server.url, "--json"],
        capture_output=True,
        text=True,
        env={**os.environ, "LITEQ_TOKEN": TOKEN},
        cwd=ROOT,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert '"pending": 1' in out.stdout


# -- found by the soak ---------------------------------------------------------------------------


def test_a_forked_child_gets_its_own_connection_instead_of_sharing_its_parents(server: ServerProcess) -> None:
    # Found by the soak (cluster mode, a pool started with start_method="fork"): the child inherits
    # the parent's socket but not its reader thread, so its requests go unanswered until the request
    # timeout, and both processes number requests from the same counter on one stream.
    # Given a client that is connected (its reader thread runs)
    store = RemoteStorage(server.url, token=TOKEN, request_timeout=5.0)
    try:
        (task_id,) = store.enqueue([_task()])
        assert store.get([task_id])[0] is not None
        r, w = os.pipe()

        # When the process forks and the child reads through the same RemoteStorage
        pid = os.fork()
        if pid == 0:  # the child: report what it saw, then leave without any cleanup
            try:
                row = store.get([task_id])[0]
                os.write(w, b"ok" if row is not None and row.id == task_id else b"wrong row")
            except BaseException as exc:
                os.write(w, f"{type(exc).__name__}: {exc}".encode()[:500])
            os._exit(0)
        os.close(w)
        # (while the parent goes on using its own connection)
        for _ in range(20):
            row = store.get([task_id])[0]
            assert row is not None and row.id == task_id
        _, status = os.waitpid(pid, 0)
        answer = os.read(r, 1000).decode()
        os.close(r)

        # Then the child got its answer (over a connection of its own) and the parent still gets its own
        assert answer == "ok", f"the forked child's read failed: {answer}"
        assert os.waitstatus_to_exitcode(status) == 0
        assert store.get([task_id])[0] is not None
    finally:
        store.close()
