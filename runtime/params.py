"""Typed, validated node params: declared on the node type, set from YAML, CLI or live."""
from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import yaml

from .errors import ParamError
from .states import PAUSED, PLAYING, READY, rank

INT_LIMIT = 2 ** 63  # ints are 64-bit signed on the wire (msgpack)
_TYPE_NAMES = {int: "int", float: "float", bool: "bool", str: "str", list: "list", dict: "dict"}


MUTABLE = (READY, PAUSED, PLAYING)


@dataclass(frozen=True)
class Param:
    """Declaration of one param: its type, default, allowed range or choices, and a doc line.

    ``check`` is the type's own rule for a value (a URL, a file name): it returns why a value is
    refused, or None; it runs wherever the range does (loading a graph, a live change, a swap).
    ``mutable`` is the highest state in which the param may still change, as GStreamer's
    mutable-in-READY / -PAUSED / -PLAYING flags: ``playing`` (the default) is a live param; a
    ``ready`` one is refused while the node runs, and changes by a hot-swap with the new value.
    ``tune`` declares a number param tunable, the range a tuner searches (``avatar tune``):
    ``True`` (min .. max), ``(lo, hi)`` or ``(lo, hi, "log")`` (searched on a log scale).
    ``per_session``: the param may also take its own value for one session (a node of many
    sessions then runs that session with it, the others with the node's value): the type gets a
    ``session_params`` param, ``{session: {param: value}}`` (``session_param``), which is set like
    any other (YAML, ``avatar set --session``, live) and is how a canary tries params on one
    session alone.
    """

    type: type
    default: Any
    doc: str = ""
    min: float | None = None
    max: float | None = None
    choices: tuple | None = None
    check: Callable[[Any], str | None] | None = None
    mutable: str = PLAYING
    tune: bool | tuple | None = None
    per_session: bool = False

    def __post_init__(self) -> None:
        if self.mutable not in MUTABLE:
            raise ValueError(f"Param.mutable must be one of {', '.join(MUTABLE)}, got {self.mutable!r}")
        if self.tune is not None and self.tune is not False:
            self.search  # noqa: B018 - raises ValueError for a bad declaration, when the type is defined

    @property
    def search(self) -> tuple[float, float, bool] | None:
        """The tuner's range (lo, hi, log scale) of a tunable param, None if not tunable."""
        if self.tune is None or self.tune is False:
            return None
        if self.type not in (int, float):
            raise ValueError(f"Param.tune: only int and float params are tunable, not {self.type_name}")
        if self.tune is True:
            if self.min is None or self.max is None:
                raise ValueError("Param.tune=True needs min and max (or give tune=(lo, hi))")
            lo, hi, scale = self.min, self.max, "linear"
        elif isinstance(self.tune, tuple) and len(self.tune) in (2, 3):
            lo, hi = self.tune[0], self.tune[1]
            scale = self.tune[2] if len(self.tune) == 3 else "linear"
        else:
            raise ValueError(f"Param.tune is True, (lo, hi) or (lo, hi, 'log'), got {self.tune!r}")
        if scale not in ("linear", "log"):
            raise ValueError(f"Param.tune's scale is 'linear' or 'log', got {scale!r}")
        if not (isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and lo < hi):
            raise ValueError(f"Param.tune needs numbers lo < hi, got {self.tune!r}")
        if (self.min is not None and lo < self.min) or (self.max is not None and hi > self.max):
            raise ValueError(f"Param.tune's range {lo} .. {hi} goes beyond the param's {self.range_text()}")
        if scale == "log" and lo <= 0:
            raise ValueError(f"Param.tune on a log scale needs lo > 0, got {lo}")
        return float(lo), float(hi), scale == "log"

    def tune_text(self) -> str:
        s = self.search
        if s is None:
            return ""
        fmt = (lambda v: str(int(v))) if self.type is int else (lambda v: f"{v:g}")
        return f"{fmt(s[0])} .. {fmt(s[1])}" + (" (log scale)" if s[2] else "")

    @property
    def type_name(self) -> str:
        return _TYPE_NAMES.get(self.type, self.type.__name__)

    def mutable_text(self) -> str:
        return {PLAYING: "live (may change while PLAYING)", PAUSED: "in PAUSED or READY only",
                READY: "in READY only (swap the node to change it)"}[self.mutable]

    def range_text(self) -> str:
        if self.choices is not None:
            return "one of " + ", ".join(map(str, self.choices))
        if self.min is not None or self.max is not None:
            lo = "-inf" if self.min is None else self.min
            hi = "inf" if self.max is None else self.max
            return f"{lo} .. {hi}"
        return ""

    def coerce(self, name: str, value: Any) -> Any:
        """Return the value as this param's type, or raise ParamError saying what is allowed."""
        t = self.type
        ok = isinstance(value, t) and not (t is not bool and isinstance(value, bool))
        if isinstance(value, int) and not isinstance(value, bool) and not -INT_LIMIT <= value < INT_LIMIT:
            # nor would it fit a float's precision, nor msgpack (live changes): refuse it before any
            # message shows its repr (beyond 4300 digits even that is a ValueError)
            raise ParamError(f"param '{name}' must be {self.type_name}"
                             f"{' in ' + self.range_text() if self.range_text() else ''}, got an int beyond 64 bits")
        if t is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if not ok:
            raise ParamError(
                f"param '{name}' must be {self.type_name}, got {type(value).__name__} {value!r}"
            )
        if isinstance(value, float) and not math.isfinite(value):
            # NaN compares False with everything: it would pass every min/max check below
            if math.isnan(value):
                raise ParamError(f"param '{name}' must be a number, got nan")
            if self.min is not None or self.max is not None:  # a range means a finite number in it
                raise ParamError(f"param '{name}' must be a finite number in {self.range_text()}, got {value!r}")
        if self.choices is not None and value not in self.choices:
            raise ParamError(f"param '{name}' must be {self.range_text()}, got {value!r}")
        if (self.min is not None and value < self.min) or (self.max is not None and value > self.max):
            raise ParamError(f"param '{name}' must be in {self.range_text()}, got {value!r}")
        if self.check is not None:
            why = self.check(value)
            if why:
                raise ParamError(f"param '{name}': {why}")
        return value

    def refused_in(self, name: str, state: str) -> str | None:
        """Why this param may not change now that the node is in ``state``, or None."""
        if state not in MUTABLE or rank(state) <= rank(self.mutable):
            return None
        return (f"param '{name}' can only change in {self.mutable} or below, and the node is {state}: "
                f"swap the node with the new value instead (avatar swap ... {name}=...)")


