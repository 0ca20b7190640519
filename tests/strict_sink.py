"""A node type that lives outside the package (named as module:Class in a graph) and accepts one caps."""
from runtime import Node, Pad


class StrictSink(Node):
    """Accepts only arkit/blendshapes."""

    inputs = {"in": Pad("arkit/blendshapes")}


class PassThrough(Node):
    """A second passthrough type, to hot-swap to: marks what it passes."""

    inputs = {"in": Pad()}
    outputs = {"out": Pad(same_as="in")}

    def process(self, pad, msg):
        msg.data["passed"] = True
        return msg
