"""webrtc_sink: everything websocket_sink does, plus delivery over WebRTC data channels.

``POST /rtc/offer`` takes the browser's offer (which creates two data channels: ``avatar``,
unordered with ``maxRetransmits: 0``, for the packets; ``control``, reliable, for the JSON
messages) and answers once ICE gathering is complete (aiortc gathers before it answers: no
trickle). A viewer exists once both channels are open; a failed or closed peer connection, or a
closed channel, removes it. Packets go to the same per-viewer bounded, drop-oldest queue as on
a WebSocket; the ``avatar`` channel's ``bufferedAmount`` is the back-pressure (over
``rtc_buffer_limit`` bytes the sender waits, so the queue fills and drops instead).

Host candidates: aioice gathers every interface's addresses except loopback. ``ice_addresses``
(a list of IPs) replaces that list in this process, e.g. ``[127.0.0.1]`` for a page on the same
machine (the tests), or the one LAN address a box should be reached on.
"""
from __future__ import annotations

import asyncio
import ipaddress
import json
from typing import Any, Callable, Mapping

from runtime import Param

from .websocket_sink import WebSocketSink

_MAX_SDP = 64 * 1024
_CHANNELS_WITHIN_S = 15.0  # a peer whose two channels are not open by then is closed
_LOD_LEVELS = 4


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


def _ice_server_problems(servers: Any) -> list[str]:
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


class WebRTCSink(WebSocketSink):
    """Serves the page and streams packets to browsers over WebRTC data channels (WebSocket fallback)."""

    params = {
        **WebSocketSink.params,
        "ice_servers": Param(list, [], "STUN/TURN servers for the peer connections and the page: "
                                       "[{urls, username?, credential?}]; empty: host candidates only"),
        "ice_addresses": Param(list, [], "IP addresses to gather host candidates on; empty: every interface "
                                         "but loopback (aioice's default); [127.0.0.1] for a page on this machine"),
        "rtc_buffer_limit": Param(int, 1024, "bytes queued on a viewer's 'avatar' channel above which it counts "
                                             "as slow (its queue then drops the oldest)", min=64, max=1 << 24),
    }
    transports = ("webrtc", "websocket")

    @classmethod
    def check_config(cls, params: Mapping[str, Any]) -> list[str]:
        problems = super().check_config(params)
        problems += _ice_server_problems(params.get("ice_servers", []))
        addresses = params.get("ice_addresses", [])
        for a in addresses if isinstance(addresses, list) else [addresses]:
            try:
                ipaddress.ip_address(a)
            except (ValueError, TypeError):
                problems.append(f"param 'ice_addresses': {a!r} is not an IP address")
        return problems

    def setup(self) -> None:
        self.peers: set[Any] = set()
        self.offers = self.offers_refused = 0
        restrict_host_addresses(list(self.p.ice_addresses))
        super().setup()

    def _apply(self, changed: Mapping[str, Any]) -> None:
        if "ice_addresses" in changed:  # takes effect for the next peer connection
            restrict_host_addresses(list(self.p.ice_addresses))
        super()._apply(changed)  # ice_servers: read at each offer and /config.json

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "peers": len(self.peers), "offers": self.offers,
                "offers_refused": self.offers_refused}

    # --- the loop's thread -------------------------------------------------------------------
    def _ice_servers(self) -> list[dict]:
        return [dict(s) for s in self.p.ice_servers]

    def _routes(self) -> list:
        from starlette.routing import Route

        return [*super()._routes(), Route("/rtc/offer", self._offer, methods=["POST"])]

    async def _on_stop(self) -> None:
        peers = list(self.peers)
        self.peers.clear()
        if peers:
            await asyncio.wait([asyncio.ensure_future(pc.close()) for pc in peers], timeout=1.5)
        await super()._on_stop()

    async def _offer(self, request: Any) -> Any:
        """``POST /rtc/offer``: the browser's offer in, our answer (all candidates in it) out."""
        from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
        from starlette.responses import JSONResponse

        self.offers += 1
        try:
            body = json.loads(await request.body())
        except ValueError as exc:
            self.offers_refused += 1
            return JSONResponse({"detail": f"the body must be JSON: {exc}"}, status_code=400)
        problems = _offer_problems(body)
        if problems:
            self.offers_refused += 1
            return JSONResponse({"detail": problems}, status_code=422)
        config = RTCConfiguration(iceServers=[RTCIceServer(**s) for s in self.p.ice_servers])
        pc = RTCPeerConnection(config)  # iceServers=[] (not None): no default STUN server is contacted
        self.peers.add(pc)
        channels: dict[str, Any] = {}
        viewers = self.viewers
        state: dict[str, Any] = {"viewer": None}

        async def close() -> None:
            self.peers.discard(pc)
            if state["viewer"] is not None:
                viewers.remove(state["viewer"])
            await pc.close()

        @pc.on("datachannel")
        def on_datachannel(channel: Any) -> None:
            if channel.label not in ("avatar", "control") or channel.label in channels:
                return
            channels[channel.label] = channel
            channel.on("close", lambda: asyncio.ensure_future(close()))
            if len(channels) == 2:
                transport = _DataChannelTransport(pc, channels["avatar"], channels["control"], self.p.rtc_buffer_limit)
                v = viewers.add(transport, body.get("session"), body.get("lod"),
                                subscribe=body.get("session") is not None or body.get("lod") is not None)
                state["viewer"] = v
                channels["control"].on("message", lambda m: viewers.handle_text(v, m) if isinstance(m, str) else None)

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                await close()

        async def give_up_without_channels() -> None:
            await asyncio.sleep(_CHANNELS_WITHIN_S)
            if state["viewer"] is None and pc in self.peers:
                await close()

        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=body["sdp"], type="offer"))
            await pc.setLocalDescription(await pc.createAnswer())  # gathers every candidate first
        except Exception as exc:  # noqa: BLE001 - aiortc raises many kinds on a bad SDP
            self.offers_refused += 1
            self.peers.discard(pc)
            await pc.close()
            return JSONResponse({"detail": f"bad offer: {type(exc).__name__}: {exc}"}, status_code=400)
        asyncio.ensure_future(give_up_without_channels())
        return JSONResponse({"sdp": pc.localDescription.sdp, "type": pc.localDescription.type},
                            headers={"cache-control": "no-store"})


