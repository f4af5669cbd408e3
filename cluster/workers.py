"""What the cluster server keeps per worker: the leases it holds, so that one heartbeat extends them
all, and the operator's commands waiting for it with the connection they are pushed on.

Bookkeeping only, on the event loop's thread: no store call and no I/O here. The server feeds each
answered request to :meth:`WorkerBook.track` and submits the lease extensions it returns; it asks
:meth:`WorkerBook.send` where a command goes and pushes it there itself.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from liteq.exceptions import ConfigurationError
from liteq.storage.records import ClaimedTask

__all__ = ["WORKER_COMMANDS", "Extension", "WorkerBook"]

#: What an operator can send a worker (``liteq control``): stop claiming and exit once idle; stop.
WORKER_COMMANDS = ("drain", "stop")

C = TypeVar("C")


@dataclass(frozen=True, slots=True)
class Extension:
    """Leases of one owner to push ``lease`` seconds on, as ``(task id, lease token)`` pairs."""

    owner: str
    lease: float
    leases: list[tuple[str, str]]


class WorkerBook(Generic[C]):
    """Leases held per owner, commands waiting per worker, and each worker's connection (``C``)."""

    def __init__(self) -> None:
        self._leases: dict[str, dict[str, tuple[str, float]]] = collections.defaultdict(dict)
        self._commands: dict[str, str] = {}
        self._conns: dict[str, C] = {}

    # -- leases (one heartbeat extends them all) -----------------------------------------------------

    def track(self, name: str, args: Mapping[str, Any], result: Any) -> list[Extension]:
        """Note what the answered request ``name(**args)`` did to the leases held (a claim adds,
        a completion or release drops, an unregistration forgets its owner); for a heartbeat,
        return the extensions of every lease its worker holds, one per lease length."""
        if name == "claim" and result:
            owner = str(args.get("owner"))
            lease = float(args.get("lease", 60.0))
            held = self._leases[owner]
            for task in result:
                if isinstance(task, ClaimedTask):
                    held[task.id] = (task.lease_token, lease)
        elif name == "complete":
            for outcome in args.get("outcomes", ()):
                if isinstance(outcome, dict):
                    for held in self._leases.values():
                        held.pop(str(outcome.get("id")), None)
        elif name == "release":
            for pair in args.get("leases", ()):
                if isinstance(pair, list) and pair:
                    for held in self._leases.values():
                        held.pop(str(pair[0]), None)
        elif name == "heartbeat":
            owner = str(args.get("worker_id"))
            mine = self._leases.get(owner)
            if mine:
                by_lease: dict[float, list[tuple[str, str]]] = collections.defaultdict(list)
                for task_id, (token, lease) in mine.items():
                    by_lease[lease].append((task_id, token))
                return [Extension(owner, lease, pairs) for lease, pairs in by_lease.items()]
        elif name == "unregister_worker":
            self._leases.pop(str(args.get("worker_id")), None)
        return []

    def forget_lost(self, extension: Extension, kept: list[bool]) -> None:
        """Drop the leases of ``extension`` that the store did not extend (lost to a reap)."""
        held = self._leases.get(extension.owner, {})
        for (task_id, _), ok in zip(extension.leases, kept, strict=False):
            if not ok:
                held.pop(task_id, None)

    def clear_leases(self) -> None:
        """Forget every lease (the store was replaced by an empty one)."""
        self._leases.clear()

    # -- commands ------------------------------------------------------------------------------------

    def note_connection(self, conn: C, args: Mapping[str, Any]) -> None:
        """Record ``conn`` as the connection of the worker a ``heartbeat`` or ``register_worker``
        names: the connection its pool writes its heartbeats on is where its commands are pushed."""
        info = args.get("info")
        worker_id = args.get("worker_id", getattr(info, "id", None))
        if isinstance(worker_id, str):
            self._conns[worker_id] = conn

    def forget_connection(self, conn: C) -> None:
        """Forget ``conn`` (closed) as any worker's connection."""
        for worker_id in [w for w, c in self._conns.items() if c is conn]:
            del self._conns[worker_id]

    def send(self, worker_id: str, command: str) -> C | None:
        """Keep ``command`` for the worker's next heartbeat reply; return its connection to push it
        on at once, or None when none is known."""
        if command not in WORKER_COMMANDS:
            raise ConfigurationError(f"unknown worker command {command!r}; use 'drain' or 'stop'")
        self._commands[worker_id] = command
        return self._conns.get(worker_id)

    def take_command(self, worker_id: str) -> str | None:
        """The command waiting for ``worker_id``, once (a heartbeat reply carries it)."""
        return self._commands.pop(worker_id, None)
