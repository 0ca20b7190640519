"""Interleaved sample bytes (a WAV file's data, raw PCM) as mono float samples on the int16 scale.

One place knows the sample formats, so the WAV reader, the streamed WAV parser and raw PCM
uploads decode alike: samples come out as float32 on the int16 scale (-32768..32767) whatever
their width, channels averaged, so the resampler and ``to_int16`` need no per-format cases.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SampleFormat:
    """How one sample is stored: ``kind`` int (signed), uint (unsigned 8-bit) or float; bytes; byte order."""

    name: str
    kind: str
    width: int
    big_endian: bool = False


SAMPLE_FORMATS: dict[str, SampleFormat] = {f.name: f for f in (
    SampleFormat("u8", "uint", 1),
    SampleFormat("s16le", "int", 2),
    SampleFormat("s16be", "int", 2, big_endian=True),
    SampleFormat("s24le", "int", 3),
    SampleFormat("s32le", "int", 4),
    SampleFormat("f32le", "float", 4),
    SampleFormat("f64le", "float", 8),
)}


def sample_format(name: str) -> SampleFormat:
    """The format called ``name`` (``s16le``, ``f32le``, ...); ValueError listing the known ones."""
    fmt = SAMPLE_FORMATS.get(name) if isinstance(name, str) else None
    if fmt is None:
        raise ValueError(f"unknown sample format {name!r}; formats: {', '.join(SAMPLE_FORMATS)}")
    return fmt


def to_mono(raw: bytes | memoryview, fmt: SampleFormat, channels: int) -> np.ndarray:
    """Whole frames of interleaved samples -> mono float32 on the int16 scale (channels averaged)."""
    frame = fmt.width * channels
    n = len(raw) // frame
    if n == 0:
        return np.zeros(0, np.float32)
    raw = raw[: n * frame]
    if fmt.kind == "float":
        x = np.frombuffer(raw, "<f4" if fmt.width == 4 else "<f8").astype(np.float32) * 32768.0
    elif fmt.kind == "uint":
        x = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0) * 256.0
    elif fmt.width == 2:
        x = np.frombuffer(raw, ">i2" if fmt.big_endian else "<i2").astype(np.float32)
    elif fmt.width == 3:
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
        x = (((b[:, 0] << 8) | (b[:, 1] << 16) | (b[:, 2] << 24)) >> 8).astype(np.float32) / 256.0
    else:
        x = np.frombuffer(raw, "<i4").astype(np.float32) / 65536.0
    if channels == 1:
        return x
    return x.reshape(n, channels).mean(axis=1, dtype=np.float32)


class FrameDecoder:
    """Interleaved samples arriving in pieces of any size: whole frames decode at once, the bytes
    of a frame cut by a piece's end wait for the next piece."""

    def __init__(self, fmt: SampleFormat, channels: int):
        self.fmt, self.channels = fmt, channels
        self.frame = fmt.width * channels
        self._rest = b""

    def feed(self, data: bytes) -> np.ndarray:
        if self._rest:
            data, self._rest = self._rest + data, b""
        cut = len(data) - len(data) % self.frame
        if cut < len(data):
            self._rest = bytes(data[cut:])
        return to_mono(memoryview(data)[:cut], self.fmt, self.channels)

    @property
    def pending(self) -> int:
        """Bytes held: the start of a frame whose end has not come (dropped if it never does)."""
        return len(self._rest)
