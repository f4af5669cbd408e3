"""``TaskOptions``: a task's options, checked once when the task is declared."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from .exceptions import ConfigurationError
from .inputs import seconds
from .ratelimit import check_rate, parse_rate
from .retries import DEFAULT_BACKOFF, DEFAULT_BACKOFF_MAX

__all__ = ["DEFAULT_LOST_RETRIES", "TaskOptions"]

#: Extra runs a task gets, beyond its ``retries``, when its worker dies under it (crash, OOM kill).
DEFAULT_LOST_RETRIES = 2


def _positive(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or not math.isfinite(value):
        raise ConfigurationError(f"{what} must be a positive, finite number, not {value!r}")
    return check_rate(float(value), what)


def _int(value: Any, what: str, low: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or (low is not None and value < low):
        bound = f" >= {low}" if low is not None else ""
        raise ConfigurationError(f"{what} must be an integer{bound}, not {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class TaskOptions:
    """A task's options, checked when the task is declared. Durations are float seconds."""

    queue: str
    priority: int = 0
    retries: int = 0
    retry_backoff: float = DEFAULT_BACKOFF
    retry_backoff_max: float = DEFAULT_BACKOFF_MAX
    retry_jitter: bool = True
    timeout: float | None = None
    soft_timeout: float | None = None
    expires: float | None = None
    result_ttl: float | None = None
    ignore_result: bool = False
    max_attempts: int | None = None
    unique: bool | Callable[..., Any] = False
    """True: one waiting copy per (name, arguments); a function of the arguments: one per key."""
    lock: str | bool | None = None
    """True: one run of this task at a time; a template (``"report-{0}"``, ``"user-{user_id}"``)
    formatted with the arguments names the lock, shared by any task using the same key."""
    rate_limit: float | None = None
    """Starts per second across every worker of the store (given as ``"100/m"``)."""

    @classmethod
    def build(cls, queue: str, **opts: Any) -> TaskOptions:
        """Check and normalise user options; raises :class:`ConfigurationError` naming the bad one."""
        if not isinstance(queue, str) or not queue:
            raise ConfigurationError(f"queue must be a non-empty string, not {queue!r}")
        out: dict[str, Any] = {"queue": queue}
        for key, value in opts.items():
            if value is None:
                continue
            if key in ("priority",):
                out[key] = _int(value, key)
            elif key == "retries":
                out[key] = _int(value, key, 0)
            elif key == "max_attempts":
                out[key] = _int(value, key, 1)
            elif key in ("retry_backoff", "retry_backoff_max", "timeout", "soft_timeout", "expires", "result_ttl"):
                if key == "retry_backoff" and isinstance(value, bool):
                    value = DEFAULT_BACKOFF if value else 0.0
                out[key] = seconds(value, key)
            elif key in ("retry_jitter", "ignore_result"):
                out[key] = bool(value)
            elif key == "unique":
                if not (isinstance(value, bool) or callable(value)):
                    raise ConfigurationError(f"unique must be True/False or a function of the arguments, not {value!r}")
                out[key] = value
            elif key == "lock":
                if not isinstance(value, (bool, str)) or value == "":
                    raise ConfigurationError(f"lock must be True or a key template such as 'user-{{0}}', not {value!r}")
                out[key] = value
            elif key == "rate_limit":
                out[key] = parse_rate(value) if isinstance(value, str) else _positive(value, key)
            else:
                raise ConfigurationError(f"unknown task option {key!r}")
        o = cls(**out)
        if o.timeout is not None and o.timeout <= 0:
            raise ConfigurationError(f"timeout must be > 0 seconds, not {o.timeout}")
        if o.soft_timeout is not None and o.timeout is not None and o.soft_timeout >= o.timeout:
            raise ConfigurationError(
                f"soft_timeout ({o.soft_timeout}s) must be shorter than timeout ({o.timeout}s) to run first"
            )
        return o

    def as_dict(self) -> dict[str, Any]:
        """The options as keyword arguments of :meth:`build` (``queue`` included)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def attempts_for(self, retries: int | None = None) -> int:
        """The stored attempt cap: explicit ``max_attempts``, else retries + 1 + lost-worker allowance."""
        if self.max_attempts is not None:
            return self.max_attempts
        return (self.retries if retries is None else retries) + 1 + DEFAULT_LOST_RETRIES
