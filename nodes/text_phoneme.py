"""text_phoneme: text in, ARPAbet phonemes with timings and the spoken audio out (espeak-ng).

The speaking is ``nodes.speech`` (espeak-ng through ctypes, with exact phoneme times); this node
adds params, per-session queues and the pacing of phonemes and audio on the pts clock.

Text comes from the ``text`` param (said when playing starts, and whenever it is set live), the
``text`` input pad (``data {"text": [...], "interrupt": [bool]*S}``, one row per session) and the
``say`` interface (``on_call("say", {"session", "text", "interrupt"})``: the control API's
``POST /say``). A text is cut into sentences (``nodes.speech.split_sentences``): the first is
synthesised at once and the rest one at a time from the node's timer, each once the session's
speech queued ahead of it is shorter than ``synth_ahead_ms``, so a long text starts speaking
after one sentence's synthesis, not the whole paragraph's. Each sentence is its own phonemes
message, sent when it is synthesised (ahead of its audio), and its audio follows the session's
earlier speech on one continuous timeline.

A new text queues behind the session's speech; with ``interrupt`` it replaces it: the session's
audio not yet sent and its sentences not yet synthesised are dropped, and the new speech starts
now. Its phonemes message starts now, and the viseme node replaces a session's scheduled
phonemes from a new message's first start on, so the old mouth shapes go too. An interrupt with
no text just stops: one ``sil`` phoneme from now closes the mouth.
"""
from __future__ import annotations

import time
from collections import deque
from typing import Any, Mapping

import numpy as np

from runtime import Message, Node, Pad, Param, ParamError
from runtime.sessions import batch_sessions
from runtime.states import READY

from .face import TABLE_RULE
from .speech import ESPEAK_MAPPING, RATE, Espeak, arpabet_table, speak, split_sentences

MAX_SESSION_CHARS = 1024  # a session id is a name, not a payload
_SAY_ARGS = ("session", "text", "interrupt")
_STOP_NS = 100_000_000  # the sil phoneme an interrupt without text sends: the mouth closes


