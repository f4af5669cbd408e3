"""The cluster wire protocol, without I/O: bytes in, events out, bytes to send.

A frame is a 4-byte big-endian length followed by one msgpack map. Decoding refuses frames over the
cap, strings, binaries, arrays and maps over their limits, msgpack ext types and nesting deeper than
``max_depth`` — each a :class:`~liteq.exceptions.ProtocolError` with ``ours=False`` (the peer broke
the rules). Encoding something over the cap is ``ours=True``.

A connection goes through the handshake (see :mod:`.auth`) before anything else::

    server → client   {"t": "hello",   "v": VERSION, "nonce": bytes}
    client → server   {"t": "auth",    "v": VERSION, "nonce": bytes, "proof": bytes}
    server → client   {"t": "welcome", "proof": bytes}            or {"t": "error", ...} and close
    client → server   {"t": "req",  "id": n, "op": name, "args": {...}, ...}
    server → client   {"t": "res",  "id": n, "ok": value}  or {"t": "res", "id": n, "err": {...}}
    server → client   {"t": "push", "kind": "changed"}

:class:`ServerConnection` and :class:`ClientConnection` hold each side's state machine; the
asyncio server and the socket clients only move their bytes.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import msgpack

from liteq.exceptions import AuthenticationError, ProtocolError

from . import auth

__all__ = [
    "MAX_FRAME",
    "PROTOCOL_VERSION",
    "Authenticated",
    "ClientConnection",
    "ErrorCode",
    "Limits",
    "Push",
    "Request",
    "Response",
    "ServerConnection",
    "decode_frames",
    "encode_frame",
    "events_before",
]

#: Bumped on any incompatible change; both sides refuse a peer that speaks another version.
PROTOCOL_VERSION = 1
#: Default cap of one frame's body, in bytes.
MAX_FRAME = 16 * 2**20
_HEADER = struct.Struct(">I")


class ErrorCode(str, enum.Enum):
    """Why the server refused a request (the ``code`` of an error reply)."""

    PROTOCOL = "protocol"
    """The peer broke the wire protocol; the connection is closed."""
    AUTH = "auth"
    """The handshake failed (wrong or missing token); the connection is closed."""
    BUSY = "busy"
    """Too many requests in flight on this connection; retry when replies come back."""
    TOO_MANY_CONNECTIONS = "too_many_connections"
    """The server is at its connection limit; the connection is closed."""
    TOO_LARGE = "too_large"
    """A batch is over the server's batch limit; split it."""
    BAD_REQUEST = "bad_request"
    """Unknown operation or arguments of the wrong type."""
    STORAGE = "storage"
    """The store refused the operation; ``type`` names the liteq exception to raise."""
    PICKLE_REFUSED = "pickle_refused"
    """A pickle-encoded payload sent to a server started without ``--allow-pickle``."""
    SHUTTING_DOWN = "shutting_down"
    """The server is stopping; reconnect later."""


@dataclass(frozen=True, slots=True)
class Limits:
    """What one decoded frame may hold. Defaults suit task payloads up to the frame cap."""

    max_frame: int = MAX_FRAME
    max_str_len: int = 1 * 2**20
    max_bin_len: int = MAX_FRAME
    max_array_len: int = 100_000
    max_map_len: int = 10_000
    max_depth: int = 16


DEFAULT_LIMITS = Limits()


def encode_frame(message: Mapping[str, Any], limits: Limits = DEFAULT_LIMITS) -> bytes:
    """One frame: length prefix and msgpack body. Over the cap is our own fault (``ours=True``)."""
    body: bytes = msgpack.packb(message, use_bin_type=True)
    if len(body) > limits.max_frame:
        raise ProtocolError(
            f"a frame of {len(body)} bytes is over the {limits.max_frame}-byte cap; send smaller batches",
            ours=True,
        )
    return _HEADER.pack(len(body)) + body


def _refuse_ext(code: int, data: bytes) -> Any:
    raise ProtocolError(f"msgpack ext type {code} is not allowed on the wire", ours=False)


