"""Serialization: msgpack with ext types, pickle as an opt-in, and errors that name the bad argument."""

from __future__ import annotations

import enum
import uuid
from collections.abc import Callable
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from liteq import ConfigurationError, LiteQ, LiteQError, SerializationError
from liteq.serializer import (
    DEFAULT_MAX_SIZE,
    MsgpackSerializer,
    PickleSerializer,
    get_serializer,
    loads,
)
from tests import tasks

pytestmark = pytest.mark.timeout(60)

MakeApp = Callable[..., LiteQ]


class Colour(enum.IntEnum):
    RED = 1
    GREEN = 2


ROUNDTRIP = [
    pytest.param(datetime(2024, 3, 1, 12, 30, 5, 123456, tzinfo=timezone.utc), id="datetime-utc"),
    pytest.param(datetime(2024, 3, 1, 12, 30, tzinfo=timezone(timedelta(hours=-7))), id="datetime-offset"),
    pytest.param(datetime(2024, 3, 1, 12, 30, 5), id="datetime-naive"),
    pytest.param(date(1999, 12, 31), id="date"),
    pytest.param(time(23, 59, 58, 999), id="time"),
    pytest.param(time(8, 0, tzinfo=timezone(timedelta(hours=2))), id="time-aware"),
    pytest.param(timedelta(days=-2, seconds=7, microseconds=3), id="timedelta"),
    pytest.param(uuid.UUID("12345678-1234-5678-1234-567812345678"), id="uuid"),
    pytest.param(Decimal("3.14159265358979323846264338327950288"), id="decimal"),
    pytest.param(Decimal("-0.010"), id="decimal-trailing-zero"),
    pytest.param({1, 2, 3}, id="set"),
    pytest.param(frozenset({"a", "b"}), id="frozenset"),
    pytest.param((1, "two", 3.0), id="tuple"),
    pytest.param([1, "two", 3.0], id="list"),
    pytest.param((), id="empty-tuple"),
    pytest.param([], id="empty-list"),
    pytest.param(b"\x00\x01\xfe\xff", id="bytes"),
    pytest.param("héllo ✓", id="str"),
    pytest.param({"nested": [(1, [2, (3,)]), {"s": {4}}], "when": date(2020, 1, 1)}, id="nested"),
    pytest.param({(1, 2): "tuple key"}, id="tuple-key"),
    pytest.param({1: "int key"}, id="int-key"),
    pytest.param(None, id="none"),
    pytest.param(True, id="bool"),
    pytest.param(2**64 - 1, id="uint64"),
    pytest.param(-(2**63), id="int64-min"),
    pytest.param(float("inf"), id="inf"),
]


def _assert_same(out: Any, value: Any) -> None:
    """Equal, and of the same type all the way down (so tuple and list are told apart)."""
    assert type(out) is type(value), (out, value)
    assert out == value
    if isinstance(value, (list, tuple)):
        for a, b in zip(out, value, strict=True):
            _assert_same(a, b)
    elif isinstance(value, dict):
        assert list(out) == list(value)
        for k in value:
            _assert_same(out[k], value[k])


@pytest.mark.parametrize("value", ROUNDTRIP)
def test_msgpack_roundtrip(value: Any) -> None:
    # Given the msgpack serializer
    s = MsgpackSerializer()
    # When a value is encoded and decoded
    out = s.loads(s.dumps(value))
    # Then it comes back equal and of the same types
    _assert_same(out, value)


@pytest.mark.parametrize("value", ROUNDTRIP)
def test_pickle_roundtrip(value: Any) -> None:
    # Given the pickle serializer
    s = PickleSerializer()
    # When a value is encoded and decoded
    out = s.loads(s.dumps(value))
    # Then it comes back equal and of the same types
    _assert_same(out, value)


def test_aware_datetime_keeps_its_offset() -> None:
    # Given an aware datetime in a named zone
    value = datetime(2024, 7, 1, 9, 0, tzinfo=ZoneInfo("Europe/Paris"))
    s = MsgpackSerializer()
    # When it round-trips
    out = s.loads(s.dumps(value))
    # Then it is the same instant with the same UTC offset
    assert out == value
    assert out.utcoffset() == timedelta(hours=2)


def test_naive_datetime_stays_naive() -> None:
    # Given a naive datetime
    value = datetime(2024, 7, 1, 9, 0)
    s = MsgpackSerializer()
    # When it round-trips
    out = s.loads(s.dumps(value))
    # Then no zone was invented
    assert out.tzinfo is None
    assert out == value


def test_int_enum_travels_as_its_int() -> None:
    # Given an IntEnum member
    s = MsgpackSerializer()
    # When it round-trips
    out = s.loads(s.dumps([Colour.GREEN]))
    # Then it arrives as the plain int
    assert out == [2]
    assert type(out[0]) is int


def test_tuple_and_list_arguments_reach_the_task_as_sent(make_any_app: MakeApp) -> None:
    # Given a task that returns what it receives
    app = make_any_app()
    echo = app.task(tasks.echo)
    sent_args = ((1, 2), [3, 4], {5}, frozenset({6}), Decimal("7.70"), date(2024, 1, 1))
    sent_kwargs = {"when": datetime(2024, 1, 1, tzinfo=timezone.utc), "ids": (uuid.UUID(int=1),)}
    r = echo.delay(*sent_args, **sent_kwargs)
    # When it runs through the store
    app.run_until_empty()
    args, kwargs = r.get(timeout=5)
    # Then the types survived both ways: arguments in, result out
    _assert_same(args, sent_args)
    _assert_same(kwargs, sent_kwargs)


