"""Bundles: several face packets in one message, for a viewer on a slow WebRTC link.

On a data channel every message is an SCTP packet of its own (aiortc does not bundle chunks),
about 93 bytes of framing around a 20-byte delta, and the peer's SACKs and FORWARD-TSNs come with
them: measured on a 32 kbit/s link, the 13 frames a second of the lowest layer filled it. A
WebSocket needs none of this: TCP coalesces what waits. So the sink sends a WebRTC viewer on a
reduced layer (a slow link, by the network agent's judgement) its packets gathered over
``rtc_bundle_ms``, in one message: a msgpack array of bins, each one packet, unchanged.

A packet is a msgpack array (a keyframe, whose first element is the int version) or a bin (a
delta), a voice frame is a map: a bundle is told apart by its first element being a bin.
"""
from __future__ import annotations

import msgpack

MAX_PACKETS = 15  # a fixarray: one header byte, and the page tells a bundle by its second byte
MAX_BYTES = 1000  # what one SCTP packet carries (aiortc's DATA chunks hold up to 1200 bytes)
_BIN = (0xC4, 0xC5, 0xC6)


def pack(packets: list[bytes]) -> bytes:
    """One message for the packets (at most MAX_PACKETS); a single packet goes as it is."""
    if len(packets) == 1:
        return packets[0]
    if not 1 < len(packets) <= MAX_PACKETS:
        raise ValueError(f"a bundle holds 2..{MAX_PACKETS} packets, got {len(packets)}")
    return msgpack.packb(packets, use_bin_type=True)


def is_bundle(data: bytes) -> bool:
    return len(data) > 1 and 0x92 <= data[0] <= 0x9F and data[1] in _BIN


def unpack(data: bytes) -> list[bytes]:
    """The packets a message carries: a bundle's, or the message itself."""
    if not is_bundle(data):
        return [data]
    items = msgpack.unpackb(data, raw=False)
    if not all(isinstance(p, bytes) for p in items):
        raise ValueError("a bundle must hold only bins (packets)")
    return items
