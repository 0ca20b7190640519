"""RIFF WAV as mono float, in blocks: from a file (``WavReader``) or as its bytes arrive (``WavStream``).

Long files never sit in memory whole, and an upload is decoded while it streams in.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .pcm import RATE, Resampler, to_int16
from .samples import FrameDecoder, SampleFormat, to_mono

_PCM, _FLOAT, _EXTENSIBLE = 1, 3, 0xFFFE
_UNKNOWN_SIZES = (0, 0xFFFFFFFF)  # a data size a streaming writer (ffmpeg, sox to a pipe) could not know
MAX_HEADER_BYTES = 1 << 20  # chunks before the samples (fmt, LIST, ...) a streamed WAV may have


@dataclass(frozen=True)
class WavFormat:
    """What a WAV's ``fmt `` chunk says: the sample format, channels, frames per second."""

    sample: SampleFormat
    channels: int
    rate: int


def parse_fmt(fmt: bytes, where: str) -> WavFormat:
    """The ``fmt `` chunk's format: PCM 8/16/24/32-bit, float 32/64, or WAVE_FORMAT_EXTENSIBLE of them;
    ValueError (naming ``where``) for anything else."""
    if len(fmt) < 16:
        raise ValueError(f"{where}: truncated WAV 'fmt ' chunk ({len(fmt)} bytes, 16 needed)")
    tag, channels, rate, _, block, bits = struct.unpack("<HHIIHH", fmt[:16])
    if tag == _EXTENSIBLE and len(fmt) >= 26:
        tag = struct.unpack("<H", fmt[24:26])[0]
    if channels == 0:
        raise ValueError(f"{where}: the WAV header says 0 channels")
    width = block // channels
    if tag == _PCM and width in (1, 2, 3, 4):
        sample = SampleFormat(f"wav-pcm{width * 8}", "uint" if width == 1 else "int", width)
    elif tag == _FLOAT and width in (4, 8):
        sample = SampleFormat(f"wav-float{width * 8}", "float", width)
    elif tag in (_PCM, _FLOAT):
        raise ValueError(f"{where}: unsupported WAV sample width: {bits}-bit {'PCM' if tag == _PCM else 'float'} "
                         f"({block} bytes per frame of {channels} channels); PCM 8/16/24/32-bit and float 32/64-bit are")
    else:
        raise ValueError(f"{where}: unsupported WAV format tag {tag} with {bits}-bit samples (PCM and float are)")
    return WavFormat(sample, channels, rate)


class WavReader:
    """Reads a RIFF WAV file (PCM 8/16/24/32-bit, float 32/64, WAVE_FORMAT_EXTENSIBLE) as mono float.

    Samples come out on the int16 scale (-32768..32767) whatever the file's width, channels
    averaged (``nodes.speech.samples``).
    """

    def __init__(self, path: str | Path):
        self.path = str(path)
        self.f: BinaryIO = open(path, "rb")
        try:
            self._parse_header()
        except Exception:
            self.f.close()
            raise

    def _parse_header(self) -> None:
        riff, _, wave = struct.unpack("<4sI4s", self._read(12))
        if riff not in (b"RIFF", b"RF64") or wave != b"WAVE":
            raise ValueError(f"{self.path}: not a WAV file")
        fmt = None
        while True:
            head = self.f.read(8)
            if len(head) < 8:
                raise ValueError(f"{self.path}: no 'data' chunk")
            cid, size = struct.unpack("<4sI", head)
            if cid == b"fmt ":
                fmt = self._read(size + (size & 1))
            elif cid == b"data":
                break
            else:
                self.f.seek(size + (size & 1), 1)
        if fmt is None:
            raise ValueError(f"{self.path}: 'data' before 'fmt '")
        self.format = parse_fmt(fmt, self.path)
        self.channels, self.rate = self.format.channels, self.format.rate
        self.block = self.format.sample.width * self.channels
        self.frames = size // self.block if size not in _UNKNOWN_SIZES else None

    def _read(self, n: int) -> bytes:
        data = self.f.read(n)
        if len(data) < n:
            raise ValueError(f"{self.path}: truncated WAV header")
        return data

    def read(self, frames: int) -> np.ndarray:
        """Up to ``frames`` mono samples (float32, int16 scale); empty at the end."""
        return to_mono(self.f.read(frames * self.block), self.format.sample, self.channels)

    def close(self) -> None:
        self.f.close()


