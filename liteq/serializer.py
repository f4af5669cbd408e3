"""Encoding of task arguments and results.

msgpack is the default: compact, fast, and safe to decode from an untrusted peer. The types Python
programs pass around that msgpack lacks travel as ext types (codes below; never reuse a code).
Tuples stay tuples, sets stay sets. Pickle is an explicit opt-in for local stores.

Every encoded value starts with one format byte (``M`` msgpack, ``P`` pickle), so a worker knows
how a payload was written and can refuse pickle it was not told to accept.
"""

from __future__ import annotations

import datetime as dt
import decimal
import pickle
import threading
import uuid
from collections.abc import Callable
from typing import Any

import msgpack

from .exceptions import ConfigurationError, SerializationError

__all__ = ["DEFAULT_MAX_SIZE", "MsgpackSerializer", "PickleSerializer", "Serializer", "get_serializer", "loads"]

#: Encoded arguments or results larger than this are refused in the caller (64 MiB).
DEFAULT_MAX_SIZE = 64 * 1024 * 1024

MSGPACK = b"M"
PICKLE = b"P"

EXT_DATETIME = 1
EXT_DATE = 2
EXT_TIME = 3
EXT_TIMEDELTA = 4
EXT_UUID = 5
EXT_DECIMAL = 6
EXT_SET = 7
EXT_FROZENSET = 8
EXT_TUPLE = 9

_packer_opts = {"use_bin_type": True, "strict_types": True, "datetime": False}


def _default(obj: Any) -> Any:
    # strict_types sends every subclass here too, so that tuple is not folded into list.
    if isinstance(obj, tuple):
        return msgpack.ExtType(EXT_TUPLE, _pack(list(obj)))
    if isinstance(obj, bool):
        return bool(obj)
    if isinstance(obj, dt.datetime):
        return msgpack.ExtType(EXT_DATETIME, obj.isoformat().encode())
    if isinstance(obj, dt.date):
        return msgpack.ExtType(EXT_DATE, obj.isoformat().encode())
    if isinstance(obj, dt.time):
        return msgpack.ExtType(EXT_TIME, obj.isoformat().encode())
    if isinstance(obj, dt.timedelta):
        return msgpack.ExtType(EXT_TIMEDELTA, _pack([obj.days, obj.seconds, obj.microseconds]))
    if isinstance(obj, uuid.UUID):
        return msgpack.ExtType(EXT_UUID, obj.bytes)
    if isinstance(obj, decimal.Decimal):
        return msgpack.ExtType(EXT_DECIMAL, str(obj).encode())
    if isinstance(obj, frozenset):
        return msgpack.ExtType(EXT_FROZENSET, _pack(list(obj)))
    if isinstance(obj, set):
        return msgpack.ExtType(EXT_SET, _pack(list(obj)))
    # Subclasses of plain types (IntEnum, str enums, OrderedDict, defaultdict) travel as their base.
    for base in (int, float, str, bytes, list, dict):
        if isinstance(obj, base):
            return base(obj)  # type: ignore[arg-type]
    raise TypeError(f"cannot serialize object of type {type(obj).__qualname__}")


_packers = threading.local()
# A packer's buffer keeps the size of the largest value it packed: one that grew past this is dropped.
_KEEP_PACKER_BELOW = 1 << 20


def _pack(obj: Any) -> bytes:
    # msgpack.packb builds (and allocates a buffer for) a new Packer per call, over half the cost
    # of encoding a small call; each thread reuses one instead. A Packer is not reentrant and
    # ``_default`` calls back in here for tuples, sets and timedeltas, so the packer leaves its
    # slot while it packs: a nested call finds the slot empty and makes a fresh one. After an
    # exception the packer is simply not put back.
    packer = _packers.__dict__.pop("packer", None)
    if packer is None:
        packer = msgpack.Packer(default=_default, **_packer_opts)
    data: bytes = packer.pack(obj)
    if len(data) < _KEEP_PACKER_BELOW:
        _packers.packer = packer
    return data


def _ext_hook(code: int, data: bytes) -> Any:
    if code == EXT_TUPLE:
        return tuple(_unpack(data))
    if code == EXT_DATETIME:
        return dt.datetime.fromisoformat(data.decode())
    if code == EXT_DATE:
        return dt.date.fromisoformat(data.decode())
    if code == EXT_TIME:
        return dt.time.fromisoformat(data.decode())
    if code == EXT_TIMEDELTA:
        days, seconds, micros = _unpack(data)
        return dt.timedelta(days=days, seconds=seconds, microseconds=micros)
    if code == EXT_UUID:
        return uuid.UUID(bytes=data)
    if code == EXT_DECIMAL:
        return decimal.Decimal(data.decode())
    if code == EXT_SET:
        return set(_unpack(data))
    if code == EXT_FROZENSET:
        return frozenset(_unpack(data))
    return msgpack.ExtType(code, data)


