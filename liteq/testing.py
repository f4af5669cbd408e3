"""Test helpers for applications that use liteq, registered as a pytest plugin (``liteq``).

Fixtures (available in any project that installs liteq):

- ``liteq_app``: a :class:`~liteq.LiteQ` on a fresh store in the test's temporary directory,
  closed after the test. Register tasks on it, enqueue, then run them with ``liteq_worker``.
- ``liteq_worker``: a callable that runs every due task in this process and returns how many ran
  (``app.run_until_empty()``); pass ``now=`` to run tasks scheduled for later.
- ``liteq_immediate``: a :class:`~liteq.LiteQ` with ``immediate=True``: ``delay()`` runs the task
  at once in the caller, through the same store, and returns its finished Result.

Outside pytest, :func:`drain` and :func:`wait_all` do the same work.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .app import LiteQ
from .result import Result

__all__ = ["drain", "liteq_app", "liteq_immediate", "liteq_worker", "wait_all"]


def drain(app: LiteQ, *, now: float | None = None) -> int:
    """Run due tasks of ``app`` in this process until none is left, retries included; return the count.

    Retries scheduled for later are left for a later call (pass ``now=`` to reach them).
    """
    return app.run_until_empty(now=now)


def wait_all(results: Iterable[Result], timeout: float = 30.0) -> list[Any]:
    """Wait for every result (a join that re-raises the first failure as ``TaskFailed``)."""
    return [r.get(timeout=timeout) for r in results]


@pytest.fixture
def liteq_app(tmp_path: Path) -> Iterator[LiteQ]:
    """A LiteQ on a temporary store, closed after the test."""
    app = LiteQ(tmp_path / "liteq-store")
    try:
        yield app
    finally:
        app.close()


@pytest.fixture
def liteq_worker(liteq_app: LiteQ) -> Callable[..., int]:
    """Run ``liteq_app``'s due tasks in this process: ``liteq_worker()`` returns how many ran."""

    def run(*, now: float | None = None) -> int:
        return drain(liteq_app, now=now)

    return run


@pytest.fixture
def liteq_immediate(tmp_path: Path) -> Iterator[LiteQ]:
    """A LiteQ whose ``delay()`` runs tasks at once in the caller, on a temporary store."""
    app = LiteQ(tmp_path / "liteq-immediate", immediate=True)
    try:
        yield app
    finally:
        app.close()
