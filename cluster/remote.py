"""``RemoteStorage``: the whole storage contract, served by ``liteq serve`` over TCP.

Each operation of :data:`.codec.OPERATIONS` becomes a method that binds its arguments by the
contract's signature and sends them; nothing here is written per operation. Waiting
(:meth:`Storage.wait`) wakes on the server's ``changed`` pushes, so ``Result.get()`` and idle
workers hear of a write the moment it commits, without polling the server.
"""

from __future__ import annotations

import abc
import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, cast

from liteq.exceptions import ConfigurationError
from liteq.storage.contract import Storage
from liteq.storage.records import ClaimedTask
from liteq.wake import DONE, WORK, broadcast

from . import codec
from .client import Client, parse_url

__all__ = ["RemoteStorage"]


def _reopen(url: str, options: dict[str, Any]) -> RemoteStorage:
    # The operations are installed below the class body, so mypy sees the class as abstract.
    store: RemoteStorage = cast(Any, RemoteStorage)(url, **options)
    return store


class RemoteStorage(Storage):
    """A store on a cluster server: ``RemoteStorage("liteq://host:7777", token=...)``.

    - ``token``: the shared secret (default: the ``LITEQ_TOKEN`` environment variable).
    - ``tls_ca``: a CA file to verify a ``liteqs://`` server's certificate against (default: the
      ``LITEQ_TLS_CA`` environment variable; without it, the system's CAs).
    - ``connect_timeout``, ``request_timeout``: seconds to connect (and hand-shake), and to wait
      for one reply.
    - ``retry_window``: seconds that calls safe to repeat (reads, enqueues) keep retrying through a
      lost connection before :class:`~liteq.exceptions.StoreUnavailable` is raised.

    Options meant for a local store (``durability``, ``result_ttl``...) are the server's business and
    ignored here. Pickles as its URL and options, so a spawned child reconnects on its own.
    """

    shared_between_processes = True
    supports_cross_process_wakeup = True
    supports_checkpoint = False  # the server checkpoints its own store
    local_path = None
    events_through_a_thread = True  # the client's reader thread delivers replies and pushes

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        tls_ca: str | None = None,
        connect_timeout: float = 5.0,
        request_timeout: float = 60.0,
        retry_window: float = 5.0,
        **local_options: Any,
    ) -> None:
        super().__init__()
        unknown = set(local_options) - {"result_ttl", "durability", "busy_timeout", "blob_threshold"}
        if unknown:
            raise ConfigurationError(f"RemoteStorage got unknown option(s) {sorted(unknown)}")
        self.endpoint = parse_url(url)
        self.location = self.endpoint.url
        if token is None:
            token = os.environ.get("LITEQ_TOKEN") or None
        if tls_ca is None:
            tls_ca = os.environ.get("LITEQ_TLS_CA") or None
        self._options: dict[str, Any] = {
            "token": token,
            "tls_ca": tls_ca,
            "connect_timeout": connect_timeout,
            "request_timeout": request_timeout,
            "retry_window": retry_window,
        }
        self._listening = False
        self._wake_dir: str | None = None
        self._wake_owner = 0
        self.commands: list[str] = []
        """Commands (``drain``, ``stop``) the server sent and :meth:`pending_commands` has not
        taken yet, oldest first."""
        self._commands_lock = threading.Lock()
        self.client = Client(
            self.endpoint,
            token=token,
            tls_ca=tls_ca,
            connect_timeout=connect_timeout,
            request_timeout=request_timeout,
            retry_window=retry_window,
            on_push=self._pushed,
        )

    def __repr__(self) -> str:
        return f"RemoteStorage({self.location!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_reopen, (self.location, self._options))

    # -- calls ---------------------------------------------------------------------------------

    def _call(self, op: codec.Operation, values: Mapping[str, Any]) -> Any:
        extra: dict[str, Any] | None = None
        safe = op.access is codec.READ or op.name in ("heartbeat", "register_worker")
        if op.name == "enqueue":
            # A request key lets the server answer a retry (after a lost reply) with the same ids.
            extra = {"key": uuid.uuid4().hex}
            safe = True
        if op.takes_now and values.get("now") is None:
            values = {k: v for k, v in values.items() if k != "now"}
        value, reply = self.client.call(op.name, op.encode_args(values), extra=extra, safe=safe)
        command = reply.get("command")
        if isinstance(command, str):
            self._command(command)
        result = op.decode_result(value)
        if op.access is codec.WRITE:
            self.notify()
        return result

    def claim_wait(
        self,
        owner: str,
        queues: Sequence[str],
        *,
        wait: float,
        limit: int = 1,
        lease: float = 60.0,
        limits: Mapping[str, float] | None = None,
    ) -> list[ClaimedTask]:
        """Like :meth:`claim`, but the server holds the request up to ``wait`` seconds (capped by the
        server) and answers the moment a task is ready."""
        op = codec.operation("claim")
        assert op is not None
        args = op.encode_args(
            {"owner": owner, "queues": list(queues), "limit": limit, "lease": lease, "limits": limits}
        )
        value, _ = self.client.call(
            "claim", args, extra={"wait": float(wait)}, timeout=self.client.request_timeout + float(wait)
        )
        result: list[ClaimedTask] = op.decode_result(value)
        self.notify()
        return result

    def pending_commands(self) -> list[str]:
        """``drain``/``stop`` commands the server sent (pushed, or in a heartbeat reply), oldest
        first; each is returned once."""
        with self._commands_lock:
            taken, self.commands = self.commands, []
        return taken

    def _command(self, command: str) -> None:
        with self._commands_lock:
            if command not in self.commands:  # pushed and then carried by a heartbeat reply too
                self.commands.append(command)

    def control(self, command: str, workers: Sequence[str]) -> list[str]:
        """Send ``drain`` or ``stop`` to the workers with these ids (``liteq control``); returns
        the ids the server queued it for."""
        if command not in ("drain", "stop"):
            raise ConfigurationError(f"unknown worker command {command!r}; use 'drain' or 'stop'")
        value, _ = self.client.call("control", {"command": command, "workers": list(workers)}, safe=True)
        return [str(w) for w in value]

    def ping(self) -> float:
        """Round-trip to the server; returns the server's clock."""
        value, _ = self.client.call("ping", {}, safe=True)
        return float(value["time"])

    def reset(self) -> None:
        """Replace the served store by an empty one (only a server started for tests allows it)."""
        self.client.call("reset", {})
        self.notify()

    # -- change notification -------------------------------------------------------------------

    def _pushed(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "connected":
            if self._listening:
                # Called from the connecting thread with the client lock held: subscribe from another.
                threading.Thread(target=self._subscribe, daemon=True).start()
            return
        if kind == "command" and isinstance(data.get("command"), str):
            self._command(str(data["command"]))
        # "changed", "disconnected" (waiters re-check and meet StoreUnavailable), commands (the
        # pool wakes up and reads them).
        self.notify()
        if self._wake_dir is not None:
            kinds = str(data.get("kinds", "wd")) if kind == "changed" else "wd"
            for k in kinds:
                broadcast(self._wake_dir, WORK if k == "w" else DONE)

    @property
    def wake_dir(self) -> str:
        """A private directory of local wake-up sockets (see :mod:`liteq.wake`) that this store
        signals on each server push, so a pool over a cluster store sleeps until work arrives.
        Asking for it subscribes to the pushes."""
        if self._wake_dir is None:
            self._wake_dir = tempfile.mkdtemp(prefix="liteq-remote-wake-")
            self._wake_owner = os.getpid()
            self._listening = True
            threading.Thread(target=self._subscribe, daemon=True).start()
        return self._wake_dir

    def _subscribe(self) -> None:
        try:
            self.client.want_pushes()
            self.client.call("listen", {}, safe=True)
        except Exception:
            self.notify()

    def listen(self) -> None:
        """Ask the server to push a notice after each write (idempotent)."""
        if not self._listening:
            self._listening = True
            self.client.want_pushes()
            self.client.call("listen", {}, safe=True)

    def wait(self, version: int, timeout: float) -> int:
        """Block until this process wrote or the server pushed a change, or ``timeout`` passes."""
        if not self._listening:
            self.listen()
        return super().wait(version, timeout)

    def close(self) -> None:
        """Close the connection. Idempotent."""
        self.client.close()
        if self._wake_dir is not None:
            # A forked child inherits the attribute: only the process that made the directory removes it.
            if self._wake_owner == os.getpid():
                shutil.rmtree(self._wake_dir, ignore_errors=True)
            self._wake_dir = None


for _name in codec.OPERATIONS:
    setattr(RemoteStorage, _name, codec.method_for(_name))
abc.update_abstractmethods(cast(type, RemoteStorage))
