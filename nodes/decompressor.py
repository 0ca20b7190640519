"""decompressor: ``avatar/packet`` wire packets -> morph weights, one row per decodable session.

Decoding is ``nodes.wire.Decoder`` (spec: ``docs/wire-format.md``), a whole message at once
(``decode_batch``: compiled when the extension is built, one array per names table). A session whose
packets went missing is left out of the output until its next keyframe; the loss is counted
in ``stats()``, reported on the bus, and the sessions waiting are listed so whoever can
reach the compressor (its ``requests`` pad) can ask for a keyframe.
"""
from __future__ import annotations

import numpy as np

from runtime import Message, Node, Pad, Param

from . import wire as wf
from .wire import DECODED, REFUSED, Group

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
        batch = self.dec.decode_batch(packets, msg.pts_ns)
        sessions = list(map(str, sessions))
        if batch.errors or batch.losses:  # in row order, as each packet was decoded
            for i in sorted(batch.errors.keys() | batch.losses.keys()):
                if i in batch.errors:
                    self._warn(msg.pts_ns, f"session {sessions[i]}: malformed packet: {batch.errors[i]}")
                else:
                    self._warn(msg.pts_ns, f"session {sessions[i]}: {batch.losses[i]} packet(s) lost"
                                           + ("; waiting for a keyframe" if batch.status[i] != DECODED else ""))
        if (batch.status == REFUSED).any():  # after a loss: in row order, as a session may come twice
            for i in np.flatnonzero(batch.status <= REFUSED).tolist():
                if batch.status[i] == REFUSED:
                    self.need[sessions[i]] = msg.pts_ns
                else:
                    self.need.pop(sessions[i], None)
        elif self.need:
            for group in batch.groups:
                for i in group.rows.tolist():
                    self.need.pop(sessions[i], None)
        if msg.pts_ns >= self.next_expiry:
            idle_ns = int(self.p.idle_s * _SECOND_NS)
            self.dec.forget_idle(msg.pts_ns, idle_ns)
            self.need = {s: t for s, t in self.need.items() if t >= msg.pts_ns - idle_ns}
            self.next_expiry = msg.pts_ns + _SECOND_NS
        for group in batch.groups:  # one message per names table: one array shape each
            self.emit("out", self._message(group, sessions, msg))
        return None

    def _message(self, group: Group, sessions: list[str], msg: Message) -> Message:
        arrays = {"weights": group.weights}
        if group.pose is not None:
            arrays["pose"] = group.pose
        rows = sessions if len(group.rows) == len(sessions) else [sessions[i] for i in group.rows.tolist()]
        if group.names == wf.TABLE_ARKIT52:
            return Message("arkit/blendshapes", None, arrays, msg.pts_ns, rows, msg.trace)
        return Message("morphs/cc4", {"names": list(group.names)}, arrays, msg.pts_ns, rows, msg.trace)

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
