"""The wire protocol: the sans-I/O core on its own (bytes in, events out), then hostile bytes thrown at
a real ``liteq serve``: each bad connection is closed with a protocol error, the others carry on,
and the server's memory stays flat."""

from __future__ import annotations

import random
import socket
import struct
import uuid
from collections.abc import Iterator

import msgpack
import psutil
import pytest
from liteq.cluster.protocol import (
    PROTOCOL_VERSION,
    Authenticated,
    ClientConnection,
    Limits,
    Push,
    Request,
    Response,
    ServerConnection,
    decode_frames,
    encode_frame,
)
from liteq.cluster.remote import RemoteStorage

from liteq.exceptions import ProtocolError
from liteq.storage.records import NewTask
from tests.cluster_support import ServerProcess, start_server

pytestmark = pytest.mark.timeout(120)


def _handshake(token: str | None = "tok") -> tuple[ServerConnection, ClientConnection]:
    server, client = ServerConnection(token), ClientConnection(token)
    server.start()
    assert client.receive_data(server.data_to_send()) == []
    assert server.receive_data(client.data_to_send()) == [Authenticated()]
    assert client.receive_data(server.data_to_send()) == [Authenticated()]
    return server, client


def nested(depth: int) -> object:
    """``{"t": "req", "n": [[[...]]]}`` nested ``depth`` levels."""
    value: object = 0
    for _ in range(depth):
        value = [value]
    return {"t": "req", "n": value}


# -- sans-I/O -----------------------------------------------------------------------------------------


def test_a_request_and_its_reply_cross_byte_by_byte() -> None:
    server, client = _handshake()
    client.request(7, "counts", {"a": [1, b"x"]}, {"wait": 1.5})
    data = client.data_to_send()
    events: list[object] = []
    for i in range(len(data)):  # one byte at a time: frames reassemble
        events += server.receive_data(data[i : i + 1])
    assert events == [Request(7, "counts", {"a": [1, b"x"]}, {"wait": 1.5})]
    server.respond(7, {"q": 1})
    server.push("changed", {"kinds": "w"})
    assert client.receive_data(server.data_to_send()) == [Response(7, {"q": 1}), Push("changed", {"kinds": "w"})]


def test_the_token_never_crosses_the_wire() -> None:
    token = "a-very-recognizable-token-" + uuid.uuid4().hex
    server, client = ServerConnection(token), ClientConnection(token)
    server.start()
    wire = server.data_to_send()
    client.receive_data(wire)
    wire2 = client.data_to_send()
    server.receive_data(wire2)
    wire3 = server.data_to_send()
    for data in (wire, wire2, wire3):
        assert token.encode() not in data


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (msgpack.packb({"t": "req", "x": msgpack.ExtType(5, b"boom")}), "ext type"),
        (msgpack.packb({"t": "req", "s": "x" * 2000}), "undecodable"),
        (msgpack.packb({"t": "req", "b": [0] * 2000}), "undecodable"),
        (msgpack.packb(nested(40)), "nests deeper"),
        (msgpack.packb([1, 2, 3]), "must be a map"),
        (msgpack.packb({"no": "type"}), "must be a map"),
        (b"\xc1", "undecodable"),
        (msgpack.packb({"t": "x"}) + b"\x00", "undecodable"),
        (msgpack.packb({1: "int key", "t": "x"}), "undecodable"),
    ],
    ids=[
        "ext-type",
        "long-str",
        "long-array",
        "deep-nesting",
        "not-a-map",
        "no-type",
        "reserved-byte",
        "trailing",
        "int-key",
    ],
)
def test_bad_frames_are_the_peers_protocol_error(body: bytes, match: str) -> None:
    limits = Limits(max_str_len=1000, max_array_len=1000, max_depth=16)
    with pytest.raises(ProtocolError, match=match) as info:
        decode_frames(struct.pack(">I", len(body)) + body, limits)
    assert info.value.ours is False


def test_an_announced_frame_over_the_cap_is_refused_before_it_arrives() -> None:
    server = ServerConnection(None, Limits(max_frame=1024))
    server.start()
    server.data_to_send()
    with pytest.raises(ProtocolError, match="cap"):
        server.receive_data(struct.pack(">I", 10_000) + b"\x00" * 10)
    # The server queued one error frame for the peer and ignores whatever comes next
    assert decode_frames(server.data_to_send())[0]["code"] == "protocol"
    assert server.closed and server.receive_data(b"more") == []


