"""compressor: batches of morph weights -> ``avatar/packet`` wire packets, one per session.

The encoding (quantize; keyframes; deltas from a prediction made from the previous frames, in a
fixed Exp-Golomb code; msgpack) is ``nodes.wire``, specified in ``docs/wire-format.md``.
This node adds the graph side: caps, params (all live), keyframe requests from a pad or a param
(coalesced, ``nodes.wire.keyframe_requests``: one keyframe per loss however many sinks and
viewers ask), and session slot expiry. Beside the packets it states what each one is (arrays ``keyframe`` and
``seq``), so the sinks need not read that back out of the bytes. The encoder's per-row work runs
compiled when ``nodes/wire/_encoder.pyx`` is built (the same packets; ``stats()`` says which path).

Extra layers (param ``layers``, ``nodes.wire.layered``): the same sessions at a lower level of
detail and precision, each encoded once for the sessions viewers watch (the sinks say which, in
their requests: ``{'watched': [ids]}``), for viewers whose links cannot take the full stream; a
sink gives each viewer the layer its network agent picked (``docs/agents.md``).
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from runtime import Message, Node, Pad, Param

from . import wire as wf
from .face import TABLE_RULE, arkit_names, level_masks, load_lod_table

_SECOND_NS = 1_000_000_000


class Compressor(Node):
    """Encodes morph weights as compact quantized, delta-coded avatar/packet packets per session."""

    inputs = {
        "in": Pad(("arkit/blendshapes", "morphs/*"), "batches: session list, weights (S, M), pose (S, 9) optional"),
        "requests": Pad("avatar/request", "keyframe requests: data {'keyframe': [session ids]}, optionally "
                                          "'seen': {session id: the newest wire seq the asker had}; an extra "
                                          "layer's: 'layer_keyframe': {'1': [ids]}, 'layer_seen': {'1': {id: seq}}; "
                                          "the sessions viewers watch, for the extra layers: {'watched': [ids]}",
                        required=False),
    }
    outputs = {"out": Pad("avatar/packet", "data {'packets': [bytes]*S}, one wire packet per session row; "
                                           "arrays keyframe (S,) bool and seq (S,) int64, what each packet is; "
                                           "arrival_ns (S,) passed through when the input has it; with extra "
                                           "layers, data 'layers': [{rows, packets, keyframe, seq}] per layer")}
    params = {
        "bits": Param(int, 8, "weight precision in bits: a decoded weight is within half a step of the input",
                      min=2, max=16, tune=(4, 12)),
        "pose_bits": Param(int, 12, "head/eye pose precision in bits over -pi..pi radians", min=2, max=16),
        "keyframe_interval": Param(int, 120, "frames from one keyframe of a session to the next (viewers also ask "
                                                                "for one when they join or lose a packet)",
                                   min=1, max=wf.MAX_KEYFRAME_INTERVAL, tune=(15, 600, "log")),
        "ref_interval": Param(int, 1, "1: every frame is a reference, deltas are predicted from the previous two "
                                      "frames (the smallest packets; after a loss the decoder waits for a "
                                      "keyframe); 0: deltas from the last keyframe, 2.5 to 3 times the bytes, "
                                      "but a lost packet harms no other (decompressor resume_after_loss); "
                                      "n: every n-th frame is a reference",
                              min=0, max=wf.MAX_KEYFRAME_INTERVAL, tune=(0, 4)),
        "keyframe_min_gap": Param(int, 6, "frames at least from a session's keyframe to one made for a request: "
                                          "a request sooner is held until then (and dropped if a keyframe after "
                                          "what the asker had seen is made meanwhile); 0: at once",
                                  min=0, max=wf.MAX_KEYFRAME_INTERVAL),
        "force_keyframe": Param(bool, False, "set live to true: the next frame of every session is a keyframe; "
                                             "resets to false"),
        "idle_s": Param(float, 10.0, "a session not seen for this long gives its slot back", min=0.001),
        "layers": Param(list, [], "extra layers for viewers on slow links, each [{lod: level, bits: precision}], "
                                  "layer 1 first (layer 0: this stream); made for watched sessions only",
                        check=lambda v: _problem(wf.check_layers, v)),
        "lod_table": Param(str, "mappings/lod.yaml", f"the layers' levels of detail ({TABLE_RULE})",
                           check=lambda v: _problem(load_lod_table, v)),
    }

    def setup(self) -> None:
        self.enc = wf.Encoder(self.p.bits, self.p.pose_bits, self.p.keyframe_interval, self.p.ref_interval)
        self.p.force_keyframe = False  # a fresh encoder starts every session with a keyframe anyway
        self.asked = wf.KeyframeRequests(self.enc, self.p.keyframe_min_gap)
        self.asked_layers: list[wf.KeyframeRequests] = []  # the same, for each extra layer's encoder
        self.rejected = self.requests = 0
        self.next_expiry = 0
        self._layers()

    def _layers(self) -> None:
        specs = wf.check_layers(self.p.layers)
        self.every, self.patterns = load_lod_table(self.p.lod_table)
        wanted = self.layered.wanted if getattr(self, "layered", None) is not None else set()
        self.layered = wf.LayerEncoders(specs, self.every, self.p.pose_bits, self.p.keyframe_interval,
                                        self.p.ref_interval) if specs else None
        if self.layered is not None:
            self.layered.want(list(wanted))
        self.asked_layers = [wf.KeyframeRequests(enc, self.p.keyframe_min_gap)
                             for enc in (self.layered.encoders if self.layered is not None else [])]
        self.masks: dict[tuple, np.ndarray] = {}

    def on_params(self, changed: Mapping[str, Any]) -> None:
        self.enc.configure(**{k: v for k, v in changed.items()
                              if k in ("bits", "pose_bits", "keyframe_interval", "ref_interval")})
        if "layers" in changed or "lod_table" in changed:
            self._layers()
        elif self.layered is not None:
            self.layered.configure(**{k: v for k, v in changed.items()
                                      if k in ("pose_bits", "keyframe_interval", "ref_interval")})
        if "keyframe_min_gap" in changed:
            for asked in (self.asked, *self.asked_layers):
                asked.min_gap = self.p.keyframe_min_gap

        if changed.get("force_keyframe"):
            self.enc.request_keyframe()
            if self.layered is not None:
                self.layered.request_keyframe()
            self.p.force_keyframe = False

    def process(self, pad: str, msg: Message) -> Message | None:
        if pad == "requests":
            self._keyframe_request(msg)
            return None
        self.asked.serve()
        for asked in self.asked_layers:
            asked.serve()
        try:
            sessions, names = self._batch(msg)
            out = self.enc.encode_batch(sessions, msg.arrays["weights"], msg.pts_ns, names, msg.arrays.get("pose"))
        except ValueError as exc:
            self.rejected += 1
            if self.rejected & (self.rejected - 1) == 0:  # 1st, 2nd, 4th, 8th...: no flood
                self.warn(f"dropped a {msg.caps} message ({self.rejected} so far): {exc}")
            return None
        if msg.pts_ns >= self.next_expiry:
            self.enc.expire(msg.pts_ns, int(self.p.idle_s * _SECOND_NS))
            if self.layered is not None:
                self.layered.expire(msg.pts_ns, int(self.p.idle_s * _SECOND_NS))
            self.next_expiry = msg.pts_ns + _SECOND_NS
        arrival = msg.arrays.get("arrival_ns")  # capture arrival per row, for end-to-end latency at the sinks
        arrays: dict[str, np.ndarray] = {"keyframe": out.keyframe, "seq": out.seq}
        if arrival is not None and arrival.shape == (len(sessions),):
            arrays["arrival_ns"] = arrival
        data: dict[str, Any] = {"packets": out.packets}
        if self.layered is not None and self.layered.wanted:
            data["layers"] = self.layered.encode(sessions, msg.arrays["weights"], msg.pts_ns, names,
                                                 self._masks(names), msg.arrays.get("pose"))
        return Message("avatar/packet", data, arrays, msg.pts_ns, sessions, msg.trace)

    def _masks(self, names: wf.Names | list[str]) -> np.ndarray:
        key = tuple(names) if isinstance(names, list) else names
        mask = self.masks.get(key)
        if mask is None:
            mask = self.masks[key] = level_masks(self.patterns, names if isinstance(names, list) else arkit_names())
        return mask

    def _batch(self, msg: Message) -> tuple[list[str], wf.Names | list[str]]:
        """Session ids and names table of a batch, or ValueError saying what is wrong."""
        if not isinstance(msg.session, list):
            raise ValueError(f"session must be a list of ids (a batch), got {type(msg.session).__name__}")
        if "weights" not in msg.arrays:
            raise ValueError(f"no 'weights' array (arrays: {', '.join(msg.arrays) or 'none'})")
        # ids that came as an array read back as str already (Message.session_ids)
        sessions = msg.session if msg.carries_ids else [str(s) for s in msg.session]
        if msg.caps == "arkit/blendshapes":
            return sessions, wf.TABLE_ARKIT52
        names = msg.data.get("names") if isinstance(msg.data, dict) else None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"{msg.caps} needs data {{'names': [M morph names]}}")
        return sessions, names

    def _keyframe_request(self, msg: Message) -> None:
        watched = msg.data.get("watched") if isinstance(msg.data, dict) else None
        if isinstance(watched, list) and self.layered is not None:
            self.layered.want([str(s) for s in watched])
        ids = msg.data.get("keyframe") if isinstance(msg.data, dict) else None
        if isinstance(ids, str):
            ids = [ids]
        if not isinstance(ids, list):
            self.warn("ignored an avatar/request without data {'keyframe': [session ids]}")
            return
        seen = msg.data.get("seen")
        self.requests += len(ids)
        self.asked.ask([str(s) for s in ids], seen if isinstance(seen, dict) else None)
        layer_ids, layer_seen = msg.data.get("layer_keyframe"), msg.data.get("layer_seen")
        if isinstance(layer_ids, dict):  # a layer's viewers ask for that layer's keyframe, with its seqs
            layer_seen = layer_seen if isinstance(layer_seen, dict) else {}
            for k, asked in enumerate(self.asked_layers, 1):
                these = layer_ids.get(str(k))
                if isinstance(these, list) and these:
                    self.requests += len(these)
                    seqs = layer_seen.get(str(k))
                    asked.ask([str(s) for s in these], seqs if isinstance(seqs, dict) else None)

    def stats(self) -> dict:
        c = self.enc.counts
        return {"sessions": len(self.enc.sessions), "packets": c["packets"], "keyframes": c["keyframes"],
                "bytes": c["bytes"], "bytes_per_packet": round(c["bytes"] / c["packets"], 2) if c["packets"] else 0.0,
                "rejected": self.rejected, "keyframe_requests": self.requests,
                "keyframes_requested": self.asked.counts["made"],  # the rest: periodic, new sessions, precision
                **({"layer_keyframes_requested": [a.counts["made"] for a in self.asked_layers],
                    "layer_keyframe_requests_answered": [a.counts["answered"] for a in self.asked_layers]}
                   if self.asked_layers else {}),
                "keyframe_requests_answered": self.asked.counts["answered"],  # a keyframe was coming already
                "keyframe_requests_held": len(self.asked.held), "compiled": self.enc.compiled,
                **({"layers": self.layered.stats(), "layered_sessions": len(self.layered.wanted)}
                   if self.layered is not None else {})}


def _problem(check: Any, value: Any) -> str | None:
    try:
        check(value)
    except ValueError as exc:
        return str(exc)
    return None
