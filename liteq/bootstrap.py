"""Getting a worker's :class:`~liteq.runtime.Runtime` back in a spawned child process.

A child started with ``spawn`` or ``forkserver`` receives a picklable :class:`RuntimeSpec`, never
open connections. :func:`runtime_from_spec` first looks for the very app object, by module and
attribute (``module:app``, a ``__main__`` script included, imported again as ``__mp_main__``);
failing that (an app made inside a function, as tests do), it rebuilds a runtime on the same store
with each task re-registered from its importable function. A task whose function is not
importable stays unknown there and fails with a message naming its module. Used by the pool (what
a Runtime pickles to) and its children only.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from .options import TaskOptions
from .registry import Registry
from .runtime import Runtime
from .serializer import get_serializer
from .storage import open_storage

__all__ = ["RuntimeSpec", "find_owner", "importable_tasks", "runtime_from_spec"]

#: Options of the app that open its store (the rest configure the registry and serializer).
_STORE_OPTIONS = ("result_ttl", "durability", "busy_timeout", "blob_threshold", "mode", "token")


@dataclass(frozen=True)
class RuntimeSpec:
    """A picklable recipe for a runtime: its store, the app's options, where the app lives, its tasks.

    ``ref`` is ``(module, attribute)`` of the app object when it is a module global; ``tasks`` maps
    each task name to ``(module, qualname, options)`` of its function.
    """

    location: str
    options: dict[str, Any]
    origin: str | None = None
    ref: tuple[str, str] | None = None
    tasks: dict[str, tuple[str | None, str | None, dict[str, Any]]] = field(default_factory=dict)

    def key(self) -> tuple[Any, ...]:
        """What identifies the runtime this spec describes in one process."""
        return (self.location, self.ref, tuple(sorted(self.tasks)))


def describe(runtime: Runtime, owner: object, options: dict[str, Any]) -> RuntimeSpec:
    """The spec of ``runtime``, owned by ``owner`` (the app) and opened with the app's ``options``."""
    ref = None
    module = sys.modules.get(runtime.origin or "")
    if module is not None and runtime.origin is not None:
        for attr, value in vars(module).items():
            if value is owner:
                ref = (runtime.origin, attr)
                break
    tasks = {
        name: (
            getattr(t.fn, "__module__", None),
            getattr(t.fn, "__qualname__", None),
            t.options.as_dict(),
        )
        for name, t in runtime.registry.tasks.items()
    }
    return RuntimeSpec(runtime.storage.location, dict(options), runtime.origin, ref, tasks)


def resolve(module_name: str, qualname: str) -> Any:
    """The object ``qualname`` in module ``module_name`` (``__main__`` is ``__mp_main__`` under spawn)."""
    if module_name == "__main__":
        module = sys.modules.get("__mp_main__") or sys.modules["__main__"]
    else:
        module = importlib.import_module(module_name)
    obj: Any = module
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def find_owner(spec: RuntimeSpec) -> Any | None:
    """The very app object ``spec`` was made from, if it is a module global here on the same store."""
    if spec.ref is None:
        return None
    try:
        found = resolve(*spec.ref)
    except (ImportError, AttributeError, KeyError):
        return None
    runtime = getattr(found, "runtime", None)
    if isinstance(runtime, Runtime) and runtime.storage.location == spec.location:
        return found
    return None


def importable_tasks(spec: RuntimeSpec) -> Iterator[tuple[str, Any, dict[str, Any]]]:
    """``(name, function, options)`` of each task of ``spec`` whose function can be imported here."""
    for name, (module_name, qualname, options) in spec.tasks.items():
        if not module_name or not qualname or "<locals>" in qualname:
            continue
        try:
            fn = resolve(module_name, qualname)
        except (ImportError, AttributeError, KeyError):
            continue
        fn = getattr(fn, "fn", fn)  # a Task registered on another app: take its function
        if callable(fn):
            yield name, fn, options


_rebuilt: dict[tuple[Any, ...], Runtime] = {}


def runtime_from_spec(spec: RuntimeSpec) -> Runtime:
    """Find or rebuild the runtime ``spec`` describes, in this process (see the module doc)."""
    key = spec.key()
    runtime = _rebuilt.get(key)
    if runtime is not None:
        return runtime
    owner = find_owner(spec)
    if owner is not None:
        runtime = owner.runtime
        assert isinstance(runtime, Runtime)
    else:
        options = spec.options
        serializer = get_serializer(options["serializer"], max_size=options["max_payload_size"])
        storage = open_storage(spec.location, **{k: options[k] for k in _STORE_OPTIONS if k in options})
        registry = Registry(None, default_queue=options["default_queue"], include=options.get("include", ()))
        runtime = Runtime(registry, serializer, storage, spec.origin, recipe=lambda: (runtime_from_spec, (spec,)))
        registry.host = runtime
        for name, fn, task_options in importable_tasks(spec):
            if name not in registry.tasks:
                registry.register(fn, name, TaskOptions.build(**task_options))
    _rebuilt[key] = runtime
    return runtime
