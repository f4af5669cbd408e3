"""Task options: one list (:data:`OPTIONS`) from which everything that takes them is built.

``@app.task(...)`` and :class:`TaskOptions` take the *declared* options, ``Task.apply_async(...)``
and ``Signature.set(...)`` the *per-call* ones, and the producer copies each *stored* option into
the task's row, the call's value over the task's. Adding an option, or letting a call override a
declared one, is one edit here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .exceptions import ConfigurationError
from .inputs import seconds
from .ratelimit import check_rate, parse_rate
from .retries import DEFAULT_BACKOFF, DEFAULT_BACKOFF_MAX

__all__ = [
    "DECLARED",
    "DEFAULT_LOST_RETRIES",
    "OPTIONS",
    "PER_CALL",
    "STORED",
    "Option",
    "TaskOptions",
    "check_call_options",
    "options_doc",
]

#: Extra runs a task gets, beyond its ``retries``, when its worker dies under it (crash, OOM kill).
DEFAULT_LOST_RETRIES = 2


def _int(value: Any, what: str, low: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or (low is not None and value < low):
        bound = f" >= {low}" if low is not None else ""
        raise ConfigurationError(f"{what} must be an integer{bound}, not {value!r}")
    return value


def _count(value: Any, what: str) -> int:
    return _int(value, what, 0)


def _attempts(value: Any, what: str) -> int:
    return _int(value, what, 1)


def _queue(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigurationError(f"{what} must be a non-empty string, not {value!r}")
    return value


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise ConfigurationError(f"{what} must be a string, not {value!r}")
    return value


def _duration(value: Any, what: str) -> float:
    found = seconds(value, what)
    assert found is not None
    return found


def _backoff(value: Any, what: str) -> float:
    if isinstance(value, bool):
        return DEFAULT_BACKOFF if value else 0.0
    return _duration(value, what)


def _flag(value: Any, what: str) -> bool:
    return bool(value)


def _unique(value: Any, what: str) -> bool | Callable[..., Any]:
    if not (isinstance(value, bool) or callable(value)):
        raise ConfigurationError(f"{what} must be True/False or a function of the arguments, not {value!r}")
    return value  # type: ignore[no-any-return]


def _lock(value: Any, what: str) -> str | bool:
    if not isinstance(value, (bool, str)) or value == "":
        raise ConfigurationError(f"{what} must be True or a key template such as 'user-{{0}}', not {value!r}")
    return value


def _rate(value: Any, what: str) -> float:
    if isinstance(value, str):
        return parse_rate(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or not math.isfinite(value):
        raise ConfigurationError(f"{what} must be a positive, finite number, not {value!r}")
    return check_rate(float(value), what)


@dataclass(frozen=True)
class Option:
    """One task option.

    ``check`` turns a given value into the stored form (raising :class:`ConfigurationError` that
    names the option); ``None`` means the producer reads it itself (``countdown``, ``eta``,
    ``expires``, ``task_id``, ``retries``). ``declared``: taken by ``@app.task`` and kept in
    :class:`TaskOptions` (``default`` when not given). ``per_call``: taken by ``apply_async`` and
    ``Signature.set``. ``stored``: copied into the task's row, the call's value over the task's.
    """

    name: str
    doc: str
    check: Callable[[Any, str], Any] | None = None
    default: Any = None
    declared: bool = True
    per_call: bool = False
    stored: bool = False


OPTIONS: tuple[Option, ...] = (
    Option("queue", "the queue it waits in", _queue, None, per_call=True, stored=True),
    Option("priority", "higher runs first", _int, 0, per_call=True, stored=True),
    Option("retries", "re-runs after an exception", _count, 0, per_call=True),
    Option("retry_backoff", "first retry delay, doubling (True: the default)", _backoff, DEFAULT_BACKOFF),
    Option("retry_backoff_max", "the longest retry delay", _duration, DEFAULT_BACKOFF_MAX),
    Option("retry_jitter", "randomise retry delays", _flag, True),
    Option("timeout", "hard limit in seconds; the pool kills the run", _duration, per_call=True, stored=True),
    Option("soft_timeout", "raises SoftTimeLimit inside the task", _duration, stored=True),
    Option("expires", "seconds after enqueue (or an aware datetime) it may still start", _duration, per_call=True),
    Option("result_ttl", "seconds its result is kept", _duration, per_call=True, stored=True),
    Option("ignore_result", "store no result", _flag, False),
    Option(
        "max_attempts",
        "cap on runs of any kind, including ones whose worker died (default retries + 3)",
        _attempts,
    ),
    Option("unique", "True, or a key function of the arguments: while a copy waits, send returns it", _unique, False),
    Option("lock", "True, or a key template: one run at a time across all pools", _lock),
    Option("rate_limit", '"100/m": starts across all pools; early tasks wait', _rate, stored=True),
    Option("countdown", "seconds to wait before it may start", declared=False, per_call=True),
    Option("eta", "a timezone-aware datetime before which it does not start", declared=False, per_call=True),
    Option(
        "idempotency_key",
        "retried sends with one key create one task",
        _text,
        declared=False,
        per_call=True,
        stored=True,
    ),
    Option("task_id", "the id to store it under", declared=False, per_call=True),
)

#: Options ``@app.task`` takes, by name.
DECLARED = {o.name: o for o in OPTIONS if o.declared}
#: Options a call (``apply_async``, ``Signature.set``) takes, by name.
PER_CALL = {o.name: o for o in OPTIONS if o.per_call}
#: Options copied into the stored row, by name.
STORED = {o.name: o for o in OPTIONS if o.stored}


def options_doc(options: Iterable[Option]) -> str:
    """``name`` (what it does), one per line: the options part of a docstring."""
    return "\n".join(f"- ``{o.name}``: {o.doc}" for o in options)


def check_call_options(options: dict[str, Any]) -> None:
    """Raise :class:`ConfigurationError` for a call option that is not in :data:`PER_CALL`."""
    unknown = sorted(set(options) - set(PER_CALL))
    if unknown:
        raise ConfigurationError(f"unknown call option {unknown[0]!r}; a call takes {', '.join(PER_CALL)}")


class TaskOptions:
    """A task's declared options, checked once when it is declared. Durations are float seconds.

    One attribute per declared option of :data:`OPTIONS`; immutable.
    """

    __slots__ = tuple(DECLARED)

    def __init__(self, **values: Any) -> None:
        for name, option in DECLARED.items():
            object.__setattr__(self, name, values.get(name, option.default))

    def __getattr__(self, name: str) -> Any:  # only reached for a name that is not an option
        raise AttributeError(f"{name!r} is not a task option")

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("TaskOptions are immutable")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TaskOptions) and self.as_dict() == other.as_dict()

    def __hash__(self) -> int:
        return hash(tuple(self.as_dict().items()))

    def __repr__(self) -> str:
        return "TaskOptions(" + ", ".join(f"{k}={v!r}" for k, v in self.as_dict().items()) + ")"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_options_from, (self.as_dict(),))

    @classmethod
    def build(cls, queue: str, **opts: Any) -> TaskOptions:
        """Check and normalise user options; raises :class:`ConfigurationError` naming the bad one."""
        out: dict[str, Any] = {"queue": _queue(queue, "queue")}
        for key, value in opts.items():
            if value is None:
                continue
            option = DECLARED.get(key)
            if option is None:
                raise ConfigurationError(f"unknown task option {key!r}")
            assert option.check is not None
            out[key] = option.check(value, key)
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
        return {name: getattr(self, name) for name in DECLARED}

    def attempts_for(self, retries: int | None = None) -> int:
        """The stored attempt cap: explicit ``max_attempts``, else retries + 1 + lost-worker allowance."""
        if self.max_attempts is not None:
            return int(self.max_attempts)
        return int(self.retries if retries is None else retries) + 1 + DEFAULT_LOST_RETRIES


def _options_from(values: dict[str, Any]) -> TaskOptions:
    return TaskOptions(**values)
