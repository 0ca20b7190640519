"""WebRTC delivery: checking offers and ICE settings, the data-channel transport, the voice's audio
track, and host candidates.

A viewer's offer creates two data channels: ``avatar``, unordered with ``maxRetransmits: 0``,
for the packets and the JSON messages that may be lost (pings, a probe's padding); ``control``,
reliable, for the other JSON messages. ``DataChannelTransport`` is that
pair as a viewer ``Transport``; the ``avatar`` channel's ``bufferedAmount`` is the back-pressure.
An offer that also asks to receive audio gets the voice as an audio track (``VoiceTrack``): the
session's Opus packets, encoded once for all its viewers, sent as they fall due.

The page shows each face frame when its audio clock reaches the frame's pts. It reads that clock
from the RTP timestamp of the audio it is playing (``RTCRtpReceiver.getSynchronizationSources``),
so it must know which pts an RTP timestamp stands for: the track stamps each packet with its
presentation pts in 48 kHz units since the track's ``epoch_ns``, and aiortc adds a random origin
of its own, which the track reads back from its sender once the first packet is out
(``RTCRtpSender``'s last RTP timestamp, a private attribute: checked in the tests) and the sink
tells the page: ``{"type": "voice_clock", "epoch_us", "rtp_origin"}`` on the control channel.
"""
from __future__ import annotations

import asyncio
import fractions
import functools
import ipaddress
from collections import deque
from typing import Any, Callable

from .viewers import ProtocolError, check_lod, check_session
from .voice import OPUS_RATE, VoicePacket

MAX_SDP = 64 * 1024


def restrict_host_addresses(addresses: list[str]) -> Callable[[bool, bool], list[str]] | None:
    """Make aioice gather host candidates on exactly ``addresses`` (empty: its own default, every
    interface but loopback), in this process. Returns the function it replaced (None if none).

    aioice has no setting for this: ``aioice.ice.Connection.gather_candidates`` calls the module
    function ``aioice.ice.get_host_addresses(use_ipv4, use_ipv6)`` each time, so replacing that
    one function is the one hook. The original is kept on the module to restore or re-restrict.
    """
    import aioice.ice as ice

    original = getattr(ice, "_avatar_original_get_host_addresses", None)
    if original is None:
        original = ice._avatar_original_get_host_addresses = ice.get_host_addresses  # type: ignore[attr-defined]
    if not addresses:
        ice.get_host_addresses = original
        return original
    chosen = [str(ipaddress.ip_address(a)) for a in addresses]

    def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [a for a in chosen if (use_ipv6 if ":" in a else use_ipv4)]

    ice.get_host_addresses = get_host_addresses
    return original


def ice_server_problems(servers: Any) -> list[str]:
    if not isinstance(servers, list):
        return ["param 'ice_servers' must be a list of {urls, username?, credential?}"]
    problems = []
    for i, s in enumerate(servers):
        urls = s.get("urls") if isinstance(s, dict) else None
        url_list = [urls] if isinstance(urls, str) else urls
        if not isinstance(url_list, list) or not url_list or not all(
                isinstance(u, str) and u.split(":", 1)[0] in ("stun", "stuns", "turn", "turns") for u in url_list):
            problems.append(f"ice_servers[{i}]: 'urls' must be a stun:/turn: URL or a list of them, got {urls!r}")
            continue
        extra = set(s) - {"urls", "username", "credential"}
        if extra:
            problems.append(f"ice_servers[{i}]: unknown key(s) {', '.join(sorted(extra))} "
                            "(allowed: urls, username, credential)")
        for k in ("username", "credential"):
            if k in s and not isinstance(s[k], str):
                problems.append(f"ice_servers[{i}]: '{k}' must be a string")
    return problems


def offer_problems(body: Any) -> list[str]:
    """What is wrong with an offer body, each problem in words (empty: nothing)."""
    if not isinstance(body, dict):
        return ["the body must be a JSON object {sdp, type: 'offer', session?, lod?}"]
    problems = []
    sdp = body.get("sdp")
    if not isinstance(sdp, str) or not sdp.startswith("v=0") or len(sdp) > MAX_SDP:
        problems.append(f"'sdp' must be an SDP offer (a string starting 'v=0', at most {MAX_SDP} characters)")
    elif "m=application" not in sdp:
        problems.append("the offer has no data channel: create the 'avatar' and 'control' channels before "
                        "createOffer()")
    if body.get("type") != "offer":
        problems.append(f"'type' must be 'offer', got {body.get('type')!r}")
    for check, value in ((lambda v: check_session(v, True), body.get("session")), (check_lod, body.get("lod"))):
        try:
            check(value)
        except ProtocolError as exc:  # the viewer protocol's own checks, as on a WebSocket
            problems.append(str(exc))
    extra = set(body) - {"sdp", "type", "session", "lod"}
    if extra:
        problems.append(f"unknown field(s): {', '.join(sorted(map(str, extra)))}")
    return problems


