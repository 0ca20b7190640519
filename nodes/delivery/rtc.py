"""WebRTC delivery: checking offers and ICE settings, the data-channel transport, and host candidates.

A viewer's offer creates two data channels: ``avatar``, unordered with ``maxRetransmits: 0``,
for the packets; ``control``, reliable, for the JSON messages. ``DataChannelTransport`` is that
pair as a viewer ``Transport``; the ``avatar`` channel's ``bufferedAmount`` is the back-pressure.
"""
from __future__ import annotations

import asyncio
import ipaddress
from typing import Any, Callable

from .viewers import ProtocolError, check_lod, check_session

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


class DataChannelTransport:
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