SESSION_PARAMS = "session_params"  # the param a type with per-session params gets (Param.per_session)


def session_param(declared: Mapping[str, Param]) -> Param | None:
    """The ``session_params`` param for a type declaring these params (None: none is per-session).

    Its value maps a session to its own values of per-session params, each checked as the param
    itself is (type, range, own check)."""
    names = sorted(n for n, p in declared.items() if p.per_session)
    if not names:
        return None

    def check(value: Any) -> str | None:
        for session, own in value.items():
            if not isinstance(own, dict):
                return f"session '{shown_text(str(session))}': a mapping of param -> value, got {type(own).__name__}"
            for name, v in own.items():
                if name not in names:
                    return (f"session '{shown_text(str(session))}': '{shown_text(str(name))}' cannot be set per "
                            f"session (these can: {', '.join(names)})")
                try:
                    declared[name].coerce(name, v)
                except ParamError as exc:
                    return f"session '{shown_text(str(session))}': {exc}"
        return None

    return Param(dict, {}, f"per-session values, {{session: {{param: value}}}}, of {', '.join(names)}: a session "
                           "not named runs with the node's own", check=check)


def merge_session(current: Mapping[str, Any], session: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """``session_params`` with one session's values set (a None value gives that param back to the
    node's own; a session left with none is dropped)."""
    out = {s: dict(v) for s, v in current.items()}
    own = out.setdefault(session, {})
    for name, value in values.items():
        if value is None:
            own.pop(name, None)
        else:
            own[name] = value
    if not own:
        del out[session]
    return out


def parse_value(text: str) -> Any:
    """Parse a command-line value the way YAML would (``60`` is an int, ``true`` a bool)."""
    try:
        return yaml.safe_load(text) if text != "" else ""
    except (yaml.YAMLError, RecursionError):  # RecursionError: nested too deeply for PyYAML
        return text


def check_params(declared: Mapping[str, Param], given: Mapping[str, Any], *, fill_defaults: bool = True,
                 state: str | None = None) -> dict[str, Any]:
    """Validate given params against the declaration; every problem is reported at once.

    ``state``: a live change to a node in that state, which refuses params not mutable in it."""
    problems: list[str] = []
    out: dict[str, Any] = {k: p.default for k, p in declared.items()} if fill_defaults else {}
    for name, value in given.items():
        if not isinstance(name, str):
            problems.append(f"a param name is a string, got {type(name).__name__} {name!r}")
            continue
        spec = declared.get(name)
        if spec is None:
            allowed = ", ".join(sorted(declared)) or "none"
            close = difflib.get_close_matches(name, list(declared), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            problems.append(f"unknown param '{name}'{hint}; allowed params: {allowed}")
            continue
        try:
            out[name] = spec.coerce(name, value)
        except ParamError as exc:
            problems.append(str(exc))
            continue
        why = spec.refused_in(name, state) if state is not None else None
        if why:
            problems.append(why)
    if problems:
        raise ParamError("; ".join(problems))
    return out


class ParamValues:
    """Attribute access to a node's current params (``self.p.rate``)."""

    def __init__(self, values: Mapping[str, Any]):
        self.__dict__.update(values)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def __repr__(self) -> str:
        return f"ParamValues({self.__dict__!r})"


# --- what can travel to a node process ------------------------------------------------------
# Live changes reach a node as msgpack, a new process's spec as JSON: Param.coerce checks a
# value's type and range, these check that every part of it can make that trip.
MAX_PARAM_DEPTH = 100  # lists and mappings nested deeper than this are refused (see wire_problem)
_INT_MIN, _INT_MAX = -INT_LIMIT, INT_LIMIT - 1  # int64, as for an int param (Param.coerce)


def shown_text(text: str, limit: int = 40) -> str:
    """A user-given string for a message: lone surrogates escaped, cut to ``limit`` characters."""
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= limit else text[:limit] + "..."


def wire_problem(value: Any) -> str | None:
    """Why a param value cannot be sent to a node process, or None if it can.

    Params travel to node processes as msgpack (live changes) and JSON (a new process's spec),
    and come back in replies: only None, bool, int (int64: -2**63 .. 2**63-1, as an int param), float, str
    (valid UTF-8: no lone surrogates), bytes, lists and string-keyed mappings, nested at most
    ``MAX_PARAM_DEPTH`` deep. Walked without recursion, so a value nested thousands deep is
    refused with a message, not a RecursionError.
    """
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        v, depth = stack.pop()
        if v is None or isinstance(v, (bool, float, bytes)):
            continue
        if isinstance(v, int):
            if not _INT_MIN <= v <= _INT_MAX:
                return f"an integer beyond 64 bits ({v.bit_length()} bits; the range is -2**63 .. 2**63-1)"
        elif isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                return f"a string that is not valid UTF-8 (a lone surrogate): '{shown_text(v)}'"
        elif isinstance(v, (list, tuple, dict)):
            if depth >= MAX_PARAM_DEPTH:
                return f"lists or mappings nested more than {MAX_PARAM_DEPTH} deep"
            if isinstance(v, dict):
                for k, item in v.items():
                    if not isinstance(k, str):
                        return f"a mapping key that is not a string ({type(k).__name__})"
                    stack.append((k, depth + 1))
                    stack.append((item, depth + 1))
            else:
                stack.extend((item, depth + 1) for item in v)
        else:
            return f"a value of type '{type(v).__name__}'"
    return None


def check_wire(params: Mapping[str, Any]) -> None:
    """Raise ParamError naming the first param whose name or value cannot be sent to a node."""
    for name, value in params.items():
        if not isinstance(name, str):
            raise ParamError(f"param names must be strings, got {type(name).__name__}")
        why = wire_problem(name) or wire_problem(value)
        if why is not None:
            raise ParamError(f"param '{shown_text(name)}': {why}: it cannot be sent to the node process")
