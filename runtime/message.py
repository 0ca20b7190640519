"""The message that travels on a link, and its ZeroMQ multipart encoding.

Frame 0 is a small msgpack header; each numpy array follows as one raw frame, sent and
received without copies (a received array is a read-only view of the ZeroMQ frame).
The header is a msgpack array, documented in ``docs/messages.md``::

    [kind, caps, seq, pts_ns, session, data, [[name, dtype, shape], ...], trace]
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


def encode(msg: Message, seq: int) -> list:
    """Frames for one message on a link with sequence number ``seq``."""
    arrays = msg.arrays
    if arrays:
        desc = []
        frames: list = [None]
        for name, arr in arrays.items():
            if not arr.flags.c_contiguous:
                arr = np.ascontiguousarray(arr)
            desc.append((name, arr.dtype.str, arr.shape))
            frames.append(arr)
        frames[0] = _packb((int(msg.kind), msg.caps, seq, msg.pts_ns, msg.session, msg.data, desc, msg.trace))
        return frames
    return [_packb((int(msg.kind), msg.caps, seq, msg.pts_ns, msg.session, msg.data, (), msg.trace))]


# Below this size a frame is cheaper to copy than to hand over as a zero-copy zmq.Frame.
ZERO_COPY_MIN = 65536


def is_large(frames: list) -> bool:
    """True when some array frame is big enough to be worth sending without a copy."""
    return any(getattr(f, "nbytes", 0) >= ZERO_COPY_MIN for f in frames[1:])


def decode_header(head: Any) -> list:
    """The header fields of frame 0; raises ValueError if it is not a message header."""
    try:
        fields = msgpack.unpackb(_buf(head), use_list=True, raw=False, strict_map_key=False)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise ValueError(f"malformed message: {exc}") from exc
    if not isinstance(fields, list) or len(fields) != 8:
        raise ValueError("malformed message: header is not an 8-field array")
    return fields


def array_nbytes(desc: list) -> list[int]:
    """Byte size of each array the header announces (to choose copy or zero-copy receive)."""
    try:
        return [int(np.prod(shape)) * np.dtype(dtype).itemsize for _, dtype, shape in desc]
    except (ValueError, TypeError) as exc:
        raise ValueError(f"malformed message: bad array description: {exc}") from exc


def decode(frames: Sequence, head: list | None = None) -> Message:
    """Message from received frames (``bytes`` or ``zmq.Frame``); raises ValueError if malformed."""
    try:
        kind, caps, seq, pts, session, data, desc, trace = head if head is not None else decode_header(frames[0])
        arrays = {}
        for i, (name, dtype, shape) in enumerate(desc, start=1):
            arrays[name] = np.frombuffer(_buf(frames[i]), dtype=np.dtype(dtype)).reshape(shape)
        return Message(caps, data, arrays, pts, session, trace, seq, Kind(kind))
    except (ValueError, TypeError, IndexError) as exc:
        raise ValueError(f"malformed message: {exc}") from exc


def _buf(frame: Any) -> Any:
    return frame.buffer if hasattr(frame, "buffer") else frame

