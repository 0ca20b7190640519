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


def control_message(kind: Kind, caps: str = "") -> Message:
    return Message(caps=caps, kind=kind)


def decode(frames: Sequence) -> Message:
    """Message from received frames (``bytes`` or ``zmq.Frame``); raises ValueError if malformed."""
    try:
        head = msgpack.unpackb(_buf(frames[0]), use_list=True, raw=False, strict_map_key=False)
        kind, caps, seq, pts, session, data, desc, trace = head
        arrays = {}
        for i, (name, dtype, shape) in enumerate(desc, start=1):
            arrays[name] = np.frombuffer(_buf(frames[i]), dtype=np.dtype(dtype)).reshape(shape)
        return Message(caps, data, arrays, pts, session, trace, seq, Kind(kind))
    except (ValueError, TypeError, IndexError, msgpack.UnpackException) as exc:
        raise ValueError(f"malformed message: {exc}") from exc


def _buf(frame: Any) -> Any:
    return frame.buffer if hasattr(frame, "buffer") else frame

