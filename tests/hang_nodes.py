"""Node types that hang on purpose, named as module:Class in the hang tests' graphs."""
from __future__ import annotations

import os
import time

from runtime import Message, Node, Pad, Param


class Spinner(Node):
    """Passes messages on, and after ``hang_after`` of them spins in ``process()`` for ever, once:
    it leaves ``marker`` behind, so the process that replaces it passes everything."""

    inputs = {"in": Pad()}
    outputs = {"out": Pad(same_as="in")}
    params = {
        "hang_after": Param(int, 30, "messages to pass before spinning", min=0),
        "marker": Param(str, "spun", "file made when it spins; a spinner that finds it never spins"),
    }

    def setup(self) -> None:
        self.count = 0

    def process(self, pad: str, msg: Message) -> Message:
        self.count += 1
        if self.count > self.p.hang_after and not os.path.exists(self.p.marker):
            open(self.p.marker, "w").close()
            while True:  # node code that never returns: the loop cannot turn
                pass
        return msg


class SlowSetup(Node):
    """Passes messages on after a setup that takes ``setup_s`` (a model being loaded)."""

    inputs = {"in": Pad()}
    outputs = {"out": Pad(same_as="in")}
    params = {"setup_s": Param(float, 2.0, "how long setup takes", min=0.0)}

    def setup(self) -> None:
        time.sleep(self.p.setup_s)

    def process(self, pad: str, msg: Message) -> Message:
        return msg
