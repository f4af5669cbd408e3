"""Clients of ``liteq serve``: a blocking face (threads, used by :class:`~.remote.RemoteStorage`)
and an asyncio face, both pumping bytes through the same :class:`~.protocol.ClientConnection`.

A connection is opened lazily and reopened after a loss with capped, jittered exponential backoff.
While the server cannot be reached every call raises :class:`~liteq.exceptions.StoreUnavailable`
(a pool treats that as a degraded store and keeps its running tasks); calls that are safe to repeat
(reads, enqueues carrying a request key) are retried within ``retry_window`` first.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import select
import socket
import ssl
import threading
import time
import urllib.parse
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from liteq import exceptions
from liteq.exceptions import ConfigurationError, LiteQError, ProtocolError, StorageError, StoreUnavailable

from .protocol import (
    DEFAULT_LIMITS,
    Authenticated,
    ClientConnection,
    ErrorCode,
    Limits,
    Push,
    Response,
    auth_error,
    events_before,
    is_auth_failure,
    is_server_gone,
)

__all__ = ["DEFAULT_PORT", "AsyncClient", "Client", "Endpoint", "parse_url", "raise_error"]

#: The port a ``liteq://host`` URL without one connects to.
DEFAULT_PORT = 7777
#: Backoff between reconnection attempts: from the base, doubling, capped, each jittered.
BACKOFF_BASE = 0.05
BACKOFF_CAP = 5.0


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where a server listens and how to reach it."""

    host: str
    port: int
    tls: bool

    @property
    def url(self) -> str:
        """The URL that names this endpoint."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'liteqs' if self.tls else 'liteq'}://{host}:{self.port}"


def parse_url(url: str) -> Endpoint:
    """``liteq://host:port`` or ``liteqs://host:port`` (TLS) as an :class:`Endpoint`."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("liteq", "liteqs"):
        raise ConfigurationError(f"{url!r} is not a cluster URL; use liteq://host:port or liteqs://host:port")
    if parts.username or parts.password:
        raise ConfigurationError(f"{url!r}: put no token in the URL; pass token= or set LITEQ_TOKEN")
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise ConfigurationError(f"{url!r} has an invalid port") from None
    if not parts.hostname:
        raise ConfigurationError(f"{url!r} names no host; use liteq://host:port")
    return Endpoint(parts.hostname, port, parts.scheme == "liteqs")


def client_ssl_context(tls_ca: str | None = None) -> ssl.SSLContext:
    """A TLS context that verifies the server (against ``tls_ca`` for a private CA)."""
    try:
        return ssl.create_default_context(cafile=tls_ca)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(f"cannot load the CA file {tls_ca!r}: {exc}") from None


def raise_error(error: Mapping[str, Any], where: str) -> None:
    """Raise the liteq exception an error reply stands for."""
    code = error.get("code")
    message = f"{where}: {error.get('message', '')}"
    if code == ErrorCode.STORAGE.value:
        cls = getattr(exceptions, str(error.get("type")), None)
        if isinstance(cls, type) and issubclass(cls, LiteQError):
            try:
                exc = cls(message)
            except TypeError:
                exc = StorageError(message)
            raise exc
        raise StorageError(message)
    if code in (ErrorCode.BUSY.value, ErrorCode.SHUTTING_DOWN.value):
        raise StoreUnavailable(message, path=where)
    if code == ErrorCode.PICKLE_REFUSED.value:
        raise ConfigurationError(message)
    raise ProtocolError(message, ours=True)


class _Base:
    """What both client faces share: where to connect, the token, TLS, limits, the push callback."""

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        token: str | None,
        tls_ca: str | None,
        connect_timeout: float,
        limits: Limits,
        on_push: Callable[[str, dict[str, Any]], None] | None,
    ) -> None:
        self.endpoint = endpoint
        self._token = token
        self._ssl = client_ssl_context(tls_ca) if endpoint.tls else None
        self.connect_timeout = connect_timeout
        self.limits = limits
        self.on_push = on_push
        self._ids = itertools.count(1)
        self._closed = False

    def _unavailable(self, why: str) -> StoreUnavailable:
        return StoreUnavailable(f"cluster server {self.endpoint.url} unavailable: {why}", path=self.endpoint.url)


