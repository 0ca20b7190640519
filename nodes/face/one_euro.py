"""One Euro filter (Casiez, Roussel, Vogel, CHI 2012) on (S, N) arrays, one state row per session slot.

Why this filter: a fixed low-pass either jitters when still or lags when moving. The One Euro
filter raises its cutoff with the signal's speed, so a still face is smoothed hard while a
blink or a fast mouth movement passes with little lag. State is kept in arrays indexed by
session slot, so a whole batch is filtered with a handful of numpy operations (the reference);
``nodes.face._filters.one_euro`` does the same arithmetic in one compiled pass when it is built.
"""
from __future__ import annotations

import numpy as np

from ..compiled import load

_c = load("nodes.face._filters")


def _alpha(cutoff: np.ndarray | float, dt: float | np.ndarray) -> np.ndarray | float:
    """Smoothing factor of a first-order low-pass with this cutoff (Hz) at time step dt (s):
    1 / (1 + tau / dt) with tau = 1 / (2 pi cutoff), written as r / (1 + r), r = 2 pi cutoff dt."""
    r = 2.0 * np.pi * cutoff * dt
    return r / (1.0 + r)


class OneEuro:
    """Adaptive low-pass over rows of session slots; params may be changed between calls."""

    def __init__(self, n: int, min_cutoff: float = 1.0, beta: float = 0.0, d_cutoff: float = 1.0,
                 capacity: int = 8):
        self.n = n
        self.min_cutoff, self.beta, self.d_cutoff = float(min_cutoff), float(beta), float(d_cutoff)
        self.x = np.zeros((capacity, n), dtype=np.float64)
        self.dx = np.zeros((capacity, n), dtype=np.float64)
        self.primed = np.zeros(capacity, dtype=bool)
        self.compiled = _c  # the compiled pass, or None: the numpy reference (fixed per filter)

    def ensure(self, capacity: int) -> None:
        """State rows for at least ``capacity`` slots (the blender keeps them as many as its slots)."""
        old = len(self.primed)
        if capacity <= old:
            return
        size = max(capacity, 2 * old)
        for name in ("x", "dx"):
            grown = np.zeros((size, self.n), dtype=np.float64)
            grown[:old] = getattr(self, name)
            setattr(self, name, grown)
        primed = np.zeros(size, dtype=bool)
        primed[:old] = self.primed
        self.primed = primed

    def reset(self, slots: np.ndarray | list[int]) -> None:
        """Forget these slots' history (a slot handed to a new session starts fresh)."""
        slots = np.asarray(slots, dtype=np.intp)
        if slots.size:
            self.ensure(int(slots.max()) + 1)
            self.primed[slots] = False

    def __call__(self, x: np.ndarray, dt: float, slots: np.ndarray | None = None) -> np.ndarray:
        """Filter one frame: row i of ``x`` belongs to slot ``slots[i]`` (default: row i is slot i)."""
        x = np.asarray(x, dtype=np.float64)
        if slots is None:
            slots = np.arange(len(x), dtype=np.intp)
        slots = np.asarray(slots, dtype=np.intp)
        if slots.size == 0:
            return x.copy()
        self.ensure(int(slots.max()) + 1)
        if self.compiled is not None and x.ndim == 2 and x.shape == (len(slots), self.n):
            rows = None
            if isinstance(dt, np.ndarray) and dt.shape == (len(slots), 1) and dt.dtype == np.float64:
                rows, step = np.ascontiguousarray(dt).reshape(-1), 0.0
            elif type(dt) in (float, int, np.float64):
                step = float(dt)
            else:
                step = None  # other broadcasts and precisions (a float32 step computes in float32): the reference
            if step is not None:
                out, edx = np.empty_like(x, order="C"), np.empty(x.shape)
                if self.compiled.one_euro(np.ascontiguousarray(x), step, rows, slots, self.x, self.dx, self.primed.view(np.uint8),
                               self.min_cutoff, self.beta, self.d_cutoff, out, edx):
                    return out
        prev, dprev, primed = self.x.take(slots, axis=0), self.dx.take(slots, axis=0), self.primed[slots]
        # in place where it can be: this runs for every batch of every tick
        diff = x - prev
        edx = diff / dt
        edx -= dprev
        edx *= _alpha(self.d_cutoff, dt)
        edx += dprev  # dprev + alpha_d * (dx - dprev)
        a = np.abs(edx)
        a *= self.beta
        a += self.min_cutoff  # the cutoff; then its smoothing factor r / (1 + r), r = 2 pi cutoff dt
        a *= 2.0 * np.pi * dt
        np.divide(a, a + 1.0, out=a)
        diff *= a
        out = diff
        out += prev
        if not primed.all():  # a slot's first frame passes unchanged with zero speed
            fresh = ~primed
            out[fresh] = x[fresh]
            edx[fresh] = 0.0
        self.x[slots] = out
        self.dx[slots] = edx
        self.primed[slots] = True
        return out
