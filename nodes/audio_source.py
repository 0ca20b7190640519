"""audio_source: 16 kHz mono `audio/pcm` from a WAV file or from raw PCM over UDP.

Also home of the two small audio helpers other nodes share: ``Resampler`` (streaming polyphase
windowed-sinc, numpy only) and ``WavReader`` (a RIFF reader for any PCM or float WAV, read in
blocks so long files never sit in memory whole).
"""
from __future__ import annotations

import socket
import struct
from math import ceil, gcd
from pathlib import Path
from typing import BinaryIO

import numpy as np

from runtime import Message, Node, Pad, Param
from runtime.clock import now_ns

RATE = 16000
_PCM, _FLOAT, _EXTENSIBLE = 1, 3, 0xFFFE


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


class AudioSource(Node):
    """Emits 16 kHz mono audio/pcm chunks from a WAV file (any format, resampled) or UDP PCM."""

    outputs = {"out": Pad(caps="audio/pcm", doc="int16 chunks of chunk_ms, data {'rate': 16000}")}
    params = {
        "path": Param(str, "", "WAV file to play (any rate, channels, width); empty when using udp_port"),
        "udp_port": Param(int, 0, "receive raw 16-bit LE mono PCM datagrams on this port; 0 = off", min=0, max=65535),
        "udp_host": Param(str, "127.0.0.1", "address to bind for udp_port (0.0.0.0 = every interface)"),
        "udp_rate": Param(int, 16000, "sample rate of the UDP PCM", min=4000, max=192000),
        "chunk_ms": Param(int, 20, "duration of one emitted chunk", min=10, max=20),
        "realtime": Param(bool, True, "pace a file at real time; false = as fast as the links take it"),
        "session": Param(str, "default", "session id carried by every chunk"),
    }

    def setup(self) -> None:
        if bool(self.p.path) == bool(self.p.udp_port):
            raise ValueError("audio_source needs exactly one of 'path' or 'udp_port'")
        self.chunk = RATE * self.p.chunk_ms // 1000
        self.pending = np.zeros(0, np.float32)  # resampled, not yet emitted
        self.sent = 0  # samples emitted
        self.t0_ns: int | None = None
        self.timer = None
        self.done = False
        self.reader: WavReader | None = None
        self.sock: socket.socket | None = None
        self.packets = 0
        if self.p.path:
            self.reader = WavReader(self.p.path)
            self.resampler = Resampler(self.reader.rate, RATE)
        else:
            self.resampler = Resampler(self.p.udp_rate, RATE)
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            self.sock.bind((self.p.udp_host, self.p.udp_port))
            self.sock.setblocking(False)
            self.watch(self.sock, self._on_udp)

    def on_play(self) -> None:
        # pts stay continuous with the clock across a pause: re-anchor so the next chunk is "now"
        self.t0_ns = now_ns() - self.sent * 1_000_000_000 // RATE
        if self.reader is not None and self.timer is None and not self.done:
            period = self.p.chunk_ms / 1000 if self.p.realtime else 0.0
            self.timer = self.every(period, self._tick)

    def _pts(self) -> int:
        return self.t0_ns + self.sent * 1_000_000_000 // RATE

    def _emit(self, pcm: np.ndarray, pts_ns: int | None = None) -> None:
        pts = self._pts() if pts_ns is None else pts_ns
        self.emit("out", Message("audio/pcm", {"rate": RATE}, {"pcm": to_int16(pcm)}, pts_ns=pts,
                                 session=[self.p.session]))
        self.sent += len(pcm)

    # --- file ----------------------------------------------------------------------------------
    def _fill(self) -> None:
        """Read and resample until one chunk is ready or the file ends."""
        while len(self.pending) < self.chunk and self.reader is not None:
            x = self.reader.read(max(1024, self.chunk * self.resampler.down // self.resampler.up + 1))
            if len(x):
                y = self.resampler.process(x)
            else:
                y = self.resampler.flush()
                self.reader.close()
                self.reader = None
            self.pending = np.concatenate([self.pending, y])

    def _tick(self) -> None:
        # real time: one chunk per tick, plus catch-up if the loop fell behind the clock
        n = 1
        if self.p.realtime:
            behind = (now_ns() - self._pts()) * RATE // 1_000_000_000 // self.chunk
            n = max(1, min(int(behind), 50))
        for _ in range(n):
            self._fill()
            if len(self.pending) == 0:
                self._finish()
                return
            out, self.pending = self.pending[: self.chunk], self.pending[self.chunk:]
            self._emit(out)
        if self.reader is None and len(self.pending) == 0:
            self._finish()

    def _finish(self) -> None:
        if not self.done:
            self.done = True
            if self.timer is not None:
                self.timer.cancel()
            self.end_stream()

    # --- udp -----------------------------------------------------------------------------------
    def _on_udp(self) -> None:
        now = now_ns()
        while True:
            try:
                data = self.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                break
            self.packets += 1
            samples = np.frombuffer(data[: len(data) // 2 * 2], "<i2").astype(np.float32)
            y = self.resampler.process(samples)
            # a continuous stream keeps counting samples; after a gap, re-anchor on arrival time
            arrival_start = now - (len(self.pending) + len(y)) * 1_000_000_000 // RATE
            if self.t0_ns is None or abs(arrival_start - self._pts()) > 200_000_000:
                self.t0_ns = arrival_start - self.sent * 1_000_000_000 // RATE
            self.pending = np.concatenate([self.pending, y])
        while len(self.pending) >= self.chunk:
            out, self.pending = self.pending[: self.chunk], self.pending[self.chunk:]
            self._emit(out)

    def on_eos(self) -> None:
        """Asked to finish: send what is buffered (the runtime sends EOS after it)."""
        if self.sock is not None:
            rest = np.concatenate([self.pending, self.resampler.flush()])
            if len(rest):
                self._emit(rest)
            self.pending = np.zeros(0, np.float32)
        self.done = True

    def teardown(self) -> None:
        if self.reader is not None:
            self.reader.close()
            self.reader = None
        if self.sock is not None:
            self.unwatch(self.sock)
            self.sock.close()
            self.sock = None

    def stats(self) -> dict:
        return {"sent_s": self.sent / RATE, "udp_packets": self.packets,
                "source": self.p.path or f"udp:{self.p.udp_port}"}
