"""Canvas: ``chain``, ``group``, ``chord`` and their nesting, compiled to tasks with dependencies.

A canvas is sent as one batch: every task it will ever need is stored in one transaction, each
with the ids it waits for. A waiting task is ``scheduled`` with no start time; the store counts
down its dependencies in the same transaction as each one's completion and makes it ``pending``
when the count reaches zero, or fails it (with the failed dependency's error) at once. So a crash
at any point neither loses nor double-fires a callback, and a failed member never leaves a chord
hanging.

What flows where (as in Celery):

- in a chain, each task's result becomes the next task's first argument (``si()`` opts out);
- a group after a task gives that result to every member;
- a task after a group (a chord) receives the list of the members' results, in order.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TypeAlias

from .exceptions import ConfigurationError
from .inputs import seconds
from .message import new_id
from .options import check_call_options
from .producer import Producer, Sendable
from .result import GroupResult, Result
from .storage.records import NewTask

__all__ = ["Canvas", "Signature", "TaskHost", "chain", "chord", "group"]


class TaskHost(Protocol):
    """What tasks and signatures send through: the app (or a worker's runtime)."""

    @property
    def producer(self) -> Producer:
        """Builds and stores task rows."""
        ...

    def get_task(self, name: str) -> Sendable:
        """The task registered as ``name`` (raises :class:`~liteq.exceptions.UnknownTask`)."""
        ...


@dataclass(frozen=True)
class Signature:
    """A task name with arguments and call options, ready to send (``sig.delay()``)."""

    name: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    app: TaskHost | None = field(default=None, compare=False, repr=False)
    immutable: bool = False

    def __or__(self, other: Any) -> Any:
        return chain(self, other)

    def set(self, **options: Any) -> Signature:
        """A copy with call options (those of :meth:`Task.apply_async <liteq.Task.apply_async>`:
        ``queue=``, ``priority=``, ``countdown=``...) added; an unknown one raises
        :class:`~liteq.ConfigurationError`."""
        check_call_options(options)
        return replace(self, options={**self.options, **options})

    def _host(self) -> TaskHost:
        if self.app is None:
            raise ConfigurationError(f"signature of {self.name!r} is not bound to an app")
        return self.app

    def delay(self, *args: Any, **kwargs: Any) -> Result:
        """Send it, with extra arguments appended."""
        return self.apply_async(args, kwargs)

    def apply_async(self, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None, **options: Any) -> Result:
        """Send it, with extra arguments and options."""
        host = self._host()
        return host.producer.send(
            host.get_task(self.name),
            (*self.args, *args),
            {**self.kwargs, **(kwargs or {})},
            **{**self.options, **options},
        )


Node: TypeAlias = "Signature | Canvas"
Handle: TypeAlias = "Result | GroupResult"


@dataclass(frozen=True)
class _Input:
    """Where a node's first argument comes from: one task's result, or a group's list of results."""

    ids: tuple[str, ...]
    group_id: str | None = None


def _root(handle: Handle) -> Handle:
    """The first step of the steps that produced ``handle`` (where an earlier step links in)."""
    seen = set()
    while handle.parent is not None and id(handle.parent) not in seen:
        seen.add(id(handle))
        handle = handle.parent
    return handle


def _input_of(handle: Handle) -> _Input:
    if isinstance(handle, GroupResult):
        return _Input(tuple(r.id for r in handle.results), handle.id)
    return _Input((handle.id,))


class Canvas:
    """Base of ``chain``, ``group`` and ``chord``: ``delay()`` sends the whole workflow at once."""

    def _app(self) -> TaskHost:
        raise NotImplementedError

    def delay(self) -> Any:
        """Send the workflow; returns the handle of its last step (a Result or GroupResult)."""
        return self.apply_async()

    def apply_async(self, *, app: TaskHost | None = None) -> Any:
        """Send the workflow in one transaction (see :meth:`delay`); ``app`` for a canvas with no
        signature to take it from (an empty group)."""
        app = app or self._app()
        compiler = _Compiler(app)
        handle = compiler.node(self, None)
        compiler.send()
        return handle

    def __or__(self, other: Node) -> chain:
        return chain(self, other)


def _app_of(nodes: Iterable[Node]) -> TaskHost:
    for n in nodes:
        if isinstance(n, Signature):
            if n.app is not None:
                return n.app
        else:
            try:
                return n._app()
            except ConfigurationError:
                continue
    raise ConfigurationError("this canvas has no task signature bound to an app (build it with task.s(...))")


class chain(Canvas):  # noqa: N801 - named like Celery's canvas primitives
    """Run steps one after another, each result feeding the next: ``chain(a.s(1), b.s(), c.s())``.

    ``delay()`` returns the last step's handle; ``.parent`` walks back along the chain.
    """

    def __init__(self, *steps: Node) -> None:
        self.steps: list[Node]
        flat: list[Node] = []
        for s in steps:
            flat.extend(s.steps if isinstance(s, chain) else [s])
        if not flat:
            raise ConfigurationError("chain() needs at least one step")
        self.steps = flat

    def __repr__(self) -> str:
        return " | ".join(map(repr, self.steps))

    def _app(self) -> TaskHost:
        return _app_of(self.steps)

    def __or__(self, other: Node) -> chain:
        return chain(*self.steps, other)


class group(Canvas):  # noqa: N801
    """Run members in parallel: ``group(square.s(i) for i in range(10)).delay().get()`` → list in order."""

    def __init__(self, *members: Node | Iterable[Node]) -> None:
        items: list[Node] = []
        for m in members:
            if isinstance(m, (Signature, Canvas)):
                items.append(m)
            else:
                items.extend(m)
        self.members = items

    def __repr__(self) -> str:
        return f"group({self.members!r})"

    def _app(self) -> TaskHost:
        return _app_of(self.members)

    def __or__(self, other: Node) -> chain:
        return chain(self, other)


class chord(Canvas):  # noqa: N801
    """Run a header group, then ``body`` once with the list of their results.

    The body runs exactly once, and only when every member succeeded; a failed member fails the
    chord's result with that member's error. An empty header calls the body with ``[]``.
    """

    def __init__(self, header: Iterable[Node] | group, body: Node) -> None:
        self.header = header if isinstance(header, group) else group(list(header))
        self.body = body

    def __repr__(self) -> str:
        return f"chord({self.header!r}, {self.body!r})"

    def _app(self) -> TaskHost:
        return _app_of([self.body, *self.header.members])


class _Compiler:
    """Turns a canvas into tasks with dependencies, sent in one batch."""

    def __init__(self, app: TaskHost) -> None:
        self.app = app
        self.producer = app.producer
        self.now = time.time()
        self.messages: dict[str, NewTask] = {}

    def send(self) -> None:
        self.producer.enqueue(list(self.messages.values()), now=self.now)

    def node(self, node: Node, inp: _Input | None) -> Handle:
        if isinstance(node, Signature):
            return self.signature(node, inp)
        if isinstance(node, chain):
            handle: Handle | None = None
            for step in node.steps:
                prev = handle
                handle = self.node(step, inp)
                _root(handle).parent = prev
                inp = _input_of(handle)
            assert handle is not None
            return handle
        if isinstance(node, chord):
            header = self.group(node.header, inp)
            body = self.node(node.body, _input_of(header))
            _root(body).parent = header
            return body
        if isinstance(node, group):
            return self.group(node, inp)
        raise ConfigurationError(f"not a canvas node: {node!r}")

    def group(self, node: group, inp: _Input | None) -> GroupResult:
        group_id = new_id()
        results: list[Result] = []
        for i, member in enumerate(node.members):
            handle = self.node(member, inp)
            if isinstance(handle, GroupResult):
                raise ConfigurationError(
                    "a group member must end in one task; end the nested chain with a task (e.g. a chord body)"
                )
            message = self.messages[handle.id]
            message.group_id, message.group_index = group_id, i
            results.append(handle)
        return GroupResult(self.producer.owner, group_id, results)

    def signature(self, sig: Signature, inp: _Input | None) -> Result:
        app = self.app
        task = app.get_task(sig.name)
        meta: dict[str, Any] = {}
        options = dict(sig.options)
        if options.get("idempotency_key") is not None or task.options.unique:
            # A step deduplicated against an earlier task would leave its successors waiting on an
            # id that was never stored.
            raise ConfigurationError(
                f"{sig.name}: idempotency_key and unique tasks cannot be canvas steps; make the whole "
                "workflow's first call idempotent instead"
            )
        delay = 0.0
        if inp is not None and options.get("countdown") is not None:
            # A countdown on a later step counts from when its input is ready, as in Celery.
            delay = seconds(options.pop("countdown"), "countdown") or 0.0
        if inp is not None and not sig.immutable:
            if inp.group_id is not None:
                meta["chord"] = inp.group_id
            else:
                meta["prev"] = inp.ids[0]
        message = self.producer.build(task, tuple(sig.args), dict(sig.kwargs), now=self.now, meta=meta, **options)
        if inp is not None:
            message.depends_on = list(inp.ids)
            message.release_delay = delay
            if inp.ids:
                message.parent_id = inp.ids[-1]
            elif inp.group_id is not None:  # an empty chord header: nothing to wait for
                message.parent_id = None
        if message.id in self.messages:
            raise ConfigurationError(f"task id {message.id} is used twice in this canvas")
        self.messages[message.id] = message
        return Result(self.producer.owner, message.id)
