"""The dashboard's HTTP server: the stdlib's ``ThreadingHTTPServer``, the page's files and the
JSON endpoints of :mod:`.api`.

Why the stdlib: the dashboard is a handful of JSON reads, five POST actions and a server-sent
event stream for a few browsers at a time. A thread per connection serves that, nothing has to be
installed beside liteq, and there is no framework version to keep in step.

Security model:

- Loopback binds need no token; a request whose ``Host`` is not a loopback name is refused, so a
  web page cannot reach the dashboard through DNS rebinding.
- Any other bind needs the token (``--token-file`` or ``LITEQ_TOKEN``, as ``liteq serve``). The
  browser logs in once at ``/login`` and gets an HttpOnly, SameSite=Strict cookie holding an HMAC
  of the token (never the token itself); scripts send ``Authorization: Bearer TOKEN``.
- Every POST needs the ``X-CSRF-Token`` header with this server's random CSRF token, which only a
  same-origin page can read (from ``/api/session``). ``--read-only`` refuses every action.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import mimetypes
import secrets
import threading
import time
import urllib.parse
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any, TypeVar

from .. import __version__
from ..app import LiteQ
from ..exceptions import ConfigurationError, LiteQError, StoreBusy
from . import api

__all__ = ["DEFAULT_BIND", "Dashboard", "is_loopback", "parse_bind"]

logger = logging.getLogger("liteq.dashboard")
T = TypeVar("T")

DEFAULT_BIND = "127.0.0.1:8777"
#: Seconds between two looks at the store for the live counts (the event stream).
DEFAULT_POLL = 1.0
#: Threads that read and write the store. Requests each get a thread of their own, but a store may
#: keep a connection per thread (SQLite): the reads run here, so the connections stay this few.
STORE_THREADS = 4
COOKIE = "liteq_dashboard"
_LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}
_STATIC = resources.files(__package__) / "static"
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


def parse_bind(bind: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) as ``(host, port)``; port 0 lets the OS choose."""
    host, sep, port_text = bind.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigurationError(f"--bind {bind!r} is not HOST:PORT, e.g. 127.0.0.1:8777 or 0.0.0.0:8777")
    return host.strip("[]"), int(port_text)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or address) only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    dashboard: Dashboard


