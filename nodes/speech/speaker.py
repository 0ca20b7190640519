"""Per-speaker calibration: the level and formant ranges that make a quiet and a loud speaker,
or a low and a high voice, open the jaw alike.

Everything is a running estimate over the speaker's own recent voiced frames (the last
``memory_s`` seconds of them), so a few seconds of voice calibrate it and it follows a speaker who
moves away from the microphone. ``calibrate`` feeds a sample of the voice up front. Until enough
voice has been heard the formant ranges are the textbook adult ones and the level is the loudest
voiced frame so far (the first syllable opens the jaw fully, never not at all).
"""
from __future__ import annotations

from collections import deque

import numpy as np

LEVEL_RANGE_DB = 30.0  # loudness 0..1 spans this far below the speaker's speech peak
_PEAK_PCT, _F_LO_PCT, _F_HI_PCT = 95.0, 10.0, 90.0
_MIN_VOICED = 30  # voiced frames (0.3 s) before the percentiles take over
_F1_DEFAULT = (300.0, 750.0)  # Hz: close and open vowels of an adult voice
_F2_DEFAULT = (900.0, 2200.0)  # Hz: back-rounded and front-spread vowels
_FLOOR_RISE_DB = 0.005  # per frame (0.5 dB/s): the noise floor creeps up, drops at once


class SpeakerLevels:
    """Running level and formant statistics of one speaker's voice (100 frames/s)."""

    def __init__(self, memory_s: float = 20.0):
        n = max(_MIN_VOICED, int(memory_s * 100))
        self._db: deque[float] = deque(maxlen=n)
        self._f1: deque[float] = deque(maxlen=n)
        self._f2: deque[float] = deque(maxlen=n)
        self.floor_db = float("nan")
        self.peak_db = float("nan")
        self.f1_range = _F1_DEFAULT
        self.f2_range = _F2_DEFAULT
        self._dirty = 0

    @property
    def calibrated(self) -> bool:
        return len(self._db) >= _MIN_VOICED

    def calibrate(self, pcm: np.ndarray) -> SpeakerLevels:
        """Learn from a sample of the speaker's voice (int16 16 kHz) before the stream starts."""
        from .articulation import Articulator

        Articulator(levels=self).feed(pcm)
        return self

    def observe(self, db: np.ndarray, voiced: np.ndarray, f1: np.ndarray, f2: np.ndarray) -> None:
        """Frames' energy (dB), voicing flags and formants (Hz, NaN when none)."""
        for d in db.tolist():
            if not np.isfinite(self.floor_db) or d < self.floor_db:
                self.floor_db = d
            else:
                self.floor_db += _FLOOR_RISE_DB
        v = voiced & np.isfinite(db)
        if v.any():
            self._db.extend(db[v].tolist())
            fv = v & np.isfinite(f1) & np.isfinite(f2)
            self._f1.extend(f1[fv].tolist())
            self._f2.extend(f2[fv].tolist())
            self._dirty += int(v.sum())
            if not self.calibrated:
                self.peak_db = float(max(self._db))
            elif self._dirty >= 10:  # every 10 voiced frames: a percentile is not free
                self._update()

    def _update(self) -> None:
        self._dirty = 0
        self.peak_db = float(np.percentile(self._db, _PEAK_PCT))
        if len(self._f1) >= _MIN_VOICED:
            lo, hi = np.percentile(self._f1, [_F_LO_PCT, _F_HI_PCT])
            self.f1_range = (float(lo), float(max(hi, lo + 150.0)))
            lo, hi = np.percentile(self._f2, [_F_LO_PCT, _F_HI_PCT])
            self.f2_range = (float(lo), float(max(hi, lo + 300.0)))

    def loudness(self, db: np.ndarray) -> np.ndarray:
        """0..1: how loud each frame is for this speaker (0 before any voice was heard)."""
        if not np.isfinite(self.peak_db):
            return np.zeros(len(db))
        return np.clip((db - self.peak_db + LEVEL_RANGE_DB) / LEVEL_RANGE_DB, 0.0, 1.0)

    def f1_norm(self, f1: np.ndarray) -> np.ndarray:
        """0..1 across the speaker's F1 range (open vowels high); 0.3 where there is no F1."""
        lo, hi = self.f1_range
        return np.where(np.isfinite(f1), np.clip((f1 - lo) / (hi - lo), 0.0, 1.0), 0.3)

    def f2_norm(self, f2: np.ndarray) -> np.ndarray:
        """0..1 across the speaker's F2 range (rounded vowels low); 0.5 where there is no F2."""
        lo, hi = self.f2_range
        return np.where(np.isfinite(f2), np.clip((f2 - lo) / (hi - lo), 0.0, 1.0), 0.5)
