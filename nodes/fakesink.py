"""fakesink: takes anything and counts it."""
from __future__ import annotations

import sys

from runtime import Message, Node, Pad, Param


class FakeSink(Node):
    """Counts messages (and, with dump, prints one line per message)."""

    inputs = {"in": Pad()}
    params = {"dump": Param(bool, False, "print each message's header to stdout")}

    def setup(self) -> None:
        self.count = 0
        self.last_seq = -1

    def process(self, pad: str, msg: Message) -> None:
        self.count += 1
        self.last_seq = msg.seq
        if self.p.dump:
            print(f"{self.name}: seq={msg.seq} caps={msg.caps} pts={msg.pts_ns} session={msg.session} data={msg.data}",
                  file=sys.stdout, flush=True)

    def stats(self) -> dict:
        return {"count": self.count, "last_seq": self.last_seq}
