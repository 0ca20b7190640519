"""How well the capture smoother does, measured live: jitter at rest, lag in motion, input noise.

Why: Casiez's tuning of a One Euro filter (CHI 2012) asks two questions, "does it jitter when the
face is still?" (lower ``min_cutoff``) and "does it lag when the face moves fast?" (raise
``beta``). An agent (``nodes.agents.animation``) asks them continuously, so the blender answers
them per second of its own frames.

What is measured, per channel of the 52 weights, on the frames of a few sampled sessions (the
first ``sessions`` slots, whatever the number of sessions: a frame costs a few array writes, and
every ``BLOCK`` frames of a session are measured in one vectorised pass), and only on clean
frames (capture fully in, not speaking, no emotion transition nor micro-expression under way:
the smoother's input is then known exactly, the capture plus the emotion in place):

- speed: ``|x(t) - x(t - SPAN frames)|`` per second, of the smoother's input ``x``, over
  ``SPAN`` frames so the capture's noise hardly counts as motion;
- at rest (speed below ``rest_speed``, the input not flat): the RMS second difference of the
  output (``jitter``) and of the input (``noise``), in weight units per frame, as
  ``tools/quality.py`` counts jitter (the second difference leaves out slow drift);
- in motion (speed above ``motion_speed``): the shift in frames, 0 .. ``SHIFTS - 1``, at which
  the output best matches the input's past (least squares, refined by a parabola), in ms
  (``lag_ms``: 0 is within half a frame; the largest shift means at least that), and the mean
  speed there (``speed``).

A window of ``window_s`` seconds of the blender's time gives one report; a value with too few
samples behind it (the face never still, never fast) is None.
"""
from __future__ import annotations

from typing import Any

import numpy as np

SPAN = 8  # frames over which the input's speed is taken (133 ms at 60 fps)
SHIFTS = 16  # lags searched: 0 .. 15 frames (250 ms at 60 fps)
REST_SPEED = 0.1  # weight units per second: below this a channel is still
MOTION_SPEED = 1.0  # above this it moves fast (a mouth opening: 2 .. 5 units/s)
MIN_REST = 100  # channel samples a window needs for jitter and noise
MIN_MOTION = 30  # ... and for lag
BLOCK = 30  # frames a sampled session's buffer takes before they are measured, all at once
_HISTORY = max(SPAN, SHIFTS - 1)  # frames of history a measured frame needs


