"""Reading a packet's keyframe flag and ``seq`` from its first bytes, without decoding it.

The compressor states both facts beside its packets (arrays ``keyframe`` and ``seq``); these
are for packets that come without them (a recording made elsewhere, a hand-built message).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

_KEYFRAME_FIRST = frozenset([*range(0x90, 0xA0), 0xDC, 0xDD])  # msgpack array: a keyframe


def is_keyframe(packet: bytes) -> bool:
    """A keyframe is a msgpack array (fixarray, array 16 or array 32); a delta is a bin."""
    return bool(packet) and packet[0] in _KEYFRAME_FIRST


def _uint(p: bytes, i: int) -> tuple[int, int]:
    """A msgpack unsigned int at ``i``: (value, next index)."""
    b = p[i]
    if b <= 0x7F:
        return b, i + 1
    size = {0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8}.get(b)
    if size is None or i + 1 + size > len(p):
        raise ValueError("not a msgpack uint")
    return int.from_bytes(p[i + 1:i + 1 + size], "big"), i + 1 + size


def _sid_seq(packet: bytes) -> tuple[int, int]:
    """(stream id, wire seq) from a packet's first bytes: a keyframe's elements 1 and 2; a delta's
    ``eg(0)`` sid (z zero bits, then z + 1 bits holding sid + 1) and the ``u(16)`` after it. -1
    for what cannot be read."""
    try:
        b = packet[0]
        if b in _KEYFRAME_FIRST:
            i = 1 if b <= 0x9F else 3 if b == 0xDC else 5
            _, i = _uint(packet, i)  # version
            sid, i = _uint(packet, i)
            return sid, _uint(packet, i)[0]
        head = {0xC4: 2, 0xC5: 3, 0xC6: 5}.get(b)
        if head is None:
            return -1, -1
        bits = int.from_bytes(packet[head:head + 8].ljust(8, b"\0"), "big")
        zeros = 64 - bits.bit_length()
        if 2 * zeros + 1 > 64:
            return -1, -1
        sid = ((bits >> (64 - 2 * zeros - 1)) & ((1 << (zeros + 1)) - 1)) - 1
        used = 2 * zeros + 1 + 16
        return sid, -1 if used > 64 else (bits >> (64 - used)) & 0xFFFF
    except (IndexError, ValueError):
        return -1, -1


def packet_seq(packet: bytes) -> int:
    """The wire ``seq`` of a packet, or -1 if it cannot be read. Reads a few bytes, never the whole packet."""
    return _sid_seq(packet)[1]


def packet_sid(packet: bytes) -> int:
    """The stream id of a packet, or -1 if it cannot be read."""
    return _sid_seq(packet)[0]


def packet_facts(packets: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Per packet, its keyframe flag (bool) and wire ``seq`` (int64, -1 where unreadable)."""
    return (np.array([is_keyframe(p) for p in packets], dtype=bool),
            np.array([packet_seq(p) for p in packets], dtype=np.int64))
