"""Viewers: who watches which session, and the bounded queue of packets each one is owed.

The registry of the browser-delivery sinks (``docs/delivery.md``). It runs entirely on the web
server's event loop (one thread, no locks); the node hands it each ``avatar/packet`` batch with
``dispatch`` and gets upstream requests back through the ``request`` callback.

- A batch is split by dict lookups over the *watched* sessions only: a session nobody watches
  costs one dict update per batch (live-session tracking) and nothing per viewer.
- Each viewer has a bounded queue (``queue_size``) drained by one sender task per viewer. When it
  is full the oldest packet is dropped, and with it the deltas queued behind it (undecodable
  without it) up to the next queued keyframe; if none is queued the viewer *waits*: deltas are
  skipped until the next keyframe, which is asked for upstream. A new subscription waits the
  same way, so a viewer never gets a delta before its first keyframe.
- Keyframe requests are rate-limited per session (``keyframe_min_interval_ns``); one that comes
  too soon is sent when the interval is over, if a viewer still waits. A viewer's ask that names
  the packet it could not decode (``seq``) is stale when a keyframe after that packet is on its
  way to it already: it changes nothing, so viewers further away than the others, whose asks
  come after the keyframe left, cost no second keyframe. So is one naming a seq the viewer's
  layer has not reached: it lost that packet on the layer it has just left. Each request upstream says the newest
  seq of the session the sink had (``seen``), so the compressor makes no second keyframe either.
  A viewer on an extra layer (or moving to one) asks for that layer's keyframe, with that
  layer's seq (``layer_keyframe``, ``layer_seen``): each layer is coalesced on its own, and a
  layer nobody lost makes none.
- ``losses`` counts loss events: a viewer's (not stale) ask, and a viewer the sink itself left
  waiting (its queue overflowed, the loop fell behind); per packet owed, the loss agents watch.
- Echoes (the page saying "decoded seq n of session s") give pipeline-to-page latency from the
  pts of the batch that carried that packet (a small ring per watched session).
- The voice (``nodes.delivery.voice``): a viewer that asked for audio (``"audio": "opus"`` or
  ``"pcm"`` when it subscribes, or a WebRTC audio track) gets its session's voice packets as they
  fall due, ahead of its face packets, from a queue of its own (1 s; the oldest go first).
"""
from __future__ import annotations

import asyncio
import collections
import functools
import itertools
import json
import reprlib
from typing import Any, Callable, Protocol

import numpy as np

from runtime.histogram import LATENCY_BOUNDS_US

from ..wire import MAX_SESSION_ID, N_LOD_LEVELS, SEQ_MOD, seq_after
from . import bundle
from .netstats import PROBE_S, ReportError, ViewerNet, layer_needs
from .voice import VoicePacket

MAX_TEXT = 64 * 1024  # characters of a viewer's JSON message (the WebSocket server closes larger ones: 1009)
_SCAN_WATCHED = 16  # up to this many watched sessions, dispatch finds each in the batch instead of indexing it
_RATE_WINDOW_NS = 1_000_000_000  # session_rate in stats: frames per session over this window
_RING = 256  # packets remembered per watched session for echoes
LEFT_LAYER_NS = 2_000_000_000  # after a switch, asks naming seqs the new layer has not reached are
# of the old one for this long (its packets still in the link's queue); later, asked as any ask
_LATENCY_RING = 1024
_PIPE_RING = 8192  # rows remembered for pipeline latency (capture arrival -> dispatch)
_PIPE_STEP_US = 100  # bin width of the cumulative pipeline latency histogram; the last bin takes the rest
_PIPE_BINS = 2001
_TEXT_QUEUE = 32  # JSON messages waiting for a viewer (the oldest go first: 'sessions' supersedes itself)
_LISTED_VIEWERS = 32  # viewers detailed in stats
_NET_LISTED = 1024  # reporting viewers (and watched sessions' layer rates) in stats, for the network agent
_VOICE_QUEUE = 50  # voice packets waiting for a viewer (1 s): a viewer that takes none loses the oldest
_WATCHED_EVERY_NS = 2_000_000_000  # the watched sessions are told upstream on a change and this often
_AFTER_TRAIN_S = 0.1  # a bundling viewer's packets wait out a train probe and this after it (no frame
# joins the train in a slow link's queue, which it may overflow)
_PAD_CHUNK = 1200  # bytes of padding per message while a probe runs
_PAD_TEXT = '{"type":"pad","p":"%s"}'
_MIN_PROBE_BPS = 8000.0  # a probe adds at least this much (bits/s)
_PROBE_MARGIN = 1.4  # a probe carries this many times the best layer's rate
AUDIO_FORMATS = ("opus", "pcm")  # what a viewer may ask its voice in (pcm: no Opus decoder in its browser)


# --- viewers ----------------------------------------------------------------------------------
class Transport(Protocol):
    """How a viewer is reached (a WebSocket, or a pair of WebRTC data channels)."""

    kind: str
    framing_bytes: int  # a packet's framing on the wire (headers of every layer below the message)
    bundle_s: float  # on a reduced layer, packets go gathered this often in one message (0: never)
    probe_train: bool  # probes are short trains of pads (a transport that loses what the link drops)

    async def send_bytes(self, data: bytes) -> None: ...  # waits while the viewer is slow
    async def send_text(self, text: str) -> None: ...
    async def send_lossy(self, text: str) -> None: ...  # a message whose loss costs nothing (a ping, padding)
    async def send_voice(self, session: str, packet: VoicePacket) -> None: ...
    async def close(self) -> None: ...


