"""``network``: per viewer, the layer its link can carry (a sink's ``viewer_layers``).

Each viewer's capacity is estimated as WebRTC's congestion control does, from two signals, and
the lower one wins:

- delay: the round trip (the median of the last second's pings) above its recent minimum is a
  queue building on the path; one burst (a keyframe on a slow link) does not make it. Above
  ``delay_ms`` the link is over-used: the estimate drops to 85 % of what the viewer received.
- loss: above ``loss_high`` the estimate drops to what was received, less half the loss;
  below ``loss_low`` (and no queue) the estimate keeps at least the rate it gets.

Nothing but sending more shows spare room; the sink probes a viewer below the best layer now and
then (``nodes.delivery.netstats``: padding at the next layer's rate for a second) and a probe that
got through lifts the estimate to what it carried. The wish is the best layer whose rate (the
sink measures each layer's bits and packets a second for the viewer's session, plus the
framing each message carries on the viewer's transport, or ``overhead_bytes``;
``nodes.delivery.netstats.layer_needs``) fits within ``headroom`` of the estimate. The guards do the rest: a worse layer at once (``fast: up``: higher layers are
cheaper), a better one only when wished for ``up_after`` seconds; a switch happens at a keyframe
of the new layer. Viewers that send no reports are left alone.
"""
from __future__ import annotations

from typing import Any, Mapping

from nodes.delivery.netstats import layer_needs
from runtime import Param
from runtime.agents import UP, Agent, StatsView, Wish

_PROBE_QUEUE_S = 2.0  # a queue seen while a probe runs or this soon after is the probe's padding


