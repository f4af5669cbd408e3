"""What a :class:`~liteq.pool.WorkerPool` is asked to do, checked once where it enters.

:func:`pool_options` turns the keyword arguments of ``WorkerPool(...)`` / ``app.workers(...)`` /
``liteq worker`` into a :class:`PoolOptions` record with every default resolved, or raises a
:class:`~liteq.exceptions.ConfigurationError` that names the argument. The meaning of each option
is documented on :class:`~liteq.pool.WorkerPool`.
"""

from __future__ import annotations

import multiprocessing
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .children import default_start_method
from .exceptions import ConfigurationError
from .inputs import check_duration
from .message import new_id
from .runtime import Runtime
from .storage.contract import Storage

__all__ = ["MAX_SPIN", "SPIN", "PoolOptions", "default_spin", "pool_options"]

#: Seconds a pool polls for its next event before it sleeps, right after activity and while its
#: children leave a CPU free, where it may (see :func:`default_spin` and :mod:`liteq.events`).
SPIN = 0.0003
#: The longest ``spin`` a pool accepts (seconds).
MAX_SPIN = 0.1


def default_spin(storage: Storage, *, in_background: bool) -> float:
    """A pool's ``spin`` when none is asked for: :data:`SPIN` for a loop that has its process to
    itself (``liteq worker``, ``app.run_worker()``) over a store whose events reach it straight
    from the kernel; 0 for a loop in an application's thread (``app.workers()``) or over a store
    whose events come through a reader thread (a cluster server): polling would hold the GIL
    those threads need."""
    if in_background or storage.events_through_a_thread:
        return 0.0
    return SPIN


@dataclass(frozen=True)
class PoolOptions:
    """A pool's options with their defaults resolved (see :class:`~liteq.pool.WorkerPool`)."""

    concurrency: int
    queues: list[str]
    #: ``spawn`` whatever was asked when ``reload`` is on (see :func:`pool_options`).
    start_method: str
    prefetch: int
    #: None: the dispatch's default, with deeper queues for short tasks (see :mod:`liteq.dispatch`).
    child_depth: int | None
    lease: float
    shutdown_timeout: float
    max_tasks_per_child: int | None
    max_memory_per_child: int | None
    worker_id: str
    heartbeat_interval: float
    reload: bool
    scheduler: bool
    liveness_timeout: float
    async_concurrency: int
    clock: Callable[[], float]
    #: None: the pool's default, which depends on where its loop runs (see :mod:`liteq.events`).
    spin: float | None


def _positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{name} must be an integer >= 1, not {value!r}")


def pool_options(
    runtime: Runtime,
    *,
    concurrency: int | None,
    queues: Sequence[str] | None,
    start_method: str | None,
    prefetch: int | None,
    child_depth: int | None,
    lease: float,
    shutdown_timeout: float,
    max_tasks_per_child: int | None,
    max_memory_per_child: int | None,
    worker_id: str | None,
    heartbeat_interval: float,
    reload: bool,
    scheduler: bool,
    liveness_timeout: float | None,
    clock: Callable[[], float],
    async_concurrency: int,
    spin: float | None = None,
) -> PoolOptions:
    """Check a pool's options for ``runtime`` and resolve their defaults; ``lease`` is the
    resolved lease (the pool's, else the app's)."""
    if not runtime.storage.shared_between_processes:
        raise ConfigurationError(
            "a worker pool needs a store other processes can open; memory:// lives in one process. "
            "Use a directory store, or immediate=True / app.run_until_empty() in tests"
        )
    concurrency = concurrency if concurrency is not None else (os.cpu_count() or 1)
    _positive_int("concurrency", concurrency)
    method = start_method or default_start_method()
    if method not in multiprocessing.get_all_start_methods():
        raise ConfigurationError(
            f"start_method {method!r} is not available here; choose one of "
            f"{', '.join(multiprocessing.get_all_start_methods())}"
        )
    if reload and method != "spawn":
        method = "spawn"  # a forked or fork-server child would keep the old modules
    for name, value in (
        ("max_tasks_per_child", max_tasks_per_child),
        ("max_memory_per_child", max_memory_per_child),
    ):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigurationError(f"{name} must be a positive integer or None, not {value!r}")
    _positive_int("async_concurrency", async_concurrency)
    if child_depth is not None and child_depth < 1:
        raise ConfigurationError(f"child_depth must be >= 1, not {child_depth!r}")
    if shutdown_timeout < 0:
        raise ConfigurationError(f"shutdown_timeout must be >= 0 seconds, not {shutdown_timeout!r}")
    if liveness_timeout is not None and not liveness_timeout > 0:
        raise ConfigurationError(f"liveness_timeout must be > 0 seconds, not {liveness_timeout!r}")
    if spin is not None:
        spin = check_duration(spin, "spin")
        if spin > MAX_SPIN:
            raise ConfigurationError(
                f"spin={spin!r} seconds is more than {MAX_SPIN}: a spin is a moment before sleeping "
                "(a longer one only burns CPU); pass seconds, e.g. 0.0003, or 0 to never spin"
            )
    return PoolOptions(
        concurrency=concurrency,
        queues=list(queues) if queues else runtime.registry.queues(),
        start_method=method,
        prefetch=concurrency if prefetch is None else max(0, prefetch),
        child_depth=child_depth,
        lease=float(lease),
        shutdown_timeout=float(shutdown_timeout),
        max_tasks_per_child=max_tasks_per_child,
        max_memory_per_child=max_memory_per_child,
        worker_id=worker_id or f"{socket.gethostname()}:{os.getpid()}:{new_id()[-8:]}",
        heartbeat_interval=heartbeat_interval,
        reload=reload,
        scheduler=scheduler,
        # A child silent for a whole lease would have lost its lease as a worker of its own.
        liveness_timeout=float(liveness_timeout) if liveness_timeout is not None else float(lease),
        async_concurrency=async_concurrency,
        clock=clock,
        spin=spin,
    )
