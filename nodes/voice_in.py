"""voice_in: audio/pcm per session from outside the graph: POST /speak, the /speak WebSocket, the page's microphone.

Voice comes in through the ``speak`` interface (``on_call("speak", {"op": ...})``, which the
control API's ``/speak`` endpoints make), as utterances: an utterance is opened, its bytes
arrive in pieces, and it ends. The bytes are decoded here (``nodes.speech.open_stream``: a WAV
body, raw PCM, or one raw Opus packet per piece) and go out on ``audio`` as ``audio/pcm`` at
the stream's own rate (8000..48000 Hz; Opus at 48000), mono int16, in ``chunk_ms`` chunks, as
``audio_source`` sends them: data ``{"rate": R}``, arrays ``{"pcm"}``, session ``[sid]``.

Timing: chunks go out when their pts is due (real time on the pts clock), so an upload faster
than real time is queued here and played at real time. The pts of an utterance are continuous.
An utterance starts at max(now, the end of the session's speech queued before it), or, opened
with ``interrupt``, now: the session's queued audio and utterances are dropped. Sessions are
independent: one session's upload never delays another's audio. A stream coming slower than
real time plays as it comes; a chunk that would be more than ``late_ms`` late moves the
utterance's timeline to now (a pause in the voice rather than late audio).

``text`` (optional, ``text/plain``, data ``{"text": [t]}``, session ``[sid]``; link it to
``audio_phoneme.text``): an utterance's transcript goes out just before its first audio, so the
recogniser aligns to it; after an utterance's last audio goes an empty text, which makes the
recogniser finish the utterance (hand out the phones it held back: the mouth closes) and go back
to free recognition for what follows.

Calls (``args["op"]``; each answer has ``queued_ms``: the session's audio that will play before
this stream's newest sample has, which the API paces its reading by):

- ``open`` {stream, session, codec: wav | pcm | opus, rate, channels, format, transcript, interrupt}
- ``data`` {stream, data: bytes} -> also ``accepted`` (false while the session holds
  ``max_queue_s``: nothing was taken, send it again later) and ``ended`` once the node ended
  the stream itself (``stall``, ``interrupted``)
- ``transcript`` {stream, text}: the utterance's transcript (sent before its next audio)
- ``status`` {stream}: ``queued_ms`` and ``ended``, nothing changes
- ``end`` {stream}: what was received plays out; ``abort`` {stream, reason}: the client is gone
  or failed: what was received plays out, faded out over 10 ms

A stream with no data for ``stall_timeout`` once its audio has played ends by itself (counted).
Refusals (ParamError) say what is wrong: an unknown codec, a rate outside 8000..48000, channels
outside 1..8 (Opus: 1..2), an unknown sample format, a WAV that is not RIFF/WAVE PCM or float
(or is truncated in its header, or has an unsupported sample width), an Opus packet that does
not decode, a session id longer than 1024 characters. A malformed WAV ends its stream.
"""
from __future__ import annotations

from collections import OrderedDict, deque
from typing import Any, Mapping

import numpy as np

from runtime import Message, Node, Pad, Param, ParamError
from runtime.states import READY

from .speech import CODECS, SAMPLE_FORMATS, AudioStream, open_stream, to_int16

MIN_RATE, MAX_RATE = 8000, 48000
MAX_CHANNELS = 8
MAX_SESSION_CHARS = 1024
MAX_STREAM_CHARS = 128
_FADE_S = 0.010  # an aborted or stalled utterance fades out over this long: it ends without a click
_GONE_KEPT = 1024  # streams the node ended itself, remembered so their late calls get a clear answer
_SESSIONS_SHOWN = 16  # sessions listed with their queue in the stats
_OPS = ("open", "data", "transcript", "status", "end", "abort")


class _Utterance:
    """One stream: decoded audio waiting to go out, and where it is on the session's timeline."""

    def __init__(self, sid: str, session: str, decoder: AudioStream, transcript: str | None, now: int):
        self.id, self.session, self.decoder = sid, session, decoder
        self.transcript = transcript
        self.text_sent = False
        self.chunks: deque[np.ndarray] = deque()  # whole chunks (int16), not yet sent
        self.partial = np.zeros(0, np.float32)  # decoded samples short of a chunk
        self.received = 0  # mono samples decoded
        self.sent = 0  # samples sent
        self.bytes = 0
        self.start_ns: int | None = None  # pts of sample 0, once the utterance is the session's first
        self.ended: str | None = None  # end, abort, stall, interrupted, failed
        self.last_data_ns = now

    @property
    def rate(self) -> int | None:
        return self.decoder.rate

    def unsent(self) -> int:
        return self.received - self.sent

    def next_pts(self) -> int:
        assert self.start_ns is not None and self.rate
        return self.start_ns + self.sent * 1_000_000_000 // self.rate


