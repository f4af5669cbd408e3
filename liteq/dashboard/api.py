"""What the dashboard's JSON endpoints answer: plain dicts built from an app's store.

No HTTP here (see :mod:`.server`): each function takes a :class:`~liteq.LiteQ` and the query, so
the page, scripts and tests read the same figures. Reads go through the storage contract only, so
they work on every store (SQLite, memory, remote); each is a handful of index seeks or rows of the
per-minute history, whatever the number of tasks.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Mapping
from typing import Any

from ..app import LiteQ
from ..exceptions import ConfigurationError, LiteQError
from ..message import ErrorInfo, Progress, decode_call
from ..serializer import loads
from ..storage.records import TaskRow
from ..storage.states import FINISHED_STATES, STATES
from .history import failures_by_name, finished_recently, series

__all__ = [
    "PAGE_LIMIT",
    "STALE_AFTER",
    "BadRequest",
    "NotFound",
    "history",
    "overview",
    "periodic",
    "purge",
    "schedule_paused",
    "task",
    "task_action",
    "tasks",
    "workers",
]

#: A worker not heard from for this many seconds is shown as stale (pools beat every few seconds).
STALE_AFTER = 30.0
#: Rows per page of the task list, at most.
PAGE_LIMIT = 500
#: Chart windows: seconds shown and the bucket of each point.
WINDOWS: dict[str, tuple[float, int]] = {"hour": (3600.0, 60), "day": (86400.0, 900)}


class BadRequest(LiteQError):
    """A query or action the dashboard cannot serve as given (HTTP 400)."""


class NotFound(LiteQError):
    """An unknown task or schedule (HTTP 404)."""


def _jsonable(value: Any) -> Any:
    """A decoded value as JSON: what JSON cannot hold (bytes, datetimes, sets...) as its repr."""
    return json.loads(json.dumps(value, default=repr))


def _allow_pickle(app: LiteQ) -> bool:
    return app.serializer.name == "pickle"


# -- overview --------------------------------------------------------------------------------------


def overview(app: LiteQ, *, now: float | None = None) -> dict[str, Any]:
    """Counts per queue and state, the oldest pending task, recent throughput, failures, workers."""
    now = time.time() if now is None else now
    storage = app.storage
    queues = {q: {s: by_state.get(s, 0) for s in STATES} for q, by_state in sorted(storage.counts().items())}
    totals = {s: sum(by_state[s] for by_state in queues.values()) for s in STATES}
    oldest: dict[str, dict[str, Any]] = {
        q: {"id": r.id, "name": r.name, "enqueued_at": r.enqueued_at, "age": max(now - r.enqueued_at, 0.0)}
        for q, r in sorted(storage.oldest_pending().items())
    }
    first = min(oldest.values(), key=lambda o: o["enqueued_at"], default=None)
    hour = storage.stats(since=now - 3600.0)
    live = storage.workers()
    return {
        "now": now,
        "states": list(STATES),
        "queues": queues,
        "totals": totals,
        "oldest_pending": first,
        "oldest_pending_by_queue": oldest,
        "finished_last_minute": finished_recently(storage, now=now),
        "failures_last_hour": failures_by_name(hour),
        "workers": {
            "total": len(live),
            "stale": sum(1 for w in live if now - w.heartbeat_at > STALE_AFTER),
            "degraded": sum(1 for w in live if w.state != "ok"),
        },
    }


def history(app: LiteQ, window: str, *, now: float | None = None) -> dict[str, Any]:
    """Throughput and end-to-end latency over the last ``hour`` or ``day``, and failures per name."""
    if window not in WINDOWS:
        raise BadRequest(f"window must be one of {sorted(WINDOWS)}, not {window!r}")
    now = time.time() if now is None else now
    span, bucket = WINDOWS[window]
    since = math.floor((now - span) / bucket) * bucket
    rows = app.storage.stats(since=since, bucket=bucket)
    return {
        "window": window,
        "bucket": bucket,
        "series": series(rows, since=since, until=now, bucket=bucket),
        "failures": failures_by_name(rows),
    }


# -- workers and schedules -------------------------------------------------------------------------


def workers(app: LiteQ, *, now: float | None = None) -> list[dict[str, Any]]:
    """Every recorded worker, with its health and whether it stopped beating (``stale``)."""
    now = time.time() if now is None else now
    out = []
    for w in sorted(app.storage.workers(), key=lambda w: (w.host, w.started_at)):
        info = dataclasses.asdict(w)
        info["stale"] = now - w.heartbeat_at > STALE_AFTER
        info["heartbeat_age"] = max(now - w.heartbeat_at, 0.0)
        out.append(info)
    return out


def periodic(app: LiteQ, *, now: float | None = None) -> list[dict[str, Any]]:
    """The app's schedules (last and next fire, paused), and any other schedule the store recorded."""
    now = time.time() if now is None else now
    out = app.periodic_info(now=now)
    known = {s["name"] for s in out}
    for name, st in sorted(app.storage.schedule_states().items()):
        if name not in known:
            # Recorded by another app's pool: its timing lives in that app's code.
            out.append(
                {"name": name, "task": None, "cron": None, "every": None, "tz": None, "catch_up": None,
                 "paused": st.paused, "last_slot": st.last_slot, "last_fired_at": st.last_fired_at,
                 "last_task_id": st.last_task_id, "next_slot": None}
            )  # fmt: skip
    return out


