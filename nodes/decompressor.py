"""decompressor: ``avatar/packet`` wire packets -> morph weights, one row per decodable session.

Decoding is ``nodes.wire.Decoder`` (spec: ``docs/wire-format.md``). A session whose
packets went missing is left out of the output until its next keyframe; the loss is counted
in ``stats()``, reported on the bus, and the sessions waiting are listed so whoever can
reach the compressor (its ``requests`` pad) can ask for a keyframe.
"""
from __future__ import annotations

import numpy as np

from runtime import Message, Node, Pad, Param

from . import wire as wf

_SECOND_NS = 1_000_000_000


class Decompressor(Node):
    """Decodes avatar/packet batches back to morph weights; after a loss it waits for a keyframe."""

    inputs = {"in": Pad("avatar/packet", "data {'packets': [bytes]*S}")}
    outputs = {"out": Pad(("arkit/blendshapes", "morphs/cc4"),
                          "arkit/blendshapes for the ARKit names table, else morphs/cc4 with data {'names'}")}
    params = {
        "resume_after_loss": Param(bool, False, "after a gap, keep applying deltas whose reference frame is "
                                                "still held (exact; pays off only with compressor "
                                                "ref_interval=0) instead of waiting for the next keyframe"),
        "idle_s": Param(float, 10.0, "forget a session stream not seen for this long", min=0.001),
    }

    def setup(self) -> None:
        self.dec = wf.Decoder(self.p.resume_after_loss)
        self.need: dict[str, int] = {}  # session waiting for a keyframe -> pts_ns of its latest refused packet
        self.bad_messages = 0
        self.next_expiry = self.next_warning = 0
        self.quiet = 0  # warnings held back by the rate limit

    def on_params(self, changed: dict) -> None:
        self.dec.resume_after_loss = self.p.resume_after_loss

    def process(self, pad: str, msg: Message) -> Message | None:
        packets = msg.data.get("packets") if isinstance(msg.data, dict) else None
        sessions = msg.session
        if not isinstance(packets, list) or not isinstance(sessions, list) or len(packets) != len(sessions):
            self.bad_messages += 1
            self._warn(msg.pts_ns, "dropped an avatar/packet message: needs a session list and data "
                                   "{'packets': [bytes]} of the same length")
            return None
        groups: dict[tuple, list[tuple[str, wf.Frame]]] = {}
        for session, packet in zip(map(str, sessions), packets):
            try:
                frame = self.dec.decode(packet, msg.pts_ns)
            except ValueError as exc:
                self._warn(msg.pts_ns, f"session {session}: malformed packet: {exc}")
                continue
            if self.dec.last_loss:
                self._warn(msg.pts_ns, f"session {session}: {self.dec.last_loss} packet(s) lost"
                                       + ("; waiting for a keyframe" if frame is None else ""))
            if frame is None:
                if self.dec.status == "refused":
                    self.need[session] = msg.pts_ns
                continue
            self.need.pop(session, None)
            groups.setdefault((frame.names, frame.pose is not None), []).append((session, frame))
        if msg.pts_ns >= self.next_expiry:
            idle_ns = int(self.p.idle_s * _SECOND_NS)
            self.dec.forget_idle(msg.pts_ns, idle_ns)
            self.need = {s: t for s, t in self.need.items() if t >= msg.pts_ns - idle_ns}
            self.next_expiry = msg.pts_ns + _SECOND_NS
        for (names, _), rows in groups.items():  # one message per names table: one array shape each
            self.emit("out", self._message(names, rows, msg))
        return None

    def _message(self, names: wf.Names, rows: list[tuple[str, wf.Frame]], msg: Message) -> Message:
        arrays = {"weights": np.stack([f.weights for _, f in rows])}
        if rows[0][1].pose is not None:
            arrays["pose"] = np.stack([f.pose for _, f in rows])
        sessions = [s for s, _ in rows]
        if names == wf.TABLE_ARKIT52:
            return Message("arkit/blendshapes", None, arrays, msg.pts_ns, sessions, msg.trace)
        return Message("morphs/cc4", {"names": list(names)}, arrays, msg.pts_ns, sessions, msg.trace)

    def _warn(self, pts_ns: int, text: str) -> None:
        """At most one bus warning per second, saying how many were held back."""
        if pts_ns < self.next_warning:
            self.quiet += 1
            return
        if self.quiet:
            text += f" ({self.quiet} more warnings held back)"
        self.warn(text)
        self.quiet = 0
        self.next_warning = pts_ns + _SECOND_NS

    def stats(self) -> dict:
        return {**self.dec.counts, "bad_messages": self.bad_messages,
                "waiting_for_keyframe": sorted(self.need)[:50], "waiting": len(self.need)}
