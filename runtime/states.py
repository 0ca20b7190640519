"""Node and graph states, GStreamer's: NULL -> READY -> PAUSED -> PLAYING and back."""
from __future__ import annotations

NULL, READY, PAUSED, PLAYING = "NULL", "READY", "PAUSED", "PLAYING"
ORDER = (NULL, READY, PAUSED, PLAYING)


def rank(state: str) -> int:
    return ORDER.index(state)
