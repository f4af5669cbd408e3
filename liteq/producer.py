"""``Producer``: turns calls into stored tasks — the one way onto the queue.

``build()`` makes the :class:`~liteq.storage.records.NewTask` row of one call (checking the per-call
options); ``send()`` stores one; ``send_many()`` stores many in one transaction; ``enqueue()``
stores prepared rows (a canvas, the scheduler's firings). In immediate mode the producer's
``run_now`` hook runs what was just stored, in the caller, before the handle comes back.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from .exceptions import ConfigurationError
from .inputs import now_plus, seconds, to_epoch
from .message import encode_call, ids_at, new_id
from .options import PER_CALL, STORED, TaskOptions, check_call_options
from .result import Result, ResultSource
from .serializer import Serializer
from .storage.contract import Storage
from .storage.records import NewTask

__all__ = ["Producer", "Sendable", "lock_key", "unique_key"]


class Sendable(Protocol):
    """What the producer needs of a task: its name and options."""

    @property
    def name(self) -> str:
        """The registered name."""
        ...

    @property
    def options(self) -> TaskOptions:
        """The declared options."""
        ...


#: The :class:`NewTask` fields whose default is None (a call need not pass them as None).
_NONE_BY_DEFAULT = frozenset(f.name for f in dataclasses.fields(NewTask) if f.default is None)

#: A call as ``enqueue_many`` takes it: a signature (name, args, kwargs, options) or ``(task, args, kwargs)``.
Call = Any


class Producer:
    """Builds and stores task rows for ``owner`` (the object results are read through).

    ``lookup`` turns a signature's task name into a task; ``run_now``, when given (immediate
    mode), runs the stored ids in the caller before ``send`` returns.
    """

    def __init__(
        self,
        owner: ResultSource,
        lookup: Callable[[str], Sendable],
        serializer: Serializer,
        storage: Storage,
        *,
        run_now: Callable[[Sequence[str]], None] | None = None,
    ) -> None:
        self.owner = owner
        self.lookup = lookup
        self.serializer = serializer
        self.storage = storage
        self.run_now = run_now
        self._shared: dict[str, tuple[TaskOptions, float | None, dict[str, Any] | None]] = {}

    def build(
        self,
        task: Sendable,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        now: float,
        parent_id: str | None = None,
        meta: dict[str, Any] | None = None,
        **call: Any,
    ) -> NewTask:
        """The row of one call of ``task`` with per-call options ``call`` (see :data:`~liteq.options.PER_CALL`);
        each is checked (raises :class:`ConfigurationError`)."""
        if not call and meta is None and parent_id is None:
            shared = self.shared(task, now)
            if shared is not None:
                # A call without options: only the id and the arguments are its own.
                return NewTask(id=new_id(now), payload=encode_call(self.serializer, args, kwargs, {}), **shared)
        check_call_options(call)
        opts = task.options
        meta = dict(meta or {})
        retries = call.get("retries")
        if retries is not None:
            meta["retries"] = PER_CALL["retries"].check(retries, "retries")  # type: ignore[misc]
        run_at = None
        eta, countdown = call.get("eta"), call.get("countdown")
        if eta is not None:
            if countdown is not None:
                raise ConfigurationError("pass countdown or eta, not both")
            run_at = to_epoch(eta, "eta", now=now)
        elif countdown is not None:
            run_at = now + (seconds(countdown, "countdown") or 0.0)
        expires = call.get("expires")
        if expires is None:
            expires = opts.expires
        stored = self._stored(opts)
        for name, value in call.items():
            option = STORED.get(name)
            if option is not None and value is not None:
                assert option.check is not None
                stored[name] = option.check(value, name)
        payload = encode_call(self.serializer, args, kwargs, meta)
        return NewTask(
            id=call.get("task_id") or new_id(),
            name=task.name,
            payload=payload,
            run_at=run_at,
            expires_at=now_plus(expires, "expires", now),
            max_attempts=opts.attempts_for(retries),
            parent_id=parent_id,
            unique_key=unique_key(task, args, kwargs, payload) if opts.unique else None,
            lock_key=lock_key(task, args, kwargs) if opts.lock else None,
            **stored,
        )

    @staticmethod
    def _stored(opts: TaskOptions) -> dict[str, Any]:
        """The stored options' values a task gives its rows (a call may override them)."""
        return {name: getattr(opts, name) if option.declared else None for name, option in STORED.items()}

    def shared(self, task: Sendable, now: float) -> dict[str, Any] | None:
        """The :class:`NewTask` keywords (all but ``id`` and ``payload``) of every option-free call
        of ``task`` at ``now``, or None when each call needs its own work (a unique or lock key).

        The task's options were checked when it was declared and never change, so what follows
        from them is worked out once per task and reused (the cache holds the options it was
        computed from, and a task whose options are replaced gets a fresh entry). Fields left at
        their ``None`` default are not passed: fewer keywords make a cheaper record.
        """
        opts = task.options
        entry = self._shared.get(task.name)
        if entry is None or entry[0] is not opts:
            expires = opts.expires
            fields: dict[str, Any] | None = None
            if not opts.unique and not opts.lock:
                if expires is not None and expires.__class__ is not float:
                    return None  # rare: checked and converted per call by build()
                fields = {"name": task.name, "max_attempts": opts.attempts_for()}
                for name, value in self._stored(opts).items():
                    if value is not None or name not in _NONE_BY_DEFAULT:
                        fields[name] = value
            entry = self._shared[task.name] = (opts, expires, fields)
        _, expires, fields = entry
        if fields is None or expires is None:
            return fields
        return {**fields, "expires_at": now + expires}

    def enqueue(self, messages: list[NewTask], *, now: float) -> list[str]:
        """Store prepared rows in one transaction (running them at once in immediate mode); their ids."""
        ids = self.storage.enqueue(messages, now=now)
        if self.run_now is not None:
            self.run_now(ids)
        return ids

    def send(self, task: Sendable, args: tuple[Any, ...], kwargs: dict[str, Any], **options: Any) -> Result:
        """Store one call of ``task`` with per-call ``options``; its :class:`Result`."""
        now = time.time()
        message = self.build(task, args, kwargs, now=now, **options)
        return Result(self.owner, self.enqueue([message], now=now)[0])

    def send_many(self, calls: Iterable[Call]) -> list[Result]:
        """Store many calls in one transaction: signatures or ``(task, args, kwargs)``; results in order.

        Nothing is written unless every call encodes.
        """
        now = time.time()
        messages = []
        tasks: dict[str, Sendable] = {}
        shared_by_name: dict[str, dict[str, Any] | None] = {}
        serializer = self.serializer
        ids = ids_at(now)
        for call in calls:
            if isinstance(call, tuple):
                task, args, kwargs = call
                name, options = task.name, None
            else:  # a Signature
                name, args, kwargs, options = call.name, call.args, call.kwargs, call.options
                task = tasks.get(name) or tasks.setdefault(name, self.lookup(name))
            if options:
                shared = None
            elif name in shared_by_name:
                shared = shared_by_name[name]
            else:
                shared = shared_by_name[name] = self.shared(task, now)
            if shared is None:
                messages.append(self.build(task, tuple(args), dict(kwargs), now=now, **(options or {})))
                continue
            # The common case (a call without options, a task without unique/lock): everything but
            # the id and the arguments is the same for every call of the task, so it is worked out once.
            payload = encode_call(serializer, args, kwargs if kwargs.__class__ is dict else dict(kwargs), {})
            messages.append(NewTask(id=ids(), payload=payload, **shared))
        ids_stored = self.enqueue(messages, now=now)
        owner = self.owner
        return [Result(owner, i) for i in ids_stored]


def unique_key(task: Sendable, args: tuple[Any, ...], kwargs: dict[str, Any], payload: bytes) -> str:
    """The ``unique`` key of a call: the task's key function of the arguments, else a hash of them."""
    unique = task.options.unique
    if callable(unique) and not isinstance(unique, bool):
        return f"{task.name}:{unique(*args, **kwargs)}"
    return f"{task.name}:{hashlib.sha1(payload).hexdigest()}"


def lock_key(task: Sendable, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """The ``lock`` key of a call: the task's name, or its template formatted with the arguments."""
    lock = task.options.lock
    if lock is True:
        return task.name
    try:
        return str(lock).format(*args, **kwargs)
    except (IndexError, KeyError) as exc:
        raise ConfigurationError(
            f"lock template {lock!r} of task {task.name!r} names {exc} that this call does not pass"
        ) from None
