"""audio_phoneme: streaming ARPAbet phonemes from speech audio (pocketsphinx), for lip-sync.

Each session gets its own ``PhonemeStream`` (see ``nodes.speech.recognizer``: a decoder with
state cannot be shared between streams, so these are per-session objects; the per-message work
is one decoder call, not a Python loop over sessions). Phones go out as soon as they are
stable, with start and end on the pts clock of the audio they came from. A transcript (param,
or a ``text/plain`` message on the ``text`` pad for the session) switches the session to forced
alignment for the audio that follows; an empty one finishes the utterance (the phones held back
go out) and goes back to free recognition. A text message takes effect at its pts: one that
arrives before the audio it follows has been processed (the two pads' messages are in flight
side by side) waits for that audio, so an utterance's end marker never cuts its last chunks off.
"""
from __future__ import annotations

from collections import deque
from typing import Any, Mapping

import numpy as np

from runtime import Message, Node, Pad, Param
from runtime.sessions import batch_sessions

from .speech import RATE, Phone, PhonemeStream, Resampler, to_int16

# The recognizer's decision delay: a phone goes out once ``holdback`` later phones and ``lag_ms``
# of audio after it confirm it, so it leaves about (holdback + 1) phones plus lag_ms after its
# start. Measured on espeak-ng speech at the defaults (20 ms chunks): median 0.36 s, p90 0.5 s,
# max 0.73 s; 150 ms a phone makes the declared latency 0.7 s (a later one is drawn shortened).
_PHONE_MS = 150.0


_TEXT_SLACK_NS = 1_000_000  # a text at most this far past the audio processed is due (pts rounding)
_TEXT_WAIT_NS = 1_000_000_000  # a text whose audio has not come this long after its pts is applied anyway


class _Session:
    __slots__ = ("stream", "anchor_ns", "rate", "resampler", "seen_ns", "started", "texts")

    def __init__(self, stream: PhonemeStream, now_ns: int):
        self.stream = stream
        self.anchor_ns = 0  # pts of the stream's sample 0
        self.rate = RATE
        self.resampler: Resampler | None = None
        self.seen_ns = now_ns
        self.started = False
        self.texts: deque[tuple[int, str]] = deque()  # (pts, transcript) waiting for the audio before them

    def reached_ns(self) -> int:
        """pts up to which audio has been processed."""
        return self.anchor_ns + self.stream.samples * 1_000_000_000 // RATE


