"""16 kHz mono int16 PCM, the ``audio/pcm`` rate, and the streaming resampler that gets audio there.

``Resampler`` is polyphase windowed-sinc in numpy only, fed in chunks of any size.
"""
from __future__ import annotations

from math import ceil, gcd

import numpy as np

RATE = 16000


class Resampler:
    """Streaming rate conversion by a polyphase Kaiser-windowed sinc (anti-aliased, unit DC gain).

    ``process`` takes float samples and returns what can be computed so far; ``flush`` returns
    the tail, so the total output is ``ceil(n_in * rate_out / rate_in)`` samples.
    """

    def __init__(self, rate_in: int, rate_out: int, zeros: int = 16, beta: float = 8.6):
        g = gcd(rate_in, rate_out)
        self.up, self.down = rate_out // g, rate_in // g
        self.passthrough = self.up == self.down
        fc = min(1.0, self.up / self.down) * 0.92  # cutoff below the lower Nyquist: no aliasing
        self.k = int(ceil(zeros / fc))
        t = (np.arange(self.up)[:, None] / self.up) - np.arange(-self.k, self.k + 1)[None, :]
        window = np.i0(beta * np.sqrt(np.clip(1 - (t / (self.k + 1)) ** 2, 0, None))) / np.i0(beta)
        h = np.sinc(t * fc) * window
        self.h = (h / h.sum(axis=1, keepdims=True)).astype(np.float32)
        self.taps = np.arange(-self.k, self.k + 1)
        self.buf = np.zeros(self.k, np.float32)  # zeros before the first sample
        self.base = -self.k  # input index of buf[0]
        self.n_in = 0
        self.n_out = 0
        self.limit: int | None = None

    def process(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float32)
        if self.passthrough:
            return x
        self.buf = np.concatenate([self.buf, x])
        self.n_in += len(x)
        return self._run(self.n_in)

    def flush(self) -> np.ndarray:
        if self.passthrough:
            return np.zeros(0, np.float32)
        self.limit = -(-self.n_in * self.up // self.down)
        self.buf = np.concatenate([self.buf, np.zeros(self.k + 1, np.float32)])
        return self._run(self.n_in + self.k + 1)

    def _run(self, available: int) -> np.ndarray:
        last = available - 1 - self.k  # the last input index whose right-hand taps all exist
        if last < 0:
            return np.zeros(0, np.float32)
        end = last * self.up // self.down + 1
        if self.limit is not None:
            end = min(end, self.limit)
        if end <= self.n_out:
            return np.zeros(0, np.float32)
        num = np.arange(self.n_out, end, dtype=np.int64) * self.down
        centre, phase = num // self.up, num % self.up
        y = np.einsum("ij,ij->i", self.buf[(centre - self.base)[:, None] + self.taps[None, :]], self.h[phase])
        self.n_out = end
        drop = end * self.down // self.up - self.k - self.base
        if drop > 0:
            self.buf, self.base = self.buf[drop:], self.base + drop
        return y


def to_int16(x: np.ndarray) -> np.ndarray:
    """Float samples on the int16 scale, rounded and clipped."""
    return np.clip(np.rint(x), -32768, 32767).astype(np.int16)