# -- tasks -----------------------------------------------------------------------------------------


def _number(query: Mapping[str, str], key: str) -> float | None:
    text = query.get(key)
    if text in (None, ""):
        return None
    try:
        value = float(text)
    except ValueError:
        raise BadRequest(f"{key} must be a number (seconds since the epoch), not {text!r}") from None
    if not math.isfinite(value):
        raise BadRequest(f"{key} must be a finite number, not {text!r}")
    return value


def _filters(query: Mapping[str, str]) -> dict[str, Any]:
    states = [s for s in (query.get("state") or "").split(",") if s]
    unknown = [s for s in states if s not in STATES]
    if unknown:
        raise BadRequest(f"unknown state {unknown[0]!r}; states are {', '.join(STATES)}")
    return {
        "states": states or None,
        "queue": query.get("queue") or None,
        "name": query.get("name") or None,
        "since": _number(query, "since"),
        "until": _number(query, "until"),
    }


def _summary(r: TaskRow) -> dict[str, Any]:
    return {
        "id": r.id,
        "name": r.name,
        "queue": r.queue,
        "state": r.state,
        "priority": r.priority,
        "attempts": r.attempts,
        "max_attempts": r.max_attempts,
        "enqueued_at": r.enqueued_at,
        "started_at": r.started_at,
        "finished_at": r.finished_at,
        "reason": r.reason,
        "parent_id": r.parent_id,
    }


