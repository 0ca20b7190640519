"""identity: passes messages through; GStreamer's identity, with its testing knobs."""
from __future__ import annotations

import time

from runtime import Message, Node, Pad, Param


class Identity(Node):
    """Passes every message through unchanged, optionally delayed, labelled, or failing on purpose."""

    inputs = {"in": Pad()}
    outputs = {"out": Pad(same_as="in")}
    passthrough = True  # a message it does not label goes on as it came, never unpacked
    params = {
        "delay_ms": Param(float, 0.0, "sleep this long per message (simulates work)", min=0.0, max=10000.0),
        "label": Param(str, "", "when set, stamps data['via'] = label on dict payloads"),
        "error_after": Param(int, -1, "raise an error on this message index (tests supervision); -1 = never", min=-1),
    }

    def setup(self) -> None:
        self.count = 0

    def process(self, pad: str, msg: Message) -> Message:
        if self.count == self.p.error_after:
            raise RuntimeError(f"error_after={self.p.error_after} reached")
        self.count += 1
        if self.p.delay_ms:
            time.sleep(self.p.delay_ms / 1000.0)
        if self.p.label and isinstance(msg.data, dict):
            msg.data["via"] = self.p.label
        return msg