class _Session:
    __slots__ = ("utterances", "sent_until")

    def __init__(self) -> None:
        self.utterances: deque[_Utterance] = deque()  # the first one plays, the others wait their turn
        self.sent_until = 0  # end pts of the audio sent


class VoiceIn(Node):
    """Audio/pcm per session from outside the graph: POST /speak, the /speak WebSocket, the page's microphone."""

    interfaces = frozenset({"speak"})
    outputs = {
        "audio": Pad(caps="audio/pcm", doc="int16 mono chunks of chunk_ms at the stream's rate, data {'rate': R}, "
                                           "paced at real time on the pts clock"),
        "text": Pad(caps="text/plain", required=False,
                    doc="an utterance's transcript just before its first audio; an empty text after its last"),
    }
    params = {
        "chunk_ms": Param(int, 20, "duration of one emitted chunk", min=5, max=40, mutable=READY),
        "stall_timeout": Param(float, 2.0, "a stream whose audio has played and that sends nothing for this long "
                               "(seconds) ends by itself", min=0.1, max=600.0),
        "max_queue_s": Param(float, 30.0, "audio a session may hold queued (seconds); more data waits", min=1.0,
                             max=3600.0),
        "max_streams": Param(int, 64, "streams open at once", min=1, max=4096),
        "late_ms": Param(float, 200.0, "a chunk later than this (a stream slower than real time) moves its "
                         "utterance's timeline to now", min=20.0, max=10000.0),
        "max_transcript_chars": Param(int, 10000, "longest transcript", min=1, max=1_000_000),
    }

    def setup(self) -> None:
        self.streams: dict[str, _Utterance] = {}  # open: the client may still send
        self.gone: OrderedDict[str, str] = OrderedDict()  # stream -> why the node ended it
        self.sessions: dict[str, _Session] = {}
        self.timer: Any = None
        self.utterances = self.refused = self.stalls = self.aborted = self.interrupted = 0
        self.full = self.underruns = 0
        self.received_s = self.emitted_s = 0.0

    # --- calls -------------------------------------------------------------------------------
    def on_call(self, interface: str, args: Mapping[str, Any]) -> dict[str, Any]:
        if interface != "speak":
            return super().on_call(interface, args)
        op = args.get("op")
        if op not in _OPS:
            raise ParamError(f"unknown op {op!r}; ops: {', '.join(_OPS)}")
        try:
            return getattr(self, f"_{op}")(args, self.now_ns())
        except ParamError:
            self.refused += 1
            raise

    def _open(self, args: Mapping[str, Any], now: int) -> dict[str, Any]:
        sid, session = args.get("stream"), args.get("session", "default")
        if not isinstance(sid, str) or not 0 < len(sid) <= MAX_STREAM_CHARS:
            raise ParamError(f"'stream' must be a non-empty string of at most {MAX_STREAM_CHARS} characters")
        if sid in self.streams or sid in self.gone:
            raise ParamError(f"stream '{sid}' is already open")
        if not isinstance(session, str) or not 0 < len(session) <= MAX_SESSION_CHARS:
            raise ParamError(f"'session' must be a non-empty string of at most {MAX_SESSION_CHARS} characters")
        if len(self.streams) >= self.p.max_streams:
            raise ParamError(f"{len(self.streams)} streams are open, the most this node takes (max_streams)")
        codec = args.get("codec", "pcm")
        rate, channels = _integer(args, "rate"), _integer(args, "channels")
        fmt = args.get("format")
        if codec not in CODECS:
            raise ParamError(f"unknown codec {codec!r}; codecs: {', '.join(CODECS)}")
        if rate is not None and not MIN_RATE <= rate <= MAX_RATE:
            raise ParamError(f"rate {rate} is outside {MIN_RATE} .. {MAX_RATE} Hz")
        if channels is not None and not 1 <= channels <= MAX_CHANNELS:
            raise ParamError(f"channels {channels} is outside 1 .. {MAX_CHANNELS}")
        if codec == "pcm" and fmt is not None and fmt not in SAMPLE_FORMATS:
            raise ParamError(f"unknown sample format {fmt!r}; formats: {', '.join(SAMPLE_FORMATS)}")
        transcript = args.get("transcript")
        if transcript is not None and (not isinstance(transcript, str) or len(transcript) > self.p.max_transcript_chars):
            raise ParamError(f"'transcript' must be a string of at most {self.p.max_transcript_chars} characters")
        interrupt = args.get("interrupt", False)
        if not isinstance(interrupt, bool):
            raise ParamError(f"'interrupt' must be true or false, got {interrupt!r}")
        try:
            decoder = open_stream(codec, rate=rate, channels=channels, fmt=fmt if codec == "pcm" else None)
        except ValueError as exc:
            raise ParamError(str(exc)) from None
        s = self.sessions.setdefault(session, _Session())
        if interrupt:
            self._interrupt(s, now)
        u = _Utterance(sid, session, decoder, transcript or None, now)
        self.streams[sid] = u
        s.utterances.append(u)
        self.utterances += 1
        self._wake()
        return {"stream": sid, "session": session, "codec": codec, "rate": decoder.rate, "channels": decoder.channels,
                "queued_ms": self._queued_ms(u, now)}

    def _data(self, args: Mapping[str, Any], now: int) -> dict[str, Any]:
        u = self._stream(args)
        if u is None:
            return self._gone_answer(args)
        data = args.get("data")
        if not isinstance(data, (bytes, bytearray)):
            raise ParamError(f"'data' must be bytes, got {type(data).__name__}")
        s = self.sessions[u.session]
        held = self._queued_ms(s.utterances[-1], now)
        if held >= self.p.max_queue_s * 1000:
            self.full += 1
            return {"stream": u.id, "accepted": False, "queued_ms": self._queued_ms(u, now),
                    "retry_ms": round(held - self.p.max_queue_s * 1000 + 100)}
        known = u.rate is not None
        try:
            x = u.decoder.feed(bytes(data))
        except ValueError as exc:
            if not u.decoder.recoverable:  # a bad WAV header: nothing after it can be read
                self._drop(u, "failed")
            raise ParamError(str(exc)) from None
        if not known and u.rate is not None:  # a WAV's header has just come: is it one we play?
            problem = _format_problem(u.rate, u.decoder.channels)
            if problem:
                self._drop(u, "failed")
                raise ParamError(f"the WAV header says {problem}")
        u.bytes += len(data)
        u.last_data_ns = now
        self._take(u, x)
        self._pump(s, now)
        return {"stream": u.id, "accepted": True, "queued_ms": self._queued_ms(u, now), "rate": u.rate,
                "channels": u.decoder.channels, "samples": u.received}

    def _transcript(self, args: Mapping[str, Any], now: int) -> dict[str, Any]:
        u = self._stream(args)
        if u is None:
            return self._gone_answer(args)
        text = args.get("text")
        if not isinstance(text, str) or len(text) > self.p.max_transcript_chars:
            raise ParamError(f"'text' must be a string of at most {self.p.max_transcript_chars} characters")
        u.transcript, u.text_sent = text or None, False
        return {"stream": u.id, "queued_ms": self._queued_ms(u, now)}

    def _status(self, args: Mapping[str, Any], now: int) -> dict[str, Any]:
        u = self._stream(args)
        if u is None:
            return self._gone_answer(args)
        return {"stream": u.id, "queued_ms": self._queued_ms(u, now), "samples": u.received, "rate": u.rate}

    def _end(self, args: Mapping[str, Any], now: int) -> dict[str, Any]:
        u = self._stream(args)
        if u is None:
            return self._gone_answer(args)
        try:
            u.decoder.finish()
        except ValueError as exc:
            self._drop(u, "failed")
            raise ParamError(str(exc)) from None
        return self._finish(u, "end", now)

    def _abort(self, args: Mapping[str, Any], now: int) -> dict[str, Any]:
        sid = args.get("stream")
        u = self.streams.get(sid) if isinstance(sid, str) else None
        if u is None:  # already ended (or never opened): nothing is left to clean up
            return self._gone_answer(args)
        self.aborted += 1
        return self._finish(u, "abort", now)

    # --- streams -----------------------------------------------------------------------------
    def _stream(self, args: Mapping[str, Any]) -> _Utterance | None:
        """The open stream the call names; None if the node ended it; ParamError if unknown."""
        sid = args.get("stream")
        u = self.streams.get(sid) if isinstance(sid, str) else None
        if u is None and sid not in self.gone:
            raise ParamError(f"no open stream {sid!r}")
        return u

    def _gone_answer(self, args: Mapping[str, Any]) -> dict[str, Any]:
        sid = args.get("stream")
        return {"stream": sid, "ended": self.gone.get(sid, "unknown") if isinstance(sid, str) else "unknown",
                "accepted": False, "queued_ms": 0}

    def _forget(self, u: _Utterance, why: str) -> None:
        """The client may send no more to this stream: later calls get ``ended: why``."""
        if self.streams.pop(u.id, None) is not None and why != "end":
            self.gone[u.id] = why
            while len(self.gone) > _GONE_KEPT:
                self.gone.popitem(last=False)

    def _drop(self, u: _Utterance, why: str) -> None:
        """End a stream whose input failed: what it had decoded still plays out."""
        self._forget(u, why)
        self._close(u, why, fade=True)

    def _finish(self, u: _Utterance, why: str, now: int) -> dict[str, Any]:
        self._forget(u, why)
        self._close(u, why, fade=why != "end")
        s = self.sessions[u.session]
        self._pump(s, now)
        rate = u.rate or 0
        return {"stream": u.id, "samples": u.received, "rate": u.rate, "bytes": u.bytes,
                "seconds": round(u.received / rate, 3) if rate else 0.0, "queued_ms": self._queued_ms(u, now)}

    def _close(self, u: _Utterance, why: str, fade: bool) -> None:
        """No more audio comes for ``u``: its last samples become a (short) chunk; faded if cut off."""
        u.ended = why
        if len(u.partial):
            u.chunks.append(to_int16(u.partial))
            u.partial = np.zeros(0, np.float32)
        if fade and u.rate and u.chunks:
            _fade_out(u.chunks, int(u.rate * _FADE_S))

    def _take(self, u: _Utterance, x: np.ndarray) -> None:
        if not len(x):
            return
        assert u.rate is not None  # samples come only once the rate is known
        u.received += len(x)
        self.received_s += len(x) / u.rate
        buf = np.concatenate([u.partial, x]) if len(u.partial) else x
        step = max(1, u.rate * self.p.chunk_ms // 1000)
        whole = len(buf) - len(buf) % step
        for i in range(0, whole, step):
            u.chunks.append(to_int16(buf[i:i + step]))
        u.partial = buf[whole:]

    def _interrupt(self, s: _Session, now: int) -> None:
        """A new utterance replaces the session's speech: what is queued is dropped, the
        recogniser is told the old utterance has ended, and the streams say 'interrupted'."""
        for u in list(s.utterances):
            self.interrupted += 1
            u.chunks.clear()
            u.partial = np.zeros(0, np.float32)
            if u.sent:
                self.emit("text", Message("text/plain", {"text": [""]}, pts_ns=s.sent_until, session=[u.session]))
            u.ended = "interrupted"
            self._forget(u, "interrupted")
        s.utterances.clear()

    def _queued_ms(self, u: _Utterance, now: int) -> float:
        """How long until ``u``'s newest sample has played: the session's audio ahead of it, and its own."""
        s = self.sessions.get(u.session)
        if s is None or u not in s.utterances:
            return 0.0
        total = 0.0
        for v in s.utterances:
            if v.rate:
                total += v.unsent() / v.rate * 1000
                if v.start_ns is not None and v.unsent():
                    total += max(0, v.next_pts() - now) / 1e6  # the next chunk is not due yet
            if v is u:
                break
        return round(total, 1)

    # --- pacing ------------------------------------------------------------------------------
    def _wake(self) -> None:
        if self.timer is None:
            self.timer = self.every(self.p.chunk_ms / 1000, self._tick)

    def _tick(self) -> None:
        now = self.now_ns()
        for sid, s in list(self.sessions.items()):
            self._pump(s, now)
            if not s.utterances and s.sent_until < now - 1_000_000_000:
                del self.sessions[sid]
        self._check_stalls(now)
        if not self.sessions and self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _pump(self, s: _Session, now: int, rebase: bool = True) -> None:
        """Send the session's chunks that are due; an utterance that has ended and played gives
        way to the next, which starts where it ended (or now, if that has passed)."""
        late_ns = int(self.p.late_ms * 1e6) if rebase else 1 << 62
        follows = False  # the utterance before has just ended here: one queued behind it goes on from its end
        while s.utterances:
            u = s.utterances[0]
            if u.chunks and u.start_ns is None:
                u.start_ns = s.sent_until if follows else max(now, s.sent_until)
            while u.chunks:
                pts = u.next_pts()
                if pts > now:
                    return
                if pts < now - late_ns:  # the stream is slower than real time: a pause, not late audio
                    assert u.start_ns is not None
                    u.start_ns += now - pts
                    pts = now
                    self.underruns += 1
                if not u.text_sent and u.transcript is not None:
                    self.emit("text", Message("text/plain", {"text": [u.transcript]}, pts_ns=pts, session=[u.session]))
                    u.text_sent = True
                pcm = u.chunks.popleft()
                rate = u.rate
                assert rate is not None
                self.emit("audio", Message("audio/pcm", {"rate": rate}, {"pcm": pcm}, pts_ns=pts, session=[u.session]))
                u.sent += len(pcm)
                self.emitted_s += len(pcm) / rate
                s.sent_until = pts + len(pcm) * 1_000_000_000 // rate
            if u.ended is None:
                return  # more may come
            if u.sent:  # the recogniser finishes the utterance: its held-back phones go out
                self.emit("text", Message("text/plain", {"text": [""]}, pts_ns=s.sent_until, session=[u.session]))
            s.utterances.popleft()
            follows = True

    def _check_stalls(self, now: int) -> None:
        timeout = int(self.p.stall_timeout * 1e9)
        for u in list(self.streams.values()):
            if now - u.last_data_ns > timeout and not u.chunks:  # silent, and all it sent has played
                self.stalls += 1
                self._forget(u, "stall")
                self._close(u, "stall", fade=True)
                self._pump(self.sessions[u.session], now)

    def on_eos(self) -> None:
        """Asked to finish: every open stream ends, and what was received goes out now."""
        for u in list(self.streams.values()):
            self._forget(u, "end")
            self._close(u, "end", fade=False)
        for s in self.sessions.values():
            self._pump(s, 1 << 62, rebase=False)

    def stats(self) -> dict[str, Any]:
        now = self.now_ns()
        queued = sorted(((round(self._queued_ms(s.utterances[-1], now)), sid) for sid, s in self.sessions.items()
                         if s.utterances), reverse=True)[:_SESSIONS_SHOWN]
        return {"streams_open": len(self.streams), "utterances": self.utterances, "sessions": len(self.sessions),
                "received_s": round(self.received_s, 3), "emitted_s": round(self.emitted_s, 3),
                "refused": self.refused, "full": self.full, "stalls": self.stalls, "aborted": self.aborted,
                "interrupted": self.interrupted, "underruns": self.underruns,
                "queued_ms": [{"session": sid[:64], "ms": ms} for ms, sid in queued]}


def _integer(args: Mapping[str, Any], name: str) -> int | None:
    v = args.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise ParamError(f"'{name}' must be an integer, got {v!r}")
    return v


def _format_problem(rate: int, channels: int | None) -> str | None:
    if not MIN_RATE <= rate <= MAX_RATE:
        return f"rate {rate}, outside {MIN_RATE} .. {MAX_RATE} Hz"
    if channels is None or not 1 <= channels <= MAX_CHANNELS:
        return f"{channels} channels, outside 1 .. {MAX_CHANNELS}"
    return None


def _fade_out(chunks: deque[np.ndarray], n: int) -> None:
    """Scale the last ``n`` samples (across the last chunks) down to zero."""
    left = n
    for i in range(len(chunks) - 1, -1, -1):
        if left <= 0:
            break
        c = chunks[i].astype(np.float32)
        k = min(left, len(c))
        c[len(c) - k:] *= np.linspace(left / n, (left - k) / n, k, endpoint=False, dtype=np.float32)
        chunks[i] = to_int16(c)
        left -= k