def tasks(app: LiteQ, query: Mapping[str, str]) -> dict[str, Any]:
    """One page of the task list, newest first: ``{"tasks": [...], "next": cursor or None}``.

    Query keys: ``state`` (comma-separated), ``name``, ``queue``, ``since``/``until`` (enqueue
    time, epoch seconds), ``before`` (the ``next`` of the previous page), ``limit``.
    """
    try:
        limit = int(query.get("limit") or 50)
    except ValueError:
        raise BadRequest(f"limit must be an integer, not {query.get('limit')!r}") from None
    if not 1 <= limit <= PAGE_LIMIT:
        raise BadRequest(f"limit must be between 1 and {PAGE_LIMIT}, not {limit}")
    rows = app.storage.page(**_filters(query), before=query.get("before") or None, limit=limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    return {"tasks": [_summary(r) for r in rows], "next": rows[-1].id if more and rows else None}


def _decoded(app: LiteQ, data: bytes | None) -> Any:
    if data is None:
        return None
    try:
        return _jsonable(loads(data, allow_pickle=_allow_pickle(app)))
    except LiteQError as exc:
        return {"undecoded": str(exc)}


def _brief(app: LiteQ, ids: list[str]) -> list[dict[str, Any]]:
    return [_summary(r) for r in app.storage.get(ids) if r is not None]


def task(app: LiteQ, task_id: str, *, now: float | None = None) -> dict[str, Any]:
    """Everything about one task: decoded call, attempts with errors, result, timings, canvas links."""
    now = time.time() if now is None else now
    (row,) = app.storage.get([task_id], history=True)
    if row is None:
        raise NotFound(f"no task {task_id} (wrong id, or pruned after its result_ttl)")
    info = _summary(row)
    info.update(
        run_at=row.run_at,
        expires_at=row.expires_at,
        result_expires_at=row.result_expires_at,
        idempotency_key=row.idempotency_key,
        unique_key=row.unique_key,
        lock_key=row.lock_key,
        cancel_requested=row.cancel_requested,
        lease={"owner": row.lease_owner, "deadline": row.lease_deadline} if row.lease_owner else None,
        waited=(row.started_at - row.enqueued_at) if row.started_at else None,
        ran=((row.finished_at or now) - row.started_at) if row.started_at else None,
        total=(row.finished_at - row.enqueued_at) if row.finished_at else None,
        finished=row.state in FINISHED_STATES,
    )
    meta: dict[str, Any] = {}
    try:
        call = decode_call(row.payload or b"", allow_pickle=_allow_pickle(app))
        info["args"], info["kwargs"] = _jsonable(list(call.args)), _jsonable(call.kwargs)
        meta = call.meta
    except LiteQError as exc:
        info["args"] = info["kwargs"] = None
        info["undecoded"] = str(exc)
    info["result"] = _decoded(app, row.result) if row.state == "succeeded" else None
    progress = Progress.decode(row.progress)
    info["progress"] = dataclasses.asdict(progress) if progress else None
    attempts = [dataclasses.asdict(e) for e in (ErrorInfo.decode(b) for b in row.errors) if e is not None]
    last = ErrorInfo.decode(row.error)
    if last is not None and (not attempts or attempts[-1] != dataclasses.asdict(last)):
        attempts.append(dataclasses.asdict(last))
    info["errors"] = attempts
    info["error"] = dataclasses.asdict(last) if last else None
    parents = _brief(app, [row.parent_id]) if row.parent_id else []
    info["parent"] = parents[0] if parents else None
    info["children"] = [_summary(r) for r in app.storage.page(parent=row.id, limit=100)]
    chord = meta.get("chord") if isinstance(meta, dict) else None
    info["chord_members"] = _brief(app, app.storage.group_members(chord)) if isinstance(chord, str) else []
    return info


# -- actions ---------------------------------------------------------------------------------------


def task_action(app: LiteQ, task_id: str, action: str) -> dict[str, Any]:
    """``retry`` (a finished task) or ``cancel`` (a waiting or running one); returns the new state."""
    if action == "retry":
        (done,) = app.storage.retry([task_id])
        if not done:
            _must_exist(app, task_id)
            raise BadRequest(f"task {task_id} is not failed, cancelled or expired: nothing to retry")
    elif action == "cancel":
        (state,) = app.storage.cancel([task_id])
        if state is None:
            raise NotFound(f"no task {task_id}")
    else:
        raise BadRequest(f"unknown action {action!r}; use retry or cancel")
    (row,) = app.storage.get([task_id])
    return {"id": task_id, "state": row.state if row else None, "cancel_requested": bool(row and row.cancel_requested)}


def _must_exist(app: LiteQ, task_id: str) -> None:
    if app.storage.get([task_id])[0] is None:
        raise NotFound(f"no task {task_id}")


def purge(app: LiteQ, body: Mapping[str, Any]) -> dict[str, Any]:
    """Delete the tasks matching a filter (``state`` required; ``queue``, ``name``, ``since``, ``until``)."""
    query = {k: str(v) for k, v in body.items() if v not in (None, "")}
    filters = _filters(query)
    if not filters["states"]:
        raise BadRequest("purge needs at least one state (e.g. state=failed), so nothing is deleted by accident")
    if filters["name"] is None and filters["since"] is None and filters["until"] is None:
        return {"deleted": app.storage.purge(queue=filters["queue"], states=filters["states"])}
    deleted = 0
    while True:
        # The store's purge filters by queue and state; narrower filters select the ids page by page.
        ids = [r.id for r in app.storage.page(**filters, limit=PAGE_LIMIT)]
        if not ids:
            return {"deleted": deleted}
        removed = app.storage.purge(states=filters["states"], ids=ids)
        deleted += removed
        if removed == 0:
            return {"deleted": deleted}


def schedule_paused(app: LiteQ, name: str, paused: bool) -> dict[str, Any]:
    """Pause or resume a periodic schedule, in every pool."""
    try:
        if paused:
            app.pause_periodic(name)
        else:
            app.resume_periodic(name)
    except ConfigurationError as exc:
        raise NotFound(str(exc)) from None
    return {"name": name, "paused": paused}
