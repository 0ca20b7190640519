"""The voice a sink sends its viewers: ``audio/pcm`` per session in, 20 ms Opus packets out.

Each session's voice is encoded once, whatever the number of its viewers (PyAV's libopus, 48 kHz
mono), and each packet carries its *presentation* pts: the pts of its first sample plus the
sink's hold, the time by which the voice must wait so that it meets the face made from it (the
latency the face's path declares beyond the voice's, ``runtime.latency``). A viewer plays each
packet at its presentation pts and shows each face frame when its own audio clock reaches the
frame's pts (``docs/delivery.md``, clocking).

A session's voice is a run of *talkspurts*: audio whose pts follow on from the last chunk's end
continues one; a jump (a pause, the next utterance) ends it (the encoder's tail is flushed, so
the last word is never cut) and starts another at the new pts. A chunk that starts *before* the
end of what was sent (an interrupt restarting the timeline) starts a new talkspurt at once, and
the scheduler drops what of the old one is still held from that pts on. A talkspurt nothing
follows is flushed ``_IDLE_FLUSH_NS`` after its last sample is due (``flush_idle``).

Where a viewer's browser cannot decode Opus (no WebCodecs ``AudioDecoder``), the same talkspurts
go out as 16 kHz 16-bit PCM, made only for the sessions such a viewer watches.

``VoiceEncoder`` runs on the sink's own thread (where the audio arrives); ``VoiceSchedule`` on
the web server's loop, where it holds each packet until its presentation pts and hands it to
the viewers of its session.
"""
from __future__ import annotations

import asyncio
import fractions
from collections import deque
from dataclasses import dataclass
from typing import Callable

import msgpack
import numpy as np

from ..speech import Resampler

OPUS_RATE = 48000
FRAME = 960  # samples of one 20 ms Opus frame at 48 kHz
PCM_RATE = 16000  # the fallback's rate
PCM_FRAME = 320
_TIME_BASE = fractions.Fraction(1, OPUS_RATE)
_CONTINUOUS_NS = 2_000_000  # a chunk within this of the last one's end continues its talkspurt
_IDLE_FLUSH_NS = 40_000_000  # a talkspurt nothing continued this long after its end is flushed
MIN_RATE, MAX_RATE = 4000, 192000


@dataclass(frozen=True)
class VoicePacket:
    """One encoded piece of a session's voice: ``kind`` 'opus' (a 20 ms Opus packet) or 'pcm'
    (20 ms of 16 kHz s16le), ``pts_ns`` when its first sample is to be heard (the presentation
    pts: the graph's clock plus the sink's hold), ``samples`` at its rate. ``cut``: this packet
    starts a talkspurt earlier than the last one ended (an interrupt restarted the timeline), so
    whatever of this kind is still held from its pts on is dropped."""

    kind: str
    pts_ns: int
    data: bytes
    samples: int
    cut: bool = False

    @property
    def duration_ns(self) -> int:
        rate = OPUS_RATE if self.kind == "opus" else PCM_RATE
        return self.samples * 1_000_000_000 // rate


class _Talkspurt:
    """One run of continuous audio: its resamplers, the Opus encoder and the samples fed so far."""

    def __init__(self, rate: int, base_ns: int, bitrate: int, cut: bool):
        import av

        self.rate, self.base_ns = rate, base_ns  # base_ns: presentation pts of the first sample
        self.to48 = Resampler(rate, OPUS_RATE)
        self.to16: Resampler | None = None
        self.buf48 = np.zeros(0, np.float32)
        self.buf16 = np.zeros(0, np.float32)
        self.fed = 0  # samples in, at the source's rate
        self.fed48 = self.fed16 = 0  # samples handed to the encoder / cut into pcm packets
        self.cut = {"opus": cut, "pcm": cut}  # the first packet of each kind carries the cut
        codec = av.CodecContext.create("libopus", "w")
        codec.sample_rate, codec.layout, codec.format = OPUS_RATE, "mono", "s16"
        codec.time_base, codec.bit_rate = _TIME_BASE, bitrate
        codec.options = {"application": "voip"}
        self.codec = codec

    def start_pcm(self) -> None:
        """Make the PCM fallback from here on, on the same timeline."""
        self.to16 = Resampler(self.rate, PCM_RATE)
        self.fed16 = self.fed * PCM_RATE // self.rate

    def first(self, kind: str) -> bool:
        was, self.cut[kind] = self.cut[kind], False
        return was


