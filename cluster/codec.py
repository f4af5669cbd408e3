"""One table of storage operations and the codec of their arguments and results.

Every operation of the :class:`~liteq.storage.contract.Storage` contract that crosses the wire is one
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

from liteq.storage.contract import Storage

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


_PLAIN = frozenset({type(None), bool, int, float, str, bytes})
_NO_DEFAULT = object()
#: Each dataclass's fields, with the plain default a field may be left out for (or _NO_DEFAULT).
_FIELDS: dict[type, tuple[tuple[str, Any], ...]] = {}


def _wire_fields(kind: type) -> tuple[tuple[str, Any], ...]:
    return tuple((f.name, f.default if type(f.default) in _PLAIN else _NO_DEFAULT) for f in dataclasses.fields(kind))


def to_wire(value: Any) -> Any:
    """A Python value as plain msgpack types (dataclasses as maps, tuples and sets as arrays).

    A dataclass field equal to its plain default is left out: the other side builds the record
    with the same defaults, and most task fields are unset, so a batch is smaller to send and
    quicker to decode."""
    kind = type(value)
    if kind in _PLAIN:
        return value
    names = _FIELDS.get(kind)
    if names is None and dataclasses.is_dataclass(value) and not isinstance(value, type):
        names = _FIELDS[kind] = _wire_fields(kind)
    if names is not None:
        out = {}
        for name, default in names:
            item = getattr(value, name)
            if item is default or (type(item) is type(default) and item == default):
                continue
            out[name] = item if type(item) in _PLAIN else to_wire(item)
        return out
    if isinstance(value, enum.Enum):
        return to_wire(value.value)  # a task state travels as its plain value
    if isinstance(value, (bool, int, float, str, bytes)):
        return value
    if isinstance(value, Mapping):
        return {k: to_wire(v) for k, v in value.items()}
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, Iterable):
        return [to_wire(v) for v in value]
    raise WireTypeError(f"cannot send a {type(value).__name__} over the wire")


def _bad(value: Any, expected: str, where: str) -> WireTypeError:
    return WireTypeError(f"{where}: expected {expected}, got {type(value).__name__}")


Converter = Callable[[Any, str], Any]
_SEQUENCES: tuple[Any, ...] = (list, Sequence, Iterable, typing.Sequence, typing.Iterable)
_CONVERTERS: dict[Any, Converter] = {}


def from_wire(value: Any, tp: Any, where: str = "value") -> Any:
    """``value`` (plain msgpack types) converted to and checked against the annotation ``tp``."""
    return _converter(tp)(value, where)


def _converter(tp: Any) -> Converter:
    # Compiled once per annotation: decoding a batch of tasks is then a few calls per field.
    conv = _CONVERTERS.get(tp)
    if conv is None:
        conv = _CONVERTERS[tp] = _compile(tp)
    return conv


def _any(value: Any, where: str) -> Any:
    return value


def _compile(tp: Any) -> Converter:
    if tp is Any or tp is object:
        return _any
    origin = typing.get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:
        return _compile_union(tp)
    if tp is type(None):

        def none(value: Any, where: str) -> Any:
            if value is None:
                return None
            raise _bad(value, "nil", where)

        return none
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _compile_record(tp, construct=True)
    if typing.is_typeddict(tp):
        return _compile_record(tp, construct=False)
    if origin is None and tp in (float, int, bool, str, bytes):
        return _compile_scalar(tp)
    if origin in (dict, Mapping, typing.Mapping) or tp is dict:
        key_t, val_t = typing.get_args(tp) or (Any, Any)
        key_c, val_c = _converter(key_t), _converter(val_t)

        def mapping(value: Any, where: str) -> Any:
            if not isinstance(value, dict):
                raise _bad(value, "map", where)
            return {key_c(k, where): val_c(v, f"{where}[{k!r}]") for k, v in value.items()}

        return mapping
    if origin is tuple:
        return _compile_tuple(tp)
    if origin in (*_SEQUENCES, set, frozenset) or tp in (list, set, frozenset):
        (item_t,) = typing.get_args(tp) or (Any,)
        item_c = _converter(item_t)
        make: Any = origin if origin in (set, frozenset) else (tp if tp in (set, frozenset) else None)

        def sequence(value: Any, where: str) -> Any:
            if not isinstance(value, list):
                raise _bad(value, "array", where)
            items = [item_c(v, where) for v in value]
            return make(items) if make is not None else items

        return sequence

    def instance(value: Any, where: str) -> Any:
        if isinstance(tp, type) and isinstance(value, tp):
            return value
        raise _bad(value, getattr(tp, "__name__", str(tp)), where)

    return instance


def _compile_union(tp: Any) -> Converter:
    members = typing.get_args(tp)
    nullable = type(None) in members
    convs = [_converter(m) for m in members if m is not type(None)]

    def union(value: Any, where: str) -> Any:
        if value is None:
            if nullable:
                return None
            raise _bad(value, str(tp), where)
        errors = []
        for conv in convs:
            try:
                return conv(value, where)
            except WireTypeError as exc:
                errors.append(str(exc))
        raise WireTypeError("; ".join(errors))

    return union


def _compile_scalar(tp: type) -> Converter:
    if tp is float:

        def to_float(value: Any, where: str) -> Any:
            if type(value) is float:
                return value
            if isinstance(value, int) and not isinstance(value, bool):
                return float(value)
            raise _bad(value, "float", where)

        return to_float
    if tp is int:

        def to_int(value: Any, where: str) -> Any:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            raise _bad(value, "int", where)

        return to_int

    def exact(value: Any, where: str) -> Any:
        if isinstance(value, tp):
            return value
        raise _bad(value, tp.__name__, where)

    return exact


def _compile_tuple(tp: Any) -> Converter:
    args = typing.get_args(tp)
    if len(args) == 2 and args[1] is Ellipsis:
        item_c = _converter(args[0])

        def homogeneous(value: Any, where: str) -> Any:
            if not isinstance(value, list):
                raise _bad(value, "array", where)
            return tuple(item_c(v, where) for v in value)

        return homogeneous
    convs = [_converter(a) for a in args]

    def fixed(value: Any, where: str) -> Any:
        if not isinstance(value, list):
            raise _bad(value, "array", where)
        if len(value) != len(convs):
            raise WireTypeError(f"{where}: expected {len(convs)} items, got {len(value)}")
        return tuple(c(v, where) for c, v in zip(convs, value, strict=True))

    return fixed


def _accepted_as_is(tp: Any) -> frozenset[type]:
    """Wire types a value of annotation ``tp`` may have to be taken without converting it (the
    converter would return it unchanged): decoding a batch then calls no converter for most fields."""
    if tp in (str, bytes, int, float, bool):
        return frozenset({tp})
    if tp is type(None):
        return frozenset({type(None)})
    origin = typing.get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:
        members = [_accepted_as_is(m) for m in typing.get_args(tp)]
        if all(members):
            return frozenset().union(*members)
    return frozenset()


def _compile_record(tp: Any, *, construct: bool) -> Converter:
    hints = typing.get_type_hints(tp)
    fields = {name: _converter(t) for name, t in hints.items()}
    as_is = {name: _accepted_as_is(t) for name, t in hints.items()}
    name = tp.__name__

    def record(value: Any, where: str) -> Any:
        if not isinstance(value, dict):
            raise _bad(value, name, where)
        out = {}
        for k, v in value.items():
            plain = as_is.get(k)
            if plain is None:
                raise WireTypeError(f"{where}: {name} has no field {k!r}")
            out[k] = v if type(v) in plain else fields[k](v, where)
        if not construct:
            if len(out) != len(fields):
                raise WireTypeError(f"{where}: {name} needs the keys {sorted(fields)}, got {sorted(out)}")
            return out
        try:
            return tp(**out)
        except TypeError as exc:
            raise WireTypeError(f"{where}: {exc}") from None

    return record


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
