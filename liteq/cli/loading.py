"""How a command finds what it works on: an app (``module:attribute``) or a store path/URL, and the
option types that check durations and sizes before anything is stored."""

from __future__ import annotations

import importlib
import math
import os
import re
import sys
from collections.abc import Sequence
from typing import Any

import click

from ..app import LiteQ
from ..exceptions import ConfigurationError
from ..inputs import check_duration
from ..storage.sqlite import DB_FILENAME

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_UNITS = {
    "": 1,
    "b": 1,
    "k": 1e3,
    "kb": 1e3,
    "kib": 2**10,
    "m": 1e6,
    "mb": 1e6,
    "mib": 2**20,
    "g": 1e9,
    "gb": 1e9,
    "gib": 2**30,
}


class Seconds(click.ParamType):  # type: ignore[type-arg,unused-ignore]
    """A duration flag: a finite number of seconds in [0, ten years] (NaN, inf and negatives are
    refused as usage errors naming the flag, before anything is stored)."""

    name = "seconds"

    def __init__(self, *, positive: bool = False) -> None:
        self.positive = positive

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        """Parse and check one value; a bad one fails with the flag's name and what to pass."""
        if isinstance(value, float):
            number: Any = value
        else:
            try:
                number = float(value)
            except (TypeError, ValueError):
                self.fail(f"{value!r} is not a number of seconds", param, ctx)
        try:
            return check_duration(number, param.opts[0] if param is not None else "value", positive=self.positive)
        except ConfigurationError as exc:
            self.fail(str(exc), param, ctx)


def load_app(target: str, *, must_exist: bool = False, include: Sequence[str] = ()) -> LiteQ:
    """Open ``module:attribute`` (an app) or a store path/URL as a :class:`LiteQ`.

    ``include`` names modules the app may import to find tasks (see ``LiteQ(include=...)``).
    """
    if ":" in target and "://" not in target and not os.path.exists(target):
        module_name, _, attr = target.partition(":")
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ConfigurationError(f"cannot import {module_name!r} from {target!r}: {exc}") from exc
        app = getattr(module, attr, None)
        if not isinstance(app, LiteQ):
            raise ConfigurationError(f"{target!r}: {module_name}.{attr} is not a LiteQ app")
        if include:
            app.include_modules(include)
        return app
    if must_exist and "://" not in target and not os.path.exists(os.path.join(target, DB_FILENAME)):
        raise ConfigurationError(f"no liteq store at {target!r}: expected {os.path.join(target, DB_FILENAME)}")
    if include and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    return LiteQ(target, include=include)


def connected(app: LiteQ, url: str) -> LiteQ:
    """The same tasks as ``app``, served from the cluster store at ``url``."""
    remote = LiteQ(url, include=app.include)
    for name, task in app.tasks.items():
        remote.task(name=name, **task.options.as_dict())(task.fn)
    return remote


def parse_size(text: str | None) -> int | None:
    """``"200MB"``, ``"1.5GiB"``, ``"500000"`` → bytes."""
    if text is None:
        return None
    m = _SIZE.match(text)
    if not m or (m.group(2) or "").lower() not in _UNITS:
        raise click.BadParameter(f"{text!r} is not a size; use e.g. 500MB, 2GiB or a number of bytes")
    size = float(m.group(1)) * _UNITS[(m.group(2) or "").lower()]
    if not math.isfinite(size) or size < 1:
        raise click.BadParameter(f"{text!r} is not a usable size; use e.g. 500MB, 2GiB or a number of bytes")
    return int(size)
