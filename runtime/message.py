"""The message that travels on a link, and its ZeroMQ multipart encoding.

Frame 0 is a small msgpack header; each large numpy array follows as one raw frame, sent and
received without copies (a received array is a read-only view of the ZeroMQ frame).
The header is a msgpack array, documented in ``docs/messages.md``::

    [kind, caps, seq, pts_ns, session, data, [[name, dtype, shape(, inline bytes)], ...], trace]

Arrays of at most ``INLINE_MAX`` bytes ride inside the header, so a typical frame is one
ZeroMQ frame.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Sequence

import msgpack
import numpy as np


class Kind(IntEnum):
    DATA = 0
    EOS = 1  # end of stream: travels in-band behind the data
    MARK = 2  # drain marker: the sender holds the link after it (hot-swap)


@dataclass(slots=True)
class Message:
    """One message: caps, timing, session, small msgpack-able ``data`` and named numpy arrays.

    ``session`` is one session id, or a list of ids for a batch whose arrays have one row per
    session. ``seq`` is set by the transport (per link) on receipt.
    """

    caps: str
    data: Any = None
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    pts_ns: int = 0
    session: Any = None
    trace: str | None = None
    seq: int = -1
    kind: Kind = Kind.DATA

    def replace(self, **changes: Any) -> "Message":
        fields = {name: getattr(self, name) for name in self.__slots__}
        fields.update(changes)
        return Message(**fields)


_packb = msgpack.Packer(use_bin_type=True).pack
_KINDS = tuple(Kind)

# Arrays up to this size travel inside the header (one frame, one send); larger ones as their own
# frames, sent and received without copies.
INLINE_MAX = 4096
# Below this size a frame is cheaper to copy than to hand over as a zero-copy zmq.Frame.
ZERO_COPY_MIN = 65536

_dtypes: dict[str, np.dtype] = {}


def _dtype(name: str) -> np.dtype:
    dt = _dtypes.get(name)
    if dt is None:
        dt = _dtypes[name] = np.dtype(name)
    return dt


def encode(msg: Message, seq: int) -> list:
    """Frames for one message on a link with sequence number ``seq``."""
    arrays = msg.arrays
    if not arrays:
        return [_packb((int(msg.kind), msg.caps, seq, msg.pts_ns, msg.session, msg.data, (), msg.trace))]
    desc = []
    frames: list = [None]
    for name, arr in arrays.items():
        if arr.nbytes <= INLINE_MAX:
            desc.append((name, arr.dtype.str, arr.shape, arr.tobytes()))
            continue
        if not arr.flags.c_contiguous:
            arr = np.ascontiguousarray(arr)
        desc.append((name, arr.dtype.str, arr.shape))
        frames.append(arr)
    frames[0] = _packb((int(msg.kind), msg.caps, seq, msg.pts_ns, msg.session, msg.data, desc, msg.trace))
    return frames


def is_large(frames: list) -> bool:
    """True when some array frame is big enough to be worth sending without a copy."""
    for f in frames[1:]:
        if f.nbytes >= ZERO_COPY_MIN:
            return True
    return False


def decode_header(head: Any) -> list:
    """The header fields of frame 0; raises ValueError if it is not a message header."""
    try:
        fields = msgpack.unpackb(_buf(head), use_list=True, raw=False, strict_map_key=False)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise ValueError(f"malformed message: {exc}") from exc
    if not isinstance(fields, list) or len(fields) != 8 or not isinstance(fields[6], list):
        raise ValueError("malformed message: header is not an 8-field array")
    return fields


def frame_nbytes(desc: list) -> list[int]:
    """Byte size of each array that follows the header as its own frame (inline ones excluded)."""
    sizes = []
    try:
        for entry in desc:
            if len(entry) == 3:
                n = _dtype(entry[1]).itemsize
                for d in entry[2]:
                    n *= d
                sizes.append(n)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"malformed message: bad array description: {exc}") from exc
    return sizes


def decode(frames: Sequence, head: list | None = None) -> Message:
    """Message from received frames (``bytes`` or ``zmq.Frame``); raises ValueError if malformed."""
    try:
        kind, caps, seq, pts, session, data, desc, trace = head if head is not None else decode_header(frames[0])
        arrays = {}
        i = 1
        for entry in desc:
            if len(entry) == 4:
                buf = entry[3]
            else:
                buf = _buf(frames[i])
                i += 1
            arrays[entry[0]] = np.frombuffer(buf, dtype=_dtype(entry[1])).reshape(entry[2])
        return Message(caps, data, arrays, pts, session, trace, seq, _KINDS[kind])
    except (ValueError, TypeError, IndexError) as exc:
        raise ValueError(f"malformed message: {exc}") from exc


def _buf(frame: Any) -> Any:
    return frame.buffer if hasattr(frame, "buffer") else frame

