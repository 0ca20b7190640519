"""Headless avatar viewers: they connect, subscribe and decode the stream as ``web/js/main.js`` does.

A viewer connects over WebSocket ``/ws`` or WebRTC (``POST /rtc/offer``, an unordered ``avatar``
DataChannel without retransmits and a reliable ``control`` one), subscribes to a session, decodes
every packet with ``nodes.wire.Decoder``, echoes each decoded frame, asks for a keyframe when its
decoder waits (at most every 200 ms), sends receiver reports and answers pings. Its link may lose
a fraction of the packets (``loss``) and be longer (``delay_s``, each way): the network profiles of
``orchestrator.evaluate``, application-level, so no root and no ``tc`` are needed.
``tools/simulator.py`` and the benchmarks drive these viewers.
"""
from __future__ import annotations

import asyncio
import collections
import ipaddress
import json
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from nodes import wire as wf
from nodes.delivery import bundle

KEYFRAME_REQUEST_MIN_NS = 200_000_000  # as web/js/main.js
REPORT_S = 0.25  # receiver reports, as the page sends them
RESUME_NS = 1_000_000_000  # a stream silent this long that resumes at a keyframe was left, not lost
KEEP_LIGHT = 36_000  # frames a light viewer remembers (10 minutes at 60 fps)


# --- one viewer -------------------------------------------------------------------------------------
@dataclass
class Viewer:
    """What one viewer saw; ``frames`` rows: (arrival ns, session, pts ms, seq, keyframe, weights).

    ``keep=False`` (long runs): only the newest ``KEEP_LIGHT`` rows, without weights."""

    index: int
    transport: str
    want: str | None  # the session asked for (None: the first live one)
    lod: int | None
    keep: bool = True
    frames: Any = None
    packets: int = 0
    bytes: int = 0
    texts: list[dict] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    keyframe_requests: int = 0
    decoder: wf.Decoder = field(default_factory=wf.Decoder)
    connected_ns: int = 0
    closed: str = ""
    bits: int = 0  # weight precision of the stream (from its keyframes)
    reports: bool = True  # send receiver reports and answer pings, as the page does
    all_bytes: int = 0  # of every message, text too: the receiver reports' 'bytes'
    lost: int = 0  # packets found missing, for the reports (a stream idle for a while and resumed at a
    # keyframe, as when the sink moves this viewer back to a layer it left, lost nothing)
    lost_in: dict = field(default_factory=dict)  # sid -> of ``lost``, those of that stream (a layer's own)
    _stream_seen: dict = field(default_factory=dict)  # sid -> when its last packet came (ns)
    jitter_ms: float = 0.0  # RFC 3550 inter-arrival jitter of the decoded frames
    _last_transit: float | None = None
    loss: float = 0.0  # a lossy link: each packet is lost with this probability (before the decoder sees it)
    lose: set = field(default_factory=set)  # wire seqs to lose (a loss every viewer of a session shares)
    dropped: int = 0  # packets lost on purpose (``loss``, ``lose``)
    last_seq: int = -1  # the newest packet's wire seq (kept or lost; -1: none yet)
    delay_s: float = 0.0  # the viewer's link delay, each way (a viewer further away than the others)
    rng: Any = None
    sizes: list = field(default_factory=list)  # (arrival ns, bytes) of every packet, with keep=True
    train: dict | None = None  # the sink's train probe: {"id", "at": [[pad index, ms], ...]} for the next report

    def __post_init__(self) -> None:
        self.frames = [] if self.keep else collections.deque(maxlen=KEEP_LIGHT)
        self.rng = np.random.default_rng(self.index)

    def report(self) -> dict:
        """The receiver report the page sends every 250 ms (docs/delivery.md)."""
        c = self.decoder.counts
        msg = {"type": "report", "received": c["decoded"] + c["refused"], "lost": self.lost,
               "bytes": self.all_bytes, "jitter_ms": round(self.jitter_ms, 3)}
        if self.train is not None:  # the pads of the sink's train probe since the last report
            msg["probe"], self.train = self.train, None
        return msg

    def on_text(self, text: str, send) -> dict:
        """A JSON message from the sink: answered at once if it is a ping."""
        self.all_bytes += len(text)
        doc = json.loads(text)
        if doc.get("type") == "ping":
            send({"type": "pong", "t": doc.get("t")})
        elif doc.get("type") == "pad":
            if isinstance(doc.get("probe"), int) and isinstance(doc.get("i"), int):  # a train probe's pad
                if self.train is None or self.train["id"] != doc["probe"]:
                    self.train = {"id": doc["probe"], "at": []}
                self.train["at"].append([doc["i"], round(time.monotonic_ns() / 1e6, 2)])
        else:
            self.texts.append(doc)
        return doc

    def on_packet(self, data: bytes, send) -> None:
        now = time.monotonic_ns()
        self.packets += 1
        self.bytes += len(data)
        self.all_bytes += len(data)
        if self.keep:
            self.sizes.append((now, len(data)))
        data = bytes(data)
        seq = wf.packet_seq(data)
        if seq >= 0 and (self.last_seq < 0 or wf.seq_after(seq, self.last_seq)):
            self.last_seq = seq  # the newest (a late packet is not)
        if seq in self.lose or (self.loss and self.rng.random() < self.loss):
            self.dropped += 1
            return
        try:
            f = self.decoder.decode(data, now)
        except ValueError as exc:
            self.errors.append(f"malformed packet: {exc}")
            return
        if f is None:
            self._count_lost(wf.packet_sid(data), self.decoder.last_loss)
            if self.decoder.waiting and now - getattr(self, "_last_kf", -KEYFRAME_REQUEST_MIN_NS) >= KEYFRAME_REQUEST_MIN_NS:
                self._last_kf = now
                self.keyframe_requests += 1
                # seq: the packet it could not decode (a keyframe after it answers the ask), as the page
                # says it: of this stream (the newest of any, after a layer switch, is the old layer's)
                send({"type": "keyframe", **({"seq": seq} if seq >= 0 else {})})
            return
        last = self._stream_seen.get(f.sid)
        self._stream_seen[f.sid] = now
        if self.decoder.last_loss and not (f.keyframe and (last is None or now - last > RESUME_NS)):
            self._count_lost(f.sid, self.decoder.last_loss)
        self.bits = f.bits
        transit = now / 1e6 - f.pts_ms
        if self._last_transit is not None:
            self.jitter_ms += (abs(transit - self._last_transit) - self.jitter_ms) / 16
        self._last_transit = transit
        self.frames.append((now, f.session, f.pts_ms, f.seq, f.keyframe, f.weights if self.keep else None))
        send({"type": "echo", "session": f.session, "seq": f.seq})

    def _count_lost(self, sid: int, n: int) -> None:
        if n:
            self.lost += n
            self.lost_in[sid] = self.lost_in.get(sid, 0) + n

    def session_for(self, sessions: list[str]) -> str | None:
        if self.want == "*":
            return sessions[self.index % len(sessions)] if sessions else None
        return self.want