def read_wav(path: str | Path, rate: int = RATE, max_s: float | None = None) -> np.ndarray:
    """A whole WAV file (its first ``max_s`` seconds) as int16 mono at ``rate``: a speaker's
    calibration sample, a benchmark's recording. ValueError or OSError naming the file."""
    reader = WavReader(path)
    try:
        frames = reader.frames if max_s is None else int(max_s * reader.rate)
        x = reader.read(frames if frames is not None else 1 << 30)
    finally:
        reader.close()
    if reader.rate != rate:
        rs = Resampler(reader.rate, rate)
        x = np.concatenate([rs.process(x.astype(np.float32)), rs.flush()])
    return to_int16(x)


class WavStream:
    """A WAV file arriving in pieces (an HTTP body): its header is parsed as soon as it is whole,
    and the samples after it are decoded as they come. Only a partial header (at most
    ``MAX_HEADER_BYTES``) or a partial frame is ever held.

    A data chunk of unknown size (0 or 0xFFFFFFFF, as a writer streaming to a pipe leaves it)
    runs to the end of the stream; a known size ends the samples there (chunks after it are
    ignored). ``feed`` and ``finish`` raise ValueError for a stream that is not a WAV we read.
    """

    recoverable = False  # past a bad header nothing can be read

    def __init__(self, where: str = "WAV"):
        self.where = where
        self.format: WavFormat | None = None
        self._head = bytearray()
        self._decoder: FrameDecoder | None = None
        self._left: int | None = None  # data bytes still to come (None: to the end of the stream)

    @property
    def rate(self) -> int | None:
        return self.format.rate if self.format else None

    @property
    def channels(self) -> int | None:
        return self.format.channels if self.format else None

    def feed(self, data: bytes) -> np.ndarray:
        """Mono samples (float32, int16 scale) that this piece completes; empty while in the header."""
        if self._decoder is None:
            self._head += data
            if not self._parse_header():
                return np.zeros(0, np.float32)
            data, self._head = bytes(self._head), bytearray()
        if self._left is not None:
            data = data[: self._left]
            self._left -= len(data)
        assert self._decoder is not None  # made by _parse_header
        return self._decoder.feed(data)

    def finish(self) -> None:
        """The stream has ended: ValueError if it ended inside the header."""
        if self._decoder is None:
            if not self._head:
                raise ValueError(f"{self.where}: empty: no WAV header")
            raise ValueError(f"{self.where}: truncated WAV header ({len(self._head)} bytes, then the end)")

    def _parse_header(self) -> bool:
        """True once the header is whole (``format`` set, the samples start at ``_head``'s front)."""
        head = self._head
        if len(head) >= 12 and (head[:4] not in (b"RIFF", b"RF64") or head[8:12] != b"WAVE"):
            raise ValueError(f"{self.where}: not a RIFF/WAVE file (it starts with {bytes(head[:12])!r})")
        if len(head) > MAX_HEADER_BYTES:
            raise ValueError(f"{self.where}: no 'data' chunk in the first {MAX_HEADER_BYTES} bytes")
        pos, fmt = 12, None
        while len(head) >= pos + 8:
            cid, size = struct.unpack_from("<4sI", head, pos)
            pos += 8
            if cid == b"data":
                if fmt is None:
                    raise ValueError(f"{self.where}: 'data' before 'fmt '")
                self.format = parse_fmt(fmt, self.where)
                self._decoder = FrameDecoder(self.format.sample, self.format.channels)
                self._left = None if size in _UNKNOWN_SIZES or head[:4] == b"RF64" else size
                del head[:pos]
                return True
            padded = size + (size & 1)
            if len(head) < pos + padded:
                return False  # this chunk's body has not all come yet
            if cid == b"fmt ":
                fmt = bytes(head[pos:pos + size])
            pos += padded
        return False
