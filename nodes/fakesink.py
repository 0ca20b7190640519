"""fakesink: takes anything and counts it, with end-to-end latency from each message's pts."""
from __future__ import annotations

import sys

import numpy as np

from runtime import Message, Node, Pad, Param
from runtime.histogram import LATENCY_BOUNDS_US, RingHistogram

_RING = 4096


class FakeSink(Node):
    """Counts messages and measures their latency since pts (and, with dump, prints each)."""

    inputs = {"in": Pad()}
    params = {"dump": Param(bool, False, "print each message's header to stdout")}
    passthrough = True  # it reads pts and seq only (unless dump): the body is never unpacked

    def setup(self) -> None:
        self.count = 0
        self.last_seq = -1
        self.first_ns = self.last_ns = 0
        self.latency_ns = np.zeros(_RING, dtype=np.int64)
        self.latency_hist = RingHistogram(LATENCY_BOUNDS_US)  # binned from the ring when stats are asked

    def process(self, pad: str, msg: Message) -> None:
        t = self.now_ns()
        if not self.count:
            self.first_ns = t
        self.last_ns = t
        self.latency_ns[self.count % _RING] = t - msg.pts_ns
        self.count += 1
        self.last_seq = msg.seq
        if self.p.dump:
            print(f"{self.name}: seq={msg.seq} caps={msg.caps} pts={msg.pts_ns} session={msg.session} data={msg.data}",
                  file=sys.stdout, flush=True)

    def stats(self) -> dict:
        lat = self.latency_ns[: min(self.count, _RING)] / 1000.0
        p50, p99 = (np.percentile(lat, [50, 99]).tolist() if len(lat) else (0.0, 0.0))
        return {"count": self.count, "last_seq": self.last_seq, "first_ns": self.first_ns, "last_ns": self.last_ns,
                "latency_us_p50": p50, "latency_us_p99": p99,
                "latency_hist": self.latency_hist.update(self.latency_ns, self.count)}
