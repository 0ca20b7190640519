"""text_phoneme: text in, ARPAbet phonemes with timings and the spoken audio out (espeak-ng or Festival).

The speaking is ``nodes.speech``: espeak-ng through ctypes (the built-in voice, with exact
phoneme times, a few milliseconds a sentence) or, with ``engine: festival``, a Festival process
the node starts in setup and stops in teardown (``nodes.speech.Festival``: more natural voices,
such as Debian's HTS voice ``cmu_us_slt_arctic_hts``, at a few hundred milliseconds a sentence).
This node adds params, per-session queues and the pacing of phonemes and audio on the pts clock.
Festival synthesises on a thread of the node's, one sentence at a time, so the node's loop goes
on sending the audio already made while the next sentence is being made (espeak is fast enough
to synthesise on the loop).

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

import os
import shutil
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Mapping

import numpy as np

from runtime import Message, Node, Pad, Param, ParamError
from runtime.sessions import batch_sessions
from runtime.states import READY

from .face import LEAD_ROOM_MS, TABLE_RULE
from .speech import (
    ESPEAK_MAPPING,
    FESTIVAL_MAPPING,
    FESTIVAL_PACKAGES,
    FESTIVAL_VOICE,
    RATE,
    Espeak,
    Festival,
    FestivalError,
    arpabet_table,
    speak,
    split_sentences,
)
from .speech.articulation import Articulator
from .speech.articulation_msg import ArticulationRuns
from .speech.speaker import SpeakerLevels

_SEND_AHEAD_NS = 40_000_000  # audio goes out this far ahead of its pts (two chunks)
MAX_SESSION_CHARS = 1024  # a session id is a name, not a payload
_SAY_ARGS = ("session", "text", "interrupt")
_STOP_NS = 100_000_000  # the sil phoneme an interrupt without text sends: the mouth closes
ENGINES = ("espeak", "festival")
ESPEAK_VOICE = "en-us"
_DEFAULTS = {"espeak": (ESPEAK_VOICE, ESPEAK_MAPPING), "festival": (FESTIVAL_VOICE, FESTIVAL_MAPPING)}


class TextPhoneme(Node):
    """Speaks text with espeak-ng or Festival: ARPAbet phonemes with timings, and the speech as audio/pcm."""

    interfaces = frozenset({"say"})
    inputs = {"text": Pad(caps="text/plain", required=False,
                          doc="texts to say, one per session row; data {'text': [...], 'interrupt': [bool]*S (optional)}")}
    outputs = {
        "phonemes": Pad(caps="phonemes/arpabet", doc="one message per sentence, sent when it is synthesized"),
        "audio": Pad(caps="audio/pcm", doc="the speech, 16 kHz, in chunk_ms chunks on the phonemes' timeline"),
    }
    params = {
        "text": Param(str, "", "text to say when playing starts (and again whenever it is set live)"),
        "engine": Param(str, "espeak", "what speaks: espeak (espeak-ng, built in) or festival (Festival and its voices, "
                        f"Debian's {FESTIVAL_PACKAGES}; started in setup)", choices=ENGINES, mutable=READY),
        "voice": Param(str, "", f"the engine's voice; empty: its default. espeak: an espeak-ng voice ({ESPEAK_VOICE}, "
                                f"en-gb, en-us+f3 ...); festival: a voice festival lists ({FESTIVAL_VOICE}; Debian's festvox-* add others), "
                                "checked in setup and when changed (a wrong one is refused with the installed list)"),
        "wpm": Param(int, 175, "speaking rate, words per minute (festival: 175 is its voice's own pace, others in "
                               "proportion, by Duration_Stretch and the HTS engine's speed)", min=80, max=450),
        "pitch": Param(int, 50, "espeak pitch; festival does not use it (its voices keep their own pitch: festival "
                                "offers no simple pitch setting for its HTS voices)", min=0, max=99),
        "session": Param(str, "default", "session of the 'text' param's speech"),
        "realtime": Param(bool, True, "send audio chunks as they are due; false = all at once"),
        "chunk_ms": Param(int, 20, "duration of one audio chunk", min=10, max=20, mutable=READY),
        "eos_after_text": Param(bool, False, "end the stream once the 'text' param is spoken (no text input linked)"),
        "mapping": Param(str, "", f"YAML table of the engine's phones -> ARPAbet ({TABLE_RULE}); empty: the engine's own, "
                                  f"{ESPEAK_MAPPING} or {FESTIVAL_MAPPING}", mutable=READY),
        "festival_timeout": Param(float, 30.0, "festival: seconds a sentence may take before festival is taken for hung "
                                  "(it is then killed and started again, once)", min=1.0, max=600.0, mutable=READY),
        "max_chars": Param(int, 10000, "longest text one request may say (longer ones are refused)", min=1, max=1_000_000),
        "max_queued_chars": Param(int, 100000, "text a session may have waiting to be synthesized (more is refused)",
                                  min=1, max=10_000_000),
        "repeat_s": Param(float, 0.0, "say the 'text' param again this long after the session falls quiet (a demo, a "
                                      "kiosk: whoever opens the page hears it); 0: once", min=0.0, max=86400.0),
        "synth_ahead_ms": Param(float, 1000.0, "a session's next sentence is synthesized once less than this of its "
                                "speech is queued ahead", min=0.0, max=60000.0),
    }

    @classmethod
    def check_config(cls, params: Mapping[str, Any]) -> list[str]:
        problems = []
        if params["mapping"]:
            try:
                arpabet_table(params["mapping"])
            except (ParamError, OSError, KeyError, TypeError, AttributeError) as exc:
                problems.append(f"mapping: {exc}")
        if params["engine"] == "festival" and shutil.which("festival") is None:
            problems.append(f"engine festival: festival is not installed (no 'festival' program on PATH); install the "
                            f"Debian packages {FESTIVAL_PACKAGES}")
        return problems

    def setup(self) -> None:
        default_voice, default_mapping = _DEFAULTS[self.p.engine]
        self.table = arpabet_table(self.p.mapping or default_mapping)
        self.festival: Festival | None = None
        self.pool: ThreadPoolExecutor | None = None  # festival's synthesis thread
        self.job: _Job | None = None  # the sentence festival is making
        if self.p.engine == "festival":
            # started here, so the first sentence is fast; a missing program or voice fails setup, saying which
            self.festival = Festival(self.p.voice or default_voice, timeout=self.p.festival_timeout)
            try:
                self.festival.speak("Hello.", table=self.table, unknown=set())  # loads the lexicon and the voice's models
            except BaseException:
                self.festival.close()
                raise
            self.pool = ThreadPoolExecutor(1, thread_name_prefix=f"{self.name}-festival")
            # the thread says when a sentence is made, so the loop takes it at once, not at its next tick
            self.wake_r, self.wake_w = os.pipe()
            os.set_blocking(self.wake_r, False)
            os.set_blocking(self.wake_w, False)
            self.watch(self.wake_r, self._woken)
        else:
            self.espeak = Espeak.get()
            self._check_voice(self.p.voice)
        self.generation: dict[str, int] = {}  # per session, +1 at every interrupt: a sentence made before is dropped
        self.unknown: set[str] = set()
        self.failed = 0  # sentences festival could not say
        self.queues: dict[str, deque[tuple[int, np.ndarray]]] = {}  # audio not yet sent, per session
        self.pending: dict[str, deque[str]] = {}  # sentences not yet synthesized, per session
        self.busy_until: dict[str, int] = {}  # end pts of each session's queued speech
        self.sent_until: dict[str, int] = {}  # end pts of the audio each session has sent
        self.levels: dict[str, SpeakerLevels] = {}  # per session: the voice's level and formant ranges
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

    def teardown(self) -> None:
        festival = getattr(self, "festival", None)  # setup may have failed before
        if festival is not None:
            if self.job is not None:
                festival.kill()  # the sentence in the making ends at once
            if self.pool is not None:
                self.pool.shutdown(wait=True, cancel_futures=True)
                self.unwatch(self.wake_r)
                os.close(self.wake_r)
                os.close(self.wake_w)
            festival.close()

    def _check_voice(self, voice: str) -> None:
        """Refuse (ParamError) a voice the engine does not have."""
        if self.festival is not None:
            try:
                self.festival.check_voice(voice or FESTIVAL_VOICE)  # against the list festival gave at start
            except FestivalError as exc:
                raise ParamError(str(exc)) from None
        else:
            try:
                self.espeak.check_voice(voice or ESPEAK_VOICE)
            except ValueError as exc:
                raise ParamError(str(exc)) from None

    def on_params(self, changed: dict) -> None:
        if "voice" in changed:
            self._check_voice(changed["voice"])
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
        if self.pool is not None and self.p.realtime:
            self._submit(now)  # the first sentence at once if festival is free, else right after its current one
        else:
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
        self.generation[session] = self.generation.get(session, 0) + 1
        self.queues.pop(session, None)
        self.pending.pop(session, None)
        start = max(now, self.sent_until.get(session, 0))
        self.busy_until[session] = start
        data: dict[str, Any] = {"phonemes": [[0, "sil", start, start + _STOP_NS]] if stop else []}
        arrays: dict[str, np.ndarray] = {}
        runs = ArticulationRuns()
        runs.add(0, start, np.zeros((1, 4), np.float32))  # the dropped speech's mouth motion goes too
        runs.put(data, arrays)
        self.phonemes_sent += int(stop)
        self.emit("phonemes", Message("phonemes/arpabet", data, arrays, pts_ns=start, session=[session]))

    def _ahead_ns(self, session: str, now: int) -> int:
        return self.busy_until.get(session, 0) - now

    def _speak(self, sentence: str, voice: str, wpm: int, pitch: int) -> tuple[np.ndarray, list, set[str]]:
        """One sentence by the engine: 16 kHz audio, (ARPAbet, start s, end s), the phones the table lacks.
        Runs on festival's synthesis thread for festival: it reads nothing of the node's that changes."""
        unknown: set[str] = set()
        if self.festival is not None:
            audio, phones = self.festival.speak(sentence, wpm, self.table, unknown, voice=voice or FESTIVAL_VOICE)
        else:
            audio, phones = speak(sentence, voice or ESPEAK_VOICE, wpm, pitch, self.table, unknown)
        return audio, phones, unknown

    def _synthesize(self, sessions: list[str], now: int) -> None:
        """The next sentence of each of these sessions, on its timeline, made here and now (espeak,
        and festival when not in real time); one phonemes message."""
        self._finish_job(now)
        names: list[str] = []
        rows: list[list] = []
        runs = ArticulationRuns()
        for session in sessions:
            q = self.pending.get(session)
            while q:
                sentence = q.popleft()
                t0 = time.perf_counter()
                try:
                    audio, phones, unknown = self._speak(sentence, self.p.voice, self.p.wpm, self.p.pitch)
                except FestivalError as exc:
                    self._failed(session, exc)
                    continue
                self._took(time.perf_counter() - t0, unknown)
                if not len(audio):
                    continue  # only punctuation: nothing to say, take the next one
                self._place(session, audio, phones, now, names, rows, runs)
                break
        self._emit_phonemes(names, rows, runs)

    def _place(self, session: str, audio: np.ndarray, phones: list, now: int, names: list[str], rows: list[list],
               runs: ArticulationRuns) -> None:
        """A sentence's phonemes and articulation (as rows of the next message) and audio (queued) on its
        session's timeline. Speech starts LEAD_ROOM_MS ahead at the soonest: the mouth's lead-in before
        the first sound has its room, so the viseme node adds no latency of its own."""
        start = max(now + int(LEAD_ROOM_MS * 1e6), self.busy_until.get(session, 0))
        row = len(names)
        names.append(session)
        rows += [[row, ph, start + int(s * 1e9), start + int(e * 1e9)] for ph, s, e in phones]
        art = Articulator("centred", self.levels.setdefault(session, SpeakerLevels()))
        runs.add(row, start, np.concatenate([art.feed(audio), art.flush(), np.zeros((1, 4), np.float32)]))
        step = RATE * self.p.chunk_ms // 1000
        chunks = self.queues.setdefault(session, deque())
        for i in range(0, len(audio), step):
            chunks.append((start + i * 1_000_000_000 // RATE, audio[i:i + step]))
        self.busy_until[session] = start + len(audio) * 1_000_000_000 // RATE
        rows[-1][3] = self.busy_until[session]  # the engine's own rate's rounding: end with the audio
        self.sentences += 1
        self.audio_s += len(audio) / RATE

    def _emit_phonemes(self, names: list[str], rows: list[list], runs: ArticulationRuns) -> None:
        if rows:
            self.phonemes_sent += len(rows)
            data: dict[str, Any] = {"phonemes": rows}
            arrays: dict[str, np.ndarray] = {}
            runs.put(data, arrays)
            self.emit("phonemes", Message("phonemes/arpabet", data, arrays, pts_ns=min(r[2] for r in rows),
                                          session=names))

    def _took(self, seconds: float, unknown: set[str]) -> None:
        self.synth_s += seconds
        self.synth_max_s = max(self.synth_max_s, seconds)
        self.unknown |= unknown

    def _failed(self, session: str, exc: Exception) -> None:
        self.failed += 1
        self.warn(f"text_phoneme: a sentence for session {session[:40]!r} is not said: {exc}")

    # --- festival's thread -------------------------------------------------------------------
    def _submit(self, now: int) -> None:
        """Festival free: start the next sentence of the session whose speech runs out first
        (of those with less than synth_ahead_ms queued) on the synthesis thread."""
        if self.job is not None or self.pool is None:
            return
        waiting = [s for s, q in self.pending.items() if q and self._ahead_ns(s, now) < self.p.synth_ahead_ms * 1e6]
        if not waiting:
            return
        session = min(waiting, key=lambda s: self._ahead_ns(s, now))
        sentence = self.pending[session].popleft()
        future = self.pool.submit(self._speak, sentence, self.p.voice, self.p.wpm, self.p.pitch)
        self.job = _Job(session, self.generation.get(session, 0), time.perf_counter(), future)
        future.add_done_callback(self._wake)

    def _wake(self, _future: Future) -> None:
        """On the synthesis thread: a sentence is made (or failed); wake the loop."""
        try:
            os.write(self.wake_w, b"!")
        except OSError:  # full (the loop is behind: it will see the job done anyway), or closed in teardown
            pass

    def _woken(self) -> None:
        try:
            os.read(self.wake_r, 64)
        except BlockingIOError:
            pass
        now = self._now()
        self._collect(now)
        self._submit(now)

    def _collect(self, now: int) -> None:
        """The sentence festival finished, if it has: on its session's timeline, unless an
        interrupt came meanwhile."""
        job = self.job
        if job is None or not job.future.done():
            return
        self.job = None
        try:
            audio, phones, unknown = job.future.result()
        except FestivalError as exc:
            self._failed(job.session, exc)
            return
        self._took(time.perf_counter() - job.t0, unknown)
        if job.generation != self.generation.get(job.session, 0) or not len(audio):
            return  # interrupted while it was made, or nothing to say
        names: list[str] = []
        rows: list[list] = []
        runs = ArticulationRuns()
        self._place(job.session, audio, phones, now, names, rows, runs)
        self._emit_phonemes(names, rows, runs)
        self._send_due(now)  # a sentence due now (behind an interrupt): its first chunk at once

    def _finish_job(self, now: int) -> None:
        """Wait for festival's sentence in the making, and place it."""
        if self.job is not None:
            try:
                self.job.future.result()
            except FestivalError:
                pass  # _collect reports it
            self._collect(now)

    def _send_due(self, until_ns: int) -> None:
        """Send the chunks due by ``until_ns``, and those due within the next _SEND_AHEAD_NS: the
        sink holds the voice to its pts anyway, and a chunk sent when its pts has passed would
        reach it late (the timer ticks once a chunk; the sink may hold the voice only a few ms)."""
        until_ns += _SEND_AHEAD_NS
        for session, q in self.queues.items():
            while q and q[0][0] <= until_ns:
                pts, pcm = q.popleft()
                self.emit("audio", Message("audio/pcm", {"rate": RATE}, {"pcm": pcm}, pts_ns=pts, session=[session]))
                self.sent_until[session] = pts + len(pcm) * 1_000_000_000 // RATE

    def _tick(self) -> None:
        self.ticks += 1
        now = self._now()
        self._send_due(now)
        if self.pool is not None:  # festival: take what it made, give it the next
            self._collect(now)
            self._submit(now)
        else:
            waiting = [s for s, q in self.pending.items() if q and self._ahead_ns(s, now) < self.p.synth_ahead_ms * 1e6]
            if waiting:  # one sentence a tick, the most urgent session's: the loop stays responsive
                self._synthesize([min(waiting, key=lambda s: self._ahead_ns(s, now))], now)
        if self.p.repeat_s > 0 and self.p.text and self.spoken_param and not self.p.eos_after_text:
            self._repeat(now)
        if self.ticks % 50 == 0:
            self._forget_idle(now)
        if (self.p.eos_after_text and self.spoken_param and self.job is None and not any(self.queues.values())
                and not any(self.pending.values())):
            self._end()

    def _repeat(self, now: int) -> None:
        """The 'text' param again, ``repeat_s`` after its session fell quiet (whatever it said)."""
        session = self.p.session
        if self.queues.get(session) or self.pending.get(session) or (self.job is not None and self.job.session == session):
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
        making = self.job.session if self.job is not None else None
        for session in [s for s, end in self.busy_until.items() if end < now and s != making]:
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
        self._finish_job(now)
        while any(self.pending.values()):
            self._synthesize([s for s, q in self.pending.items() if q], now)
        self._send_due(1 << 62)

    def stats(self) -> dict:
        return {"engine": self.p.engine, "utterances": self.utterances, "sentences": self.sentences,
                "interrupts": self.interrupts, "refused": self.refused, "failed": self.failed,
                "synthesizing": self.job is not None, "repeats": self.repeats, "phonemes": self.phonemes_sent, "audio_s": round(self.audio_s, 3),
                "synth_s": round(self.synth_s, 3), "synth_max_ms": round(self.synth_max_s * 1000, 1),
                "queued_chunks": sum(len(q) for q in self.queues.values()),
                "pending_sentences": sum(len(q) for q in self.pending.values()),
                "unknown_mnemonics": sorted(self.unknown),
                **({"festival_restarts": self.festival.restarts} if self.festival is not None else {})}


class _Job:
    """A sentence festival is making on the synthesis thread: whose, in which generation of its speech."""

    __slots__ = ("session", "generation", "t0", "future")

    def __init__(self, session: str, generation: int, t0: float, future: Future):
        self.session, self.generation, self.t0, self.future = session, generation, t0, future