def _offer_problems(body: Any) -> list[str]:
    """What is wrong with an offer body, each problem in words (empty: nothing)."""
    if not isinstance(body, dict):
        return ["the body must be a JSON object {sdp, type: 'offer', session?, lod?}"]
    problems = []
    sdp = body.get("sdp")
    if not isinstance(sdp, str) or not sdp.startswith("v=0") or len(sdp) > _MAX_SDP:
        problems.append(f"'sdp' must be an SDP offer (a string starting 'v=0', at most {_MAX_SDP} characters)")
    elif "m=application" not in sdp:
        problems.append("the offer has no data channel: create the 'avatar' and 'control' channels before "
                        "createOffer()")
    if body.get("type") != "offer":
        problems.append(f"'type' must be 'offer', got {body.get('type')!r}")
    session = body.get("session")
    if session is not None and (not isinstance(session, str) or not 0 < len(session) <= 1024):
        problems.append(f"'session' must be a session id (1..1024 characters) or null, got {session!r}")
    lod = body.get("lod")
    if lod is not None and (not isinstance(lod, int) or isinstance(lod, bool) or not 0 <= lod < _LOD_LEVELS):
        problems.append(f"'lod' must be a level 0..{_LOD_LEVELS - 1} or null, got {lod!r}")
    extra = set(body) - {"sdp", "type", "session", "lod"}
    if extra:
        problems.append(f"unknown field(s): {', '.join(sorted(map(str, extra)))}")
    return problems


class _DataChannelTransport:
    """A viewer's two data channels: packets on ``avatar`` (waiting while more than ``limit`` bytes
    are buffered on it), JSON on ``control``."""

    kind = "webrtc"

    def __init__(self, pc: Any, avatar: Any, control: Any, limit: int):
        self.pc, self.avatar, self.control, self.limit = pc, avatar, control, limit
        self._low = asyncio.Event()
        avatar.bufferedAmountLowThreshold = limit // 2
        avatar.on("bufferedamountlow", self._low.set)

    async def send_bytes(self, data: bytes) -> None:
        ch = self.avatar
        while ch.bufferedAmount > self.limit and ch.readyState == "open":
            self._low.clear()
            try:
                await asyncio.wait_for(self._low.wait(), 0.1)
            except asyncio.TimeoutError:
                pass
        if ch.readyState != "open":
            raise ConnectionError("the 'avatar' data channel is closed")
        ch.send(data)

    async def send_text(self, text: str) -> None:
        if self.control.readyState != "open":
            raise ConnectionError("the 'control' data channel is closed")
        self.control.send(text)

    async def close(self) -> None:
        await self.pc.close()