async def send_reports(v: Viewer, send, stop: asyncio.Event) -> None:
    """A receiver report every REPORT_S, as the page sends them."""
    while not stop.is_set():
        await asyncio.sleep(REPORT_S)
        send(v.report())


async def run_websocket(v: Viewer, base: str, stop: asyncio.Event) -> None:
    import websockets

    parts = urlsplit(base)
    scheme = "wss" if parts.scheme == "https" else "ws"
    uri = f"{scheme}://{parts.netloc}{parts.path.rstrip('/')}/ws"
    async with websockets.connect(uri, max_size=None, ping_interval=None) as ws:
        v.connected_ns = time.monotonic_ns()
        pending: list[str] = []
        loop = asyncio.get_running_loop()

        def post(text: str) -> None:
            pending.append(text)
            wake.set()

        def send(msg: dict) -> None:
            if v.delay_s:  # the viewer's link: its messages reach the sink this much later
                loop.call_later(v.delay_s, post, json.dumps(msg))
            else:
                post(json.dumps(msg))

        def on_message(m: Any) -> None:
            if isinstance(m, (bytes, bytearray)):
                v.on_packet(m, send)
                return
            doc = v.on_text(m, send)
            if doc.get("type") == "hello":
                send({"type": "subscribe", "session": v.session_for(doc.get("sessions") or []), "lod": v.lod})
            elif doc.get("type") == "error":
                v.errors.append(doc.get("error", ""))

        async def writer() -> None:
            while True:
                await wake.wait()
                wake.clear()
                while pending:
                    await ws.send(pending.pop(0))

        async def reader() -> None:
            async for m in ws:
                if v.delay_s:  # ... and the sink's reach the viewer this much later
                    loop.call_later(v.delay_s, on_message, m)
                else:
                    on_message(m)

        wake = asyncio.Event()
        tasks = [asyncio.ensure_future(reader()), asyncio.ensure_future(writer())]
        if v.reports:
            tasks.append(asyncio.ensure_future(send_reports(v, send, stop)))
        await stop.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def run_webrtc(v: Viewer, base: str, stop: asyncio.Event) -> None:
    import httpx
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    avatar = pc.createDataChannel("avatar", ordered=False, maxRetransmits=0)
    control = pc.createDataChannel("control")

    def send_now(text: str) -> None:
        if control.readyState == "open":
            control.send(text)

    def send(msg: dict) -> None:
        if v.delay_s:  # the viewer's link delay, as for a WebSocket viewer
            asyncio.get_running_loop().call_later(v.delay_s, send_now, json.dumps(msg))
        else:
            send_now(json.dumps(msg))

    def later(fn: Any) -> Any:
        if not v.delay_s:
            return fn
        return lambda m: asyncio.get_running_loop().call_later(v.delay_s, fn, m)

    def on_text(m: str) -> None:
        doc = v.on_text(m, send)
        if doc.get("type") == "error":
            v.errors.append(doc.get("error", ""))
        if doc.get("type") == "hello" and v.want in (None, "*"):  # an offer without a session subscribes to nothing
            send({"type": "subscribe", "session": v.session_for(doc.get("sessions") or []), "lod": v.lod})

    # JSON comes on both channels, as the page takes it: on 'avatar' what may be lost (pings, padding)
    def on_avatar(m: bytes | str) -> None:
        if isinstance(m, str):
            on_text(m)
            return
        packets = bundle.unpack(m)  # a slow link's bundle, or one packet
        v.all_bytes += len(m) - sum(map(len, packets))  # the reports count the message, as the page does
        for packet in packets:
            v.on_packet(packet, send)

    avatar.on("message", later(on_avatar))
    control.on("message", later(lambda m: on_text(m) if isinstance(m, str) else None))
    try:
        await pc.setLocalDescription(await pc.createOffer())
        body = {"sdp": pc.localDescription.sdp, "type": "offer",
                "session": None if v.want in (None, "*") else v.want, "lod": v.lod}
        async with httpx.AsyncClient(timeout=20) as http:
            r = await http.post(f"{base.rstrip('/')}/rtc/offer", json=body)
        if r.status_code != 200:
            raise RuntimeError(f"POST /rtc/offer: {r.status_code} {r.text[:200]}")
        await pc.setRemoteDescription(RTCSessionDescription(**r.json()))
        v.connected_ns = time.monotonic_ns()
        reporter = asyncio.ensure_future(send_reports(v, send, stop)) if v.reports else None
        await stop.wait()
        if reporter is not None:
            reporter.cancel()
    finally:
        await pc.close()