def _check_depth(value: Any, max_depth: int) -> None:
    # Level by level and iterative, so a hostile frame cannot make this check itself recurse too
    # deep; only containers are carried to the next level (a batch is mostly scalars).
    level: list[Any] = [value]
    depth = 1
    while level:
        if depth > max_depth:
            raise ProtocolError(f"a frame nests deeper than {max_depth} levels", ours=False)
        below: list[Any] = []
        for item in level:
            children = item.values() if type(item) is dict else item
            below += [c for c in children if type(c) is dict or type(c) is list]
        level = below
        depth += 1


def decode_body(body: bytes, limits: Limits = DEFAULT_LIMITS) -> dict[str, Any]:
    """Decode one frame body into a message map, enforcing ``limits``."""
    try:
        value = msgpack.unpackb(
            body,
            raw=False,
            use_list=True,
            strict_map_key=True,
            ext_hook=_refuse_ext,
            max_str_len=limits.max_str_len,
            max_bin_len=limits.max_bin_len,
            max_array_len=limits.max_array_len,
            max_map_len=limits.max_map_len,
        )
    except ProtocolError:
        raise
    except Exception as exc:  # msgpack raises ValueError, ExtraData, FormatError, StackError...
        raise ProtocolError(f"undecodable frame: {type(exc).__name__}: {exc}", ours=False) from None
    if not isinstance(value, dict) or not isinstance(value.get("t"), str):
        raise ProtocolError("a frame must be a map with a string 't' (message type)", ours=False)
    _check_depth(value, limits.max_depth)
    return value


class FrameBuffer:
    """Accumulates received bytes and yields whole decoded frames."""

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self.limits = limits
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        """Add received bytes; return every message now complete (a frame over the cap raises at once)."""
        self._buf += data
        out: list[dict[str, Any]] = []
        while len(self._buf) >= _HEADER.size:
            (size,) = _HEADER.unpack_from(self._buf)
            if size > self.limits.max_frame:
                raise ProtocolError(f"peer announced a {size}-byte frame, over the {self.limits.max_frame}-byte cap")
            if len(self._buf) < _HEADER.size + size:
                break
            body = bytes(self._buf[_HEADER.size : _HEADER.size + size])
            del self._buf[: _HEADER.size + size]
            out.append(decode_body(body, self.limits))
        return out

    @property
    def pending(self) -> int:
        """Bytes received but not yet part of a whole frame."""
        return len(self._buf)


def decode_frames(data: bytes, limits: Limits = DEFAULT_LIMITS) -> list[dict[str, Any]]:
    """Decode every whole frame in ``data`` (a convenience for tests and tools)."""
    return FrameBuffer(limits).feed(data)


# -- events ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Authenticated:
    """The handshake succeeded; requests may flow."""


@dataclass(frozen=True, slots=True)
class Request:
    """A client's call of one storage operation."""

    id: int
    op: str
    args: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)
    """Options about the call, not the operation (``wait`` of a long-poll claim, ``key`` of a retry)."""


@dataclass(frozen=True, slots=True)
class Response:
    """The server's reply to request ``id``: ``value`` or an ``error`` map (code, type, message)."""

    id: int
    value: Any = None
    error: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Push:
    """A message the server sends unasked: ``changed`` (the store was written) or a command."""

    kind: str
    data: dict[str, Any] = field(default_factory=dict)


Event = Authenticated | Request | Response | Push


