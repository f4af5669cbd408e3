"""``Registry``: the tasks and schedules of an app, by name — and the one place a name becomes code.

A stored task name is only a string that anyone with write access to the store chooses, so looking
one up never imports a module unless that module is on the ``include`` allowlist
(``LiteQ(include=[...])``, ``liteq worker --include mod``). Everything that turns a name into a
function (a worker, the scheduler, a canvas step, a spawned child) goes through :meth:`Registry.get`.
"""

from __future__ import annotations

import importlib
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any

from .exceptions import ConfigurationError, UnknownTask
from .schedule import Schedule
from .task import CHUNK_TASK, Task, TaskHost, TaskOptions, run_chunk

__all__ = ["Registry", "checked_include", "task_name"]


def task_name(fn: Callable[..., Any]) -> str:
    """The default name of a task: ``module.qualname`` (a script's ``__mp_main__`` spelled ``__main__``)."""
    module = getattr(fn, "__module__", None) or "__main__"
    # A script run as __main__ is imported as __mp_main__ in spawned children: keep one name.
    if module == "__mp_main__":
        module = "__main__"
    return f"{module}.{fn.__qualname__}"


def checked_include(modules: Iterable[str] | str) -> tuple[str, ...]:
    """``include`` as a tuple of module names; raises :class:`ConfigurationError` for anything else."""
    names = (modules,) if isinstance(modules, str) else tuple(modules)
    for module in names:
        if not isinstance(module, str) or not all(part.isidentifier() for part in module.split(".")):
            raise ConfigurationError(f"include takes module names such as 'myapp.tasks', not {module!r}")
    return names


class Registry:
    """Tasks and schedules by name, bound to ``host`` (the object a registered task sends through).

    ``default_queue`` is the queue of tasks that name none; ``include`` the modules a lookup may
    import to find a task not registered yet.
    """

    def __init__(self, host: TaskHost | None, *, default_queue: str, include: Iterable[str] = ()) -> None:
        self.host = host
        self.default_queue = default_queue
        self.include: tuple[str, ...] = checked_include(include)
        self.tasks: dict[str, Task[Any, Any]] = {}
        self.schedules: dict[str, Schedule] = {}
        self._lock = threading.Lock()

    def include_modules(self, modules: Iterable[str]) -> None:
        """Add modules to the ``include`` allowlist."""
        self.include = tuple(dict.fromkeys((*self.include, *checked_include(modules))))

    def register(self, fn: Callable[..., Any], name: str, options: TaskOptions) -> Task[Any, Any]:
        """Register ``fn`` as task ``name``; two tasks with one name raise :class:`ConfigurationError`."""
        if self.host is None:
            raise ConfigurationError("this registry is not bound to an app; register tasks with @app.task")
        with self._lock:
            if name in self.tasks:
                raise ConfigurationError(
                    f"two tasks are named {name!r}; give one of them another name with @app.task(name=...)"
                )
            task: Task[Any, Any] = Task(self.host, fn, name, options)
            self.tasks[name] = task
        return task

    def add_schedule(self, schedule: Schedule) -> None:
        """Register a periodic schedule; two schedules with one name raise :class:`ConfigurationError`."""
        if schedule.name in self.schedules:
            raise ConfigurationError(
                f"two schedules are named {schedule.name!r}; pass name=... to @app.periodic to tell them apart"
            )
        self.schedules[schedule.name] = schedule

    def queues(self) -> list[str]:
        """Every queue a registered task uses, the default queue first."""
        found = [self.default_queue]
        for task in self.tasks.values():
            if task.options.queue not in found:
                found.append(task.options.queue)
        return found

    def rate_limits(self) -> dict[str, float]:
        """``{task name: starts per second}`` for tasks with a ``rate_limit``."""
        return {n: t.options.rate_limit for n, t in self.tasks.items() if t.options.rate_limit}

    def get(self, name: str) -> Task[Any, Any]:
        """The task registered as ``name``; if it is not registered yet, its module is imported first,
        but only when that module is listed in ``include`` (a stored name must not choose code)."""
        task = self.tasks.get(name)
        if task is not None:
            return task
        if name == CHUNK_TASK:  # built in, registered on first use
            return self.register(run_chunk, CHUNK_TASK, TaskOptions.build(self.default_queue))
        module = name.rpartition(".")[0]
        problem = ""
        if module and module != "__main__" and module in self.include:
            try:
                importlib.import_module(module)
            except ImportError as exc:
                problem = f" (importing {module!r} failed: {exc})"
            except Exception as exc:  # a module that raises on import is reported, not propagated
                problem = f" (importing {module!r} raised {type(exc).__name__}: {exc})"
        elif module and module not in sys.modules:
            problem = (
                f" (module {module!r} is not imported: a worker imports a task's module only when it is listed "
                f"in LiteQ(include=[...]) or `liteq worker --include {module}`)"
            )
        # A task its (already imported) module registered on another app object is adopted.
        task = self.tasks.get(name) or (self._adopt(name) if module else None)
        if task is not None:
            return task
        where = f"module {module!r}" if module else "the app's modules"
        raise UnknownTask(
            f"no task named {name!r} is registered in this process; make sure {where} is importable here and "
            f"registers it with this app{problem}"
        )

    def _adopt(self, name: str) -> Task[Any, Any] | None:
        """Register here a task that its module registered on another app (``liteq worker STORE``)."""
        parts = name.split(".")
        for cut in range(len(parts) - 1, 0, -1):
            module = sys.modules.get(".".join(parts[:cut]))
            if module is None:
                continue
            obj: Any = module
            try:
                for part in parts[cut:]:
                    obj = getattr(obj, part)
            except AttributeError:
                continue
            if isinstance(obj, Task) and obj.name == name:
                with self._lock:
                    known = self.tasks.get(name)
                if known is not None:
                    return known
                return self.register(obj.fn, name, obj.options)
        return None
