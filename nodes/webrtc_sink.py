"""webrtc_sink: everything websocket_sink does (``nodes.delivery.ViewerSink``), plus WebRTC data channels.

``POST /rtc/offer`` takes the browser's offer (which creates two data channels: ``avatar``,
unordered with ``maxRetransmits: 0``, for the packets; ``control``, reliable, for the JSON
messages) and answers once ICE gathering is complete (aiortc gathers before it answers: no
trickle). A viewer exists once both channels are open; a failed or closed peer connection, or a
closed channel, removes it. Packets go to the same per-viewer bounded, drop-oldest queue as on
a WebSocket; the ``avatar`` channel's ``bufferedAmount`` is the back-pressure (over
``rtc_buffer_limit`` bytes the sender waits, so the queue fills and drops instead). A viewer the
network agent has put on a reduced layer (a slow link) gets its packets in bundles, gathered
over ``rtc_bundle_ms`` (``nodes.delivery.bundle``). Pings and a probe's padding go on ``avatar``
too, since a lost one needs no resend; aiortc's SCTP is corrected where it stalls on a slow,
lossy link (``nodes.delivery.sctp``).

An offer that also asks to receive audio (a recvonly audio transceiver) gets the session's voice
as an audio track (``nodes.delivery.rtc.VoiceTrack``), when the sink's ``audio`` pad is linked.

Host candidates: aioice gathers every interface's addresses except loopback. ``ice_addresses``
(a list of IPs) replaces that list in this process, e.g. ``[127.0.0.1]`` for a page on the same
machine (the tests), or the one LAN address a box should be reached on.
"""
from __future__ import annotations

import asyncio
import ipaddress
import json
from typing import Any, Mapping

from runtime import Param

from .delivery import DataChannelTransport, ViewerSink, ice_server_problems, offer_problems, restrict_host_addresses
from .delivery.rtc import VoiceTrack, voice_track
from .delivery.sctp import patch as patch_sctp

_CHANNELS_WITHIN_S = 15.0  # a peer whose two channels are not open by then is closed


def _address_problem(addresses: list) -> str | None:
    for a in addresses:
        try:
            ipaddress.ip_address(a)
        except (ValueError, TypeError):
            return f"{a!r} is not an IP address"
    return None


class WebRTCSink(ViewerSink):
    """Serves the page and streams packets to browsers over WebRTC data channels (WebSocket fallback)."""

    params = {
        **ViewerSink.params,
        "ice_servers": Param(list, [], "STUN/TURN servers for the peer connections and the page: "
                                       "[{urls, username?, credential?}]; empty: host candidates only",
                             check=lambda servers: "; ".join(ice_server_problems(servers)) or None),
        "ice_addresses": Param(list, [], "IP addresses to gather host candidates on; empty: every interface "
                                         "but loopback (aioice's default); [127.0.0.1] for a page on this machine",
                               check=lambda addresses: _address_problem(addresses)),
        "rtc_buffer_limit": Param(int, 1024, "bytes queued on a viewer's 'avatar' channel above which it counts "
                                             "as slow (its queue then drops the oldest)", min=64, max=1 << 24),
        "rtc_bundle_ms": Param(float, 200.0, "a viewer on a reduced layer (a slow link) gets its packets gathered "
                                             "this long, several in one message: on a data channel each message "
                                             "costs ~93 bytes of framing and SACKs (0: never)", min=0.0, max=1000.0),
    }
    transports = ("webrtc", "websocket")

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
        problems = offer_problems(body)
        if problems:
            self.offers_refused += 1
            return JSONResponse({"detail": problems}, status_code=422)
        config = RTCConfiguration(iceServers=[RTCIceServer(**s) for s in self.p.ice_servers])
        patch_sctp()  # once per process: aiortc's SCTP stalls on a slow, lossy link without it
        pc = RTCPeerConnection(config)  # iceServers=[] (not None): no default STUN server is contacted
        self.peers.add(pc)
        channels: dict[str, Any] = {}
        viewers = self.viewers
        state: dict[str, Any] = {"viewer": None}
        track: VoiceTrack | None = None

        def voice_clock(origin: int) -> None:  # the page maps the RTP timestamps it plays back to pts
            if state["viewer"] is not None and track is not None:
                viewers.send(state["viewer"], {"type": "voice_clock", "epoch_us": track.epoch_ns // 1000,
                                               "rtp_origin": origin})

        async def close() -> None:
            self.peers.discard(pc)
            if state["viewer"] is not None:
                viewers.remove(state["viewer"])
            if track is not None:
                track.stop()
            await pc.close()

        @pc.on("datachannel")
        def on_datachannel(channel: Any) -> None:
            if channel.label not in ("avatar", "control") or channel.label in channels:
                return
            channels[channel.label] = channel
            channel.on("close", lambda: asyncio.ensure_future(close()))
            if len(channels) == 2:
                transport = DataChannelTransport(pc, channels["avatar"], channels["control"], self.p.rtc_buffer_limit,
                                                 track, self.p.rtc_bundle_ms / 1000)
                v = viewers.add(transport, body.get("session"), body.get("lod"),
                                subscribe=body.get("session") is not None or body.get("lod") is not None,
                                audio="rtp" if track is not None else None)
                state["viewer"] = v
                if track is not None and track.rtp_origin is not None:
                    voice_clock(track.rtp_origin)
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
            if self.linked("audio") and any(t.kind == "audio" for t in pc.getTransceivers()):
                track = voice_track(self.now_ns(), voice_clock)  # the offer asks for the voice
                track.sender = pc.addTrack(track)
            await pc.setLocalDescription(await pc.createAnswer())  # gathers every candidate first
        except Exception as exc:  # noqa: BLE001 - aiortc raises many kinds on a bad SDP
            self.offers_refused += 1
            self.peers.discard(pc)
            if track is not None:
                track.stop()
            await pc.close()
            return JSONResponse({"detail": f"bad offer: {type(exc).__name__}: {exc}"}, status_code=400)
        asyncio.ensure_future(give_up_without_channels())
        return JSONResponse({"sdp": pc.localDescription.sdp, "type": pc.localDescription.type},
                            headers={"cache-control": "no-store"})