def _field(message: Mapping[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = message.get(name)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise ProtocolError(f"{message.get('t')!r} message needs field {name!r} of another type", ours=False)
    return value


class _Side:
    """What both ends share: the frame buffer, the outgoing bytes, the closed flag."""

    def __init__(self, token: str | None, limits: Limits) -> None:
        self._key = auth.key_of(token)
        self.limits = limits
        self._frames = FrameBuffer(limits)
        self._out = bytearray()
        self.authenticated = False
        self.closed = False

    def data_to_send(self) -> bytes:
        """Bytes the I/O layer must write now (empty when there is nothing)."""
        out = bytes(self._out)
        self._out.clear()
        return out

    def _send(self, message: Mapping[str, Any]) -> None:
        self._out += encode_frame(message, self.limits)

    def receive_data(self, data: bytes) -> list[Event]:
        """Feed received bytes; return the events they complete. A protocol breach raises
        :class:`ProtocolError` (and, on the server, queues an error frame before the close)."""
        if self.closed:
            return []
        events: list[Event] = []
        try:
            for message in self._frames.feed(data):
                event = self._handle(message)
                if event is not None:
                    events.append(event)
        except ProtocolError as exc:
            # Frames that arrived before the bad one still count (a reply, then the server's
            # closing error): the I/O layer handles them, see :func:`events_before`.
            exc.events = events  # type: ignore[attr-defined]
            self._fail(exc)
            raise
        return events

    def _fail(self, exc: ProtocolError) -> None:
        self.closed = True

    def _handle(self, message: dict[str, Any]) -> Event | None:
        raise NotImplementedError


class ServerConnection(_Side):
    """The server's end of one connection.

    Call :meth:`start` once (it queues the hello), feed received bytes to :meth:`receive_data`,
    answer each :class:`Request` with :meth:`respond` or :meth:`refuse`, and write
    :meth:`data_to_send` after each step.
    """

    def __init__(self, token: str | None, limits: Limits = DEFAULT_LIMITS) -> None:
        super().__init__(token, limits)
        self._nonce = auth.new_nonce()

    def start(self) -> None:
        """Queue the hello carrying the server's nonce."""
        self._send({"t": "hello", "v": PROTOCOL_VERSION, "nonce": self._nonce})

    def _fail(self, exc: ProtocolError) -> None:
        if not self.closed:
            # The peer hears one generic sentence: details stay in the server's log.
            code = ErrorCode.PROTOCOL if not isinstance(exc, _AuthFailed) else ErrorCode.AUTH
            self._send({"t": "error", "code": code.value, "message": str(exc)})
        self.closed = True

    def _handle(self, message: dict[str, Any]) -> Event | None:
        kind = message["t"]
        if not self.authenticated:
            if kind != "auth":
                raise _AuthFailed("authentication failed: the handshake must come first")
            if message.get("v") != PROTOCOL_VERSION:
                raise ProtocolError(
                    f"protocol version {message.get('v')!r} is not {PROTOCOL_VERSION}; run the same liteq "
                    "version on server and clients",
                    ours=False,
                )
            nonce = _field(message, "nonce", bytes)
            proof = _field(message, "proof", bytes)
            if len(nonce) != auth.NONCE_SIZE or not auth.verify(
                auth.client_proof(self._key, self._nonce, nonce), proof
            ):
                raise _AuthFailed("authentication failed: check the token")
            self.authenticated = True
            self._send({"t": "welcome", "proof": auth.server_proof(self._key, self._nonce, nonce)})
            return Authenticated()
        if kind != "req":
            raise ProtocolError(f"unexpected message type {kind!r} from a client", ours=False)
        extra = message.get("x", {})
        if not isinstance(extra, dict):
            raise ProtocolError("'x' must be a map", ours=False)
        return Request(_field(message, "id", int), _field(message, "op", str), _field(message, "args", dict), extra)

    def respond(self, request_id: int, value: Any, extra: Mapping[str, Any] | None = None) -> None:
        """Queue the reply to a request."""
        message: dict[str, Any] = {"t": "res", "id": request_id, "ok": value}
        if extra:
            message["x"] = dict(extra)
        self._send(message)

    def refuse(self, request_id: int, code: ErrorCode, message: str, type_name: str | None = None) -> None:
        """Queue an error reply to a request (the connection stays open)."""
        self._send({"t": "res", "id": request_id, "err": {"code": code.value, "type": type_name, "message": message}})

    def push(self, kind: str, data: Mapping[str, Any] | None = None) -> None:
        """Queue an unasked message (``changed``, or a command)."""
        self._send({"t": "push", "kind": kind, "data": dict(data or {})})

    def close_with(self, code: ErrorCode, message: str) -> None:
        """Queue a final error frame; the I/O layer closes after writing it."""
        if not self.closed:
            self._send({"t": "error", "code": code.value, "message": message})
        self.closed = True


class _AuthFailed(ProtocolError):
    """Handshake failure seen by the server (the client raises AuthenticationError)."""


class ClientConnection(_Side):
    """The client's end of one connection: answers the hello, checks the server's proof, then
    turns replies and pushes into events. Queue requests with :meth:`request`."""

    def __init__(self, token: str | None, limits: Limits = DEFAULT_LIMITS) -> None:
        super().__init__(token, limits)
        self._nonce = auth.new_nonce()
        self._server_nonce: bytes | None = None

    def _handle(self, message: dict[str, Any]) -> Event | None:
        kind = message["t"]
        if kind == "error":
            code = message.get("code")
            text = str(message.get("message", ""))
            if code == ErrorCode.AUTH.value:
                raise _ClientAuthFailed(f"the server refused the handshake: {text}")
            if code == ErrorCode.TOO_MANY_CONNECTIONS.value or code == ErrorCode.SHUTTING_DOWN.value:
                raise _ServerGone(code, text)
            raise ProtocolError(f"the server closed the connection: {text}", ours=True)
        if not self.authenticated:
            if kind == "hello" and self._server_nonce is None:
                if message.get("v") != PROTOCOL_VERSION:
                    raise ProtocolError(
                        f"the server speaks protocol version {message.get('v')!r}, this client "
                        f"{PROTOCOL_VERSION}; run the same liteq version on server and clients",
                        ours=False,
                    )
                nonce = _field(message, "nonce", bytes)
                if len(nonce) != auth.NONCE_SIZE:
                    raise ProtocolError("the server's nonce has the wrong size", ours=False)
                self._server_nonce = nonce
                self._send(
                    {
                        "t": "auth",
                        "v": PROTOCOL_VERSION,
                        "nonce": self._nonce,
                        "proof": auth.client_proof(self._key, nonce, self._nonce),
                    }
                )
                return None
            if kind == "welcome" and self._server_nonce is not None:
                proof = _field(message, "proof", bytes)
                if not auth.verify(auth.server_proof(self._key, self._server_nonce, self._nonce), proof):
                    raise _ClientAuthFailed("the server could not prove it holds the token")
                self.authenticated = True
                return Authenticated()
            raise ProtocolError(f"unexpected {kind!r} message during the handshake", ours=False)
        if kind == "res":
            err = message.get("err")
            if err is not None and not isinstance(err, dict):
                raise ProtocolError("'err' must be a map", ours=False)
            extra = message.get("x", {})
            return Response(
                _field(message, "id", int), message.get("ok"), err, extra if isinstance(extra, dict) else {}
            )
        if kind == "push":
            data = message.get("data", {})
            return Push(_field(message, "kind", str), data if isinstance(data, dict) else {})
        raise ProtocolError(f"unexpected message type {kind!r} from the server", ours=False)

    def request(
        self, request_id: int, op: str, args: Mapping[str, Any], extra: Mapping[str, Any] | None = None
    ) -> None:
        """Queue a request frame."""
        message: dict[str, Any] = {"t": "req", "id": request_id, "op": op, "args": dict(args)}
        if extra:
            message["x"] = dict(extra)
        self._send(message)


class _ClientAuthFailed(ProtocolError):
    """Handshake failure seen by the client; the I/O layer raises AuthenticationError."""


class _ServerGone(ProtocolError):
    """The server closed the connection on purpose (limit reached, shutting down)."""

    def __init__(self, code: Any, message: str) -> None:
        super().__init__(f"the server closed the connection ({code}): {message}", ours=False)
        self.code = code


def events_before(exc: BaseException) -> list[Event]:
    """The events decoded from the same bytes before the protocol error ``exc``."""
    events: list[Event] = getattr(exc, "events", [])
    return events


def is_auth_failure(exc: BaseException) -> bool:
    """Whether a client-side protocol error means the handshake failed (wrong or missing token)."""
    return isinstance(exc, _ClientAuthFailed)


def is_server_gone(exc: BaseException) -> bool:
    """Whether the server closed the connection on purpose (connection limit, shutdown)."""
    return isinstance(exc, _ServerGone)


def auth_error(exc: BaseException) -> AuthenticationError:
    """The :class:`AuthenticationError` a client raises for a failed handshake."""
    return AuthenticationError(f"{exc}; check the token (--token-file, LITEQ_TOKEN or token=)")
