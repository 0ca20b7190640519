"""testsrc: synthetic frames at a rate, for tests, demos and benchmarks."""
from __future__ import annotations

import math

import numpy as np

from runtime import Message, Node, Pad, Param


class TestSrc(Node):
    """Emits numbered frames of float32 values at a fixed rate (caps set by param)."""

    __test__ = False  # not a pytest class
    outputs = {"out": Pad(caps_param="caps", doc="frames with data {'n': index} and array 'values'")}
    params = {
        "rate": Param(float, 60.0, "frames per second; 0 = as fast as the links take them", min=0.0, max=1e6),
        "caps": Param(str, "test/frame", "caps of the frames"),
        "num_buffers": Param(int, -1, "frames to send before EOS; -1 = endless", min=-1),
        "width": Param(int, 52, "float32 values per frame", min=0, max=1 << 20),
        "pattern": Param(str, "sine", "values: sine waves, the frame counter, or zeros",
                         choices=("sine", "counter", "zeros")),
        "session": Param(str, "test", "session id carried by every frame"),
    }

    def setup(self) -> None:
        self.n = 0
        self.phase = np.linspace(0, 2 * math.pi, self.p.width, endpoint=False, dtype=np.float32)
        self.timer = self.every(1.0 / self.p.rate if self.p.rate > 0 else 0.0, self.tick)

    def on_params(self, changed: dict) -> None:
        if "rate" in changed:
            self.timer.cancel()
            self.timer = self.every(1.0 / self.p.rate if self.p.rate > 0 else 0.0, self.tick)

    def tick(self) -> None:
        if 0 <= self.p.num_buffers <= self.n:
            self.end_stream()
            return
        n = self.n
        if self.p.pattern == "sine":
            values = (0.5 + 0.5 * np.sin(self.phase + n * 0.1)).astype(np.float32)
        elif self.p.pattern == "counter":
            values = np.full(self.p.width, n, dtype=np.float32)
        else:
            values = np.zeros(self.p.width, dtype=np.float32)
        self.emit("out", Message(self.p.caps, {"n": n}, {"values": values}, pts_ns=self.now_ns(), session=self.p.session))
        self.n += 1
        if 0 <= self.p.num_buffers <= self.n:
            self.end_stream()

    def stats(self) -> dict:
        return {"sent": self.n}
