"""``Runtime``: what running a task needs — the registry, the serializer and the store — without the app.

A worker (in this process, in a pool child, or immediate mode) runs tasks against a Runtime; the
app (:class:`~liteq.LiteQ`) is a facade that owns one. A Runtime travels to a spawned child as a
recipe (see :mod:`liteq.bootstrap`), never as open connections.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from .producer import Producer
from .registry import Registry
from .serializer import Serializer
from .storage.contract import Storage
from .task import Task

__all__ = ["HasRuntime", "Runtime", "runtime_of"]


@dataclass(frozen=True, eq=False)
class Runtime:
    """The registry, serializer and store a worker runs tasks against.

    ``origin`` is the module that created the app (a spawned child finds the app there; ``--reload``
    watches its directory); ``recipe``, when set, says how to rebuild this runtime in another
    process (what pickling it returns).
    """

    registry: Registry
    serializer: Serializer
    storage: Storage
    origin: str | None = None
    recipe: Callable[[], tuple[Any, ...]] | None = field(default=None, repr=False)

    def get_task(self, name: str) -> Task[Any, Any]:
        """The task registered as ``name`` (see :meth:`Registry.get`)."""
        return self.registry.get(name)

    @functools.cached_property
    def producer(self) -> Producer:
        """Sends tasks from inside a task (the results read through this runtime)."""
        return Producer(self, self.registry.get, self.serializer, self.storage)

    def __reduce__(self) -> tuple[Any, ...]:
        if self.recipe is None:
            raise TypeError("this Runtime has no recipe to rebuild it in another process")
        return self.recipe()


class HasRuntime(Protocol):
    """Something that owns a :class:`Runtime` (the app)."""

    @property
    def runtime(self) -> Runtime:
        """The runtime its workers run tasks against."""
        ...


def runtime_of(source: Runtime | HasRuntime) -> Runtime:
    """``source`` itself if it is a Runtime, else the runtime it owns (an app)."""
    return source if isinstance(source, Runtime) else source.runtime
