"""The cluster server's own behaviour, with the server in this process (its state is visible):
long-poll claims, pushes, one heartbeat for all leases, the server's clock, group commit, limits
with their error codes, deadlines, shutdown, TLS and the asyncio client."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from liteq.cluster import codec
from liteq.cluster.admission import ServerConfig
from liteq.cluster.client import AsyncClient, Client, parse_url
from liteq.cluster.protocol import ClientConnection, Limits, decode_frames, encode_frame
from liteq.cluster.remote import RemoteStorage
from liteq.cluster.server import INLINE_MAX_ITEMS, INLINE_SLOW
from liteq.cluster.store_thread import Job, StoreThread
from liteq.cluster.workers import WorkerBook

from liteq.exceptions import ConfigurationError, ProtocolError, StorageError, StoreUnavailable
from liteq.storage.memory import MemoryStorage
from liteq.storage.records import ClaimedTask, NewTask, Outcome
from tests.cluster_support import InProcessServer
from tests.support import wait_for

pytestmark = pytest.mark.timeout(60)

T0 = 2_000_000_000.0


class CountingStorage(MemoryStorage):
    """A memory store that counts the enqueue calls it gets (to see group commit)."""

    def __init__(self) -> None:
        super().__init__()
        self.enqueue_calls = 0

    def enqueue(self, tasks: Sequence[NewTask], *, now: float | None = None) -> list[str]:
        self.enqueue_calls += 1
        return super().enqueue(tasks, now=now)


@pytest.fixture
def served() -> Iterator[InProcessServer]:
    server = InProcessServer(MemoryStorage(), max_claim_wait=5.0)
    try:
        yield server
    finally:
        server.stop()


def task(queue: str = "default", **fields: Any) -> NewTask:
    return NewTask(id=uuid.uuid4().hex, name="t", queue=queue, payload=b"M\xc0", **fields)


def _raw_authenticated(url: str) -> tuple[socket.socket, ClientConnection]:
    endpoint = parse_url(url)
    sock = socket.create_connection((endpoint.host, endpoint.port), timeout=10)
    proto = ClientConnection(None)
    while not proto.authenticated:
        proto.receive_data(sock.recv(65536))
        sock.sendall(proto.data_to_send())
    return sock, proto


def _replies(sock: socket.socket, proto: ClientConnection, n: int) -> list[Any]:
    got: list[Any] = []
    while len(got) < n:
        data = sock.recv(65536)
        assert data, "connection closed"
        got += proto.receive_data(data)
    return got


# -- long polls and pushes ------------------------------------------------------------------------


def test_a_long_poll_claim_is_answered_the_moment_a_task_is_enqueued(served: InProcessServer) -> None:
    with RemoteStorage(served.url) as worker, RemoteStorage(served.url) as producer:
        # Given a worker parked in a long-poll claim
        got: list[Any] = []
        thread = threading.Thread(target=lambda: got.append(worker.claim_wait("w1", ["default"], wait=30)))
        thread.start()
        wait_for(lambda: served.server._parked, 10, "the claim to park")
        # When a producer enqueues
        started = time.monotonic()
        (task_id,) = producer.enqueue([task()])
        thread.join(20)
        # Then the claim returns that task at once, not at the end of its wait
        assert got and [c.id for c in got[0]] == [task_id]
        assert time.monotonic() - started < 3


def test_a_long_poll_claim_is_capped_by_the_server_and_answers_empty(served: InProcessServer) -> None:
    with RemoteStorage(served.url) as worker:
        started = time.monotonic()
        # The client asks for 60 s; the server (max_claim_wait=5) answers empty within its cap
        assert worker.claim_wait("w1", ["default"], wait=60) == []
        assert 4 <= time.monotonic() - started < 15


def test_result_waiters_are_woken_by_a_push_after_a_completion(served: InProcessServer) -> None:
    with RemoteStorage(served.url) as waiter, RemoteStorage(served.url) as worker:
        (task_id,) = worker.enqueue([task()])
        claimed = worker.claim("w1", ["default"])[0]
        waiter.listen()
        version = waiter.version
        woke: list[float] = []
        thread = threading.Thread(target=lambda: (waiter.wait(version, 60), woke.append(time.monotonic())))
        thread.start()
        started = time.monotonic()
        worker.complete([Outcome(task_id, claimed.lease_token, "succeeded", result=b"M\x01")])
        thread.join(20)
        assert woke and woke[0] - started < 3


def test_a_remote_store_wakes_a_local_listener_socket_on_pushes(served: InProcessServer) -> None:
    from liteq.wake import Waker

    with RemoteStorage(served.url) as pool_side, RemoteStorage(served.url) as producer:
        # Given a pool-style waker on the remote store's wake directory (subscribes to pushes)
        waker = Waker(pool_side.wake_dir)
        try:
            wait_for(lambda: any(c.listening for c in served.server._conns), 10, "the subscription")
            # When another client enqueues, then the waker's socket becomes readable with a work byte
            producer.enqueue([task()])
            assert wait_for(lambda: waker.drain(), 10, "a wake byte").count(b"w") >= 1
        finally:
            waker.close()


# -- leases, heartbeats, the server's clock --------------------------------------------------------------


def test_one_heartbeat_extends_every_lease_of_the_worker(served: InProcessServer) -> None:
    with RemoteStorage(served.url) as worker:
        worker.enqueue([task(), task()])
        claimed = worker.claim("w1", ["default"], limit=2, lease=30)
        before = {c.id: c.lease_deadline for c in claimed}
        wait_for(lambda: time.time() > max(before.values()) - 30 + 0.05, 5, "the clock to move")
        # When the worker sends one heartbeat
        worker.heartbeat("w1")
        # Then every lease it holds was pushed out
        rows = wait_for(
            lambda: (rs := worker.get(list(before))) and all(r and r.lease_deadline > before[r.id] for r in rs) and rs,
            10,
            "the leases to be extended",
        )
        assert len(rows) == 2


def test_a_heartbeat_reply_carries_drain_or_stop(served: InProcessServer) -> None:
    with RemoteStorage(served.url) as worker:
        served.server.command("w1", "drain")
        worker.heartbeat("w1")
        assert worker.commands == ["drain"]
        worker.heartbeat("w1")
        assert worker.commands == ["drain"]
    with pytest.raises(ConfigurationError):
        served.server.command("w1", "explode")


def test_the_server_is_the_clock(served: InProcessServer) -> None:
    with RemoteStorage(served.url) as store:
        # A client that passes its own (far future) time gets the server's time stamped
        before = time.time()
        (task_id,) = store.enqueue([task()], now=T0)
        claimed = store.claim("w1", ["default"], lease=10, now=T0)[0]
        after = time.time()
        row = store.get([task_id])[0]
        assert row is not None and before <= row.enqueued_at <= after
        assert before + 10 <= claimed.lease_deadline <= after + 10


def test_the_server_returns_a_silent_workers_leases_after_the_lease_time(served: InProcessServer) -> None:
    with RemoteStorage(served.url) as silent, RemoteStorage(served.url) as other:
        (task_id,) = other.enqueue([task(max_attempts=3)])
        # Given a worker that claims with a short lease and then says nothing (its socket stays open)
        assert silent.claim("w-silent", ["default"], lease=1.0)[0].id == task_id
        # When no pool reaps, the server does it itself after the lease: another worker gets the task
        again = wait_for(lambda: other.claim("w-other", ["default"]), 15, "the task to be claimable again")
        assert again[0].id == task_id and again[0].attempt == 2


# -- group commit ------------------------------------------------------------------------------------


def test_enqueues_from_many_connections_are_committed_in_fewer_store_calls() -> None:
    storage = CountingStorage()
    server = InProcessServer(storage)
    try:
        stores = [RemoteStorage(server.url) for _ in range(8)]
        barrier = threading.Barrier(len(stores))

        def produce(store: RemoteStorage) -> None:
            barrier.wait()
            for _ in range(40):
                store.enqueue([task()])

        threads = [threading.Thread(target=produce, args=(s,)) for s in stores]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert stores[0].counts() == {"default": {"pending": 320}}
        assert storage.enqueue_calls < 320
        for s in stores:
            s.close()
    finally:
        server.stop()


def test_a_failing_batch_in_a_group_fails_only_its_own_request() -> None:
    # Given one store turn holding three enqueue requests, the middle one reusing a stored id
    storage = MemoryStorage()
    existing = task()
    storage.enqueue([existing])
    results: list[tuple[Any, BaseException | None]] = []
    op = codec.operation("enqueue")
    jobs = [
        Job(op, {"tasks": batch}, lambda r, e: results.append((r, e)))
        for batch in ([task()], [task(), NewTask(existing.id, "t", "default", b"M")], [task()])
    ]
    thread = StoreThread(storage, ServerConfig(), lambda replies, kinds: None)
    # When the turn runs them as one group
    thread._turn(jobs)
    # Then the first and last are stored, the middle one alone fails and wrote nothing
    assert results[0][1] is None and results[2][1] is None
    assert isinstance(results[1][1], StorageError)
    assert storage.counts() == {"default": {"pending": 3}}


# -- who reads the connection ---------------------------------------------------------------------------


def _reader_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name == "liteq-client" and t.is_alive())


def test_a_caller_reads_its_own_reply_until_pushes_are_wanted(served: InProcessServer) -> None:
    pushes: list[str] = []
    client = Client(parse_url(served.url), on_push=lambda kind, data: pushes.append(kind))
    before = _reader_threads()
    try:
        # Given a client nobody listens on: each call reads its own reply, no reader thread starts
        for _ in range(5):
            client.call("ping", {})
        assert client.connected and _reader_threads() == before
        # When several threads call at once over the one connection, each still gets its own reply
        # (whoever holds the reader baton hands the others theirs)
        errors: list[BaseException] = []
        enqueue = codec.operation("enqueue")
        assert enqueue is not None

        def caller(k: int) -> None:
            try:
                for _ in range(30):
                    ids, _ = client.call("enqueue", enqueue.encode_args({"tasks": [task(queue=f"q{k}")]}))
                    assert len(ids) == 1
            except BaseException as exc:  # reported by the assertion below
                errors.append(exc)

        threads = [threading.Thread(target=caller, args=(k,)) for k in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors
        counts, _ = client.call("counts", {})
        assert {q: c["pending"] for q, c in counts.items()} == {f"q{k}": 30 for k in range(6)}
        assert _reader_threads() == before
        # When pushes are wanted, a reader thread takes over and pushes arrive with no call in flight
        client.want_pushes()
        client.call("listen", {})
        assert _reader_threads() == before + 1
        with RemoteStorage(served.url) as producer:
            producer.enqueue([task()])
        wait_for(lambda: "changed" in pushes, 10, "a push with no call in flight")
    finally:
        client.close()
    wait_for(lambda: _reader_threads() == before, 10, "the reader thread to stop")


def test_a_client_without_a_reader_notices_a_connection_closed_while_idle(served: InProcessServer) -> None:
    client = Client(parse_url(served.url), retry_window=0.0)
    try:
        client.call("ping", {})
        # Given the server dropped this idle connection (nobody was reading it)
        for conn in list(served.server._conns):
            served.run(_close_conn(conn))
        wait_for(lambda: not served.server._conns, 10, "the server to drop the connection")
        # Then a write (not safe to repeat) still goes out, on a new connection
        enqueue = codec.operation("enqueue")
        assert enqueue is not None
        ids, _ = client.call("enqueue", enqueue.encode_args({"tasks": [task()]}))
        assert len(ids) == 1
    finally:
        client.close()


async def _close_conn(conn: Any) -> None:
    conn.writer.close()


# -- enqueue retries ------------------------------------------------------------------------------------


def test_a_retried_enqueue_with_the_same_key_creates_one_task(served: InProcessServer) -> None:
    client = Client(parse_url(served.url))
    try:
        args = codec.operation("enqueue").encode_args({"tasks": [task()]})  # type: ignore[union-attr]
        first, _ = client.call("enqueue", args, extra={"key": "req-1"})
        # The reply was "lost": the client sends the same request again, marked as a retry
        again, _ = client.call("enqueue", args, extra={"key": "req-1", "retry": True})
        assert first == again
        # And after a server restart (the reply memory is gone) the retry still finds the batch
        served.server._replies.clear()
        third, _ = client.call("enqueue", args, extra={"key": "req-1", "retry": True})
        assert third == first
        with RemoteStorage(served.url) as store:
            assert store.counts() == {"default": {"pending": 1}}
    finally:
        client.close()


# -- limits ---------------------------------------------------------------------------------------------


def test_connections_over_the_limit_are_refused_with_their_code() -> None:
    server = InProcessServer(MemoryStorage(), max_connections=2)
    try:
        a, b = RemoteStorage(server.url), RemoteStorage(server.url)
        a.counts()
        b.counts()
        with (
            RemoteStorage(server.url, retry_window=0.1) as c,
            pytest.raises(StoreUnavailable, match="connection limit"),
        ):
            c.counts()
        a.close()
        wait_for(lambda: len(server.server._conns) < 2, 10, "the server to see the close")
        with RemoteStorage(server.url) as d:
            assert d.counts() == {}
        b.close()
    finally:
        server.stop()


def test_requests_over_the_in_flight_limit_are_refused_as_busy() -> None:
    server = InProcessServer(MemoryStorage(), max_in_flight=1, max_claim_wait=5.0)
    try:
        sock, proto = _raw_authenticated(server.url)
        # Given a parked claim using the connection's only slot, a second request is refused as busy
        claim = codec.operation("claim").encode_args({"owner": "w", "queues": ["default"]})  # type: ignore[union-attr]
        proto.request(1, "claim", claim, {"wait": 5})
        proto.request(2, "counts", {})
        sock.sendall(proto.data_to_send())
        (reply,) = _replies(sock, proto, 1)
        assert reply.id == 2 and reply.error["code"] == "busy"
        sock.close()
    finally:
        server.stop()


def test_a_batch_over_the_limit_is_refused_with_its_code() -> None:
    server = InProcessServer(MemoryStorage(), max_batch=10)
    try:
        with RemoteStorage(server.url) as store:
            with pytest.raises(ProtocolError, match="batch limit"):
                store.enqueue([task() for _ in range(11)])
            assert store.enqueue([task() for _ in range(10)])
    finally:
        server.stop()


def test_a_frame_over_the_cap_closes_only_that_connection() -> None:
    server = InProcessServer(MemoryStorage(), limits=Limits(max_frame=4096, max_bin_len=4096))
    try:
        with RemoteStorage(server.url) as bystander:
            bystander.counts()
            sock, proto = _raw_authenticated(server.url)
            big = codec.operation("enqueue").encode_args({"tasks": [NewTask("x", "t", "q", b"M" * 10_000)]})  # type: ignore[union-attr]
            proto.request(1, "enqueue", big)
            sock.sendall(proto.data_to_send())
            frames = decode_frames(_read_all(sock))
            sock.close()
            assert frames[-1]["t"] == "error" and frames[-1]["code"] == "protocol"
            assert bystander.counts() == {}
        # And the client refuses to send a frame over its own cap (our fault)
        with pytest.raises(ProtocolError) as info:
            encode_frame({"t": "req", "b": b"x" * 5000}, Limits(max_frame=4096))
        assert info.value.ours
    finally:
        server.stop()


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    sock.settimeout(10)
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_the_handshake_and_a_partial_frame_have_deadlines() -> None:
    server = InProcessServer(MemoryStorage(), handshake_timeout=0.5, read_timeout=0.5)
    try:
        endpoint = parse_url(server.url)
        # A client that never answers the hello is closed after the handshake deadline
        silent = socket.create_connection((endpoint.host, endpoint.port), timeout=10)
        started = time.monotonic()
        assert [f["t"] for f in decode_frames(_read_all(silent))] == ["hello"]
        assert time.monotonic() - started < 8
        silent.close()
        # A client that sends half a frame after the handshake is closed after the read deadline
        sock, _ = _raw_authenticated(server.url)
        sock.sendall(encode_frame({"t": "req", "id": 1, "op": "counts", "args": {}})[:7])
        started = time.monotonic()
        assert _read_all(sock) == b""
        assert time.monotonic() - started < 8
        sock.close()
    finally:
        server.stop()


def test_close_is_idempotent_and_clients_then_see_the_store_unavailable() -> None:
    server = InProcessServer(MemoryStorage())
    store = RemoteStorage(server.url, retry_window=0.2)
    store.enqueue([task()])
    server.stop()
    server.stop()
    with pytest.raises(StoreUnavailable):
        store.counts()
    store.close()
    store.close()


# -- TLS, pickle, asyncio -------------------------------------------------------------------------------


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    return cert, key


def test_tls_serves_a_client_that_verifies_the_certificate(certificate: tuple[Path, Path]) -> None:
    from liteq.cluster.serve import server_ssl_context

    cert, key = certificate
    server = InProcessServer(MemoryStorage(), ssl=server_ssl_context(str(cert), str(key)), token="t0ken")
    try:
        assert server.url.startswith("liteqs://")
        # A client that trusts the private CA works
        with RemoteStorage(server.url, token="t0ken", tls_ca=str(cert)) as store:
            store.enqueue([task()])
            assert store.counts() == {"default": {"pending": 1}}
        # A client that does not know the CA refuses the server, naming the fix
        with RemoteStorage(server.url, token="t0ken") as store, pytest.raises(ConfigurationError, match="tls_ca"):
            store.counts()
    finally:
        server.stop()


def test_pickle_payloads_are_stored_only_with_allow_pickle() -> None:
    pickled = NewTask(uuid.uuid4().hex, "t", "default", b"P\x80\x05N.")
    for allow in (False, True):
        server = InProcessServer(MemoryStorage(), allow_pickle=allow)
        try:
            with RemoteStorage(server.url) as store:
                if allow:
                    assert store.enqueue([pickled]) == [pickled.id]
                else:
                    with pytest.raises(ConfigurationError, match="--allow-pickle"):
                        store.enqueue([pickled])
                    assert store.counts() == {}
        finally:
            server.stop()


def test_the_asyncio_client_calls_and_hears_pushes(served: InProcessServer) -> None:
    async def main() -> tuple[Any, list[str]]:
        pushes: list[str] = []
        client = AsyncClient(parse_url(served.url), on_push=lambda kind, data: pushes.append(kind))
        await client.connect()
        await client.call("listen", {})
        enqueue = codec.operation("enqueue")
        assert enqueue is not None
        ids = await client.call("enqueue", enqueue.encode_args({"tasks": [task()]}))
        counts = await client.call("counts", {})
        for _ in range(200):
            if pushes:
                break
            await asyncio.sleep(0.01)
        client.close()
        client.close()
        await client.wait_closed()
        return (ids, counts), pushes

    (ids, counts), pushes = asyncio.run(main())
    assert len(ids) == 1 and counts == {"default": {"pending": 1}}
    assert "changed" in pushes


class SlowStorage(MemoryStorage):
    """A memory store whose enqueue notes the thread running it, then waits for ``release`` (a
    transaction in progress) and ``delay`` seconds more (a lock, a slow disk)."""

    def __init__(self, *, released: bool = False) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()
        if released:
            self.release.set()
        self.threads: list[str] = []
        self.delay = 0.0

    def enqueue(self, tasks: Sequence[NewTask], *, now: float | None = None) -> list[str]:
        self.threads.append(threading.current_thread().name)
        self.entered.set()
        assert self.release.wait(30)
        if self.delay:
            threading.Event().wait(self.delay)
        return super().enqueue(tasks, now=now)


def test_graceful_shutdown_finishes_the_transaction_in_progress() -> None:
    storage = SlowStorage()
    server = InProcessServer(storage)
    store = RemoteStorage(server.url, retry_window=0.0)
    try:
        # Given an enqueue whose transaction is in progress in the store thread (a batch too big
        # for the event loop to run itself)
        outcome: list[Any] = []

        def enqueue() -> None:
            try:
                outcome.append(store.enqueue([task() for _ in range(INLINE_MAX_ITEMS + 1)]))
            except Exception as exc:
                outcome.append(exc)

        thread = threading.Thread(target=enqueue)
        thread.start()
        assert storage.entered.wait(10)
        # When the server is asked to stop meanwhile
        server.loop.call_soon_threadsafe(server.server.close)
        wait_for(lambda: server.server._closing, 10, "the server to start closing")
        storage.release.set()
        thread.join(20)
        server.stop()
        # Then the transaction was completed, not cut: the task is stored
        assert storage.counts() == {"default": {"pending": INLINE_MAX_ITEMS + 1}}
        assert outcome and isinstance(outcome[0], (list, StoreUnavailable))
    finally:
        storage.release.set()
        store.close()
        server.stop()


def test_an_idle_server_runs_small_calls_on_its_loop_and_leaves_big_or_slow_ones_to_the_store_thread() -> None:
    storage = SlowStorage(released=True)
    server = InProcessServer(storage)
    store = RemoteStorage(server.url, retry_window=0.0)
    try:
        # A small call while the store thread is idle: run by the loop (no thread hand-off)
        store.enqueue([task()])
        # A batch over the inline size: the store thread
        store.enqueue([task() for _ in range(INLINE_MAX_ITEMS + 1)])
        assert storage.threads == [server._thread.name, "liteq-store"]
        # A small call that turned out slow makes the loop leave the next calls to the store thread
        thread = server.server._store
        wait_for(lambda: thread._finished == thread._submitted, 10, "the store thread to finish its turn")
        storage.delay = INLINE_SLOW * 2
        store.enqueue([task()])
        storage.delay = 0.0
        store.enqueue([task()])
        assert storage.threads[2:] == [server._thread.name, "liteq-store"]
        assert len(storage.list(limit=1000)) == INLINE_MAX_ITEMS + 4
    finally:
        store.close()
        server.stop()


def test_the_worker_book_extends_what_a_worker_holds_and_forgets_what_it_lost() -> None:
    # Given a worker that claimed two tasks with a 30 s lease and one with 60 s, then completed one
    book: WorkerBook[str] = WorkerBook()
    claimed = [
        ClaimedTask(id=task_id, name="t", queue="q", payload=b"", attempt=1, max_attempts=1,
                    lease_token=f"tok-{task_id}", lease_deadline=T0, enqueued_at=T0)
        for task_id in ("a", "b", "c")
    ]  # fmt: skip
    book.track("claim", {"owner": "w1", "lease": 30.0}, claimed[:2])
    book.track("claim", {"owner": "w1", "lease": 60.0}, claimed[2:])
    book.track("complete", {"outcomes": [{"id": "a"}]}, [True])
    # When it heartbeats
    extensions = book.track("heartbeat", {"worker_id": "w1"}, None)
    # Then the leases it still holds are extended, one extension per lease length
    assert sorted((e.lease, e.leases) for e in extensions) == [(30.0, [("b", "tok-b")]), (60.0, [("c", "tok-c")])]
    # And a lease the store did not extend is not extended again
    for extension in extensions:
        book.forget_lost(extension, [extension.lease != 60.0])
    assert [(e.lease, e.leases) for e in book.track("heartbeat", {"worker_id": "w1"}, None)] == [
        (30.0, [("b", "tok-b")])
    ]
    # And nothing is extended for a worker that unregistered
    book.track("unregister_worker", {"worker_id": "w1"}, None)
    assert book.track("heartbeat", {"worker_id": "w1"}, None) == []


def test_the_worker_book_routes_a_command_to_the_workers_connection_once() -> None:
    # Given a worker whose pool heartbeats on connection "c1"
    book: WorkerBook[str] = WorkerBook()
    book.note_connection("c1", {"worker_id": "w1"})
    # When an operator sends it drain
    conn = book.send("w1", "drain")
    # Then it is pushed on c1 and carried by one heartbeat reply only
    assert conn == "c1"
    assert book.take_command("w1") == "drain" and book.take_command("w1") is None
    # And once the connection closes the command waits for a heartbeat alone
    book.forget_connection("c1")
    assert book.send("w1", "stop") is None and book.take_command("w1") == "stop"
    # And an unknown command is refused
    with pytest.raises(ConfigurationError):
        book.send("w1", "explode")


def _pages_in_database_file(path: Path) -> int:
    """The page count in the header of an SQLite database file: what checkpoints have copied into
    the file itself, WAL frames not yet checkpointed left out."""
    with open(path, "rb") as f:
        return int.from_bytes(f.read(32)[28:32], "big")


def test_the_server_checkpoints_its_store_in_the_background(tmp_path: Path) -> None:
    from liteq.storage import open_storage

    storage = open_storage(str(tmp_path / "store"))
    server = InProcessServer(storage)
    store = RemoteStorage(server.url, retry_window=0.0)
    try:
        database = tmp_path / "store" / "liteq.sqlite3"
        before = _pages_in_database_file(database)
        # Given commits through the server that fill many pages of the WAL, far fewer than SQLite's
        # automatic checkpoint waits for
        for _ in range(10):
            store.enqueue(
                [NewTask(id=uuid.uuid4().hex, name="t", queue="default", payload=b"M" + bytes(2000)) for _ in range(20)]
            )
        # Then the server copies them into the database file by itself, no commit paying for it
        wait_for(lambda: _pages_in_database_file(database) > before + 50, 10, "a checkpoint of the server's WAL")
    finally:
        store.close()
        server.stop()


def test_a_reset_never_closes_the_store_under_a_running_checkpoint(tmp_path: Path) -> None:
    from liteq.storage import open_storage

    # Given a test-mode store thread on a directory store, checkpointed from another thread as the
    # server's background checkpoint does
    def answer(replies: list[Any], kinds: str) -> None:
        for done, result, exc in replies:
            done(result, exc)

    thread = StoreThread(open_storage(str(tmp_path / "store")), ServerConfig(), answer)
    thread.start()
    failures: list[BaseException] = []
    stop = threading.Event()

    def checkpoints() -> None:
        while not stop.is_set():
            try:
                thread.checkpoint()
            except BaseException as exc:  # what the background checkpoint would log and lose
                failures.append(exc)

    checkpointer = threading.Thread(target=checkpoints)
    checkpointer.start()
    try:
        # When the store is reset again and again meanwhile (the contract tests reset before each test)
        for _ in range(200):
            reset = threading.Event()
            thread.submit(Job(None, {}, lambda result, exc, reset=reset: reset.set(), special="reset"))
            assert reset.wait(30)
    finally:
        stop.set()
        checkpointer.join(30)
        thread.stop()
        thread.join()
        thread.storage.close()
    # Then every checkpoint ran on an open store: none met one being closed or deleted
    assert failures == []