class Viewer:
    """One connected page: its subscription, its queue and its counters."""

    __slots__ = ("id", "transport", "session", "auto", "lod", "waiting", "queue", "texts", "wake", "task",
                 "sending", "need_key", "sent", "drops", "skipped", "closed", "audio", "voice", "voice_sent",
                 "voice_drops", "layer", "layer_next", "net", "key_seq", "last_seq", "switched_ns", "ping", "next_send",
                 "train", "train_gap", "train_next")

    def __init__(self, vid: int, transport: Transport):
        self.id, self.transport = vid, transport
        self.session: str | None = None
        self.auto = False  # subscribed to "the first live session" (follows it when it leaves)
        self.lod: int | None = None
        self.waiting = True  # no delta until a keyframe
        self.queue: collections.deque[tuple[bytes, bool]] = collections.deque()
        self.texts: collections.deque[str] = collections.deque(maxlen=_TEXT_QUEUE)
        self.wake = asyncio.Event()
        self.task: asyncio.Task | None = None
        self.sending = False  # a packet is on its way (the transport may be waiting for room)
        self.need_key = False  # ask for a keyframe once the packet on its way is gone
        self.sent = self.drops = self.skipped = 0
        self.closed = False
        self.audio: str | None = None  # the voice's format for this viewer (AUDIO_FORMATS), None: no voice
        self.voice: collections.deque[VoicePacket] = collections.deque()
        self.voice_sent = self.voice_drops = 0
        self.layer = 0  # the stream layer it gets (0: the compressor's own; 1..: its extra layers)
        self.layer_next: int | None = None  # a switch waiting for a keyframe of that layer
        self.net = ViewerNet()
        self.key_seq = -1  # wire seq of the last keyframe handed to it (-1: none yet)
        self.last_seq = -1  # ... and of the newest packet handed to it, on the layer it is on now
        self.switched_ns = 0  # when it last moved to another layer (clock ns; 0: never)
        self.ping: str | None = None  # a ping to send (the newest: an older one unsent is stale)
        self.next_send = 0.0  # loop time before which a bundling viewer's next message waits
        self.train: collections.deque[tuple[int, int, str]] = collections.deque()  # a train's (id, i, pad) to send
        self.train_gap = self.train_next = 0.0  # ... this far apart; the next at this loop time


    def info(self) -> dict[str, Any]:
        out = {"id": self.id, "transport": self.transport.kind, "session": self.session, "lod": self.lod,
               "sent": self.sent, "drops": self.drops, "skipped": self.skipped, "queued": len(self.queue),
               "waiting": self.waiting, "audio": self.audio, "voice_sent": self.voice_sent,
               "voice_drops": self.voice_drops + getattr(self.transport, "voice_drops", 0), "layer": self.layer}
        if self.layer_next is not None:
            out["layer_next"] = self.layer_next
        return out  # its network: stats' viewer_net


class ProtocolError(ValueError):
    """A viewer sent something the protocol does not allow (answered with an error message)."""