class NetworkAgent(Agent):
    doc = "per viewer: the stream layer its link carries (delay- and loss-based estimate, probes)"
    default_param = "viewer_layers"
    keyed = True
    fast = UP
    scale = (0, 8)
    every = 0.25  # every receiver report: a cut link is seen within a second or two (a look costs ~2 ms of stats)
    # a worse layer at once; a better one after its wish held 2 s (a probe showed the room; long
    # enough for a probe of the best layer to follow one of a layer between, and go straight
    # there), and not within 2 s of the last change; at most 4 changes a minute per viewer
    guard_defaults = {"up_after_s": 2.0, "dwell_s": 2.0, "max_per_min": 4.0, "stale_s": 2.0}
    params = {
        "delay_ms": Param(float, 100.0, "round trip above its recent minimum that counts as a queue (over-use)",
                          min=5.0, max=10000.0),
        "loss_high": Param(float, 0.10, "loss fraction above which the estimate falls", min=0.0, max=1.0),
        "loss_low": Param(float, 0.02, "loss fraction below which the link counts as clean", min=0.0, max=1.0),
        "headroom": Param(float, 0.85, "a layer fits when its rate is at most this share of the estimate",
                          min=0.1, max=1.0),
        "overhead_bytes": Param(int, -1, "framing per packet; -1: the viewer's transport's own, as the sink "
                                "reports it (WebSocket + TCP/IP 60, a data channel's SCTP/DTLS/UDP/IP 93)",
                                min=-1, max=1000),
        "probe_fresh_s": Param(float, 3.0, "a probe result younger than this counts", min=0.1, max=60.0),
    }

    def __init__(self, name: str, node: str, param: str, params: Mapping[str, Any]):
        super().__init__(name, node, param, params)
        self.estimate: dict[str, float] = {}  # viewer -> bits/s
        self.layers: dict[str, int] = {}  # viewer -> the layer the sink says it is on (or moving to)

    def keys(self, view: StatsView, node_params: Mapping[str, Any]) -> list[str]:
        viewers = view.get(f"nodes.{self.node}.node.viewer_net") or {}
        for gone in [k for k in self.estimate if k not in viewers]:
            del self.estimate[gone]
        keys = [k for k, v in viewers.items() if isinstance(v, dict) and v.get("net")]
        # the layer each viewer is on, or moving to: the sink's own account, not the table it was
        # given (a restarted sink numbers its viewers afresh, and a table entry may be a viewer gone)
        self.layers = {k: int(viewers[k].get("layer_next", viewers[k].get("layer", 0))) for k in keys}
        return keys

    def current(self, node_params: Mapping[str, Any], key: str | None = None) -> float:
        return float(self.layers.get(key or "", 0))

    def to_params(self, values: Mapping[str | None, float], node_params: Mapping[str, Any]) -> dict[str, Any]:
        """The table of the viewers here now: their layers, with the changes."""
        table = {k: v for k, v in self.layers.items() if v}
        table.update({str(k): int(round(v)) for k, v in values.items()})
        return {self.param: {k: v for k, v in table.items() if v}}

    def wish(self, view: StatsView, current: float, key: str | None = None) -> Wish | None:
        info = (view.get(f"nodes.{self.node}.node.viewer_net") or {}).get(key) or {}
        net, session = info.get("net") or {}, info.get("session")
        rates = (view.get(f"nodes.{self.node}.node.layer_rates") or {}).get(session)
        if not net or not rates or net.get("recv_bps") is None:
            return None
        per_packet = self.p["overhead_bytes"]
        if per_packet < 0:
            per_packet = int(info.get("framing_bytes", 60))
        # on a reduced layer a sink may bundle packets (WebRTC): fewer messages, fewer framings
        needs = layer_needs(rates, per_packet, info.get("messages_per_s"))
        layer = int(current)
        # a probe's rate is what the sink sent (payload); the needs count each packet's framing too
        now = min(layer, len(rates) - 1)
        framing = needs[now] - rates[now][0]
        est, why = self.update(key or "", net, needs, layer, framing)
        fits = [k for k, need in enumerate(needs) if need <= self.p["headroom"] * est]
        want = fits[0] if fits else len(needs) - 1
        if why.startswith("clean"):  # a link that carries its layer cleanly never moves down
            want = min(want, layer)
        else:  # and one with a queue (a probe's too) or loss never moves up
            want = max(want, layer)
        inputs = {"estimate_bps": round(est), "needs_bps": [round(n) for n in needs], "recv_bps": net.get("recv_bps"),
                  "loss": net.get("loss"), "rtt_ms": net.get("rtt_ms"), "rtt_min_ms": net.get("rtt_min_ms"),
                  "probe": net.get("probe")}
        return Wish(float(want), f"viewer {key}: {why}, estimate {est / 1000:.1f} kbit/s -> layer {want}", inputs,
                    float(net.get("age_s") or 0.0))

    def update(self, key: str, net: Mapping[str, Any], needs: list[float], layer: int,
               framing_bps: float = 0.0) -> tuple[float, str]:
        """The viewer's new capacity estimate (bits/s) and the signal that set it.

        ``framing_bps``: the framing of the packets the viewer's layer sends a second (the
        ``overhead_bytes`` a packet the needs count), added to what a probe carried: the sink
        counts the bytes it sent, and a probe and a layer are compared alike only with it.
        """
        recv = float(net.get("recv_bps") or 0.0)
        loss = float(net.get("loss") or 0.0)
        rtt, rtt_min = net.get("rtt_p50_ms", net.get("rtt_ms")), net.get("rtt_min_ms")
        queue_ms = rtt - rtt_min if rtt is not None and rtt_min is not None else 0.0
        now_need = needs[min(layer, len(needs) - 1)]
        est = self.estimate.get(key)
        if est is None:
            est = needs[0] / self.p["headroom"]  # every viewer starts on layer 0: assume it fits until shown otherwise
        probe = net.get("probe")
        probed = net.get("probing") or (isinstance(probe, dict) and probe.get("age_s", 1e9) < _PROBE_QUEUE_S)
        if queue_ms > self.p["delay_ms"] and probed and loss <= self.p["loss_high"]:
            why = f"queue {queue_ms:.0f} ms from a probe"  # the probe's own padding: it stops by itself
        elif queue_ms > self.p["delay_ms"]:
            est, why = 0.85 * recv, f"queue {queue_ms:.0f} ms"
        elif loss > self.p["loss_high"]:
            est, why = recv * (1 - 0.5 * loss), f"loss {100 * loss:.1f} %"
        else:
            why = "clean" if loss < self.p["loss_low"] else f"loss {100 * loss:.1f} %"
            # it carries what it gets; between the loss limits too (WebRTC's "hold": a data channel
            # loses what the link drops at random, a WebSocket does not), and as the layer's rate
            # drifts up with the face's motion
            est = max(est, now_need / self.p["headroom"])
            fresh = isinstance(probe, dict) and probe.get("age_s", 1e9) < self.p["probe_fresh_s"]
            carried = (probe.get("bps") if probe.get("ok") else probe.get("carried_bps")) if fresh else None  # type: ignore[union-attr]
            if carried and probe.get("kind") != "train":  # type: ignore[union-attr] - a train's rate has its framing
                carried += framing_bps
            if carried and loss < self.p["loss_low"]:
                if carried > est:
                    why = f"clean; a probe carried {carried / 1000:.1f} kbit/s"
                est = max(est, float(carried))
        self.estimate[key] = est
        return est, why
