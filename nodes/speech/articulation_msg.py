"""Articulation frames riding in ``phonemes/arpabet`` messages.

A phoneme source that hears (or synthesises) the voice also sends what the voice says about the
mouth (``nodes.speech.articulation``), in the same message as the phones, so a plain
``audio_phoneme ! viseme`` line carries both and one link keeps them in order:

- ``data["articulation"]``: rows ``[row, first_pts_ns, n]`` (``row`` indexes the message's sessions,
  as the phoneme rows do; frame i of the run is at ``first_pts_ns + i * FRAME_NS``);
- ``arrays["articulation"]``: float32 (sum of n, 4), the runs one after another, channels
  ``CHANNELS`` (jaw, lips, round, voice).
"""
from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from .articulation import CHANNELS, FRAME_NS

__all__ = ["ArticulationRuns", "CHANNELS", "FRAME_NS", "read_articulation"]


class ArticulationRuns:
    """Collects runs of frames for one message."""

    def __init__(self) -> None:
        self.rows: list[list[int]] = []
        self.frames: list[np.ndarray] = []

    def add(self, row: int, first_pts_ns: int, frames: np.ndarray) -> None:
        if len(frames):
            self.rows.append([int(row), int(first_pts_ns), int(len(frames))])
            self.frames.append(np.asarray(frames, np.float32).reshape(-1, len(CHANNELS)))

    def __bool__(self) -> bool:
        return bool(self.rows)

    def put(self, data: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        """Into a message's data and arrays (nothing when there are no frames)."""
        if self.rows:
            data["articulation"] = self.rows
            arrays["articulation"] = np.concatenate(self.frames)


def read_articulation(data: dict[str, Any] | None, arrays: dict[str, Any] | None) -> Iterator[tuple[int, int, np.ndarray]]:
    """(row, first_pts_ns, frames (n, 4) float32) of each run; malformed runs are skipped."""
    rows = (data or {}).get("articulation") or []
    frames = (arrays or {}).get("articulation")
    if frames is None or not rows:
        return
    frames = np.asarray(frames, np.float32)
    if frames.ndim != 2 or frames.shape[1] != len(CHANNELS):
        return
    at = 0
    for entry in rows:
        try:
            row, pts, n = (int(v) for v in entry)
        except (TypeError, ValueError):
            return
        if n <= 0 or at + n > len(frames):
            return
        run = np.nan_to_num(np.clip(frames[at:at + n], 0.0, 1.0))
        at += n
        yield row, pts, run