class AudioPhoneme(Node):
    """Recognizes (or, given a transcript, aligns) ARPAbet phonemes in audio/pcm as it streams."""

    inputs = {
        "in": Pad(caps="audio/pcm", doc="speech, one session per message (any rate, 16 kHz is native)",
                  policy="block"),  # a lost chunk is a hole the recognizer hears as a pts jump
        "text": Pad(caps="text/plain", required=False, doc="transcript of each session's next utterance",
                    policy="block"),
    }
    outputs = {"out": Pad(caps="phonemes/arpabet", doc="phones as they are decided, times on the audio's pts clock")}
    params = {
        "transcript": Param(str, "", "text every session starts aligned to (empty: free phoneme recognition)"),
        "holdback": Param(int, 3, "newest phones held back until the search is sure of them", min=0, max=50),
        "lag_ms": Param(float, 100.0, "a phone must end this long before the newest audio to go out", min=0.0, max=2000.0),
        "warmup_ms": Param(float, 500.0, "audio buffered at a session's start to set the cepstral mean", min=0.0, max=5000.0),
        "max_utterance_s": Param(float, 20.0, "free recognition restarts at a pause after this long", min=1.0, max=600.0),
        "gap_ms": Param(float, 200.0, "a pts jump larger than this, or no audio for this long after the newest "
                                      "sample's pts, ends the utterance (its held-back phones go out) and re-anchors",
                        min=10.0, max=60000.0),
        "session_timeout_s": Param(float, 30.0, "a session unheard for this long is finished and freed", min=0.5),
    }

    @classmethod
    def latency_ns(cls, params: Mapping[str, Any]) -> int:
        """The decision delay: a phone waits for ``holdback`` more phones and ``lag_ms`` of audio."""
        return int(round((float(params["lag_ms"]) + (int(params["holdback"]) + 1) * _PHONE_MS) * 1e6))

    def setup(self) -> None:
        self.sessions: dict[str, _Session] = {}
        self.sent = 0
        self.closed_cpu_s = 0.0
        self.closed_audio_s = 0.0
        self.oov: list[str] = []
        self.failed = 0
        self.quiet_ends = 0
        self.every(1.0, self._expire)
        self.every(0.05, self._quiet)

    def _stream(self, transcript: str | None) -> PhonemeStream:
        return PhonemeStream(transcript, holdback=self.p.holdback, lag_ms=self.p.lag_ms,
                             warmup_ms=self.p.warmup_ms, max_utterance_s=self.p.max_utterance_s)

    def _session(self, sid: str) -> _Session:
        s = self.sessions.get(sid)
        if s is None:
            s = self.sessions[sid] = _Session(self._stream(self.p.transcript or None), self.now_ns())
        s.seen_ns = self.now_ns()
        return s

    def process(self, pad: str, msg: Message) -> None:
        if pad == "text":
            self._on_text(msg)
            return
        sid = msg.session[0] if isinstance(msg.session, list) else msg.session
        s = self._session(sid)
        rate = int((msg.data or {}).get("rate", RATE))
        pcm = np.asarray(msg.arrays["pcm"]).reshape(-1)
        if rate != s.rate:
            s.rate, s.resampler = rate, (Resampler(rate, RATE) if rate != RATE else None)
        expected = s.anchor_ns + s.stream.samples * 1_000_000_000 // RATE
        out: list[Phone] = []
        if s.texts:
            self._apply_texts(sid, s, msg.pts_ns)  # the texts this chunk comes after
        if not s.started or abs(msg.pts_ns - expected) > self.p.gap_ms * 1e6:
            if s.started:
                out += s.stream.finish()  # a gap: what came before is a finished utterance
                self._send(sid, s, out)
                out = []
            s.anchor_ns = msg.pts_ns - s.stream.samples * 1_000_000_000 // RATE
            s.started = True
        if s.resampler is not None:
            pcm = to_int16(s.resampler.process(pcm.astype(np.float32)))
        out += s.stream.feed(pcm)
        self._send(sid, s, out)
        if s.texts:
            self._apply_texts(sid, s, s.reached_ns())  # the texts due at this chunk's end

    def _on_text(self, msg: Message) -> None:
        sessions = batch_sessions(msg)
        for sid, text in zip(sessions, (msg.data or {}).get("text", [])):
            s = self._session(sid)
            s.texts.append((msg.pts_ns, text or ""))
            if not s.started:  # no audio yet: the stream starts with it
                self._apply_texts(sid, s, 1 << 62)
            else:
                self._apply_texts(sid, s, s.reached_ns())

    def _apply_texts(self, sid: str, s: _Session, until_ns: int) -> None:
        """Set the transcripts whose pts the audio has reached (``until_ns``), in order."""
        while s.texts and s.texts[0][0] <= until_ns + _TEXT_SLACK_NS:
            _, text = s.texts.popleft()
            self._send(sid, s, s.stream.set_transcript(text or None))

    def _send(self, sid: str, s: _Session, phones: list[Phone]) -> None:
        if not phones:
            return
        rows = [[0, p.phone, s.anchor_ns + int(round(p.start * 1e9)), s.anchor_ns + int(round(p.end * 1e9))]
                for p in phones]
        self.sent += len(rows)
        self.emit("out", Message("phonemes/arpabet", {"phonemes": rows}, pts_ns=rows[0][2], session=[sid]))

    def _close(self, sid: str) -> None:
        s = self.sessions.pop(sid)
        self._send(sid, s, s.stream.finish())
        self.closed_cpu_s += s.stream.cpu_s
        self.closed_audio_s += s.stream.audio_s
        self.oov += s.stream.oov
        self.failed += s.stream.failed

    def _quiet(self) -> None:
        """Audio that stopped coming (a stream cut off, a stalled upload, the end of a file played
        at real time) ends its utterance after gap_ms: the phones held back for later audio go
        out now, within the latency this node declares, not when the next utterance begins (the
        mouth would move in the silence after it)."""
        limit = self.now_ns() - int(self.p.gap_ms * 1e6)
        for sid, s in self.sessions.items():
            if s.started and s.reached_ns() < limit:
                self._send(sid, s, s.stream.finish())
                s.started = False  # the next chunk re-anchors, as after a pts jump
                self.quiet_ends += 1

    def _expire(self) -> None:
        stale = self.now_ns() - _TEXT_WAIT_NS
        for sid, s in self.sessions.items():
            if s.texts and s.texts[0][0] < stale:  # the audio before it never came: apply it now
                self._apply_texts(sid, s, stale)
        limit = self.now_ns() - int(self.p.session_timeout_s * 1e9)
        for sid in [k for k, s in self.sessions.items() if s.seen_ns < limit]:
            self._close(sid)

    def on_eos(self) -> None:
        for sid in list(self.sessions):
            self._close(sid)

    def stats(self) -> dict:
        cpu = self.closed_cpu_s + sum(s.stream.cpu_s for s in self.sessions.values())
        audio = self.closed_audio_s + sum(s.stream.audio_s for s in self.sessions.values())
        return {
            "sessions": len(self.sessions), "phonemes": self.sent, "audio_s": round(audio, 3),
            "quiet_ends": self.quiet_ends,
            "cpu_s": round(cpu, 3), "rtf": round(cpu / audio, 4) if audio else 0.0,
            "aligning": sum(1 for s in self.sessions.values() if s.stream.aligning),
            "failed_alignments": self.failed + sum(s.stream.failed for s in self.sessions.values()),
            "oov_words": sorted(set(self.oov + [w for s in self.sessions.values() for w in s.stream.oov])),
        }
