"""The browser-delivery sinks' node base: the page, the viewer registry and the WebSocket transport.

The last node of a graph (``docs/delivery.md``): ``avatar/packet`` batches in, browsers out. An
HTTP server (FastAPI on uvicorn, ``nodes.delivery.webserver``) runs on an event loop in a thread of
the node's process; the viewer registry (``nodes.delivery.viewers``) lives on that loop. The node's
own thread hands each batch over (``WebServer.call``) and emits what the viewers ask of upstream
(keyframes, levels of detail) on the ``requests`` pad, which the loop hands back through an eventfd
the node watches (``Inbox``): only the node's thread touches its links.

Each batch's keyframe flags and sequence numbers come from the compressor (arrays ``keyframe``
and ``seq``), so the viewers never read them out of the packets.

The voice (``audio`` pad, ``audio/pcm`` per session) is encoded here, on the node's thread, once
per session (``nodes.delivery.voice``), and held on the loop until it is due: its pts plus the
hold, the latency the face's path into ``in`` declares beyond the voice's path into ``audio``
(the runner's latency query, ``on_latency``), so the voice meets the face made from it.

The heavy imports (FastAPI, uvicorn) happen in ``setup``, so ``avatar inspect`` and ``avatar
validate`` stay quick. ``websocket_sink`` is this class; ``webrtc_sink`` adds WebRTC data channels.
"""
from __future__ import annotations

import asyncio
import time
from collections import deque
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import parse_qs

from runtime import Message, Node, Pad, Param, ParamError

from ..wire import packet_facts
from .voice import VoiceEncoder, pcm_problem

_LAG_LIMIT = 64  # batches handed to the loop and not dispatched yet: beyond, new ones are dropped
_HOUSEKEEPING_S = 0.25  # session sweep and stats snapshot period
_WARN_EVERY_NS = 1_000_000_000
_RESTART_PARAMS = ("host", "port", "web_root", "ping_interval", "ping_timeout")
_QUEUE_FPS = 60.0  # frames a second a viewer's queue drains at, for the declared latency


def _url_problem(url: str) -> str | None:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if url and (parts.scheme not in ("http", "https") or not parts.netloc):
        return f"must be an http(s) URL such as http://127.0.0.1:8000, got {url!r}"
    return None


def _layers_problem(table: Any) -> str | None:
    for vid, layer in table.items():
        if not str(vid).isdigit() or isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer <= 8:
            return f"viewer_layers: expected {{viewer id: layer 0..8}}, got {vid!r:.40}: {layer!r:.40}"
    return None