async def run_viewers(url: str, transport: str, n: int, seconds: float, session: str | None = None,
                      lod: int | None = None, stagger: float = 0.0, loss: float = 0.0,
                      delay: float = 0.0) -> list[Viewer]:
    """``n`` viewers for ``seconds`` (connecting ``stagger`` s apart; each link losing ``loss`` of
    the packets, ``delay`` s long each way); returns what each saw."""
    viewers = [Viewer(i, transport, session, lod, loss=loss, delay_s=delay) for i in range(n)]
    return await watch(viewers, url, seconds, stagger)


async def watch(viewers: list[Viewer], url: str, seconds: float, stagger: float = 0.0) -> list[Viewer]:
    """Run the given viewers (each with its own session, loss and delay) for ``seconds``."""
    if any(v.transport == "webrtc" for v in viewers):
        host = urlsplit(url).hostname or ""
        try:
            if ipaddress.ip_address(host).is_loopback:
                from nodes.delivery import restrict_host_addresses

                restrict_host_addresses([host])  # a sink on this machine: gather on loopback only
        except ValueError:
            pass
    stop = asyncio.Event()

    async def one(v: Viewer) -> None:
        await asyncio.sleep(v.index * stagger)
        try:
            await (run_webrtc if v.transport == "webrtc" else run_websocket)(v, url, stop)
        except Exception as exc:  # noqa: BLE001 - reported per viewer
            v.closed = f"{type(exc).__name__}: {exc}"

    tasks = [asyncio.ensure_future(one(v)) for v in viewers]
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.wait(tasks, timeout=10)
    return viewers
