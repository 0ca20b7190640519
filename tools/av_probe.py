"""A node type for the A/V benchmark (``tools.av_probe:ProbeFace`` in a graph): the simplest
lip-sync there is, with sharp edges to measure.

It takes a voice (``audio/pcm``) and makes a face whose jaw is fully open while the voice is loud
and shut while it is quiet, one frame per tick on its own clock, each frame for the voice's pts
``latency_ms`` before the tick: it holds data back exactly as long as it declares
(``latency_ns``), as the real lip-sync path does (``viseme``), and stamps its frames when it
makes them, as the ``blender`` does. Fed tone bursts, its jaw steps at the bursts' edges, so a
page that hears the bursts and shows the jaw tells how far apart the two reach the viewer:
``tools/bench_av.py`` ("probe").
"""
from __future__ import annotations

from collections import deque
from typing import Any, Mapping

import numpy as np

from runtime import Message, Node, Pad, Param

_JAW = 17  # jawOpen in the ARKit order
_STEP_NS = 1_000_000  # the voice's loudness is judged per millisecond


class ProbeFace(Node):
    """A face whose jaw is open exactly while its voice is loud, latency_ms after it."""

    inputs = {"in": Pad("audio/pcm", "the voice, one session per message", policy="block")}
    outputs = {"out": Pad("arkit/blendshapes", "52 ARKit weights, the jaw open while the voice was loud")}
    params = {
        "latency_ms": Param(float, 150.0, "how far behind the voice the face is made (declared)", min=0.0, max=5000.0),
        "rate": Param(float, 60.0, "frames a second", min=1.0, max=240.0),
        "threshold": Param(float, 0.05, "loud: RMS over a millisecond above this (full scale 1)", min=0.0, max=1.0),
        "session": Param(str, "default", "the session of the face"),
    }

    @classmethod
    def latency_ns(cls, params: Mapping[str, Any]) -> int:
        return int(round(float(params["latency_ms"]) * 1e6))

    def setup(self) -> None:
        self.edges: deque[tuple[int, bool]] = deque()  # (pts, loud from then on), in order
        self.loud = False  # the newest millisecond of voice
        self.open = False  # the face's jaw: the voice latency_ms ago
        self.every(1.0 / self.p.rate, self._tick)

    def process(self, pad: str, msg: Message) -> None:
        pcm = np.asarray(msg.arrays["pcm"], np.float64).reshape(-1) / 32768
        rate = int(msg.data["rate"])
        per = max(1, rate * _STEP_NS // 1_000_000_000)
        n = len(pcm) // per
        if not n:
            return
        rms = np.sqrt((pcm[:n * per].reshape(n, per) ** 2).mean(axis=1))
        for i, loud in enumerate((rms > self.p.threshold).tolist()):
            if loud != self.loud:
                self.loud = loud
                self.edges.append((msg.pts_ns + i * _STEP_NS, loud))

    def _tick(self) -> None:
        now = self.now_ns()
        media = now - int(round(self.p.latency_ms * 1e6))
        while self.edges and self.edges[0][0] <= media:
            _, self.open = self.edges.popleft()
        weights = np.zeros((1, 52), np.float32)
        weights[0, _JAW] = 1.0 if self.open else 0.0
        self.emit("out", Message("arkit/blendshapes", {}, {"weights": weights}, pts_ns=now, session=[self.p.session]))