class VoiceEncoder:
    """A session's voice, encoded: ``feed`` chunks of ``audio/pcm`` (any rate, mono int16) with
    their pts, get back the packets they completed. Runs on the sink's own thread."""

    def __init__(self, bitrate: int = 32000):
        self.bitrate = bitrate
        self.spurt: _Talkspurt | None = None
        self.end_ns = 0  # graph pts just after the last sample fed
        self.hold_ns = 0
        self.pcm = False  # make the PCM fallback too (a viewer of this session asked for it)
        self.talkspurts = self.cuts = 0

    def feed(self, pts_ns: int, rate: int, pcm: np.ndarray, hold_ns: int) -> list[VoicePacket]:
        out: list[VoicePacket] = []
        s = self.spurt
        if s is None or s.rate != rate or abs(pts_ns - self.end_ns) > _CONTINUOUS_NS:
            cut = s is not None and pts_ns < self.end_ns - _CONTINUOUS_NS  # the timeline went back
            out += self.flush()
            s = self.spurt = _Talkspurt(rate, pts_ns + hold_ns, self.bitrate, cut)
            self.hold_ns = hold_ns
            self.talkspurts += 1
            self.cuts += cut
        if self.pcm and s.to16 is None:
            s.start_pcm()
        self.end_ns = pts_ns + len(pcm) * 1_000_000_000 // rate
        x = np.asarray(pcm, np.float32).reshape(-1)
        s.fed += len(x)
        s.buf48 = np.concatenate([s.buf48, s.to48.process(x)])
        out += self._opus(s, final=False)
        if s.to16 is not None:
            s.buf16 = np.concatenate([s.buf16, s.to16.process(x)])
            out += self._pcm(s, final=False)
        return out

    def flush(self) -> list[VoicePacket]:
        """End the talkspurt: its last partial frame (padded with silence) and the encoder's tail."""
        s = self.spurt
        if s is None:
            return []
        self.spurt = None
        s.buf48 = np.concatenate([s.buf48, s.to48.flush()])
        out = self._opus(s, final=True)
        if s.to16 is not None:
            s.buf16 = np.concatenate([s.buf16, s.to16.flush()])
            out += self._pcm(s, final=True)
        return out

    def flush_idle(self, now_ns: int) -> list[VoicePacket]:
        """Flush a talkspurt whose audio stopped coming (its end was due a while ago)."""
        if self.spurt is not None and now_ns - self.end_ns > _IDLE_FLUSH_NS:
            return self.flush()
        return []

    @staticmethod
    def _opus(s: _Talkspurt, final: bool) -> list[VoicePacket]:
        import av

        packets = []
        n = len(s.buf48) // FRAME * FRAME
        if final and len(s.buf48) > n:  # pad the last partial frame with silence
            s.buf48 = np.concatenate([s.buf48, np.zeros(FRAME - (len(s.buf48) - n), np.float32)])
            n = len(s.buf48)
        for i in range(0, n, FRAME):
            pcm = np.clip(np.rint(s.buf48[i:i + FRAME]), -32768, 32767).astype(np.int16)
            frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = OPUS_RATE, s.fed48, _TIME_BASE
            s.fed48 += FRAME
            packets += s.codec.encode(frame)
        s.buf48 = s.buf48[n:]
        if final:
            packets += s.codec.encode(None)
        # pts start at minus the encoder's delay: decoded, sample k of a packet is heard at base + pts + k
        return [VoicePacket("opus", s.base_ns + int(p.pts) * 1_000_000_000 // OPUS_RATE, bytes(p),
                            int(p.duration or FRAME), s.first("opus")) for p in packets]

    @staticmethod
    def _pcm(s: _Talkspurt, final: bool) -> list[VoicePacket]:
        out = []
        n = len(s.buf16) if final else len(s.buf16) // PCM_FRAME * PCM_FRAME
        for i in range(0, n, PCM_FRAME):
            chunk = np.clip(np.rint(s.buf16[i:i + PCM_FRAME]), -32768, 32767).astype("<i2")
            out.append(VoicePacket("pcm", s.base_ns + s.fed16 * 1_000_000_000 // PCM_RATE, chunk.tobytes(), len(chunk),
                                   s.first("pcm")))
            s.fed16 += len(chunk)
        s.buf16 = s.buf16[n:]
        return out