class ViewerSink(Node):
    """Serves the page (web/) and sends each browser viewer its session's packets over a WebSocket;
    a subclass adds transports (``transports``, ``_routes``, ``_ice_servers``)."""

    inputs = {"in": Pad("avatar/packet", "batches: data {'packets': [bytes]*S}, row i = session i"),
              "audio": Pad("audio/pcm", "the voice, one session per message (data {'rate': R}, int16 mono 'pcm'), "
                                        "sent to the viewers of that session in sync with its face",
                           required=False, policy="block")}  # a lost chunk is an audible hole
    outputs = {"requests": Pad("avatar/request", "viewers' wishes: {'keyframe': [session ids]} and "
                                                 "{'lod': {session id: level or null}}; link back to the "
                                                 "compressor and lod nodes with feedback: true", required=False)}
    params = {
        "host": Param(str, "127.0.0.1", "address to serve HTTP on (0.0.0.0: every interface)"),
        "port": Param(int, 8080, "TCP port; 0 = any free port (stats and an INFO bus message say which)",
                      min=0, max=65535),
        "web_root": Param(str, "", "folder of the page (index.html, js/, assets/); empty: the repo's web/",
                          check=lambda root: f"{root} is not a folder" if root and not Path(root).is_dir() else None),
        "queue_size": Param(int, 8, "packets waiting per viewer; when full the oldest is dropped", min=1, max=4096),
        "ping_interval": Param(float, 5.0, "seconds between WebSocket pings; 0 = none", min=0.0, max=3600.0),
        "ping_timeout": Param(float, 10.0, "a WebSocket viewer not answering a ping this long is closed; 0 = never",
                              min=0.0, max=3600.0),
        "api": Param(str, "", "URL of the control API the page's buttons call (in /config.json and the CSP)",
                     check=lambda url: _url_problem(url)),
        "keyframe_min_interval_ms": Param(float, 100.0, "per session, at most one keyframe request upstream "
                                                        "this often", min=0.0, max=60000.0),
        "session_timeout": Param(float, 3.0, "seconds without packets after which a session is not live",
                                 min=0.01, max=86400.0),
        "viewer_layers": Param(dict, {}, "viewer id -> stream layer (0: the compressor's own, 1..: its extra "
                                         "'layers'); set by a network agent (docs/agents.md); a viewer not named "
                                         "gets layer 0", check=lambda v: _layers_problem(v)),
        "voice_bitrate": Param(int, 32000, "Opus bit rate of the voice (bits per second, mono 48 kHz)",
                               min=6000, max=128000),
    }
    transports: tuple[str, ...] = ("websocket",)

    @classmethod
    def latency_ns(cls, params: Mapping[str, Any]) -> int:
        """A viewer's full queue: queue_size packets at 60 frames a second (the frame rate of our graphs)."""
        return int(round(int(params["queue_size"]) * 1e9 / _QUEUE_FPS))

    # --- lifecycle ---------------------------------------------------------------------------
    def setup(self) -> None:
        from .webserver import Inbox, bind

        self.server = self.viewers = None
        self.rejected = self.overruns = self.restarts = 0
        self.snapshot: dict[str, Any] = {}
        self.last_warn_ns, self.warns_held = -_WARN_EVERY_NS, 0
        self.inbox = Inbox()
        self.watch(self.inbox.fd, self._on_inbox)
        self.voices: dict[str, VoiceEncoder] = {}
        self.hold_ns = 0  # how long the voice waits for its face (on_latency)
        self.voice_rejected = self.voice_talkspurts = 0
        self.voice_chunks = 0
        self.voice_s = 0.0
        self.voice_cpu_ns = 0
        if self.linked("audio"):
            self.every(0.02, self._voice_idle)
        self._start(bind(self.p.host, self.p.port, replacing=self.replacement))

    def _start(self, sock: Any) -> None:
        """Serve on ``sock``, with a fresh viewer registry."""
        from .viewers import Viewers
        from .voice import VoiceSchedule
        from .webserver import DEFAULT_WEB_ROOT, WebServer, api_origin, page_app

        self.viewers = Viewers(queue_size=self.p.queue_size,
                               keyframe_min_interval_ns=int(self.p.keyframe_min_interval_ms * 1e6),
                               session_timeout_ns=int(self.p.session_timeout * 1e9),
                               request=lambda data: self.inbox.put(("request", data)), clock=self.now_ns)
        self.schedule = VoiceSchedule(self.viewers.voice, self.now_ns)
        self.pending: deque = deque()  # handed over, not dispatched yet (node thread appends, loop pops)
        self.pump_woken = False
        self._address = (self.p.host, self.p.port)  # what this server was asked to listen on
        root = Path(self.p.web_root) if self.p.web_root else DEFAULT_WEB_ROOT
        if not (root / "index.html").is_file():
            self.warn(f"{root / 'index.html'} not found: GET / answers 404 (the transports still work)")
        app, self.script_hashes = page_app(root, self._config, lambda: api_origin(self.p.api), self._routes())
        self.server = WebServer(self.name, app, sock, ping_interval=self.p.ping_interval,
                                ping_timeout=self.p.ping_timeout, on_error=lambda text: self.inbox.put(("warn", text)),
                                on_start=self._on_start, on_stop=self._on_stop)
        self.server.start()
        host = self.server.host
        self.url = f"http://{f'[{host}]' if ':' in host else host}:{self.server.port}/"
        self.ctx.post("INFO", f"{self.name}: serving {self.url}", url=self.url, port=self.server.port)

    def _stop(self) -> None:
        if self.server is not None and not self.server.stop(2.5):  # within the runner's stop grace (3 s)
            self.warn("the web server thread did not stop within 2.5 s")
        self.server = None

    def teardown(self) -> None:
        if getattr(self, "server", None) is not None:
            self._stop()
        inbox = getattr(self, "inbox", None)
        if inbox is not None:
            self.unwatch(inbox.fd)
            inbox.close()

    def on_params(self, changed: Mapping[str, Any]) -> None:
        if self.server is not None and self.viewers is not None:
            self._apply(changed)

    def _apply(self, changed: Mapping[str, Any]) -> None:
        """Params changed live (and valid): hand them to the server thread, or restart it. A new
        address is bound first: if that fails the change is refused (ParamError) before anything
        else has changed, and the runtime puts the old values back."""
        viewers = self.viewers
        restart = any(k in changed for k in _RESTART_PARAMS)
        sock = self._bind_new() if restart else None
        if "queue_size" in changed:
            self.server.call(setattr, viewers, "queue_size", self.p.queue_size)
        if "keyframe_min_interval_ms" in changed:
            self.server.call(setattr, viewers, "keyframe_min_interval_ns", int(self.p.keyframe_min_interval_ms * 1e6))
        if "session_timeout" in changed:
            self.server.call(setattr, viewers, "session_timeout_ns", int(self.p.session_timeout * 1e9))
        if "viewer_layers" in changed:
            self.server.call(viewers.set_layers, dict(self.p.viewer_layers))
        for enc in self.voices.values():  # from each session's next talkspurt on
            enc.bitrate = self.p.voice_bitrate
        if restart:
            self._restart(sock)

    def _bind_new(self) -> Any:
        """The socket for a new host/port (None: the address stays); ParamError if it cannot be had."""
        from .webserver import bind

        if (self.p.host, self.p.port) == self._address:
            return None
        try:
            return bind(self.p.host, self.p.port)
        except RuntimeError as exc:
            raise ParamError(f"{exc}; still serving {self.url}") from None

    def _restart(self, sock: Any) -> None:
        """Serve again with the new host/port/page/pings (viewers reconnect)."""
        from .webserver import bind

        port = self.server.port
        self._stop()
        self.restarts += 1
        self._start(sock if sock is not None else bind(self.p.host, port))  # same address: once it is free

    def on_latency(self, upstream_ns: int, pads: Mapping[str, int]) -> None:
        """The voice waits for what the face's path holds back beyond its own path."""
        self.hold_ns = max(0, pads.get("in", 0) - pads.get("audio", 0))

    # --- the node's thread -------------------------------------------------------------------
    def process(self, pad: str, msg: Message) -> None:
        if pad == "audio":
            self._voice(msg)
            return
        packets = msg.data.get("packets") if isinstance(msg.data, dict) else None
        sessions = msg.session if isinstance(msg.session, list) else [msg.session]
        if not isinstance(packets, list) or len(packets) != len(sessions):
            self._reject(f"an avatar/packet message needs data {{'packets': [bytes]*S}} with one packet per "
                         f"session, got {len(packets) if isinstance(packets, list) else type(packets).__name__} "
                         f"for {len(sessions)} sessions")
            return
        if sessions and not isinstance(sessions[0], str):
            sessions = [str(s) for s in sessions]
        server, viewers = self.server, self.viewers
        if server is None or viewers is None:
            return
        if len(self.pending) >= _LAG_LIMIT:  # the loop is far behind: drop, and the viewers resync
            self.overruns += 1
            return
        keyframe, seq = msg.arrays.get("keyframe"), msg.arrays.get("seq")
        if keyframe is None or seq is None or len(keyframe) != len(packets) or len(seq) != len(packets):
            keyframe, seq = packet_facts(packets)  # packets from elsewhere (a recording): read from their bytes
        layers = msg.data.get("layers")
        self.pending.append((sessions, packets, msg.pts_ns, keyframe, seq, self.overruns, msg.arrays.get("arrival_ns"),
                             layers if isinstance(layers, list) else None))
        if not self.pump_woken:  # the pump clears this before it drains: no wake-up is lost
            self.pump_woken = True
            server.call(self._pump_wake.set)

    def _voice(self, msg: Message) -> None:
        """A chunk of a session's voice: encoded at once, handed to the loop to wait until it is due."""
        pcm = msg.arrays.get("pcm")
        problem = pcm_problem(msg.data, pcm, msg.session)
        if problem is not None:
            self.voice_rejected += 1
            self._reject(problem)
            return
        session = str(msg.session[0] if isinstance(msg.session, list) else msg.session)
        t0 = time.thread_time_ns()
        enc = self.voices.get(session)
        if enc is None:
            enc = self.voices[session] = VoiceEncoder(self.p.voice_bitrate)
        viewers = self.viewers
        enc.pcm = viewers is not None and session in viewers.pcm_sessions
        rate = int(msg.data["rate"])
        packets = enc.feed(msg.pts_ns, rate, pcm, self.hold_ns)
        self.voice_cpu_ns += time.thread_time_ns() - t0
        self.voice_chunks += 1
        self.voice_s += len(pcm) / rate
        if packets and self.server is not None:
            self.server.call(self.schedule.add, session, packets)

    def _voice_idle(self) -> None:
        """Flush the talkspurts whose audio stopped (the end of an utterance), and forget the
        encoders of sessions quiet for a while."""
        now = self.now_ns()
        for session, enc in list(self.voices.items()):
            packets = enc.flush_idle(now)
            if packets and self.server is not None:
                self.server.call(self.schedule.add, session, packets)
            if enc.spurt is None and now - enc.end_ns > self.p.session_timeout * 1e9:
                self.voice_talkspurts += enc.talkspurts
                del self.voices[session]

    def _reject(self, text: str) -> None:
        self.rejected += 1
        if self.rejected & (self.rejected - 1) == 0:  # 1st, 2nd, 4th, 8th...: no flood
            self.warn(f"dropped a message ({self.rejected} so far): {text}")

    def _on_inbox(self) -> None:
        """What the loop handed over: requests to emit upstream, warnings to post."""
        keyframes: dict[str, None] = {}
        seen: dict[str, int] = {}
        layer_keyframes: dict[str, dict[str, None]] = {}  # an extra layer ("1", ...) -> its sessions
        layer_seen: dict[str, dict[str, int]] = {}
        levels: dict[str, int | None] = {}
        watched = None
        for kind, payload in self.inbox.drain():
            if kind == "request":
                keyframes.update(dict.fromkeys(payload.get("keyframe", ())))
                seen.update(payload.get("seen", {}))  # the later request's: the newer seq
                for k, ids in payload.get("layer_keyframe", {}).items():
                    layer_keyframes.setdefault(k, {}).update(dict.fromkeys(ids))
                for k, seqs in payload.get("layer_seen", {}).items():
                    layer_seen.setdefault(k, {}).update(seqs)
                levels.update(payload.get("lod", {}))
                watched = payload.get("watched", watched)
            else:
                self._warn_limited(payload)
        if keyframes or layer_keyframes or levels or watched is not None:
            data: dict[str, Any] = {"keyframe": list(keyframes)}  # always a list: the compressor expects one
            if seen:
                data["seen"] = seen
            if layer_keyframes:
                data["layer_keyframe"] = {k: list(ids) for k, ids in layer_keyframes.items()}
            if layer_seen:
                data["layer_seen"] = layer_seen
            if levels:
                data["lod"] = levels
            if watched is not None:  # the sessions viewers watch: the compressor's extra layers are made for them
                data["watched"] = watched
            self.emit("requests", Message("avatar/request", data, pts_ns=self.now_ns(),
                                          session=list(dict.fromkeys([*keyframes, *levels, *(
                                              s for ids in layer_keyframes.values() for s in ids)]))))

    def _warn_limited(self, text: str) -> None:
        now = self.now_ns()
        if now - self.last_warn_ns < _WARN_EVERY_NS:
            self.warns_held += 1
            return
        held, self.warns_held, self.last_warn_ns = self.warns_held, 0, now
        self.warn(text + (f" ({held} more warnings in the last second)" if held else ""))

    def stats(self) -> dict[str, Any]:
        server = self.server
        schedule = getattr(self, "schedule", None)
        voice = {"voice_hold_ms": round(self.hold_ns / 1e6, 3), "voice_sessions": len(self.voices),
                 "voice_chunks": self.voice_chunks, "voice_s": round(self.voice_s, 3),
                 "voice_cpu_s": round(self.voice_cpu_ns / 1e9, 4), "voice_rejected": self.voice_rejected,
                 "voice_talkspurts": self.voice_talkspurts + sum(e.talkspurts for e in self.voices.values()),
                 **(schedule.counts if schedule is not None else {}),
                 "voice_late_max_ms": round(schedule.late_max_ns / 1e6, 1) if schedule is not None else 0.0}
        return {"port": server.port if server else None, "url": self.url if server else None,
                "rejected": self.rejected, "overruns": self.overruns, "restarts": self.restarts,
                "csp_script_hashes": len(getattr(self, "script_hashes", [])), **voice, **self.snapshot}

    # --- the loop's thread -------------------------------------------------------------------
    def _config(self) -> dict[str, Any]:
        """/config.json: what the page needs to connect."""
        return {"transports": list(self.transports), "ice_servers": self._ice_servers(),
                "api": self.p.api or None, "sink": self.name, "audio": self.linked("audio")}

    def _ice_servers(self) -> list[dict]:
        return []

    def _routes(self) -> list:
        """The sink's routes besides the page and /config.json."""
        from starlette.routing import WebSocketRoute

        return [WebSocketRoute("/ws", self._serve_websocket)]

    async def _on_start(self) -> None:
        self._pump_wake = asyncio.Event()
        self._tasks = [asyncio.ensure_future(self._housekeep(self.viewers)),
                       asyncio.ensure_future(self._pump(self.viewers)),
                       asyncio.ensure_future(self.schedule.run())]

    async def _pump(self, viewers: Any) -> None:
        """Dispatches the batches the node thread handed over, one per loop turn, so the viewers'
        senders run between two batches even when the loop has fallen behind and several wait."""
        wake, batches = self._pump_wake, self.pending
        while True:
            await wake.wait()
            wake.clear()
            self.pump_woken = False
            while batches:
                try:
                    viewers.dispatch(*batches.popleft())
                except Exception as exc:  # noqa: BLE001 - reported; the next batch goes on
                    self.inbox.put(("warn", f"dispatch failed: {type(exc).__name__}: {exc}"))
                await asyncio.sleep(0)

    async def _on_stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await self.viewers.close_all()
        self.snapshot = self.viewers.stats()

    async def _housekeep(self, viewers: Any) -> None:
        while True:
            try:
                viewers.sweep()
                self.snapshot = viewers.stats()
            except Exception as exc:  # noqa: BLE001 - reported, and housekeeping goes on
                self.inbox.put(("warn", f"viewer housekeeping failed: {type(exc).__name__}: {exc}"))
            await asyncio.sleep(_HOUSEKEEPING_S)

    async def _serve_websocket(self, websocket: Any) -> None:
        """One WebSocket viewer, from accept to disconnect (``?session=ID&lod=N&audio=opus|pcm``
        subscribes at once)."""
        from .viewers import ProtocolError, check_audio, check_lod, check_session

        viewers = self.viewers
        await websocket.accept()
        query = parse_qs(websocket.scope.get("query_string", b"").decode("latin-1"))
        session = (query.get("session") or [None])[0]
        lod_text = (query.get("lod") or [None])[0]
        audio = (query.get("audio") or [None])[0]
        error = None
        try:
            session = check_session(session, True)
            lod = check_lod(int(lod_text)) if lod_text not in (None, "") else None
            audio = check_audio(audio or None)
        except (ProtocolError, ValueError) as exc:
            session, lod, audio, error = None, None, None, f"bad query: {exc}"
        v = viewers.add(_WebSocketTransport(websocket), session, lod,
                        subscribe=session is not None or lod is not None or audio is not None, audio=audio)
        if error:
            viewers.error(v, error)
        try:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    break
                text = message.get("text")
                if text is not None:
                    viewers.handle_text(v, text)
        except Exception:  # noqa: BLE001 - a broken connection: the viewer goes
            pass
        finally:
            viewers.remove(v)


class _WebSocketTransport:
    """A viewer's WebSocket (Starlette's): a send waits while the connection's small buffers are full."""

    kind = "websocket"
    framing_bytes = 60  # a packet's framing on the wire: WebSocket's 2-8 + TCP/IP's 40 + options
    bundle_s = 0.0  # TCP coalesces what waits: no bundles
    probe_train = False  # TCP loses nothing: a second of padding only queues, and measures the link

    def __init__(self, websocket: Any):
        self.ws = websocket

    async def send_bytes(self, data: bytes) -> None:
        await self.ws.send_bytes(data)

    async def send_text(self, text: str) -> None:
        await self.ws.send_text(text)

    send_lossy = send_text  # one TCP stream: nothing is lost, nothing to gain

    async def send_voice(self, session: str, packet: Any) -> None:
        from .voice import voice_frame

        await self.ws.send_bytes(voice_frame(session, packet))

    async def close(self) -> None:
        try:
            await self.ws.close()
        except Exception:  # noqa: BLE001 - already closed
            pass
