"""Audio that arrives as bytes, piece by piece (a WAV body, raw PCM, Opus packets), decoded to mono.

Every kind answers ``feed(bytes) -> mono float32`` (the int16 scale of ``nodes.speech.samples``),
``finish()`` at the end, and ``rate`` / ``channels`` (a WAV's once its header is in). Malformed
input raises ValueError saying exactly what is wrong.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np

from .opus import OPUS_CHANNELS, OpusDecoder
from .samples import FrameDecoder, sample_format
from .wav import WavStream

CODECS = ("wav", "pcm", "opus")


class AudioStream(Protocol):
    rate: int | None
    channels: int | None
    recoverable: bool  # a piece that does not decode spoils only itself (an Opus packet), not the stream (a WAV)

    def feed(self, data: bytes) -> np.ndarray: ...
    def finish(self) -> None: ...


class PcmStream:
    """Raw interleaved PCM of a stated format, rate and channel count."""

    recoverable = True

    def __init__(self, fmt: str, rate: int, channels: int):
        self.format = sample_format(fmt)
        self.rate: int | None = rate
        self.channels: int | None = channels
        self._frames = FrameDecoder(self.format, channels)

    def feed(self, data: bytes) -> np.ndarray:
        return self._frames.feed(data)

    def finish(self) -> None:
        """A frame cut short by the end is dropped (it is not a whole sample of every channel)."""


class OpusStream:
    """One raw Opus packet per ``feed`` (a WebSocket message), decoded at 48 kHz."""

    recoverable = True

    def __init__(self, channels: int):
        self.rate: int | None = OpusDecoder.rate
        self.channels: int | None = channels
        self._decoder = OpusDecoder()

    def feed(self, data: bytes) -> np.ndarray:
        return self._decoder.decode(data)

    def finish(self) -> None:
        pass


def open_stream(codec: str, *, rate: int | None = None, channels: int | None = None,
                fmt: str | None = None) -> AudioStream:
    """A decoder for ``codec``: ``wav`` (the header says rate, channels and format: the others are
    ignored), ``pcm`` (``rate`` needed; ``channels`` 1 and ``fmt`` s16le by default) or ``opus``
    (raw packets, mono or stereo, decoded at 48 kHz). ValueError for what does not fit."""
    if codec == "wav":
        return WavStream("WAV")
    if codec == "pcm":
        if rate is None:
            raise ValueError("raw PCM needs its rate (rate=8000 .. 48000 samples per second)")
        return PcmStream(fmt or "s16le", rate, channels or 1)
    if codec == "opus":
        if channels not in (None, *OPUS_CHANNELS):
            raise ValueError(f"Opus packets without a container carry 1 or 2 channels, got channels={channels}")
        return OpusStream(channels or 1)
    raise ValueError(f"unknown codec {codec!r}; codecs: {', '.join(CODECS)}")
