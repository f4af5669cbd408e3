"""Task states are an Enum that still reads, stores and travels as the plain strings it always was."""

from __future__ import annotations

import dataclasses
import json

import msgpack
from liteq.cluster.codec import to_wire
from liteq.cluster.protocol import decode_body, encode_frame

from liteq import LiteQ
from liteq.dashboard import api
from liteq.storage import MemoryStorage
from liteq.storage.records import NewTask
from liteq.storage.states import (
    CANCELLED,
    EXPIRED,
    FAILED,
    FINISHED_STATES,
    PENDING,
    RUNNING,
    SCHEDULED,
    STATES,
    SUCCEEDED,
    TaskState,
)
from tests import dashboard_tasks

ADD = "tests.dashboard_tasks.add"


def test_the_module_constants_are_the_enum_members_and_equal_their_strings() -> None:
    # Given the constants every module uses, Then each is the member with the same plain value
    values = ["pending", "scheduled", "running", "succeeded", "failed", "cancelled", "expired"]
    constants = [PENDING, SCHEDULED, RUNNING, SUCCEEDED, FAILED, CANCELLED, EXPIRED]
    assert [s.value for s in TaskState] == values
    assert constants == list(TaskState) == values
    # STATES stays plain strings: click.Choice matches Enum choices by their names, not values
    assert list(STATES) == values and all(type(s) is str for s in STATES)
    for constant, value in zip(constants, values, strict=True):
        assert isinstance(constant, TaskState) and constant == value and hash(constant) == hash(value)
        assert TaskState(value) is constant
        # And it formats as the value, not as "TaskState.PENDING" (log lines, CLI tables, SQL text)
        assert str(constant) == f"{constant}" == value and f"{constant:>10}" == f"{value:>10}"
    assert "failed" in FINISHED_STATES and FAILED in FINISHED_STATES


def test_a_memory_row_state_encodes_as_a_plain_string_in_json_and_on_the_cluster_wire() -> None:
    # Given a row of the memory store, whose state is the enum member
    store = MemoryStorage()
    (task_id,) = store.enqueue([NewTask(id="t1", name="x", queue="default", payload=b"")])
    row = store.get([task_id])[0]
    assert row is not None and row.state is PENDING
    # When it is written as JSON (the CLI's --json output does this), Then the state is the plain string
    assert json.loads(json.dumps(dataclasses.asdict(row), default=repr))["state"] == "pending"
    # When it is sent as a cluster frame, Then it travels and arrives as a plain str
    wire = to_wire(row)
    assert type(wire["state"]) is str and wire["state"] == "pending"
    message = decode_body(encode_frame({"t": "row", "row": wire})[4:])
    assert type(message["row"]["state"]) is str and message["row"]["state"] == "pending"
    assert msgpack.unpackb(msgpack.packb(PENDING)) == "pending"


def test_the_dashboard_api_gives_plain_state_strings_for_a_memory_app() -> None:
    # Given a memory app with one pending task
    app = LiteQ("memory://")
    app.task(dashboard_tasks.add)
    handle = app.tasks[ADD].delay(1, 2)
    try:
        # When the dashboard's JSON for the task list and for the task is written out
        listed = json.loads(json.dumps(api.tasks(app, {})))
        one = json.loads(json.dumps(api.task(app, handle.id)))
        # Then the states are the plain strings the browser code compares against
        assert [t["state"] for t in listed["tasks"]] == ["pending"]
        assert one["state"] == "pending"
    finally:
        app.close()
