"""One Euro filter (Casiez, Roussel, Vogel, CHI 2012) on (S, N) arrays, one state row per session slot.

Why this filter: a fixed low-pass either jitters when still or lags when moving. The One Euro
filter raises its cutoff with the signal's speed, so a still face is smoothed hard while a
blink or a fast mouth movement passes with little lag. State is kept in arrays indexed by
session slot, so a whole batch is filtered with a handful of numpy operations (the reference);
``nodes.face._filters.one_euro`` does the same arithmetic in one compiled pass when it is built.

The params are per slot too (``prm``: min_cutoff, beta, d_cutoff): the filter's own values for
every slot, except the slots given their own (``own``), so one session can run other params (a
canary on that session alone) at no cost to the others.
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


_NAMES = ("min_cutoff", "beta", "d_cutoff")


class OneEuro:
    """Adaptive low-pass over rows of session slots; params may be changed between calls, for all
    slots (the attributes) or for some (``own``)."""

    def __init__(self, n: int, min_cutoff: float = 1.0, beta: float = 0.0, d_cutoff: float = 1.0,
                 capacity: int = 8):
        self.n = n
        self.x = np.zeros((capacity, n), dtype=np.float64)
        self.dx = np.zeros((capacity, n), dtype=np.float64)
        self.primed = np.zeros(capacity, dtype=bool)
        self.prm = np.zeros((capacity, 3), dtype=np.float64)  # each slot's min_cutoff, beta, d_cutoff
        self.mine: dict[int, tuple[float | None, float | None, float | None]] = {}  # slot -> its own (None: the filter's)
        self._all = (float(min_cutoff), float(beta), float(d_cutoff))
        self._fill()
        self.compiled = _c  # the compiled pass, or None: the numpy reference (fixed per filter)

    # the filter's own params: every slot without its own value follows them
    min_cutoff = property(lambda self: self._all[0], lambda self, v: self._set(0, v))
    beta = property(lambda self: self._all[1], lambda self, v: self._set(1, v))
    d_cutoff = property(lambda self: self._all[2], lambda self, v: self._set(2, v))

    def _set(self, i: int, value: float) -> None:
        vals = list(self._all)
        vals[i] = float(value)
        self._all = (vals[0], vals[1], vals[2])
        self._fill()

    def _fill(self) -> None:
        self.prm[:] = self._all
        for slot, own in self.mine.items():
            self.prm[slot] = [a if v is None else v for a, v in zip(self._all, own)]

    def own(self, slot: int, min_cutoff: float | None = None, beta: float | None = None,
            d_cutoff: float | None = None) -> None:
        """Give one slot its own params (None: the filter's); all None gives it back to the filter's."""
        own = tuple(None if v is None else float(v) for v in (min_cutoff, beta, d_cutoff))
        if all(v is None for v in own):
            self.mine.pop(int(slot), None)
        else:
            self.ensure(int(slot) + 1)
            self.mine[int(slot)] = own  # type: ignore[assignment]
        self._fill()

    def params_of(self, slot: int) -> dict[str, float]:
        """The params a slot runs with."""
        return dict(zip(_NAMES, map(float, self.prm[slot]))) if slot < len(self.prm) else dict(zip(_NAMES, self._all))

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
        prm = np.empty((size, 3), dtype=np.float64)
        prm[:old], prm[old:] = self.prm, self._all
        self.prm = prm

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
                                          self.prm, out, edx):
                    return out
        prev, dprev, primed = self.x.take(slots, axis=0), self.dx.take(slots, axis=0), self.primed[slots]
        if self.mine:  # some slots have their own params: a column of each (the same arithmetic per value)
            prm = self.prm.take(slots, axis=0)
            min_cutoff, beta, d_cutoff = prm[:, 0:1], prm[:, 1:2], prm[:, 2:3]
        else:
            min_cutoff, beta, d_cutoff = self._all
        # in place where it can be: this runs for every batch of every tick
        diff = x - prev
        edx = diff / dt
        edx -= dprev
        edx *= _alpha(d_cutoff, dt)
        edx += dprev  # dprev + alpha_d * (dx - dprev)
        a = np.abs(edx)
        a *= beta
        a += min_cutoff  # the cutoff; then its smoothing factor r / (1 + r), r = 2 pi cutoff dt
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
