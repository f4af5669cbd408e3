"""One table of storage operations and the codec of their arguments and results.

Every operation of the :class:`~liteq.storage.base.Storage` contract that crosses the wire is one
line of :data:`OPERATIONS`: its name and whether it writes. Argument and return types are read from
the contract's own annotations, so the client encodes and the server decodes (and checks) every
value by its declared type — a method added to ``Storage`` needs one more line here and nothing else.

Dataclasses (``NewTask``, ``Outcome``, ``ClaimedTask``, ...) travel as maps of their fields; tuples,
sets and other sequences as arrays, restored to the declared type on the other side.
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from liteq.storage.base import Storage

__all__ = ["OPERATIONS", "Operation", "WireTypeError", "from_wire", "operation", "to_wire"]


class Access(enum.Enum):
    """Whether an operation changes the store (writes are group-committed and wake listeners)."""

    READ = "read"
    WRITE = "write"


READ, WRITE = Access.READ, Access.WRITE

#: name → access, for every Storage operation served remotely. Add one line per new operation.
OPERATIONS: dict[str, Access] = {
    "enqueue": WRITE,
    "claim": WRITE,
    "extend": WRITE,
    "complete": WRITE,
    "release": WRITE,
    "reap": WRITE,
    "set_progress": WRITE,
    "cancel": WRITE,
    "retry": WRITE,
    "purge": WRITE,
    "prune": WRITE,
    "register_schedules": WRITE,
    "set_schedule_paused": WRITE,
    "register_worker": WRITE,
    "heartbeat": WRITE,
    "unregister_worker": WRITE,
    "get": READ,
    "list": READ,
    "counts": READ,
    "next_run_at": READ,
    "group_members": READ,
    "page": READ,
    "oldest_pending": READ,
    "stats": READ,
    "schedule_states": READ,
    "workers": READ,
}


class WireTypeError(TypeError):
    """A value received does not have the type the operation declares."""


@dataclass(frozen=True, slots=True)
class Operation:
    """One storage operation as it crosses the wire."""

    name: str
    access: Access
    params: dict[str, Any]
    """Parameter name → declared type (``self`` left out)."""
    returns: Any
    takes_now: bool

    def encode_args(self, args: Mapping[str, Any]) -> dict[str, Any]:
        """Arguments (by name) as wire values."""
        return {name: to_wire(value) for name, value in args.items()}

    def decode_args(self, wire: Mapping[str, Any]) -> dict[str, Any]:
        """Wire arguments as typed Python values; unknown names or wrong types raise WireTypeError."""
        out: dict[str, Any] = {}
        for name, value in wire.items():
            if name not in self.params:
                raise WireTypeError(f"{self.name}() has no parameter {name!r}")
            out[name] = from_wire(value, self.params[name], f"{self.name}({name})")
        return out

    def decode_result(self, wire: Any) -> Any:
        """The wire reply as the declared return type."""
        return from_wire(wire, self.returns, f"{self.name}() result")


def _operation(name: str, access: Access) -> Operation:
    method = getattr(Storage, name)
    hints = typing.get_type_hints(method)
    params = {
        p: hints.get(p, Any)
        for p, param in inspect.signature(method).parameters.items()
        if p != "self" and param.kind not in (param.VAR_POSITIONAL, param.VAR_KEYWORD)
    }
    return Operation(name, access, params, hints.get("return", Any), "now" in params)


_CACHE: dict[str, Operation] = {}


def operation(name: str) -> Operation | None:
    """The :class:`Operation` called ``name``, or ``None`` when it is not served."""
    op = _CACHE.get(name)
    if op is None and name in OPERATIONS:
        op = _CACHE[name] = _operation(name, OPERATIONS[name])
    return op


# -- values ----------------------------------------------------------------------------------------


def to_wire(value: Any) -> Any:
    """A Python value as plain msgpack types (dataclasses as maps, tuples and sets as arrays)."""
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_wire(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {k: to_wire(v) for k, v in value.items()}
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, Iterable):
        return [to_wire(v) for v in value]
    raise WireTypeError(f"cannot send a {type(value).__name__} over the wire")


_FIELD_HINTS: dict[type, dict[str, Any]] = {}


def _fields_of(cls: type) -> dict[str, Any]:
    hints = _FIELD_HINTS.get(cls)
    if hints is None:
        hints = _FIELD_HINTS[cls] = typing.get_type_hints(cls)
    return hints


def _bad(value: Any, expected: str, where: str) -> WireTypeError:
    return WireTypeError(f"{where}: expected {expected}, got {type(value).__name__}")


def _scalar(value: Any, tp: type, where: str) -> Any:
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif (tp is str and isinstance(value, str)) or (tp is bytes and isinstance(value, bytes)):
        return value
    raise _bad(value, tp.__name__, where)


_SEQUENCES: tuple[Any, ...] = (list, Sequence, Iterable, typing.Sequence, typing.Iterable)


def from_wire(value: Any, tp: Any, where: str = "value") -> Any:
    """``value`` (plain msgpack types) converted to and checked against the annotation ``tp``."""
    if tp is Any or tp is object:
        return value
    origin = typing.get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:
        members = typing.get_args(tp)
        if value is None:
            if type(None) in members:
                return None
            raise _bad(value, str(tp), where)
        errors = []
        for member in members:
            if member is type(None):
                continue
            try:
                return from_wire(value, member, where)
            except WireTypeError as exc:
                errors.append(str(exc))
        raise WireTypeError("; ".join(errors))
    if tp is type(None):
        if value is None:
            return None
        raise _bad(value, "nil", where)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise _bad(value, tp.__name__, where)
        hints = _fields_of(tp)
        unknown = set(value) - set(hints)
        if unknown:
            raise WireTypeError(f"{where}: {tp.__name__} has no field {sorted(unknown)[0]!r}")
        try:
            return tp(**{k: from_wire(v, hints[k], f"{where}.{k}") for k, v in value.items()})
        except TypeError as exc:
            raise WireTypeError(f"{where}: {exc}") from None
    if typing.is_typeddict(tp):
        if not isinstance(value, dict):
            raise _bad(value, tp.__name__, where)
        hints = _fields_of(tp)
        if set(value) != set(hints):
            raise WireTypeError(f"{where}: {tp.__name__} needs the keys {sorted(hints)}, got {sorted(value)}")
        return {k: from_wire(v, hints[k], f"{where}.{k}") for k, v in value.items()}
    if origin is None and tp in (float, int, bool, str, bytes):
        return _scalar(value, tp, where)
    if origin in (dict, Mapping, typing.Mapping) or tp is dict:
        if not isinstance(value, dict):
            raise _bad(value, "map", where)
        key_t, val_t = typing.get_args(tp) or (Any, Any)
        return {from_wire(k, key_t, where): from_wire(v, val_t, f"{where}[{k!r}]") for k, v in value.items()}
    if origin is tuple:
        if not isinstance(value, list):
            raise _bad(value, "array", where)
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(from_wire(v, args[0], where) for v in value)
        if len(args) != len(value):
            raise WireTypeError(f"{where}: expected {len(args)} items, got {len(value)}")
        return tuple(from_wire(v, t, where) for v, t in zip(value, args, strict=True))
    if origin in (*_SEQUENCES, set, frozenset) or tp in (list, set, frozenset):
        if not isinstance(value, list):
            raise _bad(value, "array", where)
        (item_t,) = typing.get_args(tp) or (Any,)
        items = [from_wire(v, item_t, f"{where}[{i}]") for i, v in enumerate(value)]
        if origin in (set, frozenset):
            return origin(items)
        return items
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise _bad(value, getattr(tp, "__name__", str(tp)), where)


def method_for(name: str) -> Callable[..., Any]:
    """A RemoteStorage method that sends operation ``name`` with its arguments bound by the contract's
    signature (so positional and keyword calls both work)."""
    op = operation(name)
    assert op is not None, name
    signature = inspect.signature(getattr(Storage, name))

    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(self, *args, **kwargs)
        values = {k: v for k, v in bound.arguments.items() if k != "self"}
        return self._call(op, values)

    call.__name__ = name
    call.__qualname__ = f"RemoteStorage.{name}"
    call.__doc__ = getattr(Storage, name).__doc__
    return call
