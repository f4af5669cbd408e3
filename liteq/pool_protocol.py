"""The pool's supervisor ↔ child protocol: message kinds, the one codec both ends use, and the
states the supervisor keeps about its children and itself.

Every pipe message is one pickle of a tuple whose first item is a :class:`Kind` (sent as its int:
cheaper to pickle than the enum member) and whose other items are plain values. Tasks and
outcomes travel as tuples of their fields in declaration order (a third cheaper to pickle than the
dataclasses); both ends rebuild them with :func:`task_from` / :func:`outcome_from`.

Supervisor to child:

- ``RUN, [task fields, ...]``: tasks to queue, in order (several in one message when the
  supervisor hands a child more than one at once);
- ``REVOKE, [id, ...]``: give back these queued tasks if not started (answered by ``RETURNED``);
- ``PING``: liveness check (answered by ``PONG`` from the child's reader thread);
- ``CANCEL, id``: raise ``TaskCancelled`` inside this running coroutine task (a sync task is
  cancelled with SIGUSR1 instead: only a signal interrupts it);
- ``STOP``: finish what is queued, then exit.

Child to supervisor:

- ``READY, pid, async room`` (how many ``async def`` tasks the child runs at once on its loop); ``PROGRESS, id, lease token, bytes``; ``DONE, outcome fields, rss``;
  ``RETURNED, [id, ...]`` (each revoked id is either here, or started and its ``DONE`` follows:
  this atomic answer is what lets a supervisor take tasks back without running one twice);
  ``PONG``.
"""

from __future__ import annotations

import enum
import os
import pickle
import struct
import sys
from multiprocessing.connection import Connection
from typing import Any

from .storage.records import ClaimedTask, Outcome

__all__ = [
    "FrameReader",
    "KillReason",
    "Kind",
    "StopLevel",
    "decode",
    "encode",
    "outcome_fields",
    "outcome_from",
    "send",
    "task_fields",
    "task_from",
]

#: Pipe messages are plain pickles (no ForkingPickler per message).
PROTOCOL = pickle.HIGHEST_PROTOCOL


class Kind(enum.IntEnum):
    """The kind of a pipe message (its first item)."""

    RUN = 1
    REVOKE = 2
    PING = 3
    STOP = 4
    CANCEL = 5
    READY = 10
    PROGRESS = 11
    DONE = 12
    RETURNED = 13
    PONG = 14


class StopLevel(enum.IntEnum):
    """How far a pool's stop has gone: running, asked to stop gracefully, asked to stop now."""

    RUNNING = 0
    GRACEFUL = 1
    NOW = 2


class KillReason(str, enum.Enum):
    """Why the supervisor ended (or is ending) a child; ``NONE`` while it is not being ended."""

    NONE = ""
    TIMEOUT = "timeout"
    UNRESPONSIVE = "unresponsive"
    CANCELLED = "cancelled"
    STOP = "stop"
    RETIRE = "retire"

    def __bool__(self) -> bool:
        return self is not KillReason.NONE


def encode(kind: Kind, *body: Any) -> bytes:
    """One message as bytes."""
    return pickle.dumps((int(kind), *body), PROTOCOL)


def decode(data: bytes) -> tuple[Any, ...]:
    """A message from bytes; its first item compares equal to a :class:`Kind`."""
    message: tuple[Any, ...] = pickle.loads(data)
    return message


def send(conn: Connection, kind: Kind, *body: Any) -> bool:
    """Send one message; False when the other end is gone (its sentinel tells the rest)."""
    try:
        conn.send_bytes(encode(kind, *body))
    except OSError:
        return False
    return True


#: Bytes a supervisor reads from a child's pipe at once.
READ_SIZE = 1 << 16
_SHORT = struct.Struct("!i")
_LONG = struct.Struct("!Q")


class FrameReader:
    """The messages waiting on one child's pipe, taken with one read.

    Children write with ``Connection.send_bytes`` (one write per message); reading each message
    with ``recv_bytes`` would cost two reads. This reads what is there and splits it on the same
    framing (a 4-byte big-endian length, or -1 and an 8-byte length), keeping a partial message
    for the next read. Where pipes are not plain file descriptors (Windows) it falls back to
    ``recv_bytes``.
    """

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.fd = conn.fileno() if sys.platform != "win32" else -1
        self.buf = bytearray()

    def read(self) -> list[tuple[Any, ...]]:
        """Every complete message now readable (call when the pipe is readable; this blocks
        otherwise). Raises EOFError once the child closed its end."""
        if self.fd < 0:
            return [decode(self.conn.recv_bytes())]
        data = os.read(self.fd, READ_SIZE)
        if not data:
            raise EOFError
        buf = self.buf
        buf += data
        out = []
        pos, end = 0, len(buf)
        while end - pos >= 4:
            (size,) = _SHORT.unpack_from(buf, pos)
            head = 4
            if size == -1:
                if end - pos < 12:
                    break
                (size,) = _LONG.unpack_from(buf, pos + 4)
                head = 12
            if end - pos - head < size:
                break
            out.append(pickle.loads(memoryview(buf)[pos + head : pos + head + size]))
            pos += head + size
        del buf[:pos]
        return out


def task_fields(t: ClaimedTask) -> tuple[Any, ...]:
    """A claimed task as the tuple of its fields, in declaration order."""
    return (
        t.id, t.name, t.queue, t.payload, t.attempt, t.max_attempts, t.lease_token, t.lease_deadline,
        t.enqueued_at, t.expires_at, t.priority, t.timeout, t.soft_timeout,
    )  # fmt: skip


def task_from(fields: tuple[Any, ...]) -> ClaimedTask:
    """The claimed task :func:`task_fields` encoded."""
    return ClaimedTask(*fields)


def outcome_fields(o: Outcome) -> tuple[Any, ...]:
    """An outcome as the tuple of its fields, in declaration order. The state travels as its plain
    string (it compares equal to its ``TaskState``): an enum member would be rebuilt through the
    enum's constructor on every load."""
    return (o.id, o.lease_token, str.__str__(o.state), o.result, o.error, o.reason, o.run_at, o.result_ttl)


def outcome_from(fields: tuple[Any, ...]) -> Outcome:
    """The outcome :func:`outcome_fields` encoded."""
    return Outcome(*fields)
