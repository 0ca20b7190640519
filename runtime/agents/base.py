"""An agent type: what it watches in a running graph and the value it wishes its param had.

The runner hosts the agents (``runtime.agents.host``). Every ``every`` seconds each agent gets a
``StatsView`` (the graph's stats now and at its previous look) and says its wish for the value
it drives (``wish``: a small, pure decision, unit tested on recorded traces). The guards
(``runtime.agents.guard``) decide whether and how far to move, and the host acts through the live
params, as a person would: the same checks, the same record in the state store.

A type declares its own ``params`` (``Param``s, as node types do: checked when the graph loads),
the param it drives when the YAML names none (``default_param``), and which direction is the safe
one to take at once (``fast``).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

from ..params import Param
from .guard import DOWN


class StatsView:
    """The graph's stats (``Runner.stats``) now and at the agent's previous look."""

    def __init__(self, now: Mapping[str, Any], before: Mapping[str, Any] | None, dt_s: float, at: float | None = None):
        self.now, self.before, self.dt_s = now, before, dt_s
        self.at = time.monotonic() if at is None else at

    def get(self, path: str, default: Any = None) -> Any:
        """A value by dotted path, e.g. ``nodes.sink.viewers.drops`` (``default`` if absent)."""
        return lookup(self.now, path, default)

    def rate(self, path: str) -> float | None:
        """Per second, of a counter at ``path``, since the previous look (None on the first look,
        or when the counter is absent or went back: the node restarted)."""
        if self.before is None or self.dt_s <= 0:
            return None
        a, b = lookup(self.before, path), lookup(self.now, path)
        if not _number(a) or not _number(b) or b < a:
            return None
        return (b - a) / self.dt_s

    def delta(self, path: str) -> float | None:
        """How much a counter grew since the previous look (None as for ``rate``)."""
        r = self.rate(path)
        return None if r is None else r * self.dt_s

    def node(self, name: str) -> Mapping[str, Any]:
        return self.now.get("nodes", {}).get(name) or {}


def lookup(doc: Any, path: str, default: Any = None) -> Any:
    for part in path.split("."):
        if isinstance(doc, Mapping) and part in doc:
            doc = doc[part]
        else:
            return default
    return doc


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@dataclass(frozen=True)
class Wish:
    """The value an agent wants its param to have, why, and the inputs it saw (all on the bus)."""

    value: float
    reason: str
    inputs: Mapping[str, Any]
    age_s: float = 0.0  # how old the data behind it is


class Agent:
    """Base of agent types: subclass, declare ``params``, implement ``wish``.

    A keyed agent (``keyed = True``: one decision per viewer, per session) drives one value per
    key of a param that is a table (``{key: value}``): ``keys`` names the keys to decide for at a
    look, ``current`` and ``wish`` get the key, and each key has its own guards' state, so one
    viewer's trouble never moves another's value."""

    doc: ClassVar[str] = ""
    params: ClassVar[dict[str, Param]] = {}
    default_param: ClassVar[str | None] = None  # the node param it drives when the YAML names none
    fast: ClassVar[str] = DOWN  # the direction applied at once; the other waits (guards' up_after_s)
    scale: ClassVar[tuple[int, int]] = (0, 1)  # its own steps, when the param it drives is not a number
    keyed: ClassVar[bool] = False
    every: ClassVar[float] = 1.0  # seconds between looks, unless the YAML says
    guard_defaults: ClassVar[dict[str, float]] = {}  # Guards fields this type sets unless the YAML does (up_after_s, ...)
    drives: ClassVar[tuple[str, ...]] = ()  # the node params it can drive (empty: any the YAML names)

    def __init__(self, name: str, node: str, param: str, params: Mapping[str, Any]):
        self.name, self.node, self.param = name, node, param
        self.p = dict(params)

    @classmethod
    def fast_for(cls, param: str | None) -> str:
        """The direction taken at once when driving ``param``: ``fast``, unless a type that drives
        several params says otherwise (lowering one param may be the safe move, raising another)."""
        return cls.fast

    def wish(self, view: StatsView, current: float, key: str | None = None) -> Wish | None:
        """The value wanted now for the driven param (for ``key``, if keyed), or None when the data
        it needs is missing."""
        raise NotImplementedError

    def keys(self, view: StatsView, node_params: Mapping[str, Any]) -> list[str]:
        """A keyed agent's keys to decide for at this look (the viewers connected now, ...)."""
        return []

    def current(self, node_params: Mapping[str, Any], key: str | None = None) -> float:
        """The driven value as the node holds it now."""
        if key is not None:
            return float((node_params.get(self.param) or {}).get(key, self.scale[0]))
        return float(node_params[self.param])

    def to_params(self, values: Mapping[str | None, float], node_params: Mapping[str, Any]) -> dict[str, Any]:
        """The live params that give the node ``values`` (key None: an unkeyed agent's one value; an
        int param gets an int; a keyed agent's keys are merged into the param's table)."""
        old = node_params.get(self.param)
        if None in values:
            value = values[None]
            return {self.param: int(round(value)) if isinstance(old, int) and not isinstance(old, bool) else value}
        table = dict(old or {})
        table.update({k: int(round(v)) for k, v in values.items()})
        return {self.param: table}
