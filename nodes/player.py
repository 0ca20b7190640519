"""player: replays a recorder file at its recorded timing."""
from __future__ import annotations

from runtime import Node, Pad, Param
from runtime.recording import read_recording
from runtime.states import READY


class Player(Node):
    """Replays a msgpack recording at recorded timing (scaled by speed), optionally looping."""

    outputs = {"out": Pad(caps_param="caps", doc="the recorded messages")}
    params = {
        "path": Param(str, "recording.msgpack", "recording written by recorder", mutable=READY),
        "caps": Param(str, "any", "caps the recording holds (for load-time checks)"),
        "speed": Param(float, 1.0, "playback speed; 0 = as fast as the links take them", min=0.0, max=1000.0),
        "loop": Param(bool, False, "start again at the end instead of EOS"),
    }

    def setup(self) -> None:
        self.messages = read_recording(self.p.path)
        self.t_ns = [0] * len(self.messages)
        if self.messages:
            t0 = self.messages[0].pts_ns
            self.t_ns = [m.pts_ns - t0 for m in self.messages]
        self.index = 0
        self.sent = 0
        self.started_ns = 0
        self.timer = None

    def on_play(self) -> None:
        if self.timer is None:
            self.started_ns = self.now_ns()
            self.timer = self.call_later(0.0, self.tick)

    def tick(self) -> None:
        """Emit everything that is due, then sleep until the next message."""
        speed = self.p.speed
        while self.index < len(self.messages):
            due = self.started_ns + (self.t_ns[self.index] / speed if speed > 0 else 0)
            now = self.now_ns()
            if due > now:
                self.timer = self.call_later((due - now) / 1e9, self.tick)
                return
            msg = self.messages[self.index]
            self.emit("out", msg.replace(pts_ns=now, seq=-1))
            self.index += 1
            self.sent += 1
            if speed == 0:
                self.timer = self.call_later(0.0, self.tick)
                return
        if self.p.loop and self.messages:
            self.index = 0
            self.started_ns = self.now_ns()
            self.timer = self.call_later(0.0, self.tick)
        else:
            self.end_stream()

    def stats(self) -> dict:
        return {"sent": self.sent, "total": len(self.messages)}
