"""Reading RIFF WAV files of any PCM or float format as mono float, in blocks.

Long files never sit in memory whole.
"""
from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

import numpy as np

_PCM, _FLOAT, _EXTENSIBLE = 1, 3, 0xFFFE


class WavReader:
    """Reads a RIFF WAV (PCM 8/16/24/32-bit, float 32/64, WAVE_FORMAT_EXTENSIBLE) as mono float.

    Samples come out on the int16 scale (-32768..32767) whatever the file's width, channels
    averaged, so the resampler and ``to_int16`` need no per-format cases.
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
        tag, self.channels, self.rate, _, self.block, self.bits = struct.unpack("<HHIIHH", fmt[:16])
        if tag == _EXTENSIBLE and len(fmt) >= 26:
            tag = struct.unpack("<H", fmt[24:26])[0]
        self.width = self.block // max(1, self.channels)
        if tag == _PCM and self.width in (1, 2, 3, 4):
            self.kind = "int"
        elif tag == _FLOAT and self.width in (4, 8):
            self.kind = "float"
        else:
            raise ValueError(f"{self.path}: unsupported WAV format tag {tag} with {self.bits}-bit samples")
        self.frames = size // self.block if size not in (0, 0xFFFFFFFF) else None

    def _read(self, n: int) -> bytes:
        data = self.f.read(n)
        if len(data) < n:
            raise ValueError(f"{self.path}: truncated WAV header")
        return data

    def read(self, frames: int) -> np.ndarray:
        """Up to ``frames`` mono samples (float32, int16 scale); empty at the end."""
        raw = self.f.read(frames * self.block)
        n = len(raw) // self.block
        if n == 0:
            return np.zeros(0, np.float32)
        raw = raw[: n * self.block]
        if self.kind == "float":
            x = np.frombuffer(raw, "<f4" if self.width == 4 else "<f8").astype(np.float32) * 32768.0
        elif self.width == 1:
            x = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0) * 256.0
        elif self.width == 2:
            x = np.frombuffer(raw, "<i2").astype(np.float32)
        elif self.width == 3:
            b = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
            x = (((b[:, 0] << 8) | (b[:, 1] << 16) | (b[:, 2] << 24)) >> 8).astype(np.float32) / 256.0
        else:
            x = np.frombuffer(raw, "<i4").astype(np.float32) / 65536.0
        return x.reshape(n, self.channels).mean(axis=1, dtype=np.float32)

    def close(self) -> None:
        self.f.close()
