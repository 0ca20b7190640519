"""audio_phoneme: streaming ARPAbet phonemes and acoustic articulation from speech audio, for lip-sync.

Two signals leave in each message, because a face needs both (JALI; Audio2Face): the *phones*
(pocketsphinx), which choose the shapes acoustics cannot see (lips closed for P/B/M, rounded for
OW/UW), and the *articulation* (``nodes.speech.articulation``: jaw opening, lip aperture, rounding
cue and voice activity per 10 ms, from the audio itself, calibrated per speaker), which sets how
much and exactly when the mouth opens. The ``viseme`` node fuses them.

``mode`` trades latency for phonetic detail:

- ``live``: articulation now (a causal envelope, 16 ms of window); the node declares only that
  (plus the chunk), so the mouth follows the voice within 100 ms; phones go out as soon as one
  later phone confirms them and are drawn as they come (late, shortened).
- ``balanced`` (default): phones confirmed by one later phone; the node declares their decision
  delay plus the lead-in room (``LEAD_ROOM_MS``), so closures and rounding land on time;
  articulation smoothed centred (40 ms).
- ``file``: a recording or a whole utterance: phones confirmed by three later phones (the best
  streaming result); the largest declared latency.

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

import copy
from collections import deque
from typing import Any, Mapping

import numpy as np

from runtime import Message, Node, Pad, Param, ParamError
from runtime.sessions import batch_sessions

from .face import LEAD_ROOM_MS
from .speech import RATE, Phone, PhonemeStream, Resampler, read_wav, to_int16
from .speech.articulation import FRAME_NS, HOP, Articulator, algorithmic_delay_ns
from .speech.articulation_msg import ArticulationRuns
from .speech.speaker import SpeakerLevels

# The recognizer's decision delay: a phone goes out once ``holdback`` later phones and ``lag_ms``
# of audio after it confirm it, so it leaves about (holdback + 1) phones plus lag_ms after its
# start. Measured on espeak-ng speech at the defaults (20 ms chunks): median 0.36 s, p90 0.5 s,
# max 0.73 s; 150 ms a phone makes the declared latency 0.7 s (a later one is drawn shortened).
_PHONE_MS = 150.0
_CHUNK_MS = 20.0  # the audio comes in chunks: a sample waits up to one chunk to be seen
_MARGIN_MS = 4.0  # processing and the hop to the next node


class _Mode:
    """What a mode sets: the recognizer's confirmation, the articulation smoother, and whether the
    declared latency covers the phones (on time, with lead-in room) or only the acoustics."""

    def __init__(self, holdback: int, lag_ms: float, smooth: str, phones_on_time: bool):
        self.holdback, self.lag_ms, self.smooth, self.phones_on_time = holdback, lag_ms, smooth, phones_on_time


MODES = {
    "live": _Mode(1, 50.0, "causal", False),
    "balanced": _Mode(1, 60.0, "centred", True),
    "file": _Mode(3, 100.0, "centred", True),
}


_TEXT_SLACK_NS = 1_000_000  # a text at most this far past the audio processed is due (pts rounding)
_TEXT_WAIT_NS = 1_000_000_000  # a text whose audio has not come this long after its pts is applied anyway
_SPARE_IDLE_S = 1.0  # the next spare recognizer is made once every session has been quiet this long


class _Session:
    __slots__ = ("stream", "anchor_ns", "rate", "resampler", "seen_ns", "started", "texts", "levels", "artic",
                 "artic_sample0")

    def __init__(self, stream: PhonemeStream, now_ns: int, levels: SpeakerLevels):
        self.stream = stream
        self.levels = levels  # the speaker's level and formant ranges, kept across utterances
        self.artic: Articulator | None = None
        self.artic_sample0 = 0  # stream sample at which the articulator started
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
        "mode": Param(str, "balanced", "live: the mouth follows the voice within 100 ms (acoustics now, phone "
                      "shapes as they come); balanced: phones on time, a few hundred ms behind; file: a recording or "
                      "a whole utterance, the best phones, the most latency", choices=tuple(MODES)),
        "transcript": Param(str, "", "text every session starts aligned to (empty: free phoneme recognition)"),
        "holdback": Param(int, -1, "newest phones held back until the search is sure of them (-1: the mode's: "
                          "live and balanced 1, file 3)", min=-1, max=50),
        "lag_ms": Param(float, -1.0, "a phone must end this long before the newest audio to go out (-1: the "
                        "mode's: 50, 60, 100 ms)", min=-1.0, max=2000.0),
        "articulation": Param(bool, True, "send the acoustic articulation (jaw, lips, rounding, voice activity) "
                              "with the phones"),
        "calibration": Param(str, "", "WAV of the speaker's voice (a few seconds) to set level and formant ranges "
                             "from the start; empty: a running estimate from each session's own voice"),
        "warmup_ms": Param(float, 500.0, "audio buffered at a session's start to set the cepstral mean", min=0.0, max=5000.0),
        "max_utterance_s": Param(float, 4.0, "free recognition restarts at a pause after this long (its search is redone over the whole utterance with every chunk: short ones cost less)", min=1.0, max=600.0),
        "gap_ms": Param(float, 200.0, "a pts jump larger than this, or no audio for this long after the newest "
                                      "sample's pts, ends the utterance (its held-back phones go out) and re-anchors",
                        min=10.0, max=60000.0),
        "session_timeout_s": Param(float, 30.0, "a session unheard for this long is finished and freed", min=0.5),
    }

    @classmethod
    def latency_ns(cls, params: Mapping[str, Any]) -> int:
        """live: the articulation's window and a chunk. Otherwise the phones' decision delay (a phone
        waits for ``holdback`` more phones and ``lag_ms`` of audio) plus the lead-in room."""
        mode = MODES[str(params["mode"])]
        # a frame between two 10 ms articulation frames needs the later one: one frame more
        acoustic = algorithmic_delay_ns(mode.smooth) + FRAME_NS + int((_CHUNK_MS + _MARGIN_MS) * 1e6)
        if not mode.phones_on_time:
            return acoustic
        holdback, lag = _confirmation(params)
        return max(acoustic, int(round((lag + (holdback + 1) * _PHONE_MS + LEAD_ROOM_MS) * 1e6)))

    def setup(self) -> None:
        self.sessions: dict[str, _Session] = {}
        self.sent = 0
        self.closed_cpu_s = 0.0
        self.closed_audio_s = 0.0
        self.oov: list[str] = []
        self.failed = 0
        self.quiet_ends = 0
        self.artic_frames = 0
        self.clipped = 0  # samples at full scale: a recording too loud (the mouth still moves: levels are relative)
        self._calibrated: SpeakerLevels | None = None  # from the calibration WAV, once (a bad file fails here)
        if self.p.calibration:
            try:
                self._calibrated = SpeakerLevels().calibrate(read_wav(self.p.calibration, max_s=30.0))
            except (OSError, ValueError) as exc:
                raise ParamError(f"calibration: {exc}") from None
        # a recognizer made ahead, both its decoders: making each takes 0.15-0.3 s of CPU, which the
        # first chunk (or the transcript) of a new voice would otherwise wait for, and its mouth with it
        self._spare: PhonemeStream | None = self._stream(self.p.transcript or None).prepare()
        self.every(1.0, self._expire)
        self.every(0.05, self._quiet)

    def _stream(self, transcript: str | None) -> PhonemeStream:
        holdback, lag = _confirmation(self.p)
        return PhonemeStream(transcript, holdback=holdback, lag_ms=lag,
                             warmup_ms=self.p.warmup_ms, max_utterance_s=self.p.max_utterance_s)

    def _levels(self) -> SpeakerLevels:
        """A new session's speaker levels: a copy of the calibration's, or blank (a running estimate)."""
        return copy.deepcopy(self._calibrated) if self._calibrated is not None else SpeakerLevels()

    def _session(self, sid: str) -> _Session:
        s = self.sessions.get(sid)
        if s is None:
            stream, self._spare = self._spare or self._stream(self.p.transcript or None), None
            s = self.sessions[sid] = _Session(stream, self.now_ns(), self._levels())
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
        if s.texts:
            self._apply_texts(sid, s, msg.pts_ns)  # the texts this chunk comes after
        if not s.started or abs(msg.pts_ns - expected) > self.p.gap_ms * 1e6:
            if s.started:  # a gap: what came before is a finished utterance
                self._send(sid, s, s.stream.finish(), self._end_articulation(s))
            s.anchor_ns = msg.pts_ns - s.stream.samples * 1_000_000_000 // RATE
            s.started = True
        if s.resampler is not None:
            pcm = to_int16(s.resampler.process(pcm.astype(np.float32)))
        # the mouth's frames go before the recognizer runs: its search (the warm-up's first decode
        # is ~50 ms of CPU at once) must not hold back the jaw, which live mode promises in 50 ms
        self._send(sid, s, [], self._articulate(s, pcm))
        self._send(sid, s, s.stream.feed(pcm))
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

    def _articulate(self, s: _Session, pcm: np.ndarray) -> tuple[int, np.ndarray] | None:
        """The articulation frames these samples complete, with the pts of the first."""
        if not self.p.articulation:
            return None
        if s.artic is None:
            s.artic = Articulator(MODES[self.p.mode].smooth, s.levels)
            s.artic_sample0 = s.stream.samples
        first, clipped = s.artic.frames, s.artic.clipped
        frames = s.artic.feed(pcm)
        self.clipped += s.artic.clipped - clipped
        return self._frames_at(s, first, frames)

    def _end_articulation(self, s: _Session) -> tuple[int, np.ndarray] | None:
        """An utterance ended (a gap, quiet): the frames the smoother held, then a closed mouth."""
        if s.artic is None:
            return None
        a, s.artic = s.artic, None
        first = a.frames
        frames = np.concatenate([a.flush(), np.zeros((1, 4), np.float32)])  # the voice stops here
        return self._frames_at(s, first, frames)

    def _frames_at(self, s: _Session, first: int, frames: np.ndarray) -> tuple[int, np.ndarray] | None:
        """Frames numbered from ``first`` of the current articulator, placed on the pts clock."""
        if not len(frames):
            return None
        self.artic_frames += len(frames)
        pts = s.anchor_ns + (s.artic_sample0 + first * HOP) * 1_000_000_000 // RATE
        return pts, frames

    def _send(self, sid: str, s: _Session, phones: list[Phone],
              art: tuple[int, np.ndarray] | None = None) -> None:
        if not phones and art is None:
            return
        rows = [[0, p.phone, s.anchor_ns + int(round(p.start * 1e9)), s.anchor_ns + int(round(p.end * 1e9))]
                for p in phones]
        self.sent += len(rows)
        data: dict[str, Any] = {"phonemes": rows}
        arrays: dict[str, np.ndarray] = {}
        if art is not None:
            runs = ArticulationRuns()
            runs.add(0, art[0], art[1])
            runs.put(data, arrays)
        pts = rows[0][2] if rows or art is None else art[0]
        self.emit("out", Message("phonemes/arpabet", data, arrays, pts_ns=pts, session=[sid]))

    def _close(self, sid: str) -> None:
        s = self.sessions.pop(sid)
        self._send(sid, s, s.stream.finish(), self._end_articulation(s))
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
            # both: a node running behind (its chunks waiting in the link) still sees chunks come
            if s.started and s.reached_ns() < limit and s.seen_ns < limit:
                self._send(sid, s, s.stream.finish(), self._end_articulation(s))
                s.started = False  # the next chunk re-anchors, as after a pts jump
                self.quiet_ends += 1

    def on_params(self, changed: dict) -> None:
        self._spare = None  # made with the old params

    def _expire(self) -> None:
        if self._spare is None and self._idle_s() >= _SPARE_IDLE_S:
            # made while nobody speaks: making one holds this thread 0.3-0.6 s, which in the
            # middle of a voice would freeze its mouth for as long
            self._spare = self._stream(self.p.transcript or None).prepare()
        stale = self.now_ns() - _TEXT_WAIT_NS
        for sid, s in self.sessions.items():
            if s.texts and s.texts[0][0] < stale:  # the audio before it never came: apply it now
                self._apply_texts(sid, s, stale)
        limit = self.now_ns() - int(self.p.session_timeout_s * 1e9)
        for sid in [k for k, s in self.sessions.items() if s.seen_ns < limit]:
            self._close(sid)

    def _idle_s(self) -> float:
        """Seconds since any session sent audio or text (a long time when there are none)."""
        last = max((s.seen_ns for s in self.sessions.values()), default=0)
        return (self.now_ns() - last) / 1e9 if last else float("inf")

    def on_eos(self) -> None:
        for sid in list(self.sessions):
            self._close(sid)

    def stats(self) -> dict:
        cpu = self.closed_cpu_s + sum(s.stream.cpu_s for s in self.sessions.values())
        audio = self.closed_audio_s + sum(s.stream.audio_s for s in self.sessions.values())
        return {
            "sessions": len(self.sessions), "phonemes": self.sent, "audio_s": round(audio, 3),
            "quiet_ends": self.quiet_ends, "mode": self.p.mode, "articulation_frames": self.artic_frames,
            "clipped_samples": self.clipped,
            "cpu_s": round(cpu, 3), "rtf": round(cpu / audio, 4) if audio else 0.0,
            "aligning": sum(1 for s in self.sessions.values() if s.stream.aligning),
            "failed_alignments": self.failed + sum(s.stream.failed for s in self.sessions.values()),
            "oov_words": sorted(set(self.oov + [w for s in self.sessions.values() for w in s.stream.oov])),
        }


def _confirmation(params: Any) -> tuple[int, float]:
    """holdback and lag_ms: the params', or the mode's where they are -1."""
    get = params.get if isinstance(params, Mapping) else lambda k: getattr(params, k)
    mode = MODES[str(get("mode"))]
    holdback, lag = int(get("holdback")), float(get("lag_ms"))
    return (mode.holdback if holdback < 0 else holdback), (mode.lag_ms if lag < 0 else lag)