class Dashboard:
    """A running dashboard over ``app``'s store; :meth:`start` serves it in a thread.

    ``token`` is required for a bind that is not loopback (:class:`ConfigurationError` otherwise);
    given on loopback it is required there too. ``read_only`` hides and refuses every action.
    """

    def __init__(
        self,
        app: LiteQ,
        *,
        bind: str = DEFAULT_BIND,
        read_only: bool = False,
        token: str | None = None,
        poll: float = DEFAULT_POLL,
    ) -> None:
        host, port = parse_bind(bind)
        if not is_loopback(host) and not token:
            raise ConfigurationError(
                f"binding the dashboard to {host} exposes the store beyond this machine: give a token "
                "(--token-file FILE or LITEQ_TOKEN), or bind 127.0.0.1"
            )
        if poll <= 0:
            raise ConfigurationError(f"poll must be > 0 seconds, not {poll!r}")
        self.app = app
        self.read_only = read_only
        self.token = token
        self.poll = float(poll)
        self.loopback = is_loopback(host)
        self.csrf = secrets.token_urlsafe(32)
        self.session = hmac.new(token.encode(), b"liteq-dashboard-session", hashlib.sha256).hexdigest() if token else ""
        self.closing = threading.Event()
        self._cache_lock = threading.Lock()
        self._cache: tuple[float, bytes] | None = None
        self._thread: threading.Thread | None = None
        self._store = ThreadPoolExecutor(max_workers=STORE_THREADS, thread_name_prefix="liteq-dashboard-store")
        self._state_lock = threading.Lock()
        self._serving = False
        self._closed = False
        family_v6 = ":" in host
        server_class: type[_Server] = _Server
        if family_v6:
            import socket

            server_class = type("_Server6", (_Server,), {"address_family": socket.AF_INET6})
        try:
            self.server = server_class((host, port), _Handler)
        except OSError as exc:
            raise ConfigurationError(f"cannot listen on {bind}: {exc.strerror or exc}") from None
        self.server.dashboard = self

    @property
    def address(self) -> tuple[str, int]:
        """The bound host and port (the port the OS chose for port 0)."""
        host, port = self.server.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        """``http://host:port`` of the page."""
        host, port = self.address
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def start(self) -> Dashboard:
        """Serve in a daemon thread; returns at once."""
        self._thread = threading.Thread(target=self.serve_forever, name="liteq-dashboard", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in this thread until :meth:`close` (from another thread) or KeyboardInterrupt."""
        with self._state_lock:
            if self.closing.is_set():
                return
            self._serving = True
        try:
            self.server.serve_forever()
        finally:
            self.closing.set()

    def close(self) -> None:
        """Stop serving and end the event streams. Idempotent; the app stays open."""
        with self._state_lock:
            if self._closed:
                return
            self._closed = True
            self.closing.set()
            serving = self._serving
        if serving:
            self.server.shutdown()  # waits for serve_forever to return
        self.server.server_close()
        self._store.shutdown(wait=True, cancel_futures=True)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def __enter__(self) -> Dashboard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on one of the store threads and return its result (or raise its error)."""
        try:
            future = self._store.submit(fn, *args)
        except RuntimeError:  # the executor is shut down: a request that raced close()
            raise LiteQError("the dashboard is shutting down") from None
        return future.result()

    def overview_json(self) -> bytes:
        """The overview as JSON, computed at most once per half poll interval for every client."""
        with self._cache_lock:
            now = time.monotonic()
            if self._cache is None or now - self._cache[0] >= self.poll / 2:
                self._cache = (now, json.dumps(self.call(api.overview, self.app)).encode())
            return self._cache[1]


def _json_body(handler: BaseHTTPRequestHandler) -> dict[str, Any]:
    length = int(handler.headers.get("Content-Length") or 0)
    if length > 64 * 1024:
        raise api.BadRequest("request body too large")
    raw = handler.rfile.read(length) if length else b""
    if not raw:
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        raise api.BadRequest("the request body is not JSON") from None
    if not isinstance(body, dict):
        raise api.BadRequest("the request body must be a JSON object")
    return body


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = f"liteq-dashboard/{__version__}"

    @property
    def dash(self) -> Dashboard:
        return self.server.dashboard

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s " + format, self.address_string(), *args)

    # -- responses -------------------------------------------------------------------------------

    def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "same-origin")
        self.send_header("Content-Security-Policy", _CSP)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, value: Any) -> None:
        self._send(status, json.dumps(value).encode(), "application/json")

    def _error(self, status: int, message: str) -> None:
        self._json(status, {"error": message})

    # -- checks ----------------------------------------------------------------------------------

    def _host_ok(self) -> bool:
        """On a loopback bind without a token, the Host header must name this machine (DNS rebinding)."""
        if self.dash.token:
            return True
        host = self.headers.get("Host") or ""
        name = host.rsplit(":", 1)[0] if not host.startswith("[") else host[1:].split("]", 1)[0]
        return name in _LOOPBACK_NAMES

    def _authenticated(self) -> bool:
        token = self.dash.token
        if not token:
            return True
        auth = self.headers.get("Authorization") or ""
        if auth.startswith("Bearer ") and hmac.compare_digest(auth[7:].strip().encode(), token.encode()):
            return True
        cookies = self.headers.get("Cookie") or ""
        for part in cookies.split(";"):
            key, _, value = part.strip().partition("=")
            if key == COOKIE and hmac.compare_digest(value.encode(), self.dash.session.encode()):
                return True
        return False

    def _csrf_ok(self) -> bool:
        sent = self.headers.get("X-CSRF-Token") or ""
        if not hmac.compare_digest(sent.encode(), self.dash.csrf.encode()):
            return False
        origin = self.headers.get("Origin")
        # Browsers send Origin on POST; when present it must be this server.
        return origin is None or urllib.parse.urlsplit(origin).netloc == (self.headers.get("Host") or "")

    # -- dispatch --------------------------------------------------------------------------------

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        path = url.path
        if not self._host_ok():
            self._error(HTTPStatus.FORBIDDEN, "this dashboard answers only to localhost names")
            return
        if path == "/login":
            self._static("login.html")
            return
        if path.startswith("/static/"):
            self._static(path[len("/static/") :])
            return
        if not self._authenticated():
            if path.startswith("/api/"):
                self._error(HTTPStatus.UNAUTHORIZED, "log in at /login or send Authorization: Bearer TOKEN")
            else:
                self._send(HTTPStatus.SEE_OTHER, b"", "text/plain", {"Location": "/login"})
            return
        if path in ("/", "/index.html"):
            self._static("index.html")
            return
        if path == "/api/events":
            self._events()
            return
        query = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query).items()}
        self._api(lambda: self._get(path, query) if path == "/api/overview" else self.dash.call(self._get, path, query))

    def do_POST(self) -> None:
        path = urllib.parse.urlsplit(self.path).path
        if not self._host_ok():
            self._error(HTTPStatus.FORBIDDEN, "this dashboard answers only to localhost names")
            return
        if path == "/login":
            self._login()
            return
        if not self._authenticated():
            self._error(HTTPStatus.UNAUTHORIZED, "log in at /login or send Authorization: Bearer TOKEN")
            return
        if not self._csrf_ok():
            self._error(HTTPStatus.FORBIDDEN, "missing or wrong X-CSRF-Token (read it from /api/session)")
            return
        if self.dash.read_only:
            self._error(HTTPStatus.FORBIDDEN, "this dashboard is read-only (--read-only)")
            return
        body = None
        try:
            body = _json_body(self)
        except api.BadRequest as exc:
            self._error(HTTPStatus.BAD_REQUEST, str(exc))
            return
        self._api(lambda: self.dash.call(self._post, path, body))

    def _api(self, fn: Any) -> None:
        try:
            result = fn()
        except api.NotFound as exc:
            self._error(HTTPStatus.NOT_FOUND, str(exc))
        except (api.BadRequest, ConfigurationError) as exc:
            self._error(HTTPStatus.BAD_REQUEST, str(exc))
        except StoreBusy as exc:
            self._error(HTTPStatus.SERVICE_UNAVAILABLE, str(exc))
        except LiteQError as exc:
            logger.warning("dashboard request %s failed: %s", self.path, exc)
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, str(exc))
        else:
            if result is None:
                self._error(HTTPStatus.NOT_FOUND, f"no endpoint {self.command} {urllib.parse.urlsplit(self.path).path}")
            elif isinstance(result, bytes):
                self._send(HTTPStatus.OK, result, "application/json")
            else:
                self._json(HTTPStatus.OK, result)

    def _get(self, path: str, query: dict[str, str]) -> Any:
        app = self.dash.app
        if path == "/api/session":
            return {
                "csrf": self.dash.csrf,
                "read_only": self.dash.read_only,
                "store": app.storage.location,
                "version": __version__,
                "poll": self.dash.poll,
            }
        if path == "/api/overview":
            return self.dash.overview_json()
        if path == "/api/history":
            return api.history(app, query.get("window", "hour"))
        if path == "/api/workers":
            return {"workers": api.workers(app), "stale_after": api.STALE_AFTER}
        if path == "/api/periodic":
            return {"schedules": api.periodic(app)}
        if path == "/api/tasks":
            return api.tasks(app, query)
        if path.startswith("/api/tasks/"):
            return api.task(app, urllib.parse.unquote(path[len("/api/tasks/") :]))
        return None

    def _post(self, path: str, body: dict[str, Any]) -> Any:
        app = self.dash.app
        parts = [urllib.parse.unquote(p) for p in path.split("/")]
        if len(parts) == 5 and parts[:3] == ["", "api", "tasks"]:
            return api.task_action(app, parts[3], parts[4])
        if path == "/api/purge":
            return api.purge(app, body)
        if len(parts) == 5 and parts[:3] == ["", "api", "periodic"] and parts[4] in ("pause", "resume"):
            return api.schedule_paused(app, parts[3], parts[4] == "pause")
        return None

    # -- pages and streams -----------------------------------------------------------------------

    def _static(self, name: str) -> None:
        parts = [p for p in name.split("/") if p]
        if not parts or any(p in (".", "..") or p.startswith(".") for p in parts):
            self._error(HTTPStatus.NOT_FOUND, "no such file")
            return
        node = _STATIC
        for p in parts:
            node = node / p
        try:
            body = node.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            self._error(HTTPStatus.NOT_FOUND, "no such file")
            return
        kind = mimetypes.guess_type(parts[-1])[0] or "application/octet-stream"
        if kind.startswith("text/") or kind.endswith("javascript"):
            kind += "; charset=utf-8"
        self._send(HTTPStatus.OK, body, kind)

    def _login(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        form = urllib.parse.parse_qs(self.rfile.read(min(length, 4096)).decode("utf-8", "replace"))
        given = (form.get("token") or [""])[-1].strip()
        token = self.dash.token
        if token and hmac.compare_digest(given.encode(), token.encode()):
            cookie = f"{COOKIE}={self.dash.session}; Path=/; HttpOnly; SameSite=Strict"
            self._send(HTTPStatus.SEE_OTHER, b"", "text/plain", {"Location": "/", "Set-Cookie": cookie})
        elif not token:
            self._send(HTTPStatus.SEE_OTHER, b"", "text/plain", {"Location": "/"})
        else:
            self._send(HTTPStatus.SEE_OTHER, b"", "text/plain", {"Location": "/login?failed=1"})

    def _events(self) -> None:
        """Server-sent events: the overview each time it changes, checked every poll interval."""
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        dash = self.dash
        last = b""
        quiet = 0.0
        version = dash.app.storage.version
        try:
            while not dash.closing.is_set():
                try:
                    data = dash.overview_json()
                except LiteQError as exc:
                    if dash.closing.is_set():
                        break
                    data = json.dumps({"error": str(exc)}).encode()
                if data != last:
                    self.wfile.write(b"event: overview\ndata: " + data + b"\n\n")
                    last, quiet = data, 0.0
                elif quiet >= 15.0:
                    self.wfile.write(b": keep-alive\n\n")  # proxies close silent streams
                    quiet = 0.0
                self.wfile.flush()
                started = time.monotonic()
                # In-process writes (a memory store, a demo) wake the stream at once; others are polled.
                version = dash.app.storage.wait(version, dash.poll)
                if dash.closing.wait(max(0.0, 0.05 - (time.monotonic() - started))):
                    break
                quiet += time.monotonic() - started
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            return
