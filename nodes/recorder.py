"""recorder: writes every message it gets to a msgpack stream file (see runtime.recording)."""
from __future__ import annotations

from runtime import Message, Node, Pad, Param
from runtime.recording import RecordingWriter
from runtime.states import READY


class Recorder(Node):
    """Writes every message, with its link seq and arrival time, to a msgpack stream file."""

    inputs = {"in": Pad(policy="block")}  # a file must lose nothing (a launch line's link blocks)
    params = {
        "path": Param(str, "recording.msgpack", "file to write (parent folders are created); empty: write nothing "
                                                "(a graph's recording that is off unless an arg names a file)",
                      mutable=READY),
        "flush_every": Param(int, 60, "flush to disk every N messages (always on EOS and stop)", min=1),
    }

    def setup(self) -> None:
        self.writer = RecordingWriter(self.p.path) if self.p.path else None
        self.ignored = 0

    def process(self, pad: str, msg: Message) -> None:
        if self.writer is None:
            self.ignored += 1
            return
        self.writer.write(msg, self.now_ns())
        if self.writer.count % self.p.flush_every == 0:
            self.writer.flush()

    def on_eos(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def teardown(self) -> None:
        if getattr(self, "writer", None) is not None:
            self.writer.close()

    def stats(self) -> dict:
        return {"written": self.writer.count if self.writer is not None else 0, "ignored": self.ignored,
                "path": self.p.path}
