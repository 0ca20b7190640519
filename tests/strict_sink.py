"""A node type that lives outside the package (named as module:Class in a graph) and accepts one caps."""
from runtime import Message, Node, Pad


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


class Served(Node):
    """Passes frames on and counts the requests that come back to it on a feedback link."""

    inputs = {"in": Pad(), "requests": Pad("avatar/request", required=False)}
    outputs = {"out": Pad(same_as="in")}

    def setup(self):
        self.requests = 0

    def process(self, pad, msg):
        if pad == "requests":
            self.requests += 1
            return None
        return msg

    def stats(self):
        return {"requests": self.requests}


class Requester(Node):
    """A sink that asks upstream for something on every message it gets."""

    inputs = {"in": Pad()}
    outputs = {"requests": Pad("avatar/request")}

    def process(self, pad, msg):
        self.emit("requests", Message("avatar/request", {"keyframe": [str(msg.seq)]}))
