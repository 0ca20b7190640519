"""The graph's ``agents:`` section: parsed with the graph, checked with the node types.

    agents:
      keyframes:                  # the agent's name (bus messages and stats use it)
        type: compression         # an agent type (avatar inspect lists them)
        node: compressor          # the node it drives ...
        param: keyframe_interval  # ... and the live param (default: the type's own)
        every: 1.0                # seconds between looks (default: the type's, most 1 s)
        min: 30                   # bounds (default: the param's declared range)
        max: 240
        band: 0                   # hysteresis: a wish this close to the value changes nothing
        dwell: 5                  # seconds between changes in the slow direction
        max_step: 60              # the most one change moves it
        max_per_min: 6            # changes a minute, at most
        fast: down                # the direction taken at once (default: the type's)
        up_after: 10              # seconds a wish in the slow direction must hold first
        stale: 5                  # hold when the data is older than this
        params: {...}             # the type's own settings

The guards' meaning: ``runtime.agents.guard``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from ..errors import NodeTypeError, ParamError
from ..params import MUTABLE, check_params
from ..states import PLAYING
from .base import Agent
from .guard import DOWN, UP, Guards
from .registry import get_agent_type

GUARD_KEYS = {"min": "min", "max": "max", "band": "band", "dwell": "dwell_s", "max_step": "max_step",
              "max_per_min": "max_per_min", "up_after": "up_after_s", "stale": "stale_s"}
AGENT_KEYS = ("type", "node", "param", "every", "fast", "params", *GUARD_KEYS)


@dataclass
class AgentSpec:
    name: str
    type: str
    node: str
    param: str | None = None
    every: float | None = None  # seconds between looks; None: the agent type's
    fast: str | None = None  # the direction taken at once; None: the agent type's
    guards: dict[str, float] = field(default_factory=dict)  # as given in the YAML (Guards' field names)
    params: dict[str, Any] = field(default_factory=dict)
    line: int | None = None

    def to_dict(self) -> dict[str, Any]:
        inv = {v: k for k, v in GUARD_KEYS.items()}
        out: dict[str, Any] = {"type": self.type, "node": self.node}
        if self.param:
            out["param"] = self.param
        if self.every is not None:
            out["every"] = self.every
        if self.fast:
            out["fast"] = self.fast
        out.update({inv[k]: v for k, v in self.guards.items()})
        if self.params:
            out["params"] = dict(self.params)
        return out


def parse_agents(raw: Any, p: Callable[..., None], line: Callable[..., int | None],
                 where: int | None = None) -> dict[str, AgentSpec]:
    """The ``agents:`` mapping (at line ``where``); structure problems go to ``p(message, line)``."""
    agents: dict[str, AgentSpec] = {}
    if raw is None:
        return agents
    if not isinstance(raw, Mapping):
        p("'agents' must be a mapping of agent name -> {type, node, param, ...}", where)
        return agents
    for name, spec in raw.items():
        aline = line(raw, name)
        if not isinstance(name, str) or not name.replace("_", "a").replace("-", "a").isalnum():
            p(f"bad agent name {name!r}: use letters, digits, '_' and '-'", aline)
            continue
        if not isinstance(spec, Mapping) or not isinstance(spec.get("type"), str) or not isinstance(spec.get("node"), str):
            p(f"agent '{name}' needs a 'type' (an agent type) and a 'node' (the node it drives)", aline)
            continue
        for key in spec:
            if key not in AGENT_KEYS:
                p(f"agent '{name}': unknown key '{key}' (allowed: {', '.join(AGENT_KEYS)})", line(spec, key))
        guards: dict[str, float] = {}
        for key, attr in GUARD_KEYS.items():
            if key in spec:
                value = spec[key]
                if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value) or (
                        key not in ("min", "max") and value < 0):
                    p(f"agent '{name}': '{key}' must be a number{'' if key in ('min', 'max') else ' >= 0'}, "
                      f"got {value!r}", line(spec, key))
                else:
                    guards[attr] = float(value)
        every = spec.get("every")
        if every is not None and (not isinstance(every, (int, float)) or isinstance(every, bool)
                                  or not 0.05 <= every <= 3600):
            p(f"agent '{name}': 'every' must be seconds from 0.05 to 3600, got {every!r}", line(spec, "every"))
            every = None
        params = spec.get("params") or {}
        if not isinstance(params, Mapping):
            p(f"agent '{name}': 'params' must be a mapping of param name -> value", line(spec, "params"))
            params = {}
        param = spec.get("param")
        if param is not None and not isinstance(param, str):
            p(f"agent '{name}': 'param' must be a param name of node '{spec['node']}', got {param!r}", line(spec, "param"))
            param = None
        fast = spec.get("fast")
        if fast is not None and fast not in (DOWN, UP):
            p(f"agent '{name}': 'fast' must be '{DOWN}' or '{UP}' (the direction taken at once), got {fast!r}",
              line(spec, "fast"))
            fast = None
        agents[name] = AgentSpec(name, spec["type"], spec["node"], param, None if every is None else float(every), fast,
                                 guards, dict(params), aline)
    return agents


def check_agent(spec: AgentSpec, node_types: Mapping[str, Any]) -> list[str]:
    """Problems with one agent against the graph's node types (empty: it can run). Fills in the
    driven param's name and the agent type's params' defaults."""
    where = f"agent '{spec.name}' ({spec.type})"
    try:
        cls = get_agent_type(spec.type)
    except NodeTypeError as exc:
        return [f"agent '{spec.name}': {exc}"]
    problems: list[str] = []
    if spec.every is None:
        spec.every = cls.every
    try:
        spec.params = check_params(cls.params, spec.params)
    except ParamError as exc:
        problems.append(f"{where}: {exc}")
    ntype = node_types.get(spec.node)
    if ntype is None:
        return problems + [f"{where}: no node '{spec.node}' in the graph (nodes: {', '.join(node_types)})"]
    spec.param = spec.param or cls.default_param
    if spec.param is None:
        return problems + [f"{where}: name the 'param' of node '{spec.node}' it drives"]
    if cls.drives and spec.param not in cls.drives:
        return problems + [f"{where}: drives {' or '.join(repr(d) for d in cls.drives)}, not '{spec.param}'"]
    decl = ntype.params.get(spec.param)
    if decl is None:
        return problems + [f"{where}: node '{spec.node}' has no param '{spec.param}' "
                           f"(its params: {', '.join(sorted(ntype.params))})"]
    if MUTABLE.index(decl.mutable) < MUTABLE.index(PLAYING):
        problems.append(f"{where}: param '{spec.param}' of node '{spec.node}' cannot change while the graph plays")
    numeric = decl.type in (int, float)
    if not numeric and cls.current is Agent.current and not cls.keyed:
        problems.append(f"{where}: param '{spec.param}' of node '{spec.node}' is a {decl.type_name}; "
                        f"this agent type drives a number")
    if numeric:
        lo = spec.guards.get("min", decl.min if decl.min is not None else -math.inf)
        hi = spec.guards.get("max", decl.max if decl.max is not None else math.inf)
        if not (math.isfinite(lo) and math.isfinite(hi)):
            problems.append(f"{where}: give 'min' and 'max' (param '{spec.param}' of node '{spec.node}' declares no range)")
        elif lo > hi:
            problems.append(f"{where}: min {lo:g} is above max {hi:g}")
        elif (decl.min is not None and lo < decl.min) or (decl.max is not None and hi > decl.max):
            problems.append(f"{where}: bounds {lo:g} .. {hi:g} go beyond param '{spec.param}''s range {decl.range_text()}")
    return problems


def guards_for(spec: AgentSpec, decl: Any, cls: Any) -> Guards:
    """The agent's guards: the YAML's, bounded by the param's declared range where it gives none.
    A param that is not a number (a per-session table) is driven on the agent type's own scale."""
    g = {**cls.guard_defaults, **spec.guards}
    if decl.type in (int, float):
        g.setdefault("min", decl.min if decl.min is not None else -math.inf)
        g.setdefault("max", decl.max if decl.max is not None else math.inf)
        integer = decl.type is int
    else:
        g.setdefault("min", cls.scale[0])
        g.setdefault("max", cls.scale[1])
        integer = True
    return Guards(fast=spec.fast or cls.fast_for(spec.param), integer=integer, **g)
