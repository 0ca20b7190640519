"""The params a graph lets a tuner search: what its node types declare with ``Param(..., tune=...)``.

A user's own node type is tunable the same way: declare the range on its Param.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from runtime.graph import load_graph
from runtime.registry import get_node_type


@dataclass(frozen=True)
class Knob:
    """One tunable param of one node: its range, scale, type and the graph's current value."""

    node: str
    param: str
    lo: float
    hi: float
    log: bool
    is_int: bool
    current: Any

    @property
    def key(self) -> str:
        return f"{self.node}.{self.param}"

    def describe(self) -> str:
        return f"{self.key} = {self.current!r} (searched {self.lo:g} .. {self.hi:g}{', log scale' if self.log else ''})"


def knobs(path: str, overrides: dict[str, str] | None = None, only: list[str] | None = None) -> list[Knob]:
    """Every tunable param of the graph's nodes (``only``: NODE or NODE.PARAM items to keep)."""
    graph = load_graph(path, dict(overrides or {}))
    out = []
    for name, spec in graph.nodes.items():
        cls = get_node_type(spec.type)
        for pname, p in cls.params.items():
            s = p.search
            if s is None:
                continue
            if only and name not in only and f"{name}.{pname}" not in only:
                continue
            current = p.coerce(pname, spec.params[pname]) if pname in spec.params else p.default
            out.append(Knob(name, pname, s[0], s[1], s[2], p.type is int, current))
    if only:
        known = {k.key for k in out} | {k.node for k in out}
        unknown = [o for o in only if o not in known]
        if unknown:
            raise ValueError(f"{path}: no tunable param {', '.join(unknown)} (tunable: "
                             f"{', '.join(k.key for k in knobs(path, overrides)) or 'none'})")
    return out


def as_params(values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{"node.param": v}`` -> ``{node: {param: v}}``."""
    out: dict[str, dict[str, Any]] = {}
    for key, v in values.items():
        node, _, param = key.partition(".")
        out.setdefault(node, {})[param] = v
    return out
