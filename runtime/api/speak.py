"""POST /speak and the WebSocket /speak: a voice streamed into a node's ``speak`` interface.

The API knows which Content-Types carry audio and hands the bytes on, 64 KiB at most per call,
with the query's params; decoding, and refusing what does not decode, is the node's
(``voice_in``). The calls are those of the ``speak`` interface (``{"op": "open" | "data" |
"status" | "transcript" | "end" | "abort", ...}``), each answered with ``queued_ms``: how long
until the stream's newest sample has played.

Back-pressure: while more than ``WINDOW_MS`` is queued ahead, reading pauses (the request's
body, the socket's messages), so a client sending faster than real time is slowed to real time
by TCP, and the node holds at most about ``WINDOW_MS`` plus one piece. Every way out of a stream
(an error, a client gone, a cancelled request) ends it at the node, so nothing is left open.
"""
from __future__ import annotations

import asyncio
import json
import secrets
import time
import urllib.parse
from typing import Any, Mapping

from fastapi import HTTPException, WebSocket
from starlette.requests import ClientDisconnect, Request
from starlette.websockets import WebSocketDisconnect, WebSocketState

from .auth import AuthError, authenticate
from .calls import call_node, nodes_for

SPEAK = "speak"  # the interface (Node.interfaces) these endpoints stream into
PIECE_BYTES = 64 * 1024  # the most one call hands the node; also the WebSocket's message cap
WINDOW_MS = 2000.0  # reading pauses while more than this is queued ahead of playback
POLL_S = 0.5  # while paused, the node is asked this often how much is left
FULL_WAIT_S = 30.0  # a session whose queue stays full this long: 429
START_TIMEOUT_S = 10.0  # a WebSocket must say 'start' (and who it is) within this
QUEUED_EVERY_S = 0.5  # how often a WebSocket client hears how much is queued
# Content-Type (lower case) -> (codec, default sample format). RFC 2586's audio/L16 is big-endian.
MEDIA_TYPES: dict[str, tuple[str, str | None]] = {
    "audio/wav": ("wav", None), "audio/x-wav": ("wav", None), "audio/wave": ("wav", None),
    "audio/vnd.wave": ("wav", None), "application/octet-stream": ("pcm", None), "audio/l16": ("pcm", "s16be"),
    "audio/pcm": ("pcm", None),
}
WS_CODECS = ("pcm", "opus")