class Viewers:
    """The registry: viewers, their subscriptions and queues, live sessions, requests upstream."""

    def __init__(self, *, queue_size: int, keyframe_min_interval_ns: int, session_timeout_ns: int,
                 request: Callable[[dict], None], clock: Callable[[], int]):
        self.queue_size = queue_size
        self.keyframe_min_interval_ns = keyframe_min_interval_ns
        self.session_timeout_ns = session_timeout_ns
        self.request, self.clock = request, clock
        self.viewers: dict[int, Viewer] = {}
        self.watched: dict[str, dict[int, Viewer]] = {}  # session -> its viewers
        self.unassigned: dict[int, Viewer] = {}  # auto viewers waiting for a first live session
        self.seen: dict[str, int] = {}  # live sessions -> last seen (ns), in order of arrival
        self.sessions_changed = False
        self.rings: dict[str, list[tuple[int, int] | None]] = {}  # watched session -> (seq, pts) by seq % _RING
        self.kf_last: dict[tuple[str, int], int] = {}  # (session, layer) -> when its keyframe was last asked for
        self.kf_deferred: set[tuple[str, int]] = set()
        self.lod_asked: dict[str, int] = {}  # session -> level last asked of the lod node
        self.watched_told = 0  # when the watched sessions were last told upstream (0: tell at once)
        self.n_layers = 1  # layers the last batch had (the compressor's own and its extra ones)
        self.layer_bytes: dict[str, list[list[int]]] = {}  # watched session -> per layer [bytes, packets] this window
        self.layer_rates: dict[str, list[list[float]]] = {}  # ... per layer [bits/s, packets/s] over the last window
        self.layer_table: dict[str, int] = {}  # viewer id -> layer (the node's viewer_layers param)
        self.newest: dict[str, int] = {}  # watched session -> the newest wire seq handed on
        self.newest_layer: dict[tuple[str, int], int] = {}  # ... of an extra layer: (session, layer) -> seq

        self._ids = itertools.count(1)
        self._index: dict[str, int] = {}
        self._index_of: list = []
        self.latency_us = np.zeros(_LATENCY_RING, np.float64)
        self.pipe_us = np.zeros(_PIPE_RING, np.float64)
        self.pipe_hist = np.zeros(_PIPE_BINS, np.int64)
        self.pipe_rows = 0
        # frames per session over the last whole second: are rows spread fairly when the graph falls behind?
        self.window_rows: collections.Counter[str] = collections.Counter()
        self.window_start = 0
        self.session_rate: dict[str, float] = {}
        self.overruns_seen = 0
        self.counts = {"batches": 0, "rows": 0, "sent": 0, "drops": 0, "skipped": 0, "keyframe_requests": 0,
                       "lod_requests": 0, "echoes": 0, "connected": 0, "disconnected": 0, "protocol_errors": 0,
                       "voice_sent": 0, "voice_bytes": 0, "voice_drops": 0, "reports": 0, "probes": 0,
                       "layer_switches": 0, "losses": 0, "keyframe_requests_stale": 0, "bundles": 0}
        self.pcm_sessions: set[str] = set()  # watched by a viewer that takes its voice as pcm (read by the node)

    # --- viewers come and go -----------------------------------------------------------------
    def add(self, transport: Transport, session: str | None = None, lod: int | None = None,
            subscribe: bool = False, audio: str | None = None) -> Viewer:
        """A new viewer: sends it ``hello`` and (``subscribe``) subscribes it; starts its sender."""
        v = Viewer(next(self._ids), transport)
        v.audio = audio
        v.layer_next = self.layer_table.get(str(v.id)) or None
        self.viewers[v.id] = v
        self.counts["connected"] += 1
        v.task = asyncio.ensure_future(self._sender(v))
        self._send(v, {"type": "hello", "transport": transport.kind, "sessions": list(self.seen),
                       "session": session, "lod": lod})
        if subscribe:
            self.subscribe(v, session, lod, audio)
        return v

    def remove(self, v: Viewer) -> None:
        """The viewer is gone (or must go): forget it, stop its sender, close its transport."""
        if v.closed:
            return
        v.closed = True
        self.viewers.pop(v.id, None)
        self.unassigned.pop(v.id, None)
        self._unwatch(v)
        v.queue.clear()
        v.voice.clear()
        self.counts["disconnected"] += 1
        if v.task is not None and v.task is not asyncio.current_task():
            v.task.cancel()
        asyncio.ensure_future(self._close(v))

    async def close_all(self) -> None:
        """Server shutdown: every viewer goes, its transport closed."""
        viewers = list(self.viewers.values())
        for v in viewers:
            self.remove(v)
        if viewers:
            await asyncio.gather(*(self._close(v) for v in viewers), return_exceptions=True)

    @staticmethod
    async def _close(v: Viewer) -> None:
        try:
            await v.transport.close()
        except Exception:  # noqa: BLE001 - it is going away either way
            pass

    # --- what viewers ask ----------------------------------------------------------------------
    def subscribe(self, v: Viewer, session: str | None, lod: int | None = None, audio: str | None = None) -> None:
        """Watch ``session`` (None: the first live one) at ``lod`` (None: the graph's choice), with
        its voice in ``audio`` on a WebSocket (a WebRTC viewer's voice is its audio track, if it has one)."""
        self._unwatch(v)
        if v.transport.kind == "websocket":
            v.audio = audio
        self.unassigned.pop(v.id, None)
        v.auto, v.lod = session is None, lod
        if session is None:
            session = next(iter(self.seen), None)
            if session is None:
                self.unassigned[v.id] = v
        v.session = session
        v.waiting = True  # never a delta before the first keyframe
        v.key_seq = v.last_seq = -1
        v.queue.clear()
        v.voice.clear()
        if session is not None:
            self._watch(v)
        self._pcm_sessions()
        answer: dict[str, Any] = {"type": "subscribed", "session": session, "lod": lod}
        if v.audio is not None:
            answer["audio"] = v.audio
        self._send(v, answer)

    def keyframe(self, v: Viewer, seq: int | None = None) -> None:
        """The viewer's decoder lost its way (at packet ``seq``, if it says): skip deltas until a
        keyframe, ask for one; unless a keyframe after ``seq`` is on its way to it already."""
        if v.session is None:
            return
        left = v.switched_ns and self.clock() - v.switched_ns < LEFT_LAYER_NS
        if seq is not None and v.key_seq >= 0 and (
                seq_after(v.key_seq, seq) or (left and v.last_seq >= 0 and seq_after(seq, v.last_seq))):
            # a keyframe after that packet is on its way; or, just after a switch, the packet is one
            # this layer has not reached, so of the layer the viewer left (each layer counts its own
            # seqs): the old layer's losses, told after the switch, would cost the new one a keyframe
            self.counts["keyframe_requests_stale"] += 1
            return
        self.counts["losses"] += 1
        v.waiting = True
        self._want_keyframe(v.session, _needs(v))

    def echo(self, session: str, seq: int) -> None:
        """The page decoded packet ``seq`` of ``session`` just now: latency since its batch's pts."""
        ring = self.rings.get(session)
        entry = ring[seq % _RING] if ring is not None else None
        if entry is None or entry[0] != seq:
            return
        n = self.counts["echoes"]
        self.latency_us[n % _LATENCY_RING] = (self.clock() - entry[1]) / 1000.0
        self.counts["echoes"] = n + 1

    def handle_text(self, v: Viewer, text: str) -> None:
        """One JSON message from a viewer (docs/delivery.md); a bad one gets an ``error`` back."""
        if v.closed:  # a late message on a channel that is closing
            return
        try:
            self._handle(v, text)
        except ProtocolError as exc:
            self.error(v, str(exc))
        except RecursionError:  # JSON nested thousands deep: json.loads gives up, the viewer stays
            self.error(v, "JSON nested too deeply")

    def error(self, v: Viewer, text: str) -> None:
        """Tell the viewer what it got wrong (``{"type": "error"}``); counted."""
        self.counts["protocol_errors"] += 1
        self._send(v, {"type": "error", "error": text})

    def _handle(self, v: Viewer, text: str) -> None:
        if len(text) > MAX_TEXT:  # the WebSocket server refuses these itself; WebRTC's channel may not
            raise ProtocolError(f"message longer than {MAX_TEXT} characters")
        try:
            msg = json.loads(text)
        except RecursionError:
            raise ProtocolError("JSON nested too deeply") from None
        except ValueError:
            raise ProtocolError("not JSON") from None
        if not isinstance(msg, dict):
            raise ProtocolError("a message must be a JSON object with a 'type'")
        kind = msg.get("type")
        if kind == "subscribe":
            self.subscribe(v, check_session(msg.get("session"), True), check_lod(msg.get("lod")),
                           check_audio(msg.get("audio")))
        elif kind == "keyframe":
            seq = msg.get("seq")
            if seq is not None and (not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq <= 0xFFFF):
                raise ProtocolError(f"keyframe: 'seq' must be an int 0..65535 or absent, got {_short(seq)}")
            self.keyframe(v, seq)
        elif kind == "report":
            try:
                v.net.on_report(self.clock(), msg)
            except ReportError as exc:
                raise ProtocolError(str(exc)) from None
            self.counts["reports"] += 1
        elif kind == "pong":
            try:
                v.net.on_pong(self.clock(), msg)
            except ReportError as exc:
                raise ProtocolError(str(exc)) from None
        elif kind == "echo":
            seq = msg.get("seq")
            if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq <= 0xFFFF:
                raise ProtocolError(f"echo: 'seq' must be an int 0..65535, got {_short(seq)}")
            self.echo(check_session(msg.get("session"), False), seq)
        else:
            raise ProtocolError(f"unknown message type {_short(kind)} (subscribe, keyframe, echo, report, pong)")

    # --- packets -------------------------------------------------------------------------------
    def dispatch(self, sessions: list, packets: list, pts_ns: int, keyframe: np.ndarray, seq: np.ndarray,
                 overruns: int = 0, arrival_ns: np.ndarray | None = None, layers: list | None = None) -> None:
        """One batch: row i of ``packets`` is session ``sessions[i]``'s packet, a keyframe if
        ``keyframe[i]``, with wire sequence number ``seq[i]`` (-1: unknown), as the encoder said.

        ``overruns`` counts batches the node could not hand over (the loop fell behind): when it
        grows, every viewer missed a packet and waits for a keyframe. ``arrival_ns`` (optional):
        per row, when the capture packet it shows first arrived (0: not a new one), for the
        pipeline latency in ``stats``. ``layers``: the compressor's extra layers, each
        ``{rows, packets, keyframe, seq}`` (``nodes.wire.layered``), for viewers it gives one.
        """
        self.counts["batches"] += 1
        self.counts["rows"] += len(sessions)
        now = self.clock()
        if arrival_ns is not None and len(arrival_ns) == len(sessions):
            self._pipeline_latency(now, arrival_ns)
        # The one per-row step: count the rows per session in this window. A session's last-seen
        # time is refreshed from these counts (at the window's close and at every sweep), so it is
        # at most a window late; a session new to the window is checked against ``seen`` at once.
        window = self.window_rows
        known = len(window)
        window.update(sessions)
        if len(window) != known:
            seen = self.seen
            new = [s for s in sessions if s not in seen]
            if new:
                seen.update(dict.fromkeys(new, now))
                self.sessions_changed = True
                if self.unassigned:
                    for v in list(self.unassigned.values()):
                        self.subscribe(v, None, v.lod)
        if now - self.window_start >= _RATE_WINDOW_NS:
            self._rate_window(now)
        if overruns != self.overruns_seen:
            self.overruns_seen = overruns
            for session, viewers in self.watched.items():
                for v in viewers.values():
                    v.waiting = True
                self.counts["losses"] += len(viewers)
                for layer in {_needs(v) for v in viewers.values()}:
                    self._want_keyframe(session, layer)
        if not self.watched:
            return
        if len(self.watched) > _SCAN_WATCHED:  # many watched: index the batch (once per layout)
            if sessions != self._index_of:
                self._index_of = list(sessions)
                self._index = {s: i for i, s in enumerate(sessions)}
            find = self._index.get
        else:  # a few: find each in the batch (a C scan), no per-row Python for a layout that changes every batch
            find = functools.partial(_find, sessions)
        if layers:
            self._dispatch_layered(find, packets, pts_ns, keyframe, seq, layers)
            return
        self.n_layers = 1
        for session, viewers in self.watched.items():
            i = find(session)
            if i is None:
                continue
            packet, key, n = packets[i], bool(keyframe[i]), int(seq[i])
            if n >= 0:
                self.rings[session][n % _RING] = (n, pts_ns)
                self._newest(session, viewers, n, key)
            tally = self.layer_bytes.get(session)
            if tally is not None:
                tally[0][0] += len(packet)
                tally[0][1] += 1
            for v in viewers.values():
                if v.layer_next == 0:
                    self._switch(v, 0, key)
                self._push(v, packet, key, n)

    def _newest(self, session: str, viewers: dict[int, Viewer], n: int, key: bool) -> None:
        """Note the session's newest seq (keyframe requests upstream say it: ``seen``). A gap means
        packets were lost on the way here (a leaky link): its viewers that decode see it and ask;
        one that waits sees nothing, and the lost packet may have been the keyframe it waits for,
        so ask for it."""
        last = self.newest.get(session)
        self.newest[session] = n
        if last is not None and not key and n != (last + 1) % SEQ_MOD:
            for layer in {_needs(v) for v in viewers.values() if v.waiting}:
                self._want_keyframe(session, layer)

    def _dispatch_layered(self, find: Callable, packets: list, pts_ns: int, keyframe: np.ndarray, seq: np.ndarray,
                          layers: list) -> None:
        """Each viewer its layer's packet; a switch happens at a keyframe of the layer it goes to."""
        self.n_layers = 1 + len(layers)
        index = [{r: j for j, r in enumerate(layer.get("rows") or ())} for layer in layers]
        for session, viewers in self.watched.items():
            i = find(session)
            if i is None:
                continue
            n = int(seq[i])
            if n >= 0:
                self.rings[session][n % _RING] = (n, pts_ns)
                self._newest(session, viewers, n, bool(keyframe[i]))
            found: list[tuple[bytes, bool, int] | None] = [(packets[i], bool(keyframe[i]), n)]
            for k, (layer, at) in enumerate(zip(layers, index), 1):
                j = at.get(i)
                if j is None:
                    found.append(None)
                else:
                    found.append((layer["packets"][j], bool(layer["keyframe"][j]), int(layer["seq"][j])))
                    self.newest_layer[(session, k)] = found[-1][2]  # type: ignore[index]
            tally = self.layer_bytes.setdefault(session, [])
            while len(tally) < len(found):
                tally.append([0, 0])
            for k, got in enumerate(found):
                if got is not None:
                    tally[k][0] += len(got[0])
                    tally[k][1] += 1
            for v in viewers.values():
                nxt = v.layer_next
                if nxt is not None and nxt < len(found) and found[nxt] is not None:
                    self._switch(v, nxt, found[nxt][1])  # type: ignore[index]
                got = found[v.layer] if v.layer < len(found) else found[0]
                if got is not None:
                    self._push(v, got[0], got[1], got[2])

    def _switch(self, v: Viewer, layer: int, key: bool) -> None:
        """Move the viewer to ``layer`` now if this packet of it is a keyframe (its decoder starts
        afresh there); otherwise it stays on its layer until one comes."""
        if not key:
            return
        if layer != v.layer:
            self.counts["layer_switches"] += 1
            if layer > v.layer:  # moved down: the link's queue drains before anything probes it
                v.net.hold_probes(self.clock())
            v.switched_ns = self.clock()
        v.layer, v.layer_next = layer, None
        v.waiting = True  # the keyframe being pushed now clears it; no delta of the new layer before it

    def set_layers(self, table: dict[str, int]) -> None:
        """The node's ``viewer_layers`` param: viewer id -> layer (missing: 0). A viewer whose layer
        changes asks for a keyframe of its session and switches when one comes."""
        self.layer_table = dict(table)
        for v in self.viewers.values():
            want = int(table.get(str(v.id), 0))
            if want == v.layer:
                v.layer_next = None
            elif want != v.layer_next:
                v.layer_next = want
                if v.session is not None:
                    self._want_keyframe(v.session, want)

    def _rate_window(self, now: int) -> None:
        """Close a window: frames per second per live session (0 for one that sent none), as a
        summary. Past capacity the graph drops frames; this says whether it drops them evenly."""
        span = now - self.window_start
        counts, self.window_rows = self.window_rows, collections.Counter()
        if span > 0:
            scale = 1e9 / span
            self.layer_rates = {s: [[round(8 * b * scale, 1), round(p * scale, 2)] for b, p in tally]
                                for s, tally in self.layer_bytes.items() if s in self.watched}
            self.layer_bytes = {s: [[0, 0] for _ in range(self.n_layers)] for s in self.watched}
        self.seen.update(dict.fromkeys(counts, now))  # every session of the closing window was seen in it
        first = self.window_start == 0
        self.window_start = now
        if first or span <= 0:
            return
        rates = np.fromiter((counts.get(s, 0) for s in self.seen), np.float64, len(self.seen)) * (1e9 / span)
        if not len(rates):
            self.session_rate = {}
            return
        lo, p1, p50, p99, hi = np.percentile(rates, [0, 1, 50, 99, 100]).tolist()
        jain = float(rates.sum() ** 2 / (len(rates) * (rates ** 2).sum())) if rates.any() else 1.0
        self.session_rate = {"window_s": round(span / 1e9, 3), "sessions": len(rates), "min": round(lo, 1),
                             "p1": round(p1, 1), "p50": round(p50, 1), "p99": round(p99, 1), "max": round(hi, 1),
                             "fairness": round(jain, 4)}

    def _pipeline_latency(self, now: int, arrival_ns: np.ndarray) -> None:
        lat = (now - arrival_ns[arrival_ns > 0]) / 1000.0
        n = len(lat)
        if not n:
            return
        self.pipe_hist += np.bincount(np.minimum(lat // _PIPE_STEP_US, _PIPE_BINS - 1).astype(np.intp),
                                      minlength=_PIPE_BINS)
        if n >= _PIPE_RING:
            self.pipe_us[:] = lat[-_PIPE_RING:]
        else:
            i = self.pipe_rows % _PIPE_RING
            first = min(n, _PIPE_RING - i)
            self.pipe_us[i:i + first] = lat[:first]
            self.pipe_us[:n - first] = lat[first:]
        self.pipe_rows += n

    def _push(self, v: Viewer, packet: bytes, key: bool, seq: int = -1) -> None:
        if v.waiting:
            if not key:
                v.skipped += 1
                self.counts["skipped"] += 1
                return
            v.waiting = False
        q = v.queue
        if len(q) >= self.queue_size:
            # the oldest goes, and the deltas behind it that cannot be decoded without it
            dropped = 1
            q.popleft()
            while q and not q[0][1]:
                q.popleft()
                dropped += 1
            v.drops += dropped
            self.counts["drops"] += dropped
            if not q and not key:  # no keyframe left to resume from: wait for one
                v.waiting = True
                v.skipped += 1
                self.counts["skipped"] += 1
                self.counts["losses"] += 1
                if v.sending:  # ask once the viewer takes packets again: a stuck one asks nothing
                    v.need_key = True
                else:
                    self._want_keyframe(v.session, _needs(v))  # type: ignore[arg-type]
                return
        q.append((packet, key))
        if key:
            v.key_seq = seq
        if seq >= 0:
            v.last_seq = seq
        v.wake.set()

    def voice(self, session: str, packet: VoicePacket) -> None:
        """A voice packet of ``session`` is due: to each of its viewers that takes that kind."""
        viewers = self.watched.get(session)
        if not viewers:
            return
        kind = packet.kind
        for v in viewers.values():
            if v.audio == kind or (kind == "opus" and v.audio == "rtp"):
                if len(v.voice) >= _VOICE_QUEUE:
                    v.voice.popleft()
                    v.voice_drops += 1
                    self.counts["voice_drops"] += 1
                v.voice.append(packet)
                v.wake.set()

    async def _sender(self, v: Viewer) -> None:
        """Sends the viewer its JSON messages (first), its voice, then its face packets, one at a
        time as it can take them (or, on a reduced layer of a transport that bundles, what gathered
        over ``bundle_s`` in one message), then a probe's padding."""
        t = v.transport
        loop = asyncio.get_running_loop()
        try:
            while True:
                if v.texts:
                    text = v.texts.popleft()
                    await t.send_text(text)
                    v.net.sent_bytes += len(text)
                elif v.ping is not None:
                    text, v.ping = v.ping, None
                    await t.send_lossy(text)
                    v.net.sent_bytes += len(text)
                elif v.voice:
                    packet = v.voice.popleft()
                    await t.send_voice(v.session or "", packet)
                    v.voice_sent += 1
                    self.counts["voice_sent"] += 1
                    self.counts["voice_bytes"] += len(packet.data)
                elif v.train and loop.time() >= v.train_next:  # a train probe's next pad, at its pace
                    pid, i, text = v.train.popleft()
                    now_s = loop.time()  # the next one a gap after this one was due (0: the first, now)
                    v.train_next = max(v.train_next or now_s, now_s - v.train_gap) + v.train_gap
                    await t.send_lossy(text)
                    v.net.train_sent(pid, i, self.clock())
                    if not v.train:  # the packets held back meanwhile go once the train's queue drains a little
                        v.next_send = max(v.next_send, loop.time() + _AFTER_TRAIN_S)
                elif v.queue and (not t.bundle_s or v.layer == 0 or len(v.queue) >= self.queue_size // 2
                                  or (not v.train and loop.time() >= v.next_send)):
                    # (a bundle goes early, during a train too, rather than let the queue drop packets)
                    if t.bundle_s and v.layer > 0:  # a slow link: what gathered goes in one message
                        packets = _take(v.queue)
                        packet = bundle.pack(packets)
                        v.next_send = loop.time() + t.bundle_s
                        self.counts["bundles"] += len(packets) > 1
                    else:
                        packets = [v.queue.popleft()[0]]
                        packet = packets[0]
                    v.sending = True
                    await t.send_bytes(packet)
                    v.sending = False
                    v.sent += len(packets)
                    v.net.sent_bytes += len(packet)
                    self.counts["sent"] += len(packets)
                    if v.need_key:
                        v.need_key = False
                        if v.waiting and v.session is not None:
                            self._want_keyframe(v.session, _needs(v))
                elif v.net.pad_owed > 0:  # a probe: padding, in the gaps between packets
                    n = min(_PAD_CHUNK, v.net.pad_owed)
                    v.net.pad_owed -= n
                    await t.send_lossy(_PAD_TEXT % ("x" * max(0, n - 20)))
                    v.net.sent_bytes += n
                    v.net.pad_sent += n
                elif v.queue or v.train:  # a bundle gathering, or a train's next pad not due yet
                    # (while a train runs the bundle waits for it, not for its own time)
                    due = v.train_next if v.train else v.next_send
                    v.wake.clear()  # a text or a ping meanwhile goes at once (a ping held back is a false queue)
                    try:
                        await asyncio.wait_for(v.wake.wait(), max(0.0, due - loop.time()))
                    except asyncio.TimeoutError:
                        pass
                else:
                    v.wake.clear()
                    await v.wake.wait()
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - the connection is gone: so is the viewer
            self.remove(v)

    # --- sessions ------------------------------------------------------------------------------
    def sweep(self) -> None:
        """Forget sessions not seen for ``session_timeout_ns`` (auto viewers follow to another);
        tell every viewer when the set of live sessions changed."""
        now = self.clock()
        self.seen.update(dict.fromkeys(self.window_rows, now))  # seen since the window began
        gone = [s for s, t in self.seen.items() if now - t > self.session_timeout_ns]
        for s in gone:
            del self.seen[s]
        if self.kf_last:  # an ask older than the interval limits nothing any more
            self.kf_last = {s: t for s, t in self.kf_last.items() if now - t < self.keyframe_min_interval_ns}
        if gone:
            self.sessions_changed = True
            for s in gone:
                for v in [v for v in self.watched.get(s, {}).values() if v.auto]:
                    self.subscribe(v, None, v.lod)
        if self.watched_told == 0 or now - self.watched_told >= _WATCHED_EVERY_NS:
            self.watched_told = now or 1
            self.request({"keyframe": [], "watched": list(self.watched)})  # the compressor's extra layers
        self._network(now)
        if self.sessions_changed:
            self.sessions_changed = False
            text = json.dumps({"type": "sessions", "sessions": list(self.seen)})
            for v in self.viewers.values():
                v.texts.append(text)
                v.wake.set()

    def _network(self, now: int) -> None:
        """Pings for the round trip; a probe for a viewer below the best layer, now and then."""
        for v in self.viewers.values():
            net = v.net
            if not net.enabled:
                continue
            if net.ping_due(now):
                v.ping = json.dumps({"type": "ping", "t": now})
                v.wake.set()
            if net.probe is not None:
                net.probe_tick(now, 0.25)
                if net.pad_owed:
                    v.wake.set()
            elif (v.layer > 0 and v.layer_next is None and now >= net.next_probe_ns and v.session is not None
                  and not net.queued(now)):  # a link with a queue standing has no room to find
                target = v.layer - 1 if net.probe_fails % 2 else 0
                needs = self._probe_needs(v, target)
                if needs is None:
                    continue
                self.counts["probes"] += 1
                if v.transport.probe_train:  # a lossy transport: a short train, which the link's queue holds
                    texts, gap = net.start_train(now, _PROBE_MARGIN * needs[0], target == 0,
                                                 v.transport.framing_bytes)
                    v.train.clear()  # what is left of an earlier train is no longer wanted
                    v.train.extend((net.probe_ids, i, text) for i, text in enumerate(texts))
                    v.train_gap, v.train_next = gap, 0.0
                    v.wake.set()
                else:  # extra bytes for a second, as padding between the packets
                    net.start_probe(now, max(_MIN_PROBE_BPS, _PROBE_MARGIN * needs[0] - needs[1]) / 8, target == 0)

    def _probe_needs(self, v: Viewer, target: int) -> tuple[float, float] | None:
        """What the layer to try and the viewer's own need, bits/s (their bits and, per message,
        the transport's framing): a probe carries well over the first; if that gets through, the
        layer fits with margin. The best layer first (``target`` 0); after a probe failed, every
        other probe tries the next better one."""
        rates = self.layer_rates.get(v.session) if v.session is not None else None
        if not rates or v.layer >= len(rates):
            return None
        needs = layer_needs(rates, v.transport.framing_bytes, _messages_per_s(v.transport))
        return needs[target], needs[v.layer]

    # --- upstream ------------------------------------------------------------------------------
    def _want_keyframe(self, session: str, layer: int = 0) -> None:
        """A keyframe of the session's stream ``layer`` (0: the compressor's own), at most one ask
        per ``keyframe_min_interval_ns`` of each, saying the newest seq of that stream handed on."""
        now = self.clock()
        key = (session, layer)
        last = self.kf_last.get(key)
        if last is None or now - last >= self.keyframe_min_interval_ns:
            self.kf_last[key] = now
            self.counts["keyframe_requests"] += 1
            if layer == 0:
                seen = self.newest.get(session)
                self.request({"keyframe": [session], **({"seen": {session: seen}} if seen is not None else {})})
            else:
                n = self.newest_layer.get(key)
                self.request({"keyframe": [], "layer_keyframe": {str(layer): [session]},
                              **({"layer_seen": {str(layer): {session: n}}} if n is not None else {})})
        elif key not in self.kf_deferred:
            self.kf_deferred.add(key)
            delay = (last + self.keyframe_min_interval_ns - now) / 1e9
            asyncio.get_running_loop().call_later(delay, self._deferred_keyframe, session, layer)

    def _deferred_keyframe(self, session: str, layer: int = 0) -> None:
        self.kf_deferred.discard((session, layer))
        if any(v.waiting and _needs(v) == layer for v in self.watched.get(session, {}).values()):
            self._want_keyframe(session, layer)

    def _watch(self, v: Viewer) -> None:
        s = v.session
        assert s is not None
        if s not in self.watched:
            self.watched_told = 0  # tell upstream at the next sweep
        viewers = self.watched.setdefault(s, {})
        if not viewers:
            self.rings[s] = [None] * _RING
        viewers[v.id] = v
        self._want_keyframe(s, _needs(v))
        self._ask_lod(s)

    def _unwatch(self, v: Viewer) -> None:
        s = v.session
        viewers = self.watched.get(s) if s is not None else None
        if viewers is None or viewers.pop(v.id, None) is None:
            return
        if not viewers:
            del self.watched[s]
            del self.rings[s]
            self.newest.pop(s, None)
            for key in [key for key in self.newest_layer if key[0] == s]:
                del self.newest_layer[key]
        self._ask_lod(s)  # type: ignore[arg-type]
        self._pcm_sessions()

    def _pcm_sessions(self) -> None:
        """The sessions whose voice some viewer takes as pcm (the node makes that format only for them)."""
        self.pcm_sessions = {s for s, viewers in self.watched.items() if any(v.audio == "pcm" for v in viewers.values())}

    def _ask_lod(self, session: str) -> None:
        """Ask the lod node for the finest level any viewer of the session wants (None: its default)."""
        levels = [v.lod for v in self.watched.get(session, {}).values() if v.lod is not None]
        want = min(levels) if levels else None
        if want == self.lod_asked.get(session):
            return
        if want is None:
            del self.lod_asked[session]
        else:
            self.lod_asked[session] = want
        self.counts["lod_requests"] += 1
        self.request({"lod": {session: want}})

    def send(self, v: Viewer, msg: dict) -> None:
        """A JSON message to one viewer (behind what it is owed already)."""
        if not v.closed:
            self._send(v, msg)

    @staticmethod
    def _send(v: Viewer, msg: dict) -> None:
        v.texts.append(json.dumps(msg))
        v.wake.set()

    # --- stats ---------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        now = self.clock()
        n = min(self.counts["echoes"], _LATENCY_RING)
        p50, p99 = np.percentile(self.latency_us[:n], [50, 99]).tolist() if n else (0.0, 0.0)
        m = min(self.pipe_rows, _PIPE_RING)
        q50, q99 = np.percentile(self.pipe_us[:m], [50, 99]).tolist() if m else (0.0, 0.0)
        hist = np.flatnonzero(self.pipe_hist)
        kinds: dict[str, int] = {}
        for v in self.viewers.values():
            kinds[v.transport.kind] = kinds.get(v.transport.kind, 0) + 1
        return {
            **self.counts, "viewers": len(self.viewers), "viewers_by_transport": kinds,
            "sessions": len(self.seen), "watched": len(self.watched),
            # viewers per watched session (a live session not listed has none): what a QoS agent sheds last
            "watchers": {s: len(viewers) for s, viewers in self.watched.items()},
            "waiting": sum(v.waiting and v.session is not None for v in self.viewers.values()),
            "echo_latency_us_p50": round(p50, 1), "echo_latency_us_p99": round(p99, 1),
            "pipeline_rows": self.pipe_rows,
            "session_rate": self.session_rate,  # frames/s per session over the last second: min, p1, p50, p99, max, Jain's index
            "pipeline_latency_us_p50": round(q50, 1), "pipeline_latency_us_p99": round(q99, 1),
            "pipeline_latency_hist": {"step_us": _PIPE_STEP_US, "bins": hist.tolist(),
                                      "counts": self.pipe_hist[hist].tolist()},
            "latency_hist": self._latency_hist(),  # the same, in runtime.histogram's form (/metrics)
            "viewer_list": [v.info() for v in itertools.islice(self.viewers.values(), _LISTED_VIEWERS)],
            "layer_rates": dict(itertools.islice(self.layer_rates.items(), _NET_LISTED)),
            # what the network agent decides on: each reporting viewer's session, layer and network
            "viewer_net": {str(v.id): {"session": v.session, "layer": v.layer, "net": v.net.info(now),
                                       "framing_bytes": v.transport.framing_bytes,
                                       "messages_per_s": _messages_per_s(v.transport),
                                       **({"layer_next": v.layer_next} if v.layer_next is not None else {})}
                           for v in itertools.islice((v for v in self.viewers.values() if v.net.enabled), _NET_LISTED)},
            "probe_s": PROBE_S,
        }

    def _latency_hist(self) -> dict:
        """Arrival -> handed to viewers, as cumulative counts at LATENCY_BOUNDS_US; a fine bin counts
        under a bound only when all of it lies below (bins are _PIPE_STEP_US wide, the last open)."""
        upper = (np.arange(_PIPE_BINS) + 1) * _PIPE_STEP_US
        upper[-1] = np.iinfo(np.int64).max
        cum = np.cumsum(self.pipe_hist)
        idx = np.searchsorted(upper, np.asarray(LATENCY_BOUNDS_US), side="right") - 1
        buckets = [int(cum[i]) if i >= 0 else 0 for i in idx] + [int(cum[-1])]
        centers = (np.arange(_PIPE_BINS) + 0.5) * _PIPE_STEP_US
        return {"le_us": list(LATENCY_BOUNDS_US), "buckets": buckets,
                "sum_us": float((self.pipe_hist * centers).sum()), "count": int(cum[-1])}


def _find(sessions: list, session: str) -> int | None:
    """Where a session is in a batch, or None."""
    try:
        return sessions.index(session)
    except ValueError:
        return None


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlist, _REPR.maxdict = 3, 80, 80, 6, 6


def _short(value: Any) -> str:
    """A client's value in an error message: cut short, and never deep (a repr of JSON nested
    a thousand deep would recurse out of the stack)."""
    return _REPR.repr(value)


def check_session(value: Any, optional: bool) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= MAX_SESSION_ID:
        raise ProtocolError(f"'session' must be a session id (1..{MAX_SESSION_ID} characters)"
                            f"{' or null' if optional else ''}, got {_short(value)}")
    return value


def check_audio(value: Any) -> str | None:
    if value is None or value in AUDIO_FORMATS:
        return value
    raise ProtocolError(f"'audio' must be one of {', '.join(AUDIO_FORMATS)} or null, got {_short(value)}")


def check_lod(value: Any) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < N_LOD_LEVELS:
        raise ProtocolError(f"'lod' must be a level 0..{N_LOD_LEVELS - 1} or null, got {_short(value)}")
    return value


__all__ = ["AUDIO_FORMATS", "ProtocolError", "Transport", "Viewer", "Viewers", "check_audio", "check_lod",
           "check_session"]


def _messages_per_s(t: Transport) -> float | None:
    """At most this many messages a second on a reduced layer (bundles); None: no limit."""
    return 1.0 / t.bundle_s if t.bundle_s else None


def _take(queue: collections.deque[tuple[bytes, bool]]) -> list[bytes]:
    """The packets waiting, oldest first, as many as one bundle holds."""
    packets = [queue.popleft()[0]]
    size = len(packets[0])
    while queue and len(packets) < bundle.MAX_PACKETS and size + len(queue[0][0]) <= bundle.MAX_BYTES:
        packets.append(queue.popleft()[0])
        size += len(packets[-1])
    return packets


def _needs(v: Viewer) -> int:
    """The layer whose keyframe the viewer needs: the one it moves to, else its own."""
    return v.layer_next if v.layer_next is not None else v.layer