class VoiceSchedule:
    """The packets a sink holds until they are due, per session and kind; ``run`` (a task on the
    server's loop) hands each to ``send`` ``lead_ns`` before its presentation pts. A cut drops
    what of its session and kind is held from its pts on. At most ``limit`` packets are held per
    session and kind (10 s): beyond, the oldest go (a source far ahead of real time)."""

    def __init__(self, send: Callable[[str, VoicePacket], None], clock: Callable[[], int], lead_ns: int = 0,
                 limit: int = 500):
        self.send, self.clock, self.lead_ns, self.limit = send, clock, lead_ns, limit
        self.held: dict[tuple[str, str], deque[VoicePacket]] = {}
        self.wake = asyncio.Event()
        self.counts = {"voice_packets": 0, "voice_late": 0, "voice_cut": 0, "voice_overflow": 0}
        self.late_max_ns = 0

    def add(self, session: str, packets: list[VoicePacket]) -> None:
        for p in packets:
            q = self.held.setdefault((session, p.kind), deque())
            if p.cut:
                while q and q[-1].pts_ns >= p.pts_ns:
                    q.pop()
                    self.counts["voice_cut"] += 1
            if len(q) >= self.limit:
                q.popleft()
                self.counts["voice_overflow"] += 1
            q.append(p)
        self.wake.set()

    async def run(self) -> None:
        while True:
            now = self.clock()
            due_next: int | None = None
            for key in list(self.held):
                q = self.held[key]
                while q and q[0].pts_ns - self.lead_ns <= now:
                    p = q.popleft()
                    late = now - p.pts_ns
                    if late > p.duration_ns:
                        self.counts["voice_late"] += 1
                        self.late_max_ns = max(self.late_max_ns, late)
                    self.counts["voice_packets"] += 1
                    self.send(key[0], p)
                if q:
                    due = q[0].pts_ns - self.lead_ns
                    due_next = due if due_next is None else min(due_next, due)
                else:
                    del self.held[key]
            self.wake.clear()
            timeout = None if due_next is None else max(0.0, (due_next - self.clock()) / 1e9)
            try:
                await asyncio.wait_for(self.wake.wait(), timeout)
            except asyncio.TimeoutError:
                pass


def voice_frame(session: str, p: VoicePacket) -> bytes:
    """A voice packet as the WebSocket carries it: a msgpack map (a face packet is an array or
    bin), ``{"t": "opus" | "pcm", "s": session, "p": presentation pts in microseconds,
    "n": samples, "d": bytes}``; pcm is 16 kHz s16le mono."""
    return msgpack.packb({"t": p.kind, "s": session, "p": p.pts_ns // 1000, "n": p.samples, "d": p.data},
                         use_bin_type=True)


def pcm_problem(data: object, pcm: object, session: object) -> str | None:
    """What is wrong with an ``audio/pcm`` message for a sink's voice (None: nothing)."""
    rate = data.get("rate") if isinstance(data, dict) else None
    if not isinstance(rate, int) or isinstance(rate, bool) or not MIN_RATE <= rate <= MAX_RATE:
        return f"an audio/pcm message needs data {{'rate': {MIN_RATE}..{MAX_RATE}}}, got {rate!r}"
    if not isinstance(pcm, np.ndarray) or pcm.ndim != 1 or pcm.dtype != np.int16:
        what = f"{pcm.dtype} of shape {pcm.shape}" if isinstance(pcm, np.ndarray) else type(pcm).__name__
        return f"an audio/pcm message needs an int16 mono array 'pcm', got {what}"
    if isinstance(session, list) and len(session) != 1:
        return f"an audio/pcm message carries one session, got {len(session)}"
    return None


__all__ = ["FRAME", "OPUS_RATE", "PCM_RATE", "VoiceEncoder", "VoicePacket", "VoiceSchedule", "pcm_problem", "voice_frame"]
