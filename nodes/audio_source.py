"""audio_source: 16 kHz mono `audio/pcm` from a WAV file or from raw PCM over UDP.

The file is read by ``nodes.speech.WavReader`` and resampled by ``nodes.speech.Resampler``.
"""
from __future__ import annotations

import socket

import numpy as np

from runtime import Message, Node, Pad, Param
from runtime.states import READY

from .speech import RATE, Resampler, WavReader, to_int16


class AudioSource(Node):
    """Emits 16 kHz mono audio/pcm chunks from a WAV file (any format, resampled) or UDP PCM."""

    outputs = {"out": Pad(caps="audio/pcm", doc="int16 chunks of chunk_ms, data {'rate': 16000}")}
    params = {
        "path": Param(str, "", "WAV file to play (any rate, channels, width); empty when using udp_port", mutable=READY),
        "udp_port": Param(int, 0, "receive raw 16-bit LE mono PCM datagrams on this port; 0 = off", min=0, max=65535, mutable=READY),
        "udp_host": Param(str, "127.0.0.1", "address to bind for udp_port (0.0.0.0 = every interface)", mutable=READY),
        "udp_rate": Param(int, 16000, "sample rate of the UDP PCM", min=4000, max=192000, mutable=READY),
        "chunk_ms": Param(int, 20, "duration of one emitted chunk", min=10, max=20, mutable=READY),
        "realtime": Param(bool, True, "pace a file at real time; false = as fast as the links take it"),
        "loop": Param(bool, False, "play the file again from the start when it ends, after loop_gap_s of silence "
                                   "(a demo, a kiosk); false: EOS at its end"),
        "loop_gap_s": Param(float, 1.0, "pause between two plays of a looped file", min=0.0, max=3600.0),
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
        self.gap_samples = 0  # a looped file's pause still to wait
        self.loops = 0
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
        self.t0_ns = self.now_ns() - self.sent * 1_000_000_000 // RATE
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
        """Read and resample until one chunk is ready or the file ends (looped: starts again
        after the pause; the pts go on, so the pause is a gap on the clock, not silence sent)."""
        while len(self.pending) < self.chunk and self.reader is not None:
            x = self.reader.read(max(1024, self.chunk * self.resampler.down // self.resampler.up + 1))
            if len(x):
                y = self.resampler.process(x)
            else:
                y = self.resampler.flush()
                self.reader.close()
                self.reader = None
                if self.p.loop:
                    self.reader = WavReader(self.p.path)
                    self.resampler = Resampler(self.reader.rate, RATE)
                    self.gap_samples = int(self.p.loop_gap_s * RATE)
                    self.loops += 1
                    self.pending = np.concatenate([self.pending, y])
                    if self.gap_samples:  # the pause first (_tick waits it out); none: read on
                        return
                    continue
            self.pending = np.concatenate([self.pending, y])

    def _tick(self) -> None:
        if self.gap_samples and not len(self.pending):  # a looped file's pause: time passes, nothing is sent
            gap_ns = self.gap_samples * 1_000_000_000 // RATE
            if self.now_ns() < self._pts() + gap_ns:
                return
            self.t0_ns += gap_ns
            self.gap_samples = 0
        # real time: one chunk per tick, plus catch-up if the loop fell behind the clock
        n = 1
        if self.p.realtime:
            behind = (self.now_ns() - self._pts()) * RATE // 1_000_000_000 // self.chunk
            n = max(1, min(int(behind), 50))
        for _ in range(n):
            self._fill()
            if len(self.pending) == 0:
                if not self.gap_samples:  # the end (a looped file's pause begins instead)
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
        now = self.now_ns()
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
        return {"sent_s": self.sent / RATE, "udp_packets": self.packets, "loops": self.loops,
                "source": self.p.path or f"udp:{self.p.udp_port}"}