def test_a_truncated_frame_yields_nothing_until_it_completes() -> None:
    server, client = _handshake()
    client.request(1, "counts", {})
    data = client.data_to_send()
    assert server.receive_data(data[:-1]) == []
    assert server.receive_data(data[-1:]) == [Request(1, "counts", {})]


def test_a_wrong_token_or_another_version_fails_the_handshake() -> None:
    server, client = ServerConnection("right"), ClientConnection("wrong")
    server.start()
    client.receive_data(server.data_to_send())
    with pytest.raises(ProtocolError, match="authentication failed"):
        server.receive_data(client.data_to_send())
    assert decode_frames(server.data_to_send())[-1]["code"] == "auth"
    # A peer speaking another protocol version is named as such
    server = ServerConnection(None)
    with pytest.raises(ProtocolError, match="version"):
        server.receive_data(encode_frame({"t": "auth", "v": PROTOCOL_VERSION + 1, "nonce": b"x" * 32, "proof": b""}))


def test_requests_before_the_handshake_are_refused() -> None:
    server = ServerConnection("tok")
    server.start()
    server.data_to_send()
    with pytest.raises(ProtocolError, match="handshake must come first"):
        server.receive_data(encode_frame({"t": "req", "id": 1, "op": "enqueue", "args": {}}))


# -- hostile bytes against a real server --------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = start_server(tmp_path_factory.mktemp("fuzz") / "store", env={"LITEQ_TOKEN": "fuzz-token"})
    try:
        yield proc
    finally:
        proc.stop()


def _connect(server: ServerProcess, *, authenticate: bool) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    if authenticate:
        proto = ClientConnection("fuzz-token")
        while not proto.authenticated:
            proto.receive_data(sock.recv(65536))
            sock.sendall(proto.data_to_send())
    return sock


def _closed_with(sock: socket.socket) -> list[dict[str, object]]:
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    sock.close()
    try:
        return decode_frames(data)
    except ProtocolError:
        return []


def _payloads(rng: random.Random) -> Iterator[tuple[str, bytes]]:
    yield "random-bytes", rng.randbytes(rng.randrange(1, 4096))
    yield "oversized", struct.pack(">I", 64 * 2**20) + b"\x00" * 1000
    body = msgpack.packb(nested(200))
    yield "deep-nesting", struct.pack(">I", len(body)) + body
    body = msgpack.packb({"t": "req", "id": 1, "op": "counts", "args": {}, "x": msgpack.ExtType(1, b"\x00")})
    yield "ext-type", struct.pack(">I", len(body)) + body
    frame = encode_frame({"t": "req", "id": 1, "op": "enqueue", "args": {"tasks": [{"id": "z"}]}})
    yield "truncated", frame[: rng.randrange(1, len(frame) - 1)]
    mutated = bytearray(frame)
    for _ in range(5):
        mutated[rng.randrange(4, len(mutated))] = rng.randrange(256)
    yield "mutated", bytes(mutated)
    yield "bad-args", encode_frame({"t": "req", "id": 1, "op": "enqueue", "args": {"tasks": "nope"}})
    yield "unknown-op", encode_frame({"t": "req", "id": 2, "op": "__class__", "args": {}})


