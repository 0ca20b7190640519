"""Raw Opus packets -> mono float samples at 48 kHz (libopus through PyAV).

Raw packets are what a browser's WebCodecs ``AudioEncoder`` makes, one per ``EncodedAudioChunk``,
with no container (no Ogg, no WebM): each WebSocket message carries one. libopus decodes a
stereo packet to mono itself when asked for mono.
"""
from __future__ import annotations

from typing import Any

import numpy as np

OPUS_RATE = 48000  # libopus decodes at 48 kHz; the packets do not say at what rate they were made
OPUS_CHANNELS = (1, 2)  # raw packets (no Ogg header with a channel mapping) carry mono or stereo


class OpusDecoder:
    """Decodes raw Opus packets one at a time; a packet that does not decode raises ValueError,
    and the decoder goes on with the next one."""

    rate = OPUS_RATE
    channels = 1

    def __init__(self) -> None:
        import av  # PyAV (with aiortc): loaded only by a node that is given Opus

        self._av: Any = av
        self._ctx = av.CodecContext.create("libopus", "r")
        self._ctx.sample_rate = OPUS_RATE
        self._ctx.layout = "mono"

    def decode(self, packet: bytes) -> np.ndarray:
        """One packet's samples, mono float32 on the int16 scale (``nodes.speech.samples``)."""
        if not packet:
            return np.zeros(0, np.float32)
        try:
            frames = self._ctx.decode(self._av.Packet(bytes(packet)))
        except self._av.error.FFmpegError as exc:
            raise ValueError(f"an Opus packet of {len(packet)} bytes that does not decode: {exc.strerror or exc}") from None
        out = [self._mono(f) for f in frames]
        return np.concatenate(out) if out else np.zeros(0, np.float32)

    @staticmethod
    def _mono(frame: Any) -> np.ndarray:
        a = frame.to_ndarray()
        ch = frame.layout.nb_channels if hasattr(frame.layout, "nb_channels") else len(frame.layout.channels)
        if not frame.format.is_planar:
            a = a.reshape(-1, ch).T
        x = a.astype(np.float32)
        if frame.format.name.startswith(("flt", "dbl")):
            x *= 32768.0
        elif frame.format.name.startswith("s32"):
            x /= 65536.0
        return x.mean(axis=0, dtype=np.float32) if ch > 1 else x.reshape(-1)
