"""The recent acoustic articulation of one session, sampled at any frame's pts.

Frames come in runs (``nodes.speech.articulation_msg``) at 10 ms; a frame is asked for at the
viseme's 60 Hz pts. Between two frames the value is interpolated; after the newest frame (the
voice stopped, or its audio has not come yet) the mouth is taken as silent, since a run ends with
an explicit closed frame when the voice stops and a live source's latency covers its frames.
"""
from __future__ import annotations

import numpy as np

from ..speech.articulation import CHANNELS, FRAME_NS

_STALE_NS = 3 * FRAME_NS  # asked this far past the newest frame: silent


class ArticulationTrack:
    """Times (int64 ns) and values (n, 4) of one session's articulation frames, oldest first."""

    __slots__ = ("times", "values")

    def __init__(self) -> None:
        self.times = np.zeros(0, np.int64)
        self.values = np.zeros((0, len(CHANNELS)), np.float32)

    def add(self, first_pts_ns: int, frames: np.ndarray) -> None:
        """A run; it replaces what the track held from its first pts on (a source that restarts)."""
        t = first_pts_ns + np.arange(len(frames), dtype=np.int64) * FRAME_NS
        keep = self.times < first_pts_ns
        self.times = np.concatenate([self.times[keep], t])
        self.values = np.concatenate([self.values[keep], frames.astype(np.float32)])

    def trim(self, before_ns: int) -> None:
        """Forget the frames before ``before_ns`` but the last of them (interpolation needs it)."""
        i = int(np.searchsorted(self.times, before_ns)) - 1
        if i > 0:
            self.times, self.values = self.times[i:], self.values[i:]

    def newest_ns(self) -> int:
        return int(self.times[-1]) if len(self.times) else -(1 << 62)

    def at(self, t: int) -> np.ndarray | None:
        """The (4,) values at pts t; zeros (silent) past the newest frame; None before the first."""
        if not len(self.times) or t < self.times[0]:
            return None
        if t > self.times[-1] + _STALE_NS:
            return np.zeros(len(CHANNELS), np.float32)
        i = int(np.searchsorted(self.times, t, side="right"))
        if i >= len(self.times):
            return self.values[-1]
        t0, t1 = self.times[i - 1], self.times[i]
        u = 0.0 if t1 <= t0 else (t - t0) / (t1 - t0)
        return (1.0 - u) * self.values[i - 1] + u * self.values[i]