class TextPhoneme(Node):
    """Speaks text with espeak-ng: ARPAbet phonemes with timings, and the speech as audio/pcm."""

    interfaces = frozenset({"say"})
    inputs = {"text": Pad(caps="text/plain", required=False,
                          doc="texts to say, one per session row; data {'text': [...], 'interrupt': [bool]*S (optional)}")}
    outputs = {
        "phonemes": Pad(caps="phonemes/arpabet", doc="one message per sentence, sent when it is synthesized"),
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
        "max_chars": Param(int, 10000, "longest text one request may say (longer ones are refused)", min=1, max=1_000_000),
        "max_queued_chars": Param(int, 100000, "text a session may have waiting to be synthesized (more is refused)",
                                  min=1, max=10_000_000),
        "repeat_s": Param(float, 0.0, "say the 'text' param again this long after the session falls quiet (a demo, a "
                                      "kiosk: whoever opens the page hears it); 0: once", min=0.0, max=86400.0),
        "synth_ahead_ms": Param(float, 1000.0, "a session's next sentence is synthesized once less than this of its "
                                "speech is queued ahead", min=0.0, max=60000.0),
    }

    def setup(self) -> None:
        self.espeak = Espeak.get()
        self.table = arpabet_table(self.p.mapping)
        self.unknown: set[str] = set()
        self.queues: dict[str, deque[tuple[int, np.ndarray]]] = {}  # audio not yet sent, per session
        self.pending: dict[str, deque[str]] = {}  # sentences not yet synthesized, per session
        self.busy_until: dict[str, int] = {}  # end pts of each session's queued speech
        self.sent_until: dict[str, int] = {}  # end pts of the audio each session has sent
        self.period_ns = self.p.chunk_ms * 1_000_000
        self.t0_ns = self.now_ns()
        self.ticks = 0
        # a restarted or swapped process starts with the last params: it must not say 'text' again
        self.spoken_param = self.replacement
        self.ended = False
        self.utterances = self.sentences = self.interrupts = self.refused = 0
        self.phonemes_sent = 0
        self.audio_s = 0.0
        self.synth_s = 0.0
        self.synth_max_s = 0.0
        self.repeat_at: int | None = None  # when the 'text' param is said again (repeat_s)
        self.repeats = 0
        self.timer = self.every(self.p.chunk_ms / 1000, self._tick)

    def on_play(self) -> None:
        self.t0_ns, self.ticks = self.now_ns(), 0
        if not self.spoken_param:
            self.spoken_param = True
            if self.p.text:
                try:
                    self._say([(self.p.session, self.p.text, False)])
                except ParamError as exc:
                    self.refused += 1
                    self.warn(f"text_phoneme: the 'text' param is not said: {exc}")
            if self.p.eos_after_text and not self.p.realtime:
                self._end()

    def on_params(self, changed: dict) -> None:
        if changed.get("text"):
            self._say([(self.p.session, changed["text"], False)])  # a ParamError refuses the change

    def on_call(self, interface: str, args: Mapping[str, Any]) -> dict[str, Any]:
        """``say``: {"session": str, "text": str, "interrupt": bool} -> {"session", "sentences",
        "queued_s" (speech of the session ahead of this text), "pending_sentences", "interrupted"}."""
        if interface != "say":
            return super().on_call(interface, args)
        unknown = sorted(set(args) - set(_SAY_ARGS))
        if unknown:
            raise ParamError(f"unknown argument(s) {', '.join(map(repr, unknown))}; 'say' takes {', '.join(_SAY_ARGS)}")
        session, text, interrupt = args.get("session", "default"), args.get("text", ""), args.get("interrupt", False)
        if not isinstance(interrupt, bool):
            raise ParamError(f"'interrupt' must be true or false, got {interrupt!r}")
        return self._say([(session, text, interrupt)])[0]

    def process(self, pad: str, msg: Message) -> None:
        sessions = batch_sessions(msg)
        data = msg.data or {}
        texts, interrupts = data.get("text") or [], data.get("interrupt") or []
        items = []
        for i, (session, text) in enumerate(zip(sessions, texts)):
            interrupt = i < len(interrupts) and interrupts[i] is True
            if not isinstance(text, str) or not (text.strip() or interrupt):
                continue
            try:
                self._check(session, text, interrupt)
            except ParamError as exc:
                self.refused += 1
                self.warn(f"text_phoneme: a text for session {str(session)[:40]!r} is not said: {exc}")
                continue
            items.append((session, text, interrupt))
        if items:
            self._say(items)

    # --- saying ------------------------------------------------------------------------------
    def _now(self) -> int:
        """The playback clock: the real clock, or the timer's count if that is ahead (tests)."""
        return max(self.now_ns(), self.t0_ns + self.ticks * self.period_ns)

    def _check(self, session: Any, text: Any, interrupt: bool) -> None:
        """Refuse (ParamError) what this node will not say, saying why."""
        if not isinstance(session, str) or not 0 < len(session) <= MAX_SESSION_CHARS:
            raise ParamError(f"'session' must be a non-empty string of at most {MAX_SESSION_CHARS} characters")
        if not isinstance(text, str):
            raise ParamError(f"'text' must be a string, got {type(text).__name__}")
        if len(text) > self.p.max_chars:
            raise ParamError(f"the text has {len(text)} characters, over the limit of {self.p.max_chars} (max_chars)")
        if not text.strip() and not interrupt:
            raise ParamError("nothing to say: the text is empty (an empty text with interrupt: true stops the speech)")
        waiting = sum(len(s) for s in self.pending.get(session, ()))
        if not interrupt and waiting + len(text) > self.p.max_queued_chars:
            raise ParamError(f"session '{session[:40]}' already has {waiting} characters waiting to be said "
                             f"(max_queued_chars {self.p.max_queued_chars}): wait for them, or interrupt")

    def _say(self, items: list[tuple[str, str, bool]]) -> list[dict[str, Any]]:
        """Queue (or, interrupting, replace) each session's speech, and synthesize the first
        sentences at once: one phonemes message for the batch, as the text pad's rows came."""
        for session, text, interrupt in items:
            self._check(session, text, interrupt)
        now = self._now()
        answers, first = [], []
        for session, text, interrupt in items:
            if interrupt:
                self._interrupt(session, now, stop=not text.strip())
            sentences = split_sentences(text)
            ahead = max(0, self.busy_until.get(session, 0) - now)
            self.pending.setdefault(session, deque()).extend(sentences)
            if sentences:
                self.utterances += 1
                if session not in first:
                    first.append(session)
            answers.append({"session": session, "sentences": len(sentences), "queued_s": round(ahead / 1e9, 3),
                            "interrupted": interrupt})
        due = [s for s in first if not self.p.realtime or self._ahead_ns(s, now) < self.p.synth_ahead_ms * 1e6]
        self._synthesize(due, now)
        if not self.p.realtime:
            while any(self.pending.values()):
                for session in [s for s, q in self.pending.items() if q]:
                    self._synthesize([session], now)
            self._send_due(1 << 62)
        for answer in answers:
            answer["pending_sentences"] = len(self.pending.get(answer["session"], ()))
        return answers

    def _interrupt(self, session: str, now: int, stop: bool) -> None:
        """Drop the session's audio not yet sent and its sentences not yet synthesized: what comes
        next starts now (after the chunk already sent). ``stop``: nothing comes next; close the mouth."""
        self.interrupts += 1
        self.queues.pop(session, None)
        self.pending.pop(session, None)
        start = max(now, self.sent_until.get(session, 0))
        self.busy_until[session] = start
        if stop:
            self.phonemes_sent += 1
            self.emit("phonemes", Message("phonemes/arpabet", {"phonemes": [[0, "sil", start, start + _STOP_NS]]},
                                          pts_ns=start, session=[session]))

    def _ahead_ns(self, session: str, now: int) -> int:
        return self.busy_until.get(session, 0) - now

    def _synthesize(self, sessions: list[str], now: int) -> None:
        """The next sentence of each of these sessions, on its timeline; one phonemes message."""
        names, rows = [], []
        for session in sessions:
            q = self.pending.get(session)
            while q:
                sentence = q.popleft()
                t0 = time.perf_counter()
                audio, phones = speak(sentence, self.p.voice, self.p.wpm, self.p.pitch, self.table, self.unknown)
                took = time.perf_counter() - t0
                self.synth_s += took
                self.synth_max_s = max(self.synth_max_s, took)
                if not len(audio):
                    continue  # only punctuation: nothing to say, take the next one
                start = max(now, self.busy_until.get(session, 0))
                row = len(names)
                names.append(session)
                rows += [[row, ph, start + int(s * 1e9), start + int(e * 1e9)] for ph, s, e in phones]
                step = RATE * self.p.chunk_ms // 1000
                chunks = self.queues.setdefault(session, deque())
                for i in range(0, len(audio), step):
                    chunks.append((start + i * 1_000_000_000 // RATE, audio[i:i + step]))
                self.busy_until[session] = start + len(audio) * 1_000_000_000 // RATE
                rows[-1][3] = self.busy_until[session]  # espeak's own rate's rounding: end with the audio
                self.sentences += 1
                self.audio_s += len(audio) / RATE
                break
        if rows:
            self.phonemes_sent += len(rows)
            self.emit("phonemes", Message("phonemes/arpabet", {"phonemes": rows}, pts_ns=min(r[2] for r in rows),
                                          session=names))

    def _send_due(self, until_ns: int) -> None:
        for session, q in self.queues.items():
            while q and q[0][0] <= until_ns:
                pts, pcm = q.popleft()
                self.emit("audio", Message("audio/pcm", {"rate": RATE}, {"pcm": pcm}, pts_ns=pts, session=[session]))
                self.sent_until[session] = pts + len(pcm) * 1_000_000_000 // RATE

    def _tick(self) -> None:
        self.ticks += 1
        now = self._now()
        self._send_due(now)
        waiting = [s for s, q in self.pending.items() if q and self._ahead_ns(s, now) < self.p.synth_ahead_ms * 1e6]
        if waiting:  # one sentence a tick, the most urgent session's: the loop stays responsive
            self._synthesize([min(waiting, key=lambda s: self._ahead_ns(s, now))], now)
        if self.p.repeat_s > 0 and self.p.text and self.spoken_param and not self.p.eos_after_text:
            self._repeat(now)
        if self.ticks % 50 == 0:
            self._forget_idle(now)
        if self.p.eos_after_text and self.spoken_param and not any(self.queues.values()) and not any(self.pending.values()):
            self._end()

    def _repeat(self, now: int) -> None:
        """The 'text' param again, ``repeat_s`` after its session fell quiet (whatever it said)."""
        session = self.p.session
        if self.queues.get(session) or self.pending.get(session):
            self.repeat_at = None
        elif self.repeat_at is None:
            self.repeat_at = max(now, self.busy_until.get(session, now)) + int(self.p.repeat_s * 1e9)
        elif now >= self.repeat_at:
            self.repeat_at = None
            self.repeats += 1
            try:
                self._say([(session, self.p.text, False)])
            except ParamError as exc:
                self.refused += 1
                self.warn(f"text_phoneme: the 'text' param is not said again: {exc}")

    def _forget_idle(self, now: int) -> None:
        """Sessions with nothing queued or waiting, whose speech has played, are forgotten."""
        for session in [s for s, end in self.busy_until.items() if end < now]:
            if not self.queues.get(session) and not self.pending.get(session):
                for d in (self.queues, self.pending, self.busy_until, self.sent_until):
                    d.pop(session, None)

    def _end(self) -> None:
        if not self.ended:
            self.ended = True
            self.timer.cancel()
            self.end_stream()

    def on_eos(self) -> None:
        """Input ended or asked to finish: synthesize and send the speech still queued (its pts say
        when to play it)."""
        now = self._now()
        while any(self.pending.values()):
            self._synthesize([s for s, q in self.pending.items() if q], now)
        self._send_due(1 << 62)

    def stats(self) -> dict:
        return {"utterances": self.utterances, "sentences": self.sentences, "interrupts": self.interrupts,
                "refused": self.refused, "repeats": self.repeats, "phonemes": self.phonemes_sent, "audio_s": round(self.audio_s, 3),
                "synth_s": round(self.synth_s, 3), "synth_max_ms": round(self.synth_max_s * 1000, 1),
                "queued_chunks": sum(len(q) for q in self.queues.values()),
                "pending_sentences": sum(len(q) for q in self.pending.values()),
                "unknown_mnemonics": sorted(self.unknown)}
