"""The stored task message: how a call, an error and progress are laid out in bytes.

A payload is a versioned record ``{"v": 1, "a": args, "k": kwargs, "m": meta}``. Fields added later
get defaults when read, so rows written by an older liteq still load. ``meta`` carries per-call
options a worker needs (a retries override, canvas links). Errors and progress are always msgpack,
whatever the app's serializer, so any process (and the CLI) can read them.
"""

from __future__ import annotations

import itertools
import random
import time
import traceback as tb
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .exceptions import SerializationError
from .serializer import Serializer, dumps_msgpack, loads

__all__ = ["PAYLOAD_VERSION", "Call", "ErrorInfo", "Progress", "decode_call", "encode_call", "ids_at", "new_id"]

PAYLOAD_VERSION = 1


def new_id(now: float | None = None) -> str:
    """A 32-hex-digit task id that sorts by creation time (48-bit ms, then 80 random bits).

    Time-ordered ids keep the store's id index appending at its right edge (flat enqueue cost).
    """
    # random (reseeded in every forked child) rather than os.urandom: ids need uniqueness, not
    # secrecy, and a system call per id was a tenth of enqueue_many's time.
    return f"{int((time.time() if now is None else now) * 1000):012x}{random.getrandbits(80):020x}"


def ids_at(now: float) -> Callable[[], str]:
    """A maker of ids like :func:`new_id`'s for one batch created at ``now``: the time part, then a
    random 80-bit start counted up by one per id, so the ids of a batch sort in the batch's order.

    A batch's rows then enter the id index as one run at its right edge, as single enqueues do,
    instead of at random places among each other. Two batches of one millisecond collide only if
    their random starts fall within a batch's length of each other.
    """
    prefix = f"{int(now * 1000):012x}"
    counter = itertools.count(random.getrandbits(80))
    span = 1 << 80

    def make() -> str:
        return f"{prefix}{next(counter) % span:020x}"

    return make


@dataclass(slots=True)
class Call:
    """A decoded payload."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    meta: dict[str, Any]


def encode_call(serializer: Serializer, args: tuple[Any, ...], kwargs: dict[str, Any], meta: dict[str, Any]) -> bytes:
    """Encode a call; an unencodable argument raises :class:`SerializationError` naming it."""
    record = {"v": PAYLOAD_VERSION, "a": list(args), "k": kwargs, "m": meta}
    try:
        data = serializer.marker + serializer._encode(record)
        if len(data) <= serializer.max_size:
            return data  # the common case, without the error bookkeeping of dumps()
    except Exception:
        pass
    try:
        return serializer.dumps(record, what="arguments")
    except SerializationError as exc:
        # Find the argument at fault and say where it sits, e.g. kwargs['f'] or args[1][0].
        for what, value in (("args", tuple(args)), ("kwargs", kwargs)):
            try:
                serializer.dumps(value, what=what)
            except SerializationError as inner:
                raise inner from None
        raise exc from None


def decode_call(data: bytes, *, allow_pickle: bool) -> Call:
    """Decode a payload of any version up to :data:`PAYLOAD_VERSION`."""
    record = loads(data, allow_pickle=allow_pickle)
    if not isinstance(record, dict) or "a" not in record:
        raise SerializationError("payload is not a liteq task record")
    version = record.get("v", 1)
    if not isinstance(version, int) or version > PAYLOAD_VERSION:
        raise SerializationError(f"payload version {version!r} is newer than this liteq reads ({PAYLOAD_VERSION})")
    args, kwargs, meta = record.get("a") or (), record.get("k") or {}, record.get("m") or {}
    if not isinstance(args, (list, tuple)) or not isinstance(kwargs, dict) or not isinstance(meta, dict):
        raise SerializationError("payload's arguments are not a list and a mapping")
    # Stored rows and network frames enter here: a retries override must be a sane count.
    retries = meta.get("retries")
    if retries is not None and (isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= 10**6):
        raise SerializationError(f"payload's retries override {retries!r} is not an integer in [0, 1000000]")
    return Call(tuple(args), dict(kwargs), dict(meta))


@dataclass(slots=True)
class ErrorInfo:
    """One recorded failure: the exception's qualified type, message and formatted traceback."""

    type: str
    message: str
    traceback: str = ""

    @classmethod
    def from_exception(cls, exc: BaseException) -> ErrorInfo:
        """Capture an exception without keeping it (it may not be picklable or serializable)."""
        typ = type(exc)
        try:
            message = str(exc)
        except Exception:  # a broken __str__ must not break the worker
            message = object.__repr__(exc)
        module = typ.__module__
        name = typ.__qualname__ if module in ("builtins", None) else f"{module}.{typ.__qualname__}"
        text = "".join(tb.format_exception(typ, exc, exc.__traceback__))
        return cls(name, message, text)

    def encode(self) -> bytes:
        """msgpack bytes for the store."""
        return dumps_msgpack([self.type, self.message, self.traceback])

    @classmethod
    def decode(cls, data: bytes | None) -> ErrorInfo | None:
        """Read back :meth:`encode`'s bytes; tolerant of damaged records."""
        if not data:
            return None
        try:
            typ, message, text = loads(data)[:3]
            return cls(str(typ), str(message), str(text))
        except Exception:
            return cls("liteq.UndecodableError", repr(data[:200]))


@dataclass(frozen=True, slots=True)
class Progress:
    """A running task's last reported progress: ``fraction`` in [0, 1] and an optional message."""

    fraction: float
    message: str = ""

    def encode(self) -> bytes:
        """msgpack bytes for the store."""
        return dumps_msgpack([self.fraction, self.message])

    @classmethod
    def decode(cls, data: bytes | None) -> Progress | None:
        """Read back :meth:`encode`'s bytes."""
        if not data:
            return None
        try:
            fraction, message = loads(data)[:2]
            return cls(float(fraction), str(message))
        except Exception:
            return None