def _unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=False, use_list=True)


def _find_bad(value: Any, path: str, check: Callable[[Any], object]) -> tuple[str, Any] | None:
    """Walk containers to the first leaf that ``check`` cannot encode; return its path and value."""
    if isinstance(value, dict):
        for k, v in value.items():
            found = _find_bad(v, f"{path}[{k!r}]", check)
            if found:
                return found
        return None
    if isinstance(value, (list, tuple, set, frozenset)):
        for i, v in enumerate(value):
            found = _find_bad(v, f"{path}[{i}]", check)
            if found:
                return found
        return None
    try:
        check(value)
    except Exception:
        return path, value
    return None


class Serializer:
    """Turns Python values into bytes and back. Subclasses set ``name`` and ``marker``."""

    name = ""
    marker = b""

    def __init__(self, *, max_size: int = DEFAULT_MAX_SIZE) -> None:
        self.max_size = max_size

    def _encode(self, value: Any) -> bytes:
        raise NotImplementedError

    def dumps(self, value: Any, *, what: str = "value") -> bytes:
        """Encode ``value``; on failure raise :class:`SerializationError` naming where inside ``what``."""
        try:
            data = self.marker + self._encode(value)
        except Exception as exc:
            bad = _find_bad(value, what, self._encode)
            path, leaf = bad if bad else (what, value)
            type_name = f"{type(leaf).__module__}.{type(leaf).__qualname__}"
            hint = (
                "pass plain data (numbers, strings, bytes, lists, dicts, datetimes...) instead"
                if self.name == "msgpack"
                else "make it picklable"
            )
            raise SerializationError(
                f"cannot serialize {path} of type {type_name} with {self.name}: {exc}; {hint}",
                path=path,
                type_name=type_name,
            ) from exc
        if len(data) > self.max_size:
            raise SerializationError(
                f"{what} encodes to {len(data):,} bytes, over the {self.max_size:,}-byte limit; pass a file "
                "path or a key to the data instead of the data itself, or raise max_payload_size",
                path=what,
                type_name=type(value).__qualname__,
            )
        return data

    def loads(self, data: bytes) -> Any:
        """Decode bytes written by :meth:`dumps` of any serializer this one accepts."""
        return loads(data, allow_pickle=False)


class MsgpackSerializer(Serializer):
    """msgpack with ext types for datetime, date, time, timedelta, UUID, Decimal, set, frozenset, tuple."""

    name = "msgpack"
    marker = MSGPACK

    def _encode(self, value: Any) -> bytes:
        return _pack(value)


class PickleSerializer(Serializer):
    """Pickle (protocol 5). Opt-in only: decoding pickle runs code named by the data."""

    name = "pickle"
    marker = PICKLE

    def _encode(self, value: Any) -> bytes:
        return pickle.dumps(value, protocol=5)

    def loads(self, data: bytes) -> Any:
        """Decode msgpack or pickle payloads."""
        return loads(data, allow_pickle=True)


def loads(data: bytes, *, allow_pickle: bool = False) -> Any:
    """Decode an encoded value, refusing pickle unless ``allow_pickle``."""
    if not data:
        raise SerializationError("cannot decode an empty value")
    marker, body = data[:1], data[1:]
    try:
        if marker == MSGPACK:
            return _unpack(body)
        if marker == PICKLE:
            if not allow_pickle:
                raise SerializationError(
                    "refusing a pickle-encoded value: this app uses serializer='msgpack'; create it with "
                    "serializer='pickle' to accept pickle from a trusted store"
                )
            return pickle.loads(body)
    except SerializationError:
        raise
    except Exception as exc:
        raise SerializationError(f"cannot decode value ({marker!r} format): {exc}") from exc
    raise SerializationError(f"unknown value format byte {marker!r}; was it written by another program?")


def dumps_msgpack(value: Any) -> bytes:
    """Encode internal records (errors, progress) with msgpack, whatever the app's serializer."""
    return MSGPACK + _pack(value)


def get_serializer(name: str | Serializer, *, max_size: int = DEFAULT_MAX_SIZE) -> Serializer:
    """The serializer called ``name`` (``"msgpack"`` or ``"pickle"``), or ``name`` itself."""
    if isinstance(name, Serializer):
        return name
    if name == "msgpack":
        return MsgpackSerializer(max_size=max_size)
    if name == "pickle":
        return PickleSerializer(max_size=max_size)
    raise ConfigurationError(f"serializer must be 'msgpack' or 'pickle', not {name!r}")