class _Waiter:
    # ``done`` set with ``response`` still None means "the reader baton is free: try to take it".
    __slots__ = ("done", "response")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.response: Response | BaseException | None = None

    def is_answered(self) -> bool:
        """Whether the reply (or the error that stands for it) has been delivered."""
        return self.response is not None


class Client(_Base):
    """A blocking, thread-safe client: many threads may call at once over one connection.

    ``on_push(kind, data)`` is called from the thread that reads the connection for every push, and
    with ``("connected", {})`` after each successful handshake (so a listener can subscribe again) and
    ``("disconnected", {})`` when the connection drops.

    Who reads: until :meth:`want_pushes` is called, a caller reads the connection itself while it
    waits for its reply (holding the "reader baton", dispatching any other thread's replies and any
    push it meets), so a call costs one round trip and no thread hand-off. Once pushes are wanted
    (a listener, a waiting result), a reader thread holds the baton for the connection's life and
    hands every reply over, so pushes arrive while no call is in flight. TLS connections always use
    the reader thread (buffered TLS records are invisible to ``select``).
    """

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        token: str | None = None,
        tls_ca: str | None = None,
        connect_timeout: float = 5.0,
        request_timeout: float = 60.0,
        retry_window: float = 5.0,
        limits: Limits = DEFAULT_LIMITS,
        on_push: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        super().__init__(
            endpoint, token=token, tls_ca=tls_ca, connect_timeout=connect_timeout, limits=limits, on_push=on_push
        )
        self.request_timeout = request_timeout
        self.retry_window = retry_window
        self._lock = threading.RLock()
        self._sock: socket.socket | None = None
        self._proto: ClientConnection | None = None
        self._pending: dict[int, _Waiter] = {}
        self._failures = 0
        self._next_attempt = 0.0
        self._last_error = ""
        self._generation = 0
        self._baton = threading.Lock()
        self._push_mode = endpoint.tls
        _CLIENTS.add(self)

    def __repr__(self) -> str:
        return f"<Client {self.endpoint.url}>"

    # -- connection ----------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Whether a handshaken connection is open."""
        return self._sock is not None

    def _connect(self) -> None:
        # Called with the lock held.
        if self._closed:
            raise self._unavailable("the client is closed")
        now = time.monotonic()
        if now < self._next_attempt:
            raise self._unavailable(f"{self._last_error}; reconnecting in {self._next_attempt - now:.2f}s")
        try:
            sock = self._open()
        except (OSError, TimeoutError) as exc:
            self._failures += 1
            delay = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** min(self._failures, 20)) * random.uniform(0.5, 1.0)
            self._next_attempt = time.monotonic() + delay
            self._last_error = str(exc) or type(exc).__name__
            raise self._unavailable(self._last_error) from None
        self._failures = 0
        self._next_attempt = 0.0
        self._sock = sock
        self._generation += 1
        if self._push_mode:
            self._start_reader()
        if self.on_push is not None:
            self.on_push("connected", {})

    def _open(self) -> socket.socket:
        raw = socket.create_connection((self.endpoint.host, self.endpoint.port), timeout=self.connect_timeout)
        sock: socket.socket = raw
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            if self._ssl is not None:
                try:
                    sock = self._ssl.wrap_socket(raw, server_hostname=self.endpoint.host)
                except ssl.SSLCertVerificationError as exc:
                    raise ConfigurationError(
                        f"cannot verify the TLS certificate of {self.endpoint.url}: {exc.verify_message}; "
                        "pass tls_ca= (--tls-ca) for a private CA"
                    ) from None
            proto = ClientConnection(self._token, self.limits)
            deadline = time.monotonic() + self.connect_timeout
            while not proto.authenticated:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("no handshake from the server in time")
                sock.settimeout(left)
                data = sock.recv(65536)
                if not data:
                    raise ConnectionError("the server closed the connection during the handshake")
                try:
                    proto.receive_data(data)
                except ProtocolError as exc:
                    if is_auth_failure(exc):
                        raise auth_error(exc) from None
                    if is_server_gone(exc):
                        raise ConnectionError(str(exc)) from None
                    raise
                out = proto.data_to_send()
                if out:
                    sock.sendall(out)
            sock.settimeout(None)
        except BaseException:
            sock.close()
            raise
        self._proto = proto
        return sock

    def want_pushes(self) -> None:
        """Read the connection from a thread of its own from now on, so pushes are delivered while no
        call is in flight (idempotent; kept across reconnections)."""
        with self._lock:
            if self._push_mode:
                return
            self._push_mode = True
            if self._sock is not None:
                self._start_reader()

    def _start_reader(self) -> None:
        # Called with the lock held.
        threading.Thread(
            target=self._read_loop, args=(self._sock, self._proto, self._generation), name="liteq-client", daemon=True
        ).start()

    def _read_loop(self, sock: socket.socket | None, proto: ClientConnection | None, generation: int) -> None:
        assert sock is not None and proto is not None
        error: BaseException | None = None
        with self._baton:  # a caller reading its own reply finishes first; then this thread keeps it
            try:
                while generation == self._generation:
                    data = sock.recv(262144)
                    if not data:
                        break
                    self._dispatch(proto.receive_data(data))
            except ProtocolError as exc:
                self._dispatch(events_before(exc))
                error = exc
            except OSError:
                pass
            self._lost(generation, error)
        self._pass_baton()

    def _read_own_reply(
        self, waiter: _Waiter, sock: socket.socket, proto: ClientConnection, generation: int, deadline: float
    ) -> None:
        # Called holding the baton: read until this call's reply (or the deadline) and dispatch all.
        error: BaseException | None = None
        try:
            while waiter.response is None and generation == self._generation:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                readable, _, _ = select.select([sock], [], [], left)
                if not readable:
                    continue
                data = sock.recv(262144)
                if not data:  # the server closed the connection: lost, not "nothing yet"
                    raise ConnectionResetError("the server closed the connection")
                self._dispatch(proto.receive_data(data))
            return
        except ProtocolError as exc:
            self._dispatch(events_before(exc))
            error = exc
        except (OSError, ValueError):  # ValueError: the socket was closed under us
            pass
        self._lost(generation, error)

    def _notice_idle_close(self) -> None:
        # With no reader thread, a connection the server closed while we were idle (its closing
        # error, or EOF) is noticed here, before sending, so the call goes out on a new connection.
        if not self._baton.acquire(blocking=False):
            return
        try:
            with self._lock:
                sock, proto, generation = self._sock, self._proto, self._generation
            if sock is None or proto is None:
                return
            error: BaseException | None = None
            try:
                if not select.select([sock], [], [], 0)[0]:
                    return
                data = sock.recv(262144)
                if data:
                    self._dispatch(proto.receive_data(data))
                    return
            except ProtocolError as exc:
                self._dispatch(events_before(exc))
                error = exc
            except (OSError, ValueError):
                pass
            self._lost(generation, error)
        finally:
            self._baton.release()
            self._pass_baton()

    def _pass_baton(self) -> None:
        # After releasing the baton: wake every caller still waiting, so one of them reads next.
        with self._lock:
            waiting = list(self._pending.values())
        for waiter in waiting:
            if waiter.response is None:
                waiter.done.set()

    def _dispatch(self, events: list[Any]) -> None:
        for event in events:
            if isinstance(event, Response):
                with self._lock:
                    waiter = self._pending.pop(event.id, None)
                if waiter is not None:
                    waiter.response = event
                    waiter.done.set()
            elif isinstance(event, Push) and self.on_push is not None:
                self.on_push(event.kind, event.data)

    def _lost(self, generation: int, error: BaseException | None) -> None:
        with self._lock:
            if generation != self._generation or self._sock is None:
                return
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None
            self._proto = None
            pending, self._pending = self._pending, {}
        for waiter in pending.values():
            waiter.response = error or self._unavailable("the connection was lost")
            waiter.done.set()
        if self.on_push is not None and not self._closed:
            self.on_push("disconnected", {})

    def _forget_after_fork(self) -> None:
        # A forked child inherits the socket but not the reader thread, and would number its
        # requests from the parent's counter on the parent's stream: it opens a connection of its own.
        self._lock = threading.RLock()
        self._baton = threading.Lock()
        sock, self._sock, self._proto = self._sock, None, None
        self._pending = {}
        self._generation += 1
        if sock is not None:
            with contextlib.suppress(OSError):
                os.close(sock.detach())  # this process's copy only; never a shutdown of the parent's

    def close(self) -> None:
        """Close the connection; later calls raise StoreUnavailable. Idempotent."""
        with self._lock:
            self._closed = True
            sock, self._sock = self._sock, None
            self._generation += 1
            pending, self._pending = self._pending, {}
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for waiter in pending.values():
            waiter.response = self._unavailable("the client is closed")
            waiter.done.set()

    # -- calls ---------------------------------------------------------------------------------

    def call(
        self,
        op: str,
        args: Mapping[str, Any],
        *,
        extra: Mapping[str, Any] | None = None,
        safe: bool = False,
        timeout: float | None = None,
    ) -> tuple[Any, dict[str, Any]]:
        """Send one request; return the reply's value and extra fields, or raise its error.

        ``safe`` calls are repeated after a lost connection until ``retry_window`` has passed.
        """
        deadline = time.monotonic() + self.retry_window
        attempt = 0
        while True:
            try:
                return self._call_once(
                    op, args, extra if attempt == 0 or extra is None else {**extra, "retry": True}, timeout
                )
            except StoreUnavailable:
                attempt += 1
                left = deadline - time.monotonic()
                if not safe or left <= 0 or self._closed:
                    raise
                with self._lock:
                    pause = max(self._next_attempt - time.monotonic(), 0.0)
                time.sleep(min(max(pause, 0.01), left))

    def _call_once(
        self, op: str, args: Mapping[str, Any], extra: Mapping[str, Any] | None, timeout: float | None
    ) -> tuple[Any, dict[str, Any]]:
        waiter = _Waiter()
        if not self._push_mode and self._sock is not None:
            self._notice_idle_close()
        with self._lock:
            if self._sock is None:
                self._connect()
            assert self._sock is not None and self._proto is not None
            request_id = next(self._ids)
            self._pending[request_id] = waiter
            self._proto.request(request_id, op, args, extra)
            data = self._proto.data_to_send()
            sock, proto, generation = self._sock, self._proto, self._generation
            try:
                sock.sendall(data)
            except OSError as exc:
                self._pending.pop(request_id, None)
                lost: BaseException | None = exc
            else:
                lost = None
        if lost is not None:
            self._lost(generation, None)
            raise self._unavailable(f"sending failed: {lost}")
        if not self._await(waiter, sock, proto, generation, self.request_timeout if timeout is None else timeout):
            # No answer in time: the connection's state is unknown, so start over on a new one.
            with self._lock:
                self._pending.pop(request_id, None)
            self._lost(generation, None)
            raise self._unavailable(f"no reply to {op} within the request timeout")
        response = waiter.response
        if isinstance(response, BaseException):
            if isinstance(response, ProtocolError):
                raise response
            raise response
        assert isinstance(response, Response)
        if response.error is not None:
            raise_error(response.error, op)
        return response.value, response.extra

    def _await(
        self, waiter: _Waiter, sock: socket.socket, proto: ClientConnection, generation: int, timeout: float
    ) -> bool:
        """Wait for ``waiter``'s reply, reading it ourselves whenever the baton is free; False on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            if waiter.is_answered():
                return True
            if self._baton.acquire(blocking=False):
                try:
                    self._read_own_reply(waiter, sock, proto, generation, deadline)
                finally:
                    self._baton.release()
                    self._pass_baton()
                if waiter.is_answered():
                    return True
                if time.monotonic() >= deadline:
                    return False
                continue
            left = deadline - time.monotonic()
            if left <= 0 or not waiter.done.wait(left):
                return waiter.is_answered()
            if not waiter.is_answered():
                # The baton was passed to us: clear the poke, then look again before taking it.
                waiter.done.clear()


_CLIENTS: weakref.WeakSet[Client] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for client in list(_CLIENTS):
        client._forget_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class AsyncClient(_Base):
    """The asyncio face: ``await connect()``, ``await call(op, args)``, ``close()`` and
    ``await wait_closed()``. Pushes go to ``on_push(kind, data)`` on the event loop."""

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        token: str | None = None,
        tls_ca: str | None = None,
        connect_timeout: float = 5.0,
        limits: Limits = DEFAULT_LIMITS,
        on_push: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        super().__init__(
            endpoint, token=token, tls_ca=tls_ca, connect_timeout=connect_timeout, limits=limits, on_push=on_push
        )
        self._proto: ClientConnection | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._pending: dict[int, asyncio.Future[Response]] = {}
        self._read_task: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        """Open the connection and complete the handshake (AuthenticationError on a bad token)."""
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    self.endpoint.host,
                    self.endpoint.port,
                    ssl=self._ssl,
                    server_hostname=self.endpoint.host if self._ssl else None,
                ),
                self.connect_timeout,
            )
        except (OSError, asyncio.TimeoutError) as exc:
            raise self._unavailable(str(exc)) from None
        proto = ClientConnection(self._token, self.limits)
        try:
            while not proto.authenticated:
                data = await asyncio.wait_for(reader.read(65536), self.connect_timeout)
                if not data:
                    raise StoreUnavailable(f"{self.endpoint.url} closed the connection during the handshake")
                try:
                    events = proto.receive_data(data)
                except ProtocolError as exc:
                    if is_auth_failure(exc):
                        raise auth_error(exc) from None
                    raise
                writer.write(proto.data_to_send())
                if any(isinstance(e, Authenticated) for e in events):
                    break
        except BaseException:
            writer.close()
            raise
        self._proto, self._reader, self._writer = proto, reader, writer
        self._read_task = asyncio.get_running_loop().create_task(self._read_loop())

    async def _read_loop(self) -> None:
        assert self._reader is not None and self._proto is not None
        error: BaseException | None = None
        try:
            while True:
                data = await self._reader.read(262144)
                if not data:
                    break
                self._dispatch(self._proto.receive_data(data))
        except (ProtocolError, OSError) as exc:
            self._dispatch(events_before(exc))
            error = exc
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(
                    error if isinstance(error, ProtocolError) else self._unavailable("the connection was lost")
                )
        self._pending.clear()

    def _dispatch(self, events: list[Any]) -> None:
        for event in events:
            if isinstance(event, Response):
                fut = self._pending.pop(event.id, None)
                if fut is not None and not fut.done():
                    fut.set_result(event)
            elif isinstance(event, Push) and self.on_push is not None:
                self.on_push(event.kind, event.data)

    async def call(self, op: str, args: Mapping[str, Any], *, extra: Mapping[str, Any] | None = None) -> Any:
        """Send one request and await its reply value (its error is raised)."""
        if self._proto is None or self._writer is None or self._closed:
            raise self._unavailable("not connected")
        request_id = next(self._ids)
        fut: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = fut
        self._proto.request(request_id, op, args, extra)
        self._writer.write(self._proto.data_to_send())
        response = await fut
        if response.error is not None:
            raise_error(response.error, op)
        return response.value

    def close(self) -> None:
        """Close the connection. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._writer is not None:
            self._writer.close()

    async def wait_closed(self) -> None:
        """Wait until the connection is closed and the reader has stopped."""
        if self._writer is not None:
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()
        if self._read_task is not None:
            with contextlib.suppress(BaseException):
                await self._read_task
