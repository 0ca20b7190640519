"""A node type that lives outside the package (named as module:Class in a graph) and accepts one caps."""
from runtime import Node, Pad


class StrictSink(Node):
    """Accepts only arkit/blendshapes."""

    inputs = {"in": Pad("arkit/blendshapes")}
