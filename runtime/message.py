"""The message that travels on a link, and its ZeroMQ multipart encoding.

Frame 0 is a small msgpack header; each large numpy array follows as one raw frame, sent and
received without copies (a received array is a read-only view of the ZeroMQ frame).
The header is a msgpack array, documented in ``docs/messages.md``::

    [kind, caps, seq, pts_ns, session, data, [[name, dtype, shape(, inline bytes)], ...], trace]

Arrays of at most ``INLINE_MAX`` bytes ride inside the header, so a typical frame is one
ZeroMQ frame.
"""
from __future__ import annotations

from enum import IntEnum
from typing import Any, Sequence

import msgpack
import numpy as np


class Kind(IntEnum):
    DATA = 0
    EOS = 1  # end of stream: travels in-band behind the data
    MARK = 2  # drain marker: the sender holds the link after it (hot-swap)


class Message:
    """One message: caps, timing, session, small msgpack-able ``data`` and named numpy arrays.

    ``session`` is one session id, or a list of ids for a batch whose arrays have one row per
    session. ``seq`` is set by the transport (per link) on receipt.

    A received message builds its numpy arrays only when node code first reads ``arrays``: a node
    that passes a message on without looking at them (identity, a tee, a recorder of headers)
    forwards the received bytes as they are, and never pays for numpy on its path.
    """

    __slots__ = ("caps", "data", "_arrays", "pts_ns", "session", "trace", "seq", "kind", "_wire")

    def __init__(self, caps: str, data: Any = None, arrays: dict[str, np.ndarray] | None = None, pts_ns: int = 0,
                 session: Any = None, trace: str | None = None, seq: int = -1, kind: "Kind" = Kind.DATA):
        self.caps, self.data, self.pts_ns, self.session, self.trace, self.seq, self.kind = (
            caps, data, pts_ns, session, trace, seq, kind)
        self._arrays: dict[str, np.ndarray] | None = {} if arrays is None else arrays
        self._wire: tuple[list, list] | None = None  # (array descriptions, their frames) as received

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        arrays = self._arrays
        if arrays is None:
            arrays = self._arrays = _build_arrays(*self._wire)
        return arrays

    @arrays.setter
    def arrays(self, value: dict[str, np.ndarray]) -> None:
        self._arrays, self._wire = value, None

    def replace(self, **changes: Any) -> "Message":
        out = Message.__new__(Message)
        for name in Message.__slots__:
            setattr(out, name, getattr(self, name))
        if "arrays" in changes:
            out.arrays = changes.pop("arrays")
        for name, value in changes.items():
            if name not in Message.__slots__ or name.startswith("_"):
                raise TypeError(f"Message has no field '{name}'")
            setattr(out, name, value)
        return out

    def __repr__(self) -> str:
        arrays = ("(not yet decoded)" if self._arrays is None
                  else {k: f"{a.dtype}{list(a.shape)}" for k, a in self._arrays.items()})
        return (f"Message(caps={self.caps!r}, kind={self.kind.name}, seq={self.seq}, pts_ns={self.pts_ns}, "
                f"session={self.session!r}, data={self.data!r}, arrays={arrays}, trace={self.trace!r})")


_packb = msgpack.Packer(use_bin_type=True).pack
_unpackb = msgpack.unpackb
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
        dt = np.dtype(name)
        if len(_dtypes) < 256:  # a sender cannot grow the cache without bound
            _dtypes[name] = dt
    return dt


_itemsizes: dict[str, int] = {}  # dtype strings seen on links that can travel as raw bytes


def _wire_itemsize(name: str, dtype: Any) -> int:
    """Item size of an array dtype a link may carry; ValueError for one it may not."""
    try:
        dt = _dtype(dtype)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"malformed message: array '{name}': bad dtype: {exc}") from None
    if dt.hasobject or not dt.itemsize or dt.shape:
        raise ValueError(f"malformed message: array '{name}': dtype {dtype!r} cannot travel as raw bytes")
    if len(_itemsizes) < 256:
        _itemsizes[dtype] = dt.itemsize
    return dt.itemsize