class StreamEnded(Exception):
    """The node ended the stream itself (``stall``, ``interrupted``, ``failed``)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class SpeakStream:
    """One utterance into a node: opened, fed with back-pressure, then ended or aborted, once."""

    def __init__(self, runner: Any, node: str):
        self.runner, self.node = runner, node
        self.id = secrets.token_hex(8)
        self.open_ = False
        self.bytes = 0
        self.queued_ms = 0.0

    async def call(self, op: str, **args: Any) -> dict[str, Any]:
        answer = await call_node(self.runner, self.node, SPEAK, {"op": op, "stream": self.id, **args})
        self.queued_ms = float(answer.get("queued_ms") or 0.0)
        return answer

    async def open(self, **args: Any) -> dict[str, Any]:
        answer = await self.call("open", **{k: v for k, v in args.items() if v is not None})
        self.open_ = True
        return answer

    async def send(self, data: bytes, paused: Any = None) -> None:
        """Hand ``data`` to the node in pieces, pausing while too much is queued ahead;
        ``paused(ms)`` is awaited at each pause (a WebSocket tells its client)."""
        for i in range(0, len(data), PIECE_BYTES):
            piece = data[i:i + PIECE_BYTES]
            waited = 0.0
            while True:
                answer = await self.call("data", data=piece)
                if answer.get("ended"):
                    self.open_ = False
                    raise StreamEnded(str(answer["ended"]))
                if answer.get("accepted", True):
                    break
                if waited >= FULL_WAIT_S:  # the session's queue stays full (other streams fill it)
                    raise HTTPException(429, f"the session's audio queue has been full for {FULL_WAIT_S:g} s; "
                                             "send more once it has played", headers={"Retry-After": "5"})
                pause = min(FULL_WAIT_S, max(0.05, float(answer.get("retry_ms") or 500) / 1000))
                await asyncio.sleep(pause)
                waited += pause
            self.bytes += len(piece)
            while self.queued_ms > WINDOW_MS:
                if paused is not None:
                    await paused(self.queued_ms)
                await asyncio.sleep(min(POLL_S, (self.queued_ms - WINDOW_MS) / 1000 + 0.02))
                answer = await self.call("status")
                if answer.get("ended"):
                    self.open_ = False
                    raise StreamEnded(str(answer["ended"]))

    async def end(self) -> dict[str, Any]:
        self.open_ = False
        return await self.call("end")

    async def abort(self, reason: str) -> None:
        """End the stream after a failure; never raises (the failure is what the caller reports)."""
        if self.open_:
            self.open_ = False
            await self._abort(reason)

    def abort_soon(self, reason: str) -> None:
        """``abort`` from a task being cancelled (which may await nothing more): as a task of its own."""
        if self.open_:
            self.open_ = False
            asyncio.ensure_future(self._abort(reason))

    async def _abort(self, reason: str) -> None:
        try:
            await self.call("abort", reason=reason[:200])
        except Exception:  # noqa: BLE001 - the node or the graph may be gone too: nothing is left open then
            pass


def media_type(header: str | None) -> tuple[str, dict[str, str]]:
    """``audio/L16; rate=16000; channels=1`` -> (``audio/l16``, {"rate": "16000", "channels": "1"})."""
    parts = (header or "").split(";")
    params = {}
    for p in parts[1:]:
        k, _, v = p.partition("=")
        if k.strip():
            params[k.strip().lower()] = v.strip().strip('"')
    return parts[0].strip().lower(), params


def _int_param(value: str | None, name: str) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise HTTPException(422, f"the Content-Type's {name}= must be an integer, got '{value[:20]}'") from None


async def speak_http(runner: Any, request: Request, *, session: str, rate: int | None, channels: int | None,
                     fmt: str | None, transcript: str | None, interrupt: bool, node: str | None,
                     max_upload: int) -> dict[str, Any]:
    """POST /speak: the body streams into the node as it arrives; the answer comes once it is all in."""
    media, ct = media_type(request.headers.get("content-type"))
    if media not in MEDIA_TYPES:
        raise HTTPException(415, f"Content-Type must be one of {', '.join(MEDIA_TYPES)} (audio/L16 and raw PCM "
                                 f"take rate= and channels=), got '{media[:60] or 'none'}'")
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > max_upload):
        raise HTTPException(413, f"request body larger than {max_upload} bytes")
    codec, default_fmt = MEDIA_TYPES[media]
    if transcript is None and request.headers.get("x-transcript") is not None:
        transcript = urllib.parse.unquote(request.headers["x-transcript"])
    args: dict[str, Any] = {"session": session, "codec": codec, "interrupt": interrupt, "transcript": transcript}
    if codec == "pcm":
        args.update(rate=rate if rate is not None else _int_param(ct.get("rate"), "rate"),
                    channels=channels if channels is not None else _int_param(ct.get("channels"), "channels"),
                    format=fmt or default_fmt)
    target = (await nodes_for(runner, SPEAK, node, "takes speech"))
    if len(target) > 1:
        raise HTTPException(422, f"several nodes take speech ({', '.join(target)}): name one with node=")
    stream = SpeakStream(runner, target[0])
    opened = await stream.open(**args)
    try:
        async for chunk in request.stream():
            if stream.bytes + len(chunk) > max_upload:
                raise HTTPException(413, f"request body larger than {max_upload} bytes")
            if chunk:
                await stream.send(chunk)
        done = await stream.end()
    except StreamEnded as exc:
        if exc.reason == "interrupted":
            raise HTTPException(409, f"interrupted by a newer utterance of session '{session[:40]}'") from None
        if exc.reason == "stall":
            raise HTTPException(408, "no audio came for the node's stall_timeout once what was sent had played: "
                                     "the utterance was ended") from None
        raise HTTPException(422, f"the node ended the stream ({exc.reason})") from None
    except ClientDisconnect:
        await stream.abort("the client disconnected")
        raise HTTPException(400, "the client disconnected before the body was in") from None
    except asyncio.CancelledError:
        stream.abort_soon("the request was cancelled")
        raise
    finally:
        await stream.abort("the request failed")  # a no-op once ended
    return {"session": session, "node": stream.node, "stream": stream.id, "bytes": stream.bytes,
            "seconds": done.get("seconds", 0.0), "rate": done.get("rate") or opened.get("rate"),
            "queued_ms": done.get("queued_ms", 0.0)}


# --- the WebSocket ------------------------------------------------------------------------------
class _Close(Exception):
    """Send an error to the client and close the socket with ``code``."""

    def __init__(self, code: int, error: str):
        super().__init__(error)
        self.code, self.error = code, error


def origin_allowed(ws: WebSocket, cors_origins: list[str], tls: bool) -> bool:
    """A browser's page may stream a voice only from an origin the API allows (``--api-cors``) or
    its own; a client that is not a browser sends no Origin."""
    origin = ws.headers.get("origin")
    if origin is None or "*" in cors_origins or origin in cors_origins:
        return True
    return origin == f"{'https' if tls else 'http'}://{ws.headers.get('host', '')}"


class SpeakSocket:
    """One WebSocket /speak connection: its messages, its current utterance, its back-pressure."""

    def __init__(self, runner: Any, ws: WebSocket, secret: str | None):
        self.runner, self.ws, self.secret = runner, ws, secret
        self.authorized = False
        self.stream: SpeakStream | None = None
        self.session = ""
        self.told_idle = False  # told 'no utterance is open' since the last start
        self.last_queued = 0.0

    async def run(self) -> None:
        try:
            if self.ws.headers.get("authorization") is not None or self.secret is None:
                self._authorize(self.ws.headers.get("authorization"))
            first = True
            while True:
                if first and not self.authorized:
                    try:
                        msg = await asyncio.wait_for(self.ws.receive(), START_TIMEOUT_S)
                    except asyncio.TimeoutError:
                        raise _Close(1008, f"no 'start' message with a token within {START_TIMEOUT_S:g} s") from None
                elif self.stream is not None:  # an utterance is open: a quiet client still hears how it goes
                    try:
                        msg = await asyncio.wait_for(self.ws.receive(), QUEUED_EVERY_S)
                    except asyncio.TimeoutError:
                        await self._status()
                        continue
                else:
                    msg = await self.ws.receive()
                first = False
                if msg["type"] == "websocket.disconnect":
                    await self._finish(clean=msg.get("code", 1000) in (1000, 1001))
                    return
                if msg.get("text") is not None:
                    await self._text(msg["text"])
                elif msg.get("bytes") is not None:
                    await self._audio(msg["bytes"])
        except _Close as exc:
            await self._finish(clean=False)
            await self._send({"type": "error", "error": exc.error})
            await self._close(exc.code, exc.error)
        except WebSocketDisconnect as exc:
            await self._finish(clean=exc.code in (1000, 1001))
        except asyncio.CancelledError:
            if self.stream is not None:
                self.stream.abort_soon("the connection was cancelled")
            raise

    def _authorize(self, authorization: str | None) -> None:
        try:
            who = authenticate(authorization, self.secret)
        except AuthError as exc:
            raise _Close(1008, exc.detail) from None
        if not who.allows("operator"):
            raise _Close(1008, f"role '{who.role}' may not do this; it needs 'operator' or above")
        self.authorized = True

    async def _text(self, text: str) -> None:
        if len(text.encode("utf-8", "surrogatepass")) > PIECE_BYTES:
            raise _Close(1009, f"a message larger than {PIECE_BYTES} bytes")
        try:
            msg = json.loads(text)
        except ValueError:
            raise _Close(1007, "a text message must be a JSON object with a 'type'") from None
        if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
            raise _Close(1007, "a text message must be a JSON object with a 'type'")
        kind = msg["type"]
        if not self.authorized:
            if kind != "start":
                raise _Close(1008, "the first message must be a 'start' with a token")
            token = msg.get("token")
            self._authorize(f"Bearer {token}" if isinstance(token, str) and token else None)
        if kind == "start":
            await self._start(msg)
        elif kind == "transcript":
            if self.stream is None:
                await self._error("no utterance is open: send a 'start' first")
            elif not isinstance(msg.get("text"), str):
                await self._error("a transcript message needs 'text': a string")
            else:
                await self._call(self.stream.call("transcript", text=msg["text"]))
        elif kind == "end":
            if self.stream is None:
                await self._error("no utterance is open: send a 'start' first")
            else:
                await self._end()
        else:
            await self._error(f"unknown message type '{kind[:40]}' (types: start, transcript, end)")

    async def _start(self, msg: Mapping[str, Any]) -> None:
        if self.stream is not None:  # a start while one is open ends that one first
            await self._end()
        codec = msg.get("codec", "pcm")
        if codec not in WS_CODECS:
            await self._error(f"codec must be one of {', '.join(WS_CODECS)} on the WebSocket, got {str(codec)[:20]!r}")
            return
        session = msg.get("session", "default")
        node = msg.get("node")
        try:
            target = await nodes_for(self.runner, SPEAK, node if isinstance(node, str) else None, "takes speech")
            if len(target) > 1:
                raise HTTPException(422, f"several nodes take speech ({', '.join(target)}): name one with 'node'")
            stream = SpeakStream(self.runner, target[0])
            opened = await stream.open(session=session, codec=codec, rate=msg.get("rate"), channels=msg.get("channels"),
                                       format=msg.get("format"), transcript=msg.get("transcript"),
                                       interrupt=msg.get("interrupt", False))
        except HTTPException as exc:
            await self._failed(exc)
            return
        self.stream, self.session, self.told_idle = stream, str(session), False
        await self._send({"type": "started", "stream": stream.id, "node": stream.node, "session": opened.get("session"),
                          "codec": opened.get("codec"), "rate": opened.get("rate"), "channels": opened.get("channels"),
                          "queued_ms": opened.get("queued_ms")})

    async def _audio(self, data: bytes) -> None:
        if len(data) > PIECE_BYTES:
            raise _Close(1009, f"a message larger than {PIECE_BYTES} bytes")
        if not self.authorized:
            raise _Close(1008, "the first message must be a 'start' with a token")
        if self.stream is None:
            if not self.told_idle:
                self.told_idle = True
                await self._error("audio without an open utterance is dropped: send a 'start' first")
            return
        try:
            await self.stream.send(data, paused=self._queued)
        except StreamEnded as exc:
            self.stream = None
            await self._send({"type": "ended", "reason": exc.reason})
            return
        except HTTPException as exc:
            await self._failed(exc)
            return
        if time.monotonic() - self.last_queued >= QUEUED_EVERY_S:
            await self._queued(self.stream.queued_ms if self.stream else 0.0)

    async def _status(self) -> None:
        """No message for a while: the utterance's queue, or its end if the node ended it (a stall)."""
        stream = self.stream
        assert stream is not None
        try:
            answer = await stream.call("status")
        except HTTPException as exc:
            await self._failed(exc)
            return
        if answer.get("ended"):
            self.stream, stream.open_ = None, False
            await self._send({"type": "ended", "reason": str(answer["ended"]), "stream": stream.id})
        else:
            await self._queued(stream.queued_ms)

    async def _queued(self, ms: float) -> None:
        self.last_queued = time.monotonic()
        await self._send({"type": "queued", "ms": round(ms)})

    async def _end(self) -> None:
        stream, self.stream = self.stream, None
        assert stream is not None
        try:
            done = await stream.end()
        except HTTPException as exc:
            await self._failed(exc)
            return
        await self._send({"type": "ended", "reason": "end", "stream": stream.id, "seconds": done.get("seconds"),
                          "samples": done.get("samples"), "queued_ms": done.get("queued_ms")})

    async def _call(self, work: Any) -> None:
        try:
            await work
        except HTTPException as exc:
            await self._failed(exc)

    async def _failed(self, exc: HTTPException) -> None:
        """A refusal (422, 404, 429) is the client's to fix: say so and go on; the graph gone is the end."""
        if exc.status_code >= 500:
            raise _Close(1011, str(exc.detail))
        await self._error(str(exc.detail))

    async def _finish(self, clean: bool) -> None:
        stream, self.stream = self.stream, None
        if stream is None:
            return
        if clean:
            try:
                await stream.end()
                return
            except HTTPException:
                pass
        await stream.abort("the WebSocket closed")

    async def _error(self, error: str) -> None:
        await self._send({"type": "error", "error": error})

    async def _send(self, msg: dict[str, Any]) -> None:
        if self.ws.application_state == WebSocketState.CONNECTED and self.ws.client_state == WebSocketState.CONNECTED:
            try:
                await self.ws.send_text(json.dumps(msg))
            except (WebSocketDisconnect, RuntimeError):
                pass

    async def _close(self, code: int, reason: str) -> None:
        if self.ws.application_state == WebSocketState.CONNECTED and self.ws.client_state == WebSocketState.CONNECTED:
            try:
                await self.ws.close(code, reason.encode()[:120].decode("utf-8", "ignore"))  # a close reason: <= 123 bytes
            except RuntimeError:
                pass
