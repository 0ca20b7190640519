"""Cumulative histograms of the samples a ring buffer has seen, for stats and Prometheus.

Nodes keep their last N timings in a ring (cheap: one store per message). ``RingHistogram``
turns that ring into a histogram with counts since start without adding anything to the
per-message path: each time stats are asked it bins only the samples written since the
previous ask (``numpy.searchsorted``) and adds them to running totals.

Exact as long as stats are read at least once per ring length of samples (1024 messages for a
worker's processing time: 17 s at 60 Hz). When more were written in between, the overwritten
samples are counted in ``count`` exactly, and spread over the buckets (and ``sum``) in the
proportions of the ring's newest samples, so the buckets stay integer, monotonic and consistent
with ``count``.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

# microseconds; one bucket more ("+Inf") holds everything above the last bound
PROC_BOUNDS_US: tuple[float, ...] = (10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000)
LATENCY_BOUNDS_US: tuple[float, ...] = (100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000, 1000000)


class RingHistogram:
    """Running histogram over a ring of nanosecond samples, reported in microseconds."""

    def __init__(self, bounds_us: Sequence[float]):
        self.bounds_us = [float(b) for b in bounds_us]
        self._bounds_ns = np.asarray(self.bounds_us) * 1000.0
        self._counts = np.zeros(len(self.bounds_us) + 1, dtype=np.int64)  # per bucket, not cumulative
        self._sum_ns = 0.0
        self._seen = 0  # samples accounted for so far

    def update(self, ring: Any, written: int) -> dict[str, Any]:
        """Account for the samples written since the last call; ``written`` counts every sample ever
        stored, the newest at ``ring[(written - 1) % len(ring)]``. Returns ``as_dict()``."""
        new = written - self._seen
        if new > 0:
            size = len(ring)
            k = min(new, size)
            values = np.asarray(ring, dtype=np.float64)[np.arange(written - k, written) % size]
            counts = np.bincount(np.searchsorted(self._bounds_ns, values, side="left"), minlength=len(self._counts))
            total = float(values.sum())
            if new > k:  # overwritten before anyone asked: spread them like the newest samples
                counts = _apportion(counts, new)
                total *= new / k
            self._counts += counts
            self._sum_ns += total
            self._seen = written
        return self.as_dict()

    def as_dict(self) -> dict[str, Any]:
        """``le_us``: bucket bounds; ``buckets``: cumulative counts, one per bound then +Inf."""
        return {"le_us": self.bounds_us, "buckets": np.cumsum(self._counts).tolist(),
                "sum_us": self._sum_ns / 1000.0, "count": int(self._seen)}


def _apportion(counts: np.ndarray, total: int) -> np.ndarray:
    """Integer counts summing to ``total`` in the proportions of ``counts`` (largest remainder)."""
    exact = counts * (total / counts.sum())
    out = np.floor(exact).astype(np.int64)
    short = total - int(out.sum())
    if short:
        out[np.argsort(out - exact)[:short]] += 1
    return out
