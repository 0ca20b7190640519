"""``animation``: tunes the blender's One Euro smoother from what its frames show, as Casiez does by hand.

Casiez, Roussel and Vogel (CHI 2012) tune a One Euro filter in two steps: lower ``min_cutoff``
until a still hand (here: face) no longer jitters, then raise ``beta`` until fast moves no
longer lag. This agent takes either step, continuously, on the blender's own measurements
(``nodes.face.SmoothingMeter``, in its stats under ``smoothing``): one agent per param,

    agents:
      still:                      # jitter at rest -> min_cutoff
        type: animation
        node: face
        min: 0.1
        max: 5
        params: {jitter: 0.001}
      moving:                     # lag in motion -> beta
        type: animation
        node: face
        param: beta
        min: 0
        max: 5
        params: {lag_ms: 30}

Each target is the most that is acceptable; a measure below ``room`` times its target has room to
spare, and the param moves back toward the middle of the two, slowly: a smoother face when still
costs lag, more beta costs jitter. The direction that cures what a viewer sees is taken at once
(``min_cutoff`` down for jitter, ``beta`` up for lag); the way back waits for the guards
(``up_after``, ``dwell``). Steps are multiplicative: jitter at rest grows about in proportion to
the cutoff, and lag in motion shrinks about as ``beta + beta_offset`` grows.

The two are coupled: with a noisy capture, beta also raises the cutoff at rest (the noise looks
like speed), so jitter may stay over its target however low ``min_cutoff`` goes. ``min_cutoff``
then rests at its lower bound, and the choice is a person's: a looser lag target, a lower
``d_cutoff``, or a better capture.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

from runtime import Param
from runtime.agents import DOWN, UP, Agent, StatsView, Wish

_FAST_RATIO = 2.0  # the most one wish multiplies (or divides) the param by, curing a problem
_SLOW_RATIO = 1.25  # ... and moving back where there is room


class AnimationAgent(Agent):
    """Drives the blender's ``min_cutoff`` (from jitter at rest) or ``beta`` (from lag in motion)."""

    doc = "tunes the One Euro smoother: min_cutoff from jitter at rest, beta from lag in fast motion"
    params = {
        "jitter": Param(float, 0.001, "jitter at rest acceptable, at most: RMS second difference of the "
                                      "weights, units per frame (min_cutoff)", min=1e-6, max=1.0),
        "lag_ms": Param(float, 30.0, "lag in fast motion acceptable, at most, in ms (beta)", min=1.0, max=250.0),
        "room": Param(float, 0.5, "a measure below room x its target has room: the param moves back "
                                  "toward the middle of the two", min=0.05, max=0.95),
        "gain": Param(float, 0.7, "exponent of a step's ratio (target / measure): 1 moves all the "
                                  "way at once, less damps", min=0.05, max=2.0),
        "beta_offset": Param(float, 0.2, "beta steps multiply beta + beta_offset, so beta can leave 0",
                             min=0.0, max=100.0),
        "stats": Param(str, "smoothing", "key of the measurements in the node's stats"),
    }
    default_param = "min_cutoff"
    drives = ("min_cutoff", "beta")
    fast = DOWN

    @classmethod
    def fast_for(cls, param: str | None) -> str:
        """Jitter is cured by lowering min_cutoff, lag by raising beta: those go at once."""
        return UP if param == "beta" else DOWN

    def wish(self, view: StatsView, current: float, key: str | None = None) -> Wish | None:
        s = view.get(f"nodes.{self.node}.node.{self.p['stats']}")
        if not isinstance(s, Mapping) or not _number(s.get("age_s")):
            return None
        if self.param == "beta":
            return self._beta(s, current)
        return self._min_cutoff(s, current)

    def _min_cutoff(self, s: Mapping[str, Any], current: float) -> Wish | None:
        j = s.get("jitter")
        if not _number(j):
            return None
        top = self.p["jitter"]
        ratio, state = self._ratio(top / max(j, 1e-12), top, "")  # jitter ~ cutoff: the cutoff that gives the middle
        inputs = {"jitter": j, "noise": s.get("noise"), "rest": s.get("rest"), "target": top}
        why = f"jitter at rest {j:.3g} ({state}; input noise {_g(s.get('noise'))})"
        return Wish(current * ratio, why, inputs, float(s["age_s"]))

    def _beta(self, s: Mapping[str, Any], current: float) -> Wish | None:
        lag = s.get("lag_ms")
        if not _number(lag):
            return None
        top, off = self.p["lag_ms"], self.p["beta_offset"]
        ratio, state = self._ratio(top / max(lag, 1e-3), top, " ms")
        inputs = {"lag_ms": lag, "speed": s.get("speed"), "motion": s.get("motion"), "target": top}
        why = f"lag in motion {lag:.3g} ms ({state})"
        value = current if ratio == 1.0 else max(0.0, (current + off) / ratio - off)
        return Wish(value, why, inputs, float(s["age_s"]))

    def _ratio(self, headroom: float, top: float, unit: str) -> tuple[float, str]:
        """How far to scale the param the measure grows with, from ``headroom`` = target / measure:
        below 1, too much (scale down, by at most _FAST_RATIO); above 1 / room, room to spare (up,
        by at most _SLOW_RATIO); between, hold. Aims at the middle of room x target .. target."""
        room = self.p["room"]
        if 1.0 <= headroom <= 1.0 / room:
            return 1.0, f"within {room * top:.3g} .. {top:g}{unit}"
        ratio = (headroom * (1.0 + room) / 2.0) ** self.p["gain"]
        if headroom < 1.0:
            return max(ratio, 1.0 / _FAST_RATIO), f"over {top:g}{unit}"
        return min(ratio, _SLOW_RATIO), f"under {room * top:.3g}{unit}: room to spare"


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _g(x: Any) -> str:
    return f"{x:.3g}" if _number(x) else "unknown"
