"""A user's own node type that takes emotions (``tests.moody_node:Moody`` in a graph): it declares the
"emotion" interface, so the control API's POST /emotion reaches it as it reaches a blender."""
from runtime import Node, Pad, Param


class Moody(Node):
    """Keeps an emotion and an intensity, and does nothing else with them."""

    interfaces = frozenset({"emotion"})
    inputs = {"in": Pad(required=False)}
    params = {
        "emotion": Param(str, "neutral", "the emotion"),
        "intensity": Param(float, 1.0, "its strength", min=0.0, max=1.0),
    }