def test_fuzzed_frames_close_only_their_connection_and_memory_stays_flat(server: ServerProcess) -> None:
    rng = random.Random(20261201)
    with RemoteStorage(server.url, token="fuzz-token") as bystander:
        bystander.enqueue([NewTask(uuid.uuid4().hex, "t", "default", b"M\xc0")])
        rss = psutil.Process(server.pid).memory_info().rss

        def one_round() -> None:
            for authenticate in (False, True):
                for name, payload in _payloads(rng):
                    sock = _connect(server, authenticate=authenticate)
                    try:
                        sock.sendall(payload)
                        # Hang up: a frame whose announced length never arrives ends at EOF here
                        # (the read deadline has its own test).
                        sock.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
                    frames = _closed_with(sock)
                    if name in ("bad-args", "unknown-op") and authenticate:
                        # well-formed frames with bad content get an error reply, not a close
                        continue
                    # The server closed this connection (EOF or reset). What it sent last, when it
                    # reached us before a reset, is an error frame.
                    if frames and frames[-1].get("t") not in ("hello", "welcome"):
                        assert frames[-1]["t"] == "error", (name, authenticate, frames)
                        assert frames[-1]["code"] in ("protocol", "auth"), (name, authenticate, frames)
                # Every other connection is unaffected
                assert bystander.counts() == {"default": {"pending": 1}}

        for _ in range(2):  # warm-up: allocator pools, caches
            one_round()
        rss = psutil.Process(server.pid).memory_info().rss
        for _ in range(12):
            one_round()
        grown = psutil.Process(server.pid).memory_info().rss - rss
        assert grown < 16 * 2**20, f"server RSS grew by {grown / 2**20:.1f} MiB over 12 fuzz rounds"
        assert bystander.counts() == {"default": {"pending": 1}}
    assert server.proc.poll() is None


def test_bad_arguments_get_a_typed_error_and_the_connection_stays(server: ServerProcess) -> None:
    sock = _connect(server, authenticate=True)
    proto = ClientConnection("fuzz-token")
    # Fake the authenticated state: this socket's handshake was done by _connect.
    proto.authenticated = True
    proto.request(1, "enqueue", {"tasks": [{"id": 5}]})
    proto.request(2, "__init__", {})
    proto.request(3, "counts", {})
    sock.sendall(proto.data_to_send())
    got: list[object] = []
    while len(got) < 3:
        got += proto.receive_data(sock.recv(65536))
    sock.close()
    codes = {r.id: (r.error or {}).get("code") for r in got if isinstance(r, Response)}
    assert codes == {1: "bad_request", 2: "bad_request", 3: None}


def test_the_server_log_never_shows_the_token(server: ServerProcess) -> None:
    # The server logged every refused connection above without ever printing the token
    assert "fuzz-token" not in server.text()


def test_a_reply_followed_by_the_servers_closing_error_in_one_read_is_not_lost() -> None:
    from liteq.cluster.protocol import ErrorCode, events_before

    # Given a reply and the server's closing error frame arriving in the same read
    server, client = _handshake()
    server.respond(1, ["id-1"])
    server.close_with(ErrorCode.SHUTTING_DOWN, "the server is shutting down")
    # When the client decodes them, the error is raised, and the reply before it is kept
    with pytest.raises(ProtocolError) as info:
        client.receive_data(server.data_to_send())
    assert events_before(info.value) == [Response(1, ["id-1"])]


def test_a_task_record_travels_without_its_default_fields_and_decodes_to_the_same_record() -> None:
    from liteq.cluster import codec

    plain = NewTask(id="a", name="t", queue="q", payload=b"M\xc0")
    full = NewTask(
        id="b", name="t", queue="q", payload=b"M\xc0", priority=3, run_at=5, max_attempts=2,
        slot=("s", 1.0), depends_on=["a"], release_delay=0.0, timeout=1.5,
    )  # fmt: skip
    wire = codec.to_wire([plain, full])
    # Unset fields are left out (smaller frames, less to decode per task); set ones travel
    assert wire[0] == {"id": "a", "name": "t", "queue": "q", "payload": b"M\xc0"}
    assert wire[1]["priority"] == 3 and "release_delay" not in wire[1]
    # A value equal to a default but of another type is sent (False is not the default 0)
    assert "priority" in codec.to_wire(NewTask(id="c", name="t", queue="q", payload=b"", priority=False))  # type: ignore[arg-type]
    decoded = codec.from_wire(msgpack.unpackb(msgpack.packb(wire)), list[NewTask])
    assert decoded == [plain, full] and decoded[1].slot == ("s", 1.0)
    # Types are still checked on the fields taken as they come
    with pytest.raises(codec.WireTypeError):
        codec.from_wire([{**wire[0], "priority": "high"}], list[NewTask])
    with pytest.raises(codec.WireTypeError):
        codec.from_wire([{**wire[0], "name": 7}], list[NewTask])