def encode(msg: Message, seq: int) -> list:
    """Frames for one message on a link with sequence number ``seq``."""
    arrays = msg._arrays
    if arrays is None:  # received and never looked at: the arrays go on as they came
        desc, rest = msg._wire
        return [_packb((int(msg.kind), msg.caps, seq, msg.pts_ns, msg.session, msg.data, desc, msg.trace)), *rest]
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
        if _nbytes(f) >= ZERO_COPY_MIN:
            return True
    return False


def decode_header(head: Any) -> list:
    """The header fields of frame 0; raises ValueError if it is not a message header."""
    try:
        fields = _unpackb(head if type(head) is bytes else _buf(head), use_list=True, raw=False, strict_map_key=False)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise ValueError(f"malformed message: {exc}") from exc
    if type(fields) is not list or len(fields) != 8 or type(fields[6]) is not list:
        raise ValueError("malformed message: header is not an 8-field array")
    return fields


def array_sizes(desc: list) -> list[int]:
    """Check every array description of a header (so a bad one is the link's error, never the
    node's) and return the byte size of each array that follows as its own frame."""
    sizes = []
    for entry in desc:
        if type(entry) is not list or len(entry) not in (3, 4) or type(entry[0]) is not str:
            raise ValueError(f"malformed message: bad array description {entry!r:.80}")
        name, shape = entry[0], entry[2]
        n = _itemsizes.get(entry[1]) if type(entry[1]) is str else None
        if n is None:
            n = _wire_itemsize(name, entry[1])
        if type(shape) is not list:
            raise ValueError(f"malformed message: array '{name}': shape {shape!r:.40} is not a list")
        for d in shape:
            if type(d) is not int or d < 0:
                raise ValueError(f"malformed message: array '{name}': bad dimension {d!r:.40}")
            n *= d
        if len(entry) == 3:
            sizes.append(n)
        elif type(entry[3]) is not bytes or len(entry[3]) != n:
            raise ValueError(f"malformed message: array '{name}': inline data is not {n} bytes for shape {shape} "
                             f"of {entry[1]}")
    return sizes


def decode(frames: Sequence, head: list | None = None, sizes: list[int] | None = None) -> Message:
    """Message from received frames (``bytes`` or ``zmq.Frame``); raises ValueError if malformed.

    ``head`` and ``sizes``: what ``decode_header`` and ``array_sizes`` gave for ``frames[0]``, when
    the caller needed them to receive the frames. The numpy arrays are built on first use
    (``Message.arrays``).
    """
    if head is None:
        head = decode_header(frames[0])
    kind, caps, seq, pts, session, data, desc, trace = head
    if type(kind) is not int or not 0 <= kind < 3:
        raise ValueError(f"malformed message: unknown kind {kind!r:.40}")
    msg = Message(caps, data, None, pts, session, trace, seq, _KINDS[kind])
    if desc:
        if sizes is None:
            sizes = array_sizes(desc)
        if len(frames) != len(sizes) + 1:
            raise ValueError(f"malformed message: {len(frames) - 1} array frames for {len(sizes)} arrays")
        rest = [_buf(f) for f in frames[1:]]
        for buf, n in zip(rest, sizes):
            if _nbytes(buf) != n:
                raise ValueError(f"malformed message: an array frame of {_nbytes(buf)} bytes, {n} expected")
        msg._arrays, msg._wire = None, (desc, rest)
    return msg


def _build_arrays(desc: list, frames: list) -> dict[str, np.ndarray]:
    arrays = {}
    i = 0
    for entry in desc:
        if len(entry) == 4:
            buf = entry[3]
        else:
            buf = frames[i]
            i += 1
        arrays[entry[0]] = np.frombuffer(buf, dtype=_dtype(entry[1])).reshape(entry[2])
    return arrays


def _buf(frame: Any) -> Any:
    return frame if type(frame) is bytes else getattr(frame, "buffer", frame)


def _nbytes(buf: Any) -> int:
    return len(buf) if isinstance(buf, (bytes, bytearray)) else memoryview(buf).nbytes
