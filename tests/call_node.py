"""Node types for the node-call tests (``tests.call_node:Counter`` in a graph): a node that takes
calls on its 'count' interface, and a sink that holds its first message until told to let go."""
from __future__ import annotations

import os
import time
from typing import Any, Mapping

from runtime import Message, Node, Pad, Param, ParamError


class Counter(Node):
    """Adds what it is told to a total; floods its output from a timer when asked (to be busy)."""

    interfaces = frozenset({"count"})
    outputs = {"out": Pad("test/count", required=False)}

    def setup(self) -> None:
        self.total = 0
        self.flooding = False
        self.sent = 0

    def on_call(self, interface: str, args: Mapping[str, Any]) -> Any:
        op = args.get("op")
        if op == "add":
            n = args.get("n")
            if not isinstance(n, int) or n < 0:
                raise ParamError(f"'n' must be a whole number >= 0, got {n!r}")
            self.total += n
            return {"total": self.total}
        if op == "flood":  # from a timer: node code that emits until the blocked link takes it all
            n = int(args["n"])
            self.call_later(0, lambda: self._flood(n))
            return {"flooding": n}
        if op == "peek":
            return {"flooding": self.flooding, "sent": self.sent, "total": self.total}
        if op == "unsendable":
            return {"what": object()}
        if op == "crash":
            return {"x": 1 // 0}
        raise ParamError(f"unknown op {op!r}")

    def _flood(self, n: int) -> None:
        self.flooding = True
        for i in range(n):
            self.emit("out", Message("test/count", {"i": i}))
            self.sent += 1
        self.flooding = False

    def stats(self) -> dict:
        return {"total": self.total, "flooding": self.flooding, "sent": self.sent}


class Gate(Node):
    """A sink that holds its first message until the file ``release`` exists (at most 60 s)."""

    inputs = {"in": Pad(policy="block")}
    params = {"release": Param(str, "", "file whose existence lets the first message through")}

    def setup(self) -> None:
        self.count = 0

    def process(self, pad: str, msg: Message) -> None:
        deadline = time.monotonic() + 60
        while self.count == 0 and not os.path.exists(self.p.release) and time.monotonic() < deadline:
            time.sleep(0.005)
        self.count += 1

    def stats(self) -> dict:
        return {"count": self.count}
