"""Node types for the QoS agent's live test (``tests.qos_nodes:Crowd``, ``tests.qos_nodes:Slow``): a
crowd of sessions in one batch, and a node whose work grows with the rows it gets and can be made
slow while the graph runs."""
from __future__ import annotations

import time
from typing import Any

import numpy as np

from runtime import Message, Node, Pad, Param

N_ARKIT = 52


class Crowd(Node):
    """Every session's ARKit frame in one batch at ``rate``, stamped with the time it is sent."""

    outputs = {"out": Pad("arkit/blendshapes", "weights (S, 52); data active")}
    params = {
        "sessions": Param(int, 24, "sessions in every batch: s0, s1, ...", min=1, max=100_000),
        "rate": Param(float, 60.0, "batches a second", min=1.0, max=1000.0),
    }

    def setup(self) -> None:
        self.ids = [f"s{i}" for i in range(self.p.sessions)]
        self.weights = np.random.default_rng(1).random((self.p.sessions, N_ARKIT), dtype=np.float32)
        self.active = [True] * self.p.sessions
        self.sent = 0
        self.every(1.0 / self.p.rate, self.tick)

    def tick(self) -> None:
        self.weights[:, self.sent % N_ARKIT] = (self.sent % 100) / 100.0  # something changes every frame
        self.emit("out", Message("arkit/blendshapes", {"active": self.active}, {"weights": self.weights.copy()},
                                 pts_ns=self.now_ns(), session=self.ids))
        self.sent += 1

    def stats(self) -> dict[str, Any]:
        return {"sent": self.sent}


class Slow(Node):
    """Passes batches on after ``row_ms`` per row (a sleep: falling behind without taking a core
    from the other tests); reports the coarsest level of detail it saw for the ``track``ed sessions."""

    inputs = {"in": Pad("arkit/blendshapes", "batches with data 'lod' per row (a lod node's output)")}
    outputs = {"out": Pad(same_as="in")}
    params = {
        "row_ms": Param(float, 0.0, "milliseconds each row of a batch takes", min=0.0, max=100.0),
        "track": Param(list, [], "session ids whose coarsest level is reported"),
    }

    def setup(self) -> None:
        self.rows = self.batches = 0
        self.coarsest: dict[str, int] = {}
        self.seen: dict[str, int] = {}  # frames per tracked session

    def process(self, pad: str, msg: Message) -> Message:
        sessions = msg.session if isinstance(msg.session, list) else [msg.session]
        if self.p.row_ms > 0:
            time.sleep(len(sessions) * self.p.row_ms / 1000.0)
        levels = msg.data.get("lod") if isinstance(msg.data, dict) else None
        if self.p.track and isinstance(levels, list):
            for sid, lv in zip(sessions, levels):
                if sid in self.p.track:
                    self.coarsest[sid] = max(self.coarsest.get(sid, 0), int(lv))
                    self.seen[sid] = self.seen.get(sid, 0) + 1
        self.rows += len(sessions)
        self.batches += 1
        return msg

    def stats(self) -> dict[str, Any]:
        return {"rows": self.rows, "batches": self.batches, "coarsest": dict(self.coarsest), "seen": dict(self.seen)}