class SmoothingMeter:
    """Per-window jitter at rest, lag in motion and input noise of the sampled sessions' frames.
    A session's buffered frames are also measured when a window ends, and when its frames stop
    being clean or stop coming (its history then starts again)."""

    def __init__(self, sessions: int, n: int, window_s: float = 1.0, rest_speed: float = REST_SPEED,
                 motion_speed: float = MOTION_SPEED, max_gap_s: float = 0.1):
        self.k, self.n, self.window_s = int(sessions), int(n), float(window_s)
        self.rest_speed, self.motion_speed, self.max_gap_s = float(rest_speed), float(motion_speed), float(max_gap_s)
        size = _HISTORY + BLOCK
        self.bx = np.zeros((self.k, size, self.n))  # per sampled slot: its recent input frames, oldest first
        self.by = np.zeros((self.k, size, self.n))  # ... output frames
        self.bt = np.zeros((self.k, size))  # ... and their times
        self.fill = np.zeros(self.k, dtype=np.intp)  # frames in each buffer; the first _HISTORY are measured already
        self.last_t = np.full(self.k, -np.inf)
        self.window_end: float | None = None
        self.windows = 0
        self.report: dict[str, Any] = {"jitter": None, "noise": None, "lag_ms": None, "speed": None,
                                       "rest": 0, "motion": 0}
        self._clear()

    def _clear(self) -> None:
        self.rest = self.motion = self.steps = 0
        self.sx2 = self.sy2 = self.speed_sum = self.dt_sum = 0.0
        self.err = np.zeros(SHIFTS)

    def reset(self, slots: np.ndarray) -> None:
        """These slots went to new sessions: what their old ones showed is measured, and their
        history starts again."""
        for r in np.asarray(slots, dtype=np.intp).tolist():
            if r < self.k:
                self._flush(r)
                self.fill[r] = 0

    def observe(self, slots: np.ndarray, t: float, x: np.ndarray, y: np.ndarray, clean: np.ndarray) -> None:
        """Frames at time ``t`` (s): row i is slot ``slots[i]``, smoother input ``x[i]`` and output
        ``y[i]`` (only the first ``n`` columns are read), measurable where ``clean[i]``. Rows of
        slots beyond the sampled ones are skipped; the caller may pass only the sampled rows."""
        if self.window_end is None:
            self.window_end = t + self.window_s
        elif t >= self.window_end:
            self._close(t)
        sampled = slots < self.k
        if not sampled.all():
            slots, x, y, clean = slots[sampled], x[sampled], y[sampled], clean[sampled]
        if not slots.size:
            return
        broken = ~clean | (t - self.last_t[slots] > self.max_gap_s)
        if broken.any():  # a gap, speech, a transition: what came before is measured, then a fresh start
            self.reset(slots[broken])
            if not clean.all():
                slots, x, y = slots[clean], x[clean], y[clean]
                if not slots.size:
                    return
        at = self.fill[slots]
        self.bx[slots, at] = x[:, :self.n]
        self.by[slots, at] = y[:, :self.n]
        self.bt[slots, at] = t
        self.last_t[slots] = t
        self.fill[slots] = at + 1
        for r in slots[at + 1 == self.bx.shape[1]].tolist():
            self._flush(r)

    def _flush(self, r: int) -> None:
        """Measure slot row ``r``'s frames not measured yet, then keep the last ``_HISTORY`` as the
        history of the next ones."""
        fill = int(self.fill[r])
        if fill <= _HISTORY:
            return
        xs, ys, ts = self.bx[r, :fill], self.by[r, :fill], self.bt[r, :fill]
        new = slice(_HISTORY, fill)  # the frames measured now; each has _HISTORY frames before it
        x0, y0 = xs[new], ys[new]
        speed = np.abs(x0 - xs[_HISTORY - SPAN:fill - SPAN]) / (ts[new] - ts[_HISTORY - SPAN:fill - SPAN])[:, None]
        d2x = x0 - 2.0 * xs[_HISTORY - 1:fill - 1] + xs[_HISTORY - 2:fill - 2]
        d2y = y0 - 2.0 * ys[_HISTORY - 1:fill - 1] + ys[_HISTORY - 2:fill - 2]
        flat = (x0 == xs[_HISTORY - 1:fill - 1]) & (x0 == xs[_HISTORY - 2:fill - 2])
        rest = (speed < self.rest_speed) & ~flat & np.isfinite(d2x + d2y)  # (NaN: neither still nor moving)
        self.rest += int(np.count_nonzero(rest))
        self.sx2 += float(np.square(d2x[rest]).sum())
        self.sy2 += float(np.square(d2y[rest]).sum())
        moving = (speed > self.motion_speed) & np.isfinite(y0)
        m = int(np.count_nonzero(moving))
        if m:
            self.motion += m
            self.speed_sum += float(speed[moving].sum())
            idx = np.flatnonzero(moving.ravel())
            t_i, ch = np.divmod(idx, self.n)
            t_i += _HISTORY
            past = xs[t_i[:, None] - np.arange(SHIFTS)[None, :], ch[:, None]]  # (m, SHIFTS): input j frames before
            self.err += np.square(ys[t_i, ch][:, None] - past).sum(axis=0)
        self.steps += fill - _HISTORY
        self.dt_sum += float(ts[fill - 1] - ts[_HISTORY - 1])
        keep = slice(fill - _HISTORY, fill)
        self.bx[r, :_HISTORY], self.by[r, :_HISTORY], self.bt[r, :_HISTORY] = xs[keep], ys[keep], ts[keep]
        self.fill[r] = _HISTORY

    def _close(self, t: float) -> None:
        """The window ended: the frames still buffered are measured, its report made, a fresh window."""
        for r in np.flatnonzero(self.fill > _HISTORY).tolist():
            self._flush(r)
        frame_s = self.dt_sum / self.steps if self.steps else 0.0
        rest_ok, motion_ok = self.rest >= MIN_REST, self.motion >= MIN_MOTION
        self.report = {
            "jitter": _round(np.sqrt(self.sy2 / self.rest)) if rest_ok else None,
            "noise": _round(np.sqrt(self.sx2 / self.rest)) if rest_ok else None,
            "lag_ms": round(float(best_shift(self.err)) * frame_s * 1000.0, 2) if motion_ok and frame_s > 0 else None,
            "speed": round(self.speed_sum / self.motion, 4) if self.motion else None,
            "rest": self.rest, "motion": self.motion,
        }
        self.windows += 1
        self._clear()
        assert self.window_end is not None
        nxt = self.window_end + self.window_s
        self.window_end = nxt if t < nxt else t + self.window_s  # after a gap: a window from now

    def stats(self, now: float) -> dict[str, Any]:
        """The last window's report; ``age_s``: how long ago (blender time ``now``) it closed."""
        age = None if self.window_end is None or not self.windows else round(max(0.0, now - self.window_end + self.window_s), 3)
        return {**self.report, "windows": self.windows, "age_s": age, "sessions": self.k}


def best_shift(err: np.ndarray) -> float:
    """The shift (fractional, in frames) of least error: the lowest point, refined by the parabola
    through it and its neighbours."""
    j = int(np.argmin(err))
    if 0 < j < len(err) - 1:
        a, b, c = err[j - 1], err[j], err[j + 1]
        curve = a - 2.0 * b + c
        if curve > 0:
            return j + 0.5 * (a - c) / curve
    return float(j)


def _round(x: float) -> float | None:
    return float(f"{x:.4g}") if np.isfinite(x) else None
