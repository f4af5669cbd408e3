"""How the CLI shows things: aligned tables, times and ages, short errors, task rows as JSON, and
progress on long operations."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import click

from ..exceptions import LiteQError
from ..message import ErrorInfo, Progress
from ..serializer import loads
from ..storage.records import TaskRow


def when(ts: float | None) -> str:
    """A timestamp as UTC date and time, ``-`` for none."""
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def age(ts: float | None, now: float) -> str:
    """How long before ``now`` a timestamp was, in its largest unit (``3.5h``), ``-`` for none."""
    if ts is None:
        return "-"
    s = max(now - ts, 0.0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s / size:.1f}{unit}"
    return f"{s:.1f}s"


def short_error(row: TaskRow) -> str:
    """A task's last error on one line of at most 60 characters (its reason if it has none)."""
    info = ErrorInfo.decode(row.error)
    if info is None:
        return row.reason or ""
    text = f"{info.type.rsplit('.', 1)[-1]}: {info.message}".replace("\n", " ")
    return text if len(text) <= 60 else text[:57] + "..."


def table(header: list[str], rows: list[list[str]]) -> None:
    """Print rows under a header in left-aligned columns."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]
    for row in [header, *rows]:
        click.echo("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=False)).rstrip())


def progress(items: Sequence[str], label: str) -> Iterator[str]:
    """A progress bar on a terminal, plain lines otherwise."""
    if sys.stderr.isatty():
        with click.progressbar(items, label=label, file=sys.stderr) as bar:
            yield from bar
    else:
        total = len(items)
        for i, item in enumerate(items, 1):
            if i == total or i % 1000 == 0:
                click.echo(f"{label}: {i}/{total}", err=True)
            yield item


def _decode(data: bytes | None) -> Any:
    if data is None:
        return None
    try:
        return loads(data, allow_pickle=False)
    except LiteQError as exc:
        return f"<undecodable: {exc}>"


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=repr))


def row_dict(row: TaskRow, full: bool = False) -> dict[str, Any]:
    """A task row as JSON-ready values; ``full`` adds decoded arguments, result, progress, errors."""
    out = {
        k: v
        for k, v in dataclasses.asdict(row).items()
        if k not in ("payload", "result", "error", "progress", "errors")
    }
    if full:
        call = _decode(row.payload)
        out["args"] = _jsonable(call.get("a")) if isinstance(call, dict) else call
        out["kwargs"] = _jsonable(call.get("k")) if isinstance(call, dict) else None
        out["result"] = _jsonable(_decode(row.result))
        out["progress"] = dataclasses.asdict(p) if (p := Progress.decode(row.progress)) else None
        out["errors"] = [dataclasses.asdict(e) for e in (ErrorInfo.decode(b) for b in row.errors) if e is not None]
        last = ErrorInfo.decode(row.error)
        out["error"] = dataclasses.asdict(last) if last else None
    return out
