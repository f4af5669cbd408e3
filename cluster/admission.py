"""What the cluster server admits: its settings and the checks a connection or a request passes
before any store call runs.

Every limit refuses with an explicit :class:`~.protocol.ErrorCode` and a message naming the fix:
connections, requests in flight per connection, items per batch, and pickle-encoded payloads or
results (refused unless ``allow_pickle``: pickle runs code named by the data). A server that would
listen beyond loopback without a token is refused before it starts.
"""

from __future__ import annotations

import ipaddress
import ssl
from dataclasses import dataclass, field
from typing import Any

from liteq.exceptions import ConfigurationError
from liteq.serializer import PICKLE
from liteq.storage.records import NewTask, Outcome

from .protocol import ErrorCode, Limits

__all__ = ["DEFAULT_MAX_CLAIM_WAIT", "ServerConfig", "refusal"]

#: Longest a claim may wait for work before answering empty (a client asking more gets this).
DEFAULT_MAX_CLAIM_WAIT = 30.0


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Everything ``liteq serve`` takes besides the store; CLI flags map one to one."""

    host: str = "127.0.0.1"
    port: int = 7777
    token: str | None = None
    ssl: ssl.SSLContext | None = None
    limits: Limits = field(default_factory=Limits)
    max_connections: int = 1024
    max_in_flight: int = 64
    """Requests one connection may have unanswered (parked claims included)."""
    max_batch: int = 50_000
    """Items in one list argument (tasks of an enqueue, outcomes of a completion, ids...)."""
    handshake_timeout: float = 10.0
    read_timeout: float = 30.0
    """Seconds a partly received frame may take to complete."""
    max_claim_wait: float = DEFAULT_MAX_CLAIM_WAIT
    allow_pickle: bool = False
    trust_client_clock: bool = False
    """Tests only: honour a ``now`` the client passes (the contract suite drives time)."""
    allow_reset: bool = False
    """Tests only: a ``reset`` request replaces the store by an empty one."""

    def check(self) -> None:
        """Refuse settings that would be unsafe or meaningless, naming the fix."""
        if not self.token and not _is_loopback(self.host):
            raise ConfigurationError(
                f"refusing to serve on {self.host} without a token: pass --token-file or set LITEQ_TOKEN, "
                "or bind 127.0.0.1"
            )
        for name in ("max_connections", "max_in_flight", "max_batch"):
            if getattr(self, name) < 1:
                raise ConfigurationError(f"{name} must be >= 1, not {getattr(self, name)!r}")
        for name in ("handshake_timeout", "read_timeout", "max_claim_wait"):
            if not getattr(self, name) > 0:
                raise ConfigurationError(f"{name} must be > 0 seconds, not {getattr(self, name)!r}")


def refusal(config: ServerConfig, name: str, args: dict[str, Any]) -> tuple[ErrorCode, str] | None:
    """Why the decoded request ``name(**args)`` is refused (a code and a message naming the fix),
    or None when the server admits it: a list argument over ``max_batch`` items, or pickle-encoded
    bytes on a server without ``allow_pickle``."""
    for arg, value in args.items():
        if isinstance(value, list) and len(value) > config.max_batch:
            return (
                ErrorCode.TOO_LARGE,
                f"{name}({arg}) holds {len(value)} items, over the server's batch limit of "
                f"{config.max_batch}; send smaller batches",
            )
    pickled = None if config.allow_pickle else _pickle_in(name, args)
    if pickled:
        return (
            ErrorCode.PICKLE_REFUSED,
            f"{pickled} is pickle-encoded; this server was started without --allow-pickle (pickle runs "
            "code named by the data). Use serializer='msgpack' or start the server with --allow-pickle",
        )
    return None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _pickle_in(name: str, args: dict[str, Any]) -> str | None:
    if name == "enqueue":
        for task in args.get("tasks", ()):
            if isinstance(task, NewTask) and task.payload[:1] == PICKLE:
                return f"the payload of task {task.id} ({task.name})"
    elif name == "complete":
        for outcome in args.get("outcomes", ()):
            if isinstance(outcome, Outcome) and outcome.result is not None and outcome.result[:1] == PICKLE:
                return f"the result of task {outcome.id}"
    return None
