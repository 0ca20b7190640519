"""A frame clock for nodes that emit one frame per timer tick (blender, viseme).

The clock starts at the node's ``now_ns`` and advances one frame period per tick, so a node's
timing is counted ticks (exact under ``NodeHarness``'s simulated time). Timers only ever run late,
so when lost ticks leave the clock more than ``max_lag_ms`` behind the real clock it jumps forward.
"""
from __future__ import annotations

from runtime import Node, Param

FRAME_CLOCK_PARAMS = {
    "rate": Param(float, 60.0, "output frames per second", min=1.0, max=1000.0),
    "max_lag_ms": Param(float, 50.0, "the frame clock counts frame periods; if lost timer ticks leave it this "
                        "far behind the pts clock it jumps forward; 0 = never (exact frame-count time: tests, "
                        "offline renders)", min=0.0),
}


class FrameClockNode(Node):
    """Base of timer-driven frame emitters: call ``start_clock`` in setup, ``step_clock`` per tick."""

    def start_clock(self) -> None:
        self.period_ns = int(round(1e9 / self.p.rate))
        self.clock_ns = self.now_ns()
        self.timer = None

    def step_clock(self) -> None:
        """Advance the frame clock one period (jumping forward only when ticks were lost)."""
        self.clock_ns += self.period_ns
        if self.p.max_lag_ms > 0:
            real = self.now_ns()
            if real - self.clock_ns > self.p.max_lag_ms * 1e6:
                self.clock_ns = real

    def retime(self) -> None:
        """After a live ``rate`` change: new period, timer restarted at the new rate."""
        self.period_ns = int(round(1e9 / self.p.rate))
        if self.timer is not None:
            self.timer.cancel()
            self.timer = self.every(1.0 / self.p.rate, self.tick)

    def on_play(self) -> None:
        self.clock_ns = max(self.clock_ns, self.now_ns())
        if self.timer is None:
            self.timer = self.every(1.0 / self.p.rate, self.tick)

    def tick(self) -> None:
        raise NotImplementedError
