"""arkit_replay: plays a Live Link Face CSV export as if the phone were streaming it.

The take is read by ``nodes.livelink.read_take`` (columns by name, in Apple order) and emitted
in ``graphs/mappings/arkit52.yaml`` order, with the same caps and arrays as ``arkit_source``.
Any problem with the file is an error naming the file and line, at setup.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from runtime import Message, Node, Pad, Param
from runtime.states import READY

from .livelink import CAPS, read_take


class ArkitReplay(Node):
    """Plays a Live Link Face CSV export at its recorded timing, as a batch of one session."""

    outputs = {"out": Pad(caps=CAPS, doc="weights (1,52), pose (1,9), arrival_ns (1,), frame (1,); data active")}
    params = {
        "path": Param(str, "", "Live Link Face CSV export (Timecode,BlendShapeCount,...)", mutable=READY),
        "loop": Param(bool, False, "start again at the end instead of EOS"),
        "speed": Param(float, 1.0, "playback speed; 0 = as fast as the links take them", min=0.0, max=1000.0),
        "session": Param(str, "replay", "session id of the emitted frames"),
        "fps": Param(float, 60.0, "frame rate the take's timecodes count frames at", min=1.0, max=1000.0, mutable=READY),
    }

    def setup(self) -> None:
        if not self.p.path:
            raise ValueError("param 'path' is required: a Live Link Face CSV export")
        self.take = read_take(self.p.path, self.p.fps)
        w = self.take.weights
        self.clamped = int(np.count_nonzero((w < 0.0) | (w > 1.0)))
        self.weights = np.clip(w, 0.0, 1.0)
        self.t_ns = (self.take.times * 1e9).astype(np.int64)
        self.period_ns = int(1e9 / self.p.fps)
        self.index = self.sent = self.loops = 0
        self.started_ns = self.paused_ns = 0
        self.session = [self.p.session]
        self.timer = None

    def on_play(self) -> None:
        if self.timer is None:
            self.started_ns = self.now_ns()
            self.timer = self.call_later(0.0, self.tick)
        elif self.paused_ns:  # keep the recorded spacing across a pause
            self.started_ns += self.now_ns() - self.paused_ns
        self.paused_ns = 0

    def on_pause(self) -> None:
        self.paused_ns = self.now_ns()

    def on_params(self, changed: dict) -> None:
        if "session" in changed:
            self.session = [self.p.session]
        if "speed" in changed and self.timer is not None:  # go on from here at the new speed
            self.timer.cancel()
            self._restart_clock(self.index)
            self.timer = self.call_later(0.0, self.tick)

    def _restart_clock(self, index: int) -> None:
        """Make row ``index`` due now (at the current speed)."""
        speed = self.p.speed
        offset = self.t_ns[index] / speed if speed > 0 and index < len(self.t_ns) else 0
        self.started_ns = self.now_ns() - int(offset)

    def tick(self) -> None:
        """Emit every row that is due, then sleep until the next one."""
        speed, n = self.p.speed, len(self.t_ns)
        while True:
            if self.index >= n:
                if not self.p.loop:
                    self.end_stream()
                    return
                self.loops += 1
                self.index = 0
                if speed > 0:  # the first row again, one frame after the last
                    self.started_ns += int((self.t_ns[-1] + self.period_ns) / speed)
            now = self.now_ns()
            due = self.started_ns + int(self.t_ns[self.index] / speed) if speed > 0 else now
            if due > now:
                self.timer = self.call_later((due - now) / 1e9, self.tick)
                return
            self._emit(self.index, due, now)
            self.index += 1
            if speed == 0:  # one row per loop turn: links and control requests get their turn
                self.timer = self.call_later(0.0, self.tick)
                return

    def _emit(self, i: int, pts: int, now: int) -> None:
        arrays = {"weights": self.weights[i:i + 1], "pose": self.take.pose[i:i + 1],
                  "arrival_ns": np.array([now], np.int64), "frame": np.array([i], np.int64)}
        self.emit("out", Message(CAPS, {"active": [True]}, arrays, pts_ns=pts, session=self.session))
        self.sent += 1

    def stats(self) -> dict[str, Any]:
        return {"sent": self.sent, "frames": len(self.t_ns), "index": self.index, "loops": self.loops,
                "clamped": self.clamped, "empty_rows": self.take.empty_rows, "path": self.p.path}
