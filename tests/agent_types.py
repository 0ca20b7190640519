"""Agent types the tests load as 'tests.agent_types:Name' (a user's agent type plugs in the same way)."""
from __future__ import annotations

from typing import Any, Mapping

from runtime import Param
from runtime.agents import Agent, StatsView, Wish


class Broken(Agent):
    """Fails on every look: the graph must go on, and say so once."""

    doc = "raises on every look"

    def wish(self, view: StatsView, current: float, key: str | None = None) -> Wish | None:
        raise RuntimeError("this agent is broken on purpose")


class PerSession(Agent):
    """Keyed: wants level ``want[key]`` for each session of ``want`` (a lod node's ``levels``)."""

    doc = "per-session levels from a table"
    keyed = True
    scale = (0, 3)
    default_param = "levels"
    fast = "up"
    params = {"want": Param(dict, {}, "session -> wanted level")}

    def keys(self, view: StatsView, node_params: Mapping[str, Any]) -> list[str]:
        return sorted(self.p["want"])

    def wish(self, view: StatsView, current: float, key: str | None = None) -> Wish | None:
        return Wish(float(self.p["want"][key]), f"{key} wants {self.p['want'][key]}", {"session": key})