# -- errors in the caller ------------------------------------------------------------------------


def test_lambda_argument_names_its_path_and_type(make_any_app: MakeApp) -> None:
    # Given a task
    app = make_any_app()
    echo = app.task(tasks.echo)
    # When it is sent a lambda as its second argument
    with pytest.raises(SerializationError) as caught:
        echo.delay(1, lambda: 2)
    # Then the error names the argument and its type, and nothing is written
    exc = caught.value
    assert exc.path == "args[1]"
    assert exc.type_name == "builtins.function"
    assert "args[1]" in str(exc)
    assert "builtins.function" in str(exc)
    assert isinstance(exc, LiteQError)
    assert app.stats()["states"] == {}


def test_open_file_argument_names_its_path_and_type(make_any_app: MakeApp, tmp_path: Path) -> None:
    # Given a task
    app = make_any_app()
    echo = app.task(tasks.echo)
    # When an open file is passed as a keyword argument
    with open(tmp_path / "data.txt", "w") as f, pytest.raises(SerializationError) as caught:
        echo.delay(f=f)
    # Then the error names kwargs['f'] and the file type
    assert caught.value.path == "kwargs['f']"
    assert caught.value.type_name == "_io.TextIOWrapper"
    assert "kwargs['f']" in str(caught.value)
    assert app.stats()["states"] == {}


def test_nested_object_names_its_full_path(make_any_app: MakeApp) -> None:
    # Given a task
    app = make_any_app()
    echo = app.task(tasks.echo)
    # When a plain object() sits deep inside an argument
    with pytest.raises(SerializationError) as caught:
        echo.delay(1, {"items": [1, (2, object())]})
    # Then the path leads to it
    assert caught.value.path == "args[1]['items'][1][1]"
    assert caught.value.type_name == "builtins.object"
    assert "plain data" in str(caught.value)
    assert app.stats()["states"] == {}


def test_object_argument_via_apply_async_kwargs(make_any_app: MakeApp) -> None:
    # Given a task
    app = make_any_app()
    echo = app.task(tasks.echo)
    # When apply_async passes an object() in kwargs
    with pytest.raises(SerializationError) as caught:
        echo.apply_async((1,), {"ok": 1, "bad": object()})
    # Then the path names the keyword
    assert caught.value.path == "kwargs['bad']"
    assert app.stats()["states"] == {}


def test_serialization_error_is_a_type_error() -> None:
    # Given / When a value msgpack cannot encode
    with pytest.raises(TypeError):
        MsgpackSerializer().dumps(object())


def test_payload_over_max_payload_size_is_refused_in_the_caller(make_any_app: MakeApp) -> None:
    # Given an app with a 1 KiB payload limit
    app = make_any_app(max_payload_size=1024)
    ident = app.task(tasks.identity)
    # When a 4 KiB argument is sent
    with pytest.raises(SerializationError) as caught:
        ident.delay(b"x" * 4096)
    # Then the error says how big it was, what the limit is and what to do; nothing is written
    message = str(caught.value)
    assert "1,024-byte limit" in message
    assert "max_payload_size" in message
    assert app.stats()["states"] == {}
    # And a small argument still goes through
    assert ident.delay(b"x" * 100).state == "pending"


def test_default_payload_limit() -> None:
    # Given / When the default serializer
    # Then its limit is the documented default
    assert MsgpackSerializer().max_size == DEFAULT_MAX_SIZE == 64 * 1024 * 1024


# -- formats ------------------------------------------------------------------------------------


def test_msgpack_loads_refuses_pickle() -> None:
    # Given a pickle-encoded value
    data = PickleSerializer().dumps(tasks.Point(1, 2))
    # When a msgpack serializer reads it
    with pytest.raises(SerializationError) as caught:
        MsgpackSerializer().loads(data)
    # Then it refuses and says how to opt in
    assert "serializer='pickle'" in str(caught.value)


def test_pickle_loads_reads_msgpack_too() -> None:
    # Given a msgpack-encoded value
    data = MsgpackSerializer().dumps({"a": (1, 2)})
    # When the pickle serializer reads it
    # Then it decodes it (so a store switched to pickle still reads older rows)
    assert PickleSerializer().loads(data) == {"a": (1, 2)}


@pytest.mark.parametrize("data", [b"", b"Xgarbage", b"M\xc1"], ids=["empty", "unknown-format", "bad-msgpack"])
def test_loads_refuses_garbage(data: bytes) -> None:
    # Given / When bytes liteq did not write
    # Then decoding raises SerializationError
    with pytest.raises(SerializationError):
        loads(data)


def test_get_serializer() -> None:
    # Given / When serializers are looked up by name
    # Then the names map to the classes, an instance passes through, and others are refused
    assert isinstance(get_serializer("msgpack"), MsgpackSerializer)
    assert isinstance(get_serializer("pickle"), PickleSerializer)
    custom = MsgpackSerializer(max_size=10)
    assert get_serializer(custom) is custom
    with pytest.raises(ConfigurationError, match="'msgpack' or 'pickle'"):
        get_serializer("json")
