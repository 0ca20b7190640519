"""A node type for the log tests (named as ``tests.log_node:Tagger`` in a graph)."""
from runtime import Message, Node, Pad
from runtime.logs import message_ids


class Tagger(Node):
    """Gives every frame a trace id, logs a WARNING about it with its session and trace, passes it on."""

    inputs = {"in": Pad()}
    outputs = {"out": Pad(same_as="in")}

    def process(self, pad: str, msg: Message) -> Message:
        n = msg.data.get("n")
        msg = msg.replace(trace=f"t{n}")
        self.log.warning("frame %s tagged", n, extra={**message_ids(msg), "frame": n})
        return msg