class VoiceTrack:
    """A viewer's voice as an aiortc audio track of pre-encoded Opus packets (aiortc sends them
    as they are, without encoding again). ``put`` queues a packet that is due now; ``recv``
    (aiortc's sender) waits for the next. Made by ``voice_track``, which mixes in aiortc's
    ``MediaStreamTrack`` (imported only then, so inspecting the node type stays quick)."""

    _QUEUE = 25  # packets (0.5 s) a stalled sender may fall behind before the oldest go

    def __init__(self, epoch_ns: int, on_clock: Callable[[int], None]):
        self.epoch_ns, self.on_clock = epoch_ns, on_clock
        self.packets: deque[VoicePacket] = deque()
        self.ready = asyncio.Event()
        self.sender: Any = None
        self.last_ts: int | None = None
        self.rtp_origin: int | None = None
        self.dropped = 0

    def put(self, packet: VoicePacket) -> None:
        if len(self.packets) >= self._QUEUE:
            self.packets.popleft()
            self.dropped += 1
        self.packets.append(packet)
        self.ready.set()

    async def recv(self) -> Any:
        import av
        from aiortc.mediastreams import MediaStreamError

        while not self.packets:
            if self.readyState != "live":  # type: ignore[attr-defined]
                raise MediaStreamError
            self.ready.clear()
            await self.ready.wait()
        self._learn_origin()
        p = self.packets.popleft()
        ts = (p.pts_ns - self.epoch_ns) * OPUS_RATE // 1_000_000_000
        packet = av.Packet(p.data)
        packet.pts, packet.time_base = ts, fractions.Fraction(1, OPUS_RATE)
        self.last_ts = ts
        return packet

    def stop(self) -> None:
        super().stop()  # type: ignore[misc]
        self.ready.set()

    def _learn_origin(self) -> None:
        """The random RTP timestamp origin aiortc chose: its last RTP timestamp minus our last pts."""
        if self.rtp_origin is not None or self.last_ts is None or self.sender is None:
            return
        rtp = getattr(self.sender, "_RTCRtpSender__rtp_timestamp", None)
        if isinstance(rtp, int) and getattr(self.sender, "_RTCRtpSender__packet_count", 0) > 0:
            self.rtp_origin = (rtp - self.last_ts) & 0xFFFFFFFF
            self.on_clock(self.rtp_origin)


@functools.cache
def _voice_track_class() -> type:
    from aiortc.mediastreams import MediaStreamTrack

    class AudioVoiceTrack(VoiceTrack, MediaStreamTrack):
        kind = "audio"

        def __init__(self, epoch_ns: int, on_clock: Callable[[int], None]):
            MediaStreamTrack.__init__(self)
            VoiceTrack.__init__(self, epoch_ns, on_clock)

    return AudioVoiceTrack


def voice_track(epoch_ns: int, on_clock: Callable[[int], None]) -> VoiceTrack:
    """A ``VoiceTrack`` that is an aiortc ``MediaStreamTrack`` of kind audio (aiortc imported here)."""
    return _voice_track_class()(epoch_ns, on_clock)


class DataChannelTransport:
    """A viewer's two data channels: packets on ``avatar`` (waiting while more than ``limit`` bytes
    are buffered on it), JSON on ``control``; and its voice track, if its offer asked for audio."""

    kind = "webrtc"
    # a packet's framing on the wire: IPv4 20 + UDP 8 + DTLS 13 + AES-GCM's nonce and tag 24 + SCTP's
    # common header 12 + a DATA chunk's 16 (aiortc sends each message in a packet of its own)
    framing_bytes = 93
    probe_train = True  # a probe's padding above a slow link's rate would take frames with it: trains

    def __init__(self, pc: Any, avatar: Any, control: Any, limit: int, track: Any = None, bundle_s: float = 0.0):
        self.pc, self.avatar, self.control, self.limit, self.track = pc, avatar, control, limit, track
        self.bundle_s = bundle_s  # on a reduced layer, packets are gathered this long (nodes.delivery.bundle)
        self._low = asyncio.Event()
        avatar.bufferedAmountLowThreshold = limit // 2
        avatar.on("bufferedamountlow", self._low.set)

    async def send_bytes(self, data: bytes) -> None:
        await self._room()
        self.avatar.send(data)

    async def _room(self) -> None:
        """Wait while more than ``limit`` bytes are buffered on ``avatar``: SCTP's window, not the
        sender, paces it."""
        ch = self.avatar
        while ch.bufferedAmount > self.limit and ch.readyState == "open":
            self._low.clear()
            try:
                await asyncio.wait_for(self._low.wait(), 0.1)
            except asyncio.TimeoutError:
                pass
        if ch.readyState != "open":
            raise ConnectionError("the 'avatar' data channel is closed")

    async def send_text(self, text: str) -> None:
        if self.control.readyState != "open":
            raise ConnectionError("the 'control' data channel is closed")
        self.control.send(text)

    async def send_lossy(self, text: str) -> None:
        # on the unreliable channel, paced as the packets are: a lost ping or padding is not resent,
        # and so holds nothing back (on 'control' each loss waited for SCTP's retransmission timer,
        # and a probe's padding, never waited for, flooded a slow link)
        await self._room()
        self.avatar.send(text)

    async def send_voice(self, session: str, packet: VoicePacket) -> None:
        if self.track is not None:
            self.track.put(packet)

    @property
    def voice_drops(self) -> int:
        """Voice packets the audio track dropped (aiortc's sender fell half a second behind)."""
        return self.track.dropped if self.track is not None else 0

    async def close(self) -> None:
        await self.pc.close()
