"""A node type for the latency tests (``tests.latency_node:Holder`` in a graph): passes frames on,
declares ``hold_ms`` as its latency and reports the upstream latency the runner told it."""
from typing import Any, Mapping

from runtime import Message, Node, Pad, Param


class Holder(Node):
    """Passes every message on; declares hold_ms of latency; its stats show what the runner told it."""

    inputs = {"in": Pad()}
    outputs = {"out": Pad(same_as="in")}
    params = {"hold_ms": Param(float, 0.0, "latency this node declares", min=0.0)}

    @classmethod
    def latency_ns(cls, params: Mapping[str, Any]) -> int:
        return int(params["hold_ms"] * 1e6)

    def setup(self) -> None:
        self.told: list[int] = []

    def on_latency(self, upstream_ns: int, pads: Mapping[str, int]) -> None:
        self.told.append(upstream_ns)

    def process(self, pad: str, msg: Message) -> Message:
        return msg

    def stats(self) -> dict[str, Any]:
        return {"told": self.told}
