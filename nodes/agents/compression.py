"""``compression``: a compressor's periodic keyframe interval follows the loss its viewers see.

A viewer that loses a packet asks for a keyframe and gets one (once per loss, however many
viewers ask: ``nodes.wire.keyframe_requests``). Periodic keyframes are the backstop: they repair
a viewer whose ask, or the keyframe answering it, was lost too (WebRTC's packet channel has no
retransmits), or whose ask waits out the per-session rate limits; and they repair every viewer of
a session at once without a round trip. On a clean stream they only cost bytes (a keyframe is
several times a delta), so the interval should be long; under loss, short.

The rule, over the sinks' counters since the previous look:

    loss = losses / (sent + drops + skipped)   # loss events per packet owed to a viewer

- ``loss > loss_high``: the wish is ``frames_per_loss / loss`` frames (the frames between an
  average viewer's losses), if that is shorter than now: about one periodic keyframe per loss.
  Down is the agent's fast direction: taken at once (more keyframes at once when loss rises).
- ``loss < loss_low``: the wish is the interval times ``up_factor``: the guards take it slowly
  (``up_after``, ``dwell``, ``max_step``), back up to the bound while the stream stays clean.
- between the two: hold. With the guards' slow way up, the gap between the thresholds is the
  hysteresis that keeps a steady loss from moving the interval back and forth. A look that saw
  fewer than ``min_packets`` owed holds too (too little to judge).

``losses`` is the sinks' own count (``nodes.delivery.viewers``): a viewer's keyframe ask that is
not stale (each a loss it saw), and a viewer the sink left waiting itself (its queue overflowed,
the loop fell behind).
"""
from __future__ import annotations

from typing import Any, Mapping

from runtime import Param
from runtime.agents import DOWN, Agent, StatsView, Wish

_OWED = ("sent", "drops", "skipped")  # a sink's counters of the packets it owed its viewers


class CompressionAgent(Agent):
    """Drives a compressor's ``keyframe_interval`` from the sinks' viewer loss."""

    doc = "a compressor's periodic keyframe interval: short while viewers lose packets, long on a clean stream"
    default_param = "keyframe_interval"
    drives = ("keyframe_interval",)
    fast = DOWN
    guard_defaults = {"up_after_s": 10.0, "dwell_s": 10.0}  # back up only after 10 clean seconds, 10 s apart
    params = {
        "sink": Param(str, "", "the sink node whose viewers it watches; empty: every node reporting viewer losses"),
        "loss_high": Param(float, 0.01, "loss events per packet owed to viewers above which the interval shortens",
                           min=0.0, max=1.0),
        "loss_low": Param(float, 0.002, "loss below which the interval lengthens (between the two: it holds)",
                          min=0.0, max=1.0),
        "frames_per_loss": Param(float, 1.0, "under loss, the interval wished is this times the frames between "
                                             "an average viewer's losses (1 / loss)", min=0.01, max=1000.0),
        "up_factor": Param(float, 2.0, "on a clean stream, the interval wished is the current one times this",
                           min=1.0, max=100.0),
        "min_packets": Param(int, 60, "fewer packets owed to viewers since the previous look: hold", min=1),
    }

    def sinks(self, view: StatsView) -> list[str]:
        """The nodes watched: the one named, or every node whose stats count viewer losses."""
        if self.p["sink"]:
            return [self.p["sink"]]
        nodes: Mapping[str, Any] = view.now.get("nodes") or {}
        return sorted(n for n, s in nodes.items() if isinstance(s, Mapping) and "losses" in (s.get("node") or {}))

    def wish(self, view: StatsView, current: float, key: str | None = None) -> Wish | None:
        names = self.sinks(view)
        losses = owed = 0.0
        for name in names:
            base = f"nodes.{name}.node."
            counts = [view.delta(base + c) for c in ("losses", *_OWED)]
            if any(c is None for c in counts):  # first look, a sink restarted or not reporting
                return None
            losses += counts[0]  # type: ignore[operator]
            owed += sum(counts[1:])  # type: ignore[arg-type]
        if not names:
            return None
        inputs = {"sinks": names, "losses": int(losses), "owed": int(owed)}
        if owed < self.p["min_packets"]:
            return Wish(current, f"{int(owed)} packets owed since the last look: too few to judge", inputs)
        loss = losses / owed
        inputs["loss"] = round(loss, 5)
        if loss > self.p["loss_high"]:
            target = self.p["frames_per_loss"] / loss
            if target < current:
                return Wish(target, f"loss {loss:.2%} > {self.p['loss_high']:.2%}: an interval near the "
                                    f"{1 / loss:.0f} frames between losses", inputs)
            return Wish(current, f"loss {loss:.2%}: the interval is short enough", inputs)
        if loss < self.p["loss_low"]:
            return Wish(current * self.p["up_factor"], f"loss {loss:.2%} < {self.p['loss_low']:.2%}: clean, "
                                                       "fewer periodic keyframes", inputs)
        return Wish(current, f"loss {loss:.2%} between {self.p['loss_low']:.2%} and {self.p['loss_high']:.2%}: hold",
                    inputs)
