"""``target``: keeps one watched stat near a target by moving one param (a proportional step).

The general agent: no code, only YAML. For instance, keep a link's queue depth near 1 by
lowering a source's rate when it grows:

    agents:
      pace:
        type: target
        node: src
        param: rate
        min: 10
        max: 120
        params: {watch: links.src.out-sink.in.depth, target: 1, gain: 5, sign: 1}
"""
from __future__ import annotations

from ..params import Param
from .base import Agent, StatsView, Wish


class Target(Agent):
    doc = "keeps a watched stat near a target by moving a param (proportional step)"
    params = {
        "watch": Param(str, "", "dotted path in the graph's stats (avatar stats), e.g. nodes.sink.received"),
        "rate": Param(bool, False, "watch the counter's growth per second, not its value"),
        "target": Param(float, 0.0, "the value the watched stat should have"),
        "gain": Param(float, 1.0, "how far the param moves per unit the stat is off", min=0.0),
        "sign": Param(int, 1, "1: raising the param raises the stat; -1: raising it lowers the stat",
                      choices=(1, -1)),
    }

    def wish(self, view: StatsView, current: float, key: str | None = None) -> Wish | None:
        path = self.p["watch"]
        value = view.rate(path) if self.p["rate"] else view.get(path)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return None
        off = float(value) - self.p["target"]
        return Wish(current - self.p["sign"] * self.p["gain"] * off,
                    f"{path} {'rate ' if self.p['rate'] else ''}{value:.4g} vs target {self.p['target']:g}",
                    {"watch": path, "value": value})
