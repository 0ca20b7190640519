"""text_phoneme: text in, ARPAbet phonemes with timings and the spoken audio out (espeak-ng).

The speaking is ``nodes.speech`` (espeak-ng through ctypes, with exact phoneme times); this node
adds params, per-session queues and the pacing of phonemes and audio on the pts clock.
"""
from __future__ import annotations

from collections import deque

import numpy as np

from runtime import Message, Node, Pad, Param
from runtime.sessions import batch_sessions
from runtime.states import READY

from .face import TABLE_RULE
from .speech import ESPEAK_MAPPING, RATE, Espeak, arpabet_table, speak


class TextPhoneme(Node):
    """Speaks text with espeak-ng: ARPAbet phonemes with timings, and the speech as audio/pcm."""

    inputs = {"text": Pad(caps="text/plain", required=False, doc="texts to say, one per session row")}
    outputs = {
        "phonemes": Pad(caps="phonemes/arpabet", doc="one message per utterance, sent when it is synthesized"),
        "audio": Pad(caps="audio/pcm", doc="the speech, 16 kHz, in chunk_ms chunks on the phonemes' timeline"),
    }
    params = {
        "text": Param(str, "", "text to say when playing starts (and again whenever it is set live)"),
        "voice": Param(str, "en-us", "espeak-ng voice"),
        "wpm": Param(int, 175, "speaking rate, words per minute", min=80, max=450),
        "pitch": Param(int, 50, "espeak pitch", min=0, max=99),
        "session": Param(str, "default", "session of the 'text' param's speech"),
        "realtime": Param(bool, True, "send audio chunks as they are due; false = all at once"),
        "chunk_ms": Param(int, 20, "duration of one audio chunk", min=10, max=20, mutable=READY),
        "eos_after_text": Param(bool, False, "end the stream once the 'text' param is spoken (no text input linked)"),
        "mapping": Param(str, ESPEAK_MAPPING, f"YAML table of espeak mnemonics -> ARPAbet ({TABLE_RULE})", mutable=READY),
    }

    def setup(self) -> None:
        self.espeak = Espeak.get()
        self.table = arpabet_table(self.p.mapping)
        self.unknown: set[str] = set()
        self.queues: dict[str, deque[tuple[int, np.ndarray]]] = {}
        self.busy_until: dict[str, int] = {}  # end pts of each session's queued speech
        self.period_ns = self.p.chunk_ms * 1_000_000
        self.t0_ns = self.now_ns()
        self.ticks = 0
        self.spoken_param = False
        self.ended = False
        self.utterances = 0
        self.phonemes_sent = 0
        self.audio_s = 0.0
        self.timer = self.every(self.p.chunk_ms / 1000, self._tick)

    def on_play(self) -> None:
        self.t0_ns, self.ticks = self.now_ns(), 0
        if not self.spoken_param:
            self.spoken_param = True
            if self.p.text:
                self._say([(self.p.session, self.p.text)])
            if self.p.eos_after_text and not self.p.realtime:
                self._end()

    def on_params(self, changed: dict) -> None:
        if changed.get("text"):
            self._say([(self.p.session, changed["text"])])

    def process(self, pad: str, msg: Message) -> None:
        sessions = batch_sessions(msg)
        texts = (msg.data or {}).get("text", [])
        self._say([(s, t) for s, t in zip(sessions, texts) if isinstance(t, str) and t.strip()])

    def _now(self) -> int:
        """The playback clock: the real clock, or the timer's count if that is ahead (tests)."""
        return max(self.now_ns(), self.t0_ns + self.ticks * self.period_ns)

    def _say(self, items: list[tuple[str, str]]) -> None:
        sessions, rows = [], []
        for session, text in items:
            audio, phones = speak(text, self.p.voice, self.p.wpm, self.p.pitch, self.table, self.unknown)
            if not len(audio):
                continue
            start = max(self._now(), self.busy_until.get(session, 0))
            row = len(sessions)
            sessions.append(session)
            rows += [[row, ph, start + int(s * 1e9), start + int(e * 1e9)] for ph, s, e in phones]
            step = RATE * self.p.chunk_ms // 1000
            q = self.queues.setdefault(session, deque())
            for i in range(0, len(audio), step):
                q.append((start + i * 1_000_000_000 // RATE, audio[i:i + step]))
            self.busy_until[session] = start + len(audio) * 1_000_000_000 // RATE
            self.utterances += 1
            self.audio_s += len(audio) / RATE
        if rows:
            self.phonemes_sent += len(rows)
            self.emit("phonemes", Message("phonemes/arpabet", {"phonemes": rows}, pts_ns=min(r[2] for r in rows),
                                          session=sessions))
        if not self.p.realtime:
            self._send_due(1 << 62)

    def _send_due(self, until_ns: int) -> None:
        for session, q in self.queues.items():
            while q and q[0][0] <= until_ns:
                pts, pcm = q.popleft()
                self.emit("audio", Message("audio/pcm", {"rate": RATE}, {"pcm": pcm}, pts_ns=pts, session=[session]))

    def _tick(self) -> None:
        self.ticks += 1
        self._send_due(self._now())
        if self.p.eos_after_text and self.spoken_param and not any(self.queues.values()):
            self._end()

    def _end(self) -> None:
        if not self.ended:
            self.ended = True
            self.timer.cancel()
            self.end_stream()

    def on_eos(self) -> None:
        """Input ended or asked to finish: send the speech still queued (its pts say when to play it)."""
        self._send_due(1 << 62)

    def stats(self) -> dict:
        return {"utterances": self.utterances, "phonemes": self.phonemes_sent, "audio_s": round(self.audio_s, 3),
                "queued_chunks": sum(len(q) for q in self.queues.values()), "unknown_mnemonics": sorted(self.unknown)}
