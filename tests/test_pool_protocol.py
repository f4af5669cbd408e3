"""The supervisor ↔ child pipe protocol: the codec both ends use and the supervisor's FrameReader."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import struct
import threading
from collections.abc import Iterator
from multiprocessing.connection import Connection
from typing import Any

import pytest

from liteq.pool_protocol import (
    READ_SIZE,
    FrameReader,
    Kind,
    decode,
    encode,
    outcome_fields,
    outcome_from,
    send,
    task_fields,
    task_from,
)
from liteq.storage.records import ClaimedTask, Outcome

pytestmark = pytest.mark.timeout(30)

TASK = ClaimedTask("t1", "add", "default", b"\x80payload", 2, 5, "lease", 123.5, 100.0, None, 3, 10.0, 5.0)
OUTCOME = Outcome("t1", "lease", "done", b"result", None, None, None, 60.0)

#: A plausible body for every kind, as the supervisor and the child send them.
BODIES: dict[Kind, tuple[Any, ...]] = {
    Kind.RUN: ([task_fields(TASK), task_fields(TASK)],),
    Kind.REVOKE: (["t1", "t2"],),
    Kind.PING: (),
    Kind.STOP: (),
    Kind.CANCEL: ("t1",),
    Kind.READY: (4242, 100),
    Kind.PROGRESS: ("t1", "lease", b"progress"),
    Kind.DONE: (outcome_fields(OUTCOME), 12345),
    Kind.RETURNED: (["t2"],),
    Kind.PONG: (),
}


@pytest.fixture
def pipe() -> Iterator[tuple[Connection, Connection]]:
    reader, writer = multiprocessing.Pipe(duplex=False)
    try:
        yield reader, writer
    finally:
        reader.close()
        if not writer.closed:
            writer.close()


def frame(payload: bytes, *, long_header: bool = False) -> bytes:
    """``payload`` framed as ``Connection.send_bytes`` frames it (the long form only past 2 GiB)."""
    if long_header:
        return struct.pack("!i", -1) + struct.pack("!Q", len(payload)) + payload
    return struct.pack("!i", len(payload)) + payload


def test_every_kind_has_a_body_here() -> None:
    assert set(BODIES) == set(Kind)


@pytest.mark.parametrize("kind", list(Kind), ids=lambda k: k.name)
def test_every_kind_round_trips_through_the_codec(kind: Kind) -> None:
    message = decode(encode(kind, *BODIES[kind]))
    assert message[0] == kind
    assert Kind(message[0]) is kind
    assert message[1:] == BODIES[kind]


def test_tasks_and_outcomes_round_trip_as_field_tuples() -> None:
    assert task_from(task_fields(TASK)) == TASK
    assert outcome_from(outcome_fields(OUTCOME)) == OUTCOME
    (_, fields_list) = decode(encode(Kind.RUN, [task_fields(TASK)]))
    assert [task_from(f) for f in fields_list] == [TASK]


@pytest.mark.parametrize("kind", list(Kind), ids=lambda k: k.name)
def test_every_kind_round_trips_through_the_pipe(pipe: tuple[Connection, Connection], kind: Kind) -> None:
    reader, writer = pipe
    assert send(writer, kind, *BODIES[kind])
    assert FrameReader(reader).read() == [(int(kind), *BODIES[kind])]


def test_several_messages_in_one_read(pipe: tuple[Connection, Connection]) -> None:
    reader, writer = pipe
    sent = [(Kind.READY, 1, 2), (Kind.PROGRESS, "t1", "lease", b"x"), (Kind.DONE, outcome_fields(OUTCOME), 0)]
    for kind, *body in sent:
        send(writer, kind, *body)
    assert FrameReader(reader).read() == [(int(k), *b) for k, *b in sent]


@pytest.mark.parametrize("cut", [1, 3, 4, 7])
def test_a_message_split_across_reads(pipe: tuple[Connection, Connection], cut: int) -> None:
    reader, writer = pipe
    data = frame(encode(Kind.DONE, outcome_fields(OUTCOME), 7)) + frame(encode(Kind.PONG))
    frames = FrameReader(reader)
    os.write(writer.fileno(), data[:cut])  # inside the length header, or just after it
    assert frames.read() == []
    os.write(writer.fileno(), data[cut:])
    assert frames.read() == [(int(Kind.DONE), outcome_fields(OUTCOME), 7), (int(Kind.PONG),)]
    assert frames.buf == bytearray()


def test_the_long_length_header_is_understood_even_split(pipe: tuple[Connection, Connection]) -> None:
    reader, writer = pipe
    data = frame(encode(Kind.PING), long_header=True)
    frames = FrameReader(reader)
    os.write(writer.fileno(), data[:9])  # -1 and part of the 8-byte length
    assert frames.read() == []
    os.write(writer.fileno(), data[9:])
    assert frames.read() == [(int(Kind.PING),)]


def test_a_message_larger_than_one_read_arrives_whole(pipe: tuple[Connection, Connection]) -> None:
    reader, writer = pipe
    big = os.urandom(3 * READ_SIZE)
    sender = threading.Thread(target=send, args=(writer, Kind.PROGRESS, "t1", "lease", big))
    sender.start()  # the pipe holds less than the message: the writer blocks until we read
    frames = FrameReader(reader)
    got: list[tuple[Any, ...]] = []
    while not got:
        got = frames.read()
    sender.join(10)
    assert got == [(int(Kind.PROGRESS), "t1", "lease", big)]


def test_a_truncated_pipe_keeps_the_partial_message_then_reports_eof(pipe: tuple[Connection, Connection]) -> None:
    reader, writer = pipe
    whole = frame(encode(Kind.PONG))
    partial = frame(encode(Kind.DONE, outcome_fields(OUTCOME), 0))
    os.write(writer.fileno(), whole + partial[: len(partial) // 2])
    writer.close()  # the child died mid-write
    frames = FrameReader(reader)
    assert frames.read() == [(int(Kind.PONG),)]
    with pytest.raises(EOFError):
        frames.read()
    assert len(frames.buf) == len(partial) // 2  # never decoded as a message


def test_send_reports_a_gone_reader(pipe: tuple[Connection, Connection]) -> None:
    reader, writer = pipe
    reader.close()
    assert send(writer, Kind.PING) is False


def test_messages_are_plain_pickles() -> None:
    assert pickle.loads(encode(Kind.CANCEL, "t1")) == (int(Kind.CANCEL), "t1")
