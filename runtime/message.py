"""The message that travels on a link, and its ZeroMQ multipart encoding.

Frame 0 is a fixed 19-byte prefix, then a msgpack body; each large numpy array follows as one raw
frame, sent and received without copies (a received array is a read-only view of the ZeroMQ
frame). Documented in ``docs/messages.md``::

    prefix (little-endian): kind u8, array frames that follow u16, seq u64, pts_ns i64
    body (msgpack):         [caps, session, data, [[name, dtype, shape(, inline bytes)], ...], trace]

Arrays of at most ``INLINE_MAX`` bytes ride inside the body, so a typical frame is one ZeroMQ
frame. What the transport needs of every message (kind, seq, pts, how many frames) is in the
prefix; the body is unpacked when node code first reads it. A node that passes messages on
unread (``Node.passthrough``, e.g. identity) forwards the received body and frames as they are.
"""
from __future__ import annotations

import struct
from enum import IntEnum
from typing import Any, Sequence

import msgpack
import numpy as np


class Kind(IntEnum):
    DATA = 0
    EOS = 1  # end of stream: travels in-band behind the data
    MARK = 2  # drain marker: the sender holds the link after it (hot-swap)


class MalformedMessage(ValueError):
    """A received message that cannot be decoded (raised when its body is first read)."""


_LAZY: Any = object()  # a body field not unpacked yet


class Message:
    """One message: caps, timing, session, small msgpack-able ``data`` and named numpy arrays.

    ``session`` is one session id, or a list of ids for a batch whose arrays have one row per
    session. ``seq`` is set by the transport (per link) on receipt.

    A received message unpacks its body (caps, session, data, trace) when one of them is first
    read or set, and builds its numpy arrays when ``arrays`` is first read: what a node never
    looks at costs it nothing, and goes on as it came.
    """

    __slots__ = ("_caps", "_data", "_arrays", "pts_ns", "_session", "_ids", "_trace", "seq", "kind", "_wire", "_body")

    def __init__(self, caps: str, data: Any = None, arrays: dict[str, np.ndarray] | None = None, pts_ns: int = 0,
                 session: Any = None, trace: str | None = None, seq: int = -1, kind: "Kind" = Kind.DATA):
        self._caps, self._data, self.pts_ns, self._trace, self.seq, self.kind = caps, data, pts_ns, trace, seq, kind
        self._session, self._ids = _split_session(session)
        self._arrays: dict[str, np.ndarray] | None = {} if arrays is None else arrays
        # (array descriptions, their frames) as received, or None; Any: read on hot paths only where set
        self._wire: Any = None
        self._body: bytes | None = None  # the msgpack body as received, while nobody has read it

    @classmethod
    def received(cls, kind: "Kind", seq: int, pts_ns: int, body: bytes, frames: list) -> "Message":
        """A message off a link, its body still packed (see ``open``)."""
        msg = cls.__new__(cls)
        msg.kind, msg.seq, msg.pts_ns = kind, seq, pts_ns
        msg._caps = msg._data = msg._session = msg._trace = _LAZY
        msg._ids = None
        msg._arrays, msg._wire, msg._body = None, ([], frames), body
        return msg

    def open(self) -> "Message":
        """Unpack the body if it is still packed; MalformedMessage if it is not a valid one."""
        body = self._body
        if body is None:
            return self
        frames = self._wire[1]
        try:
            fields = _unpackb(body, raw=False, strict_map_key=False, ext_hook=_ext)
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            raise MalformedMessage(f"malformed message: {exc}") from None
        if type(fields) is not list or len(fields) != 5 or type(fields[3]) is not list:
            raise MalformedMessage("malformed message: the body is not a 5-field array")
        caps, session, data, desc, trace = fields
        try:
            sizes = array_sizes(desc)
        except ValueError as exc:
            raise MalformedMessage(str(exc)) from None
        if len(frames) != len(sizes):
            raise MalformedMessage(f"malformed message: {len(frames)} array frames for {len(sizes)} arrays")
        for buf, n in zip(frames, sizes):
            if _nbytes(buf) != n:
                raise MalformedMessage(f"malformed message: an array frame of {_nbytes(buf)} bytes, {n} expected")
        self._caps, self._data, self._trace = caps, data, trace
        self._session, self._ids = _split_session(session)
        if desc:
            self._wire = (desc, frames)
        else:
            self._arrays, self._wire = {}, None
        self._body = None
        return self

    @staticmethod
    def _get(name: str) -> property:  # a helper run in the class body
        slot = "_" + name

        def get(self: "Message") -> Any:
            value = getattr(self, slot)
            if value is _LAZY:
                value = getattr(self.open(), slot)
            return value

        def put(self: "Message", value: Any) -> None:
            if self._body is not None:
                self.open()
            setattr(self, slot, value)
        return property(get, put)

    caps = _get("caps")
    data = _get("data")
    trace = _get("trace")
    del _get

    @property
    def session(self) -> Any:
        """One session id, the list of a batch's ids (as ``str``), or None."""
        value = self._session
        if value is _LAZY:
            value = self.open()._session
        if value is _FROM_IDS:
            ids: Any = self._ids
            value = self._session = [b.decode("utf-8", "replace") for b in ids.tolist()]
        return value

    @session.setter
    def session(self, value: Any) -> None:
        if self._body is not None:
            self.open()
        self._session, self._ids = _split_session(value)

    @property
    def carries_ids(self) -> bool:
        """True when the session came as an id array (``session_ids`` then costs nothing)."""
        if self._body is not None:
            self.open()
        return self._ids is not None

    @property
    def session_ids(self) -> np.ndarray | None:
        """A batch's session ids as a fixed-width byte array (numpy ``S``, UTF-8, NUL-padded), one
        row per session: what batched nodes look slots up by and pass on, without a Python object
        per row. A message built with a list gets one made from it; None without a session."""
        if self._body is not None:
            self.open()
        ids = self._ids
        if ids is not None:
            return ids
        return ids_array(self.session)

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        arrays = self._arrays
        if arrays is None:
            if self._body is not None:
                self.open()
            arrays = self._arrays
            if arrays is None:
                arrays = self._arrays = _build_arrays(*self._wire)
        return arrays

    @arrays.setter
    def arrays(self, value: dict[str, np.ndarray]) -> None:
        if self._body is not None:
            self.open()
        self._arrays, self._wire = value, None

    def replace(self, **changes: Any) -> "Message":
        out = Message.__new__(Message)
        for name in Message.__slots__:
            setattr(out, name, getattr(self, name))
        for name, value in changes.items():
            if name not in ("caps", "data", "arrays", "pts_ns", "session", "trace", "seq", "kind"):
                raise TypeError(f"Message has no field '{name}'")
            setattr(out, name, value)
        return out

    def delivered(self) -> "Message":
        """This message as a link's receiver gets it, without the bytes in between: read-only
        arrays (a copy of each one the sender could still write), and caps, session, data and trace
        of its own (a msgpack round trip of those small fields). For nodes handed messages inside
        one process (``nodes.bin``): what the receiver keeps or changes is never the sender's."""
        if self._body is not None:  # received and unread: its bytes go on as they are
            return Message.received(self.kind, self.seq, self.pts_ns, self._body, self._wire[1])
        try:
            caps, session, data, trace = _unpackb(_packb((self._caps, _session_field(self), self._data, self._trace)),
                                                  raw=False, strict_map_key=False, ext_hook=_ext)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"a message that cannot travel on a link: {exc}") from None
        arrays = {}
        for name, arr in self.arrays.items():
            if arr.flags.writeable:  # the sender may write its own again (a buffer it reuses): a copy
                arr = arr.copy()
                arr.flags.writeable = False
            arrays[name] = arr  # read-only already: nobody writes it (a view of a received frame)
        return Message(caps, data, arrays, self.pts_ns, session, trace, self.seq, self.kind)

    def __repr__(self) -> str:
        if self._body is not None:
            return f"Message(kind={self.kind.name}, seq={self.seq}, pts_ns={self.pts_ns}, body not yet unpacked)"
        arrays = ("(not yet decoded)" if self._arrays is None
                  else {k: f"{a.dtype}{list(a.shape)}" for k, a in self._arrays.items()})
        return (f"Message(caps={self.caps!r}, kind={self.kind.name}, seq={self.seq}, pts_ns={self.pts_ns}, "
                f"session={self.session!r}, data={self.data!r}, arrays={arrays}, trace={self.trace!r})")


PREFIX = struct.Struct("<BHQq")  # kind, array frames that follow, seq, pts_ns
IDS_EXT = 1  # msgpack ext type of a session id array: width u16, then the rows, each ``width`` bytes
_WIDTH = struct.Struct("<H")
_FROM_IDS: Any = object()  # ``_session`` not made yet from ``_ids``


def ids_array(session: Any) -> np.ndarray | None:
    """Session ids (a list, one id, or None) as a fixed-width UTF-8 byte array (numpy ``S``)."""
    if session is None:
        return None
    if type(session) is not list:
        session = [session]
    if not session:
        return np.empty(0, dtype="S1")
    return np.array([s.encode() if type(s) is str else str(s).encode() for s in session], dtype=bytes)


def _split_session(session: Any) -> tuple[Any, np.ndarray | None]:
    """(``_session``, ``_ids``) for a session given as ids, an id array or None."""
    if type(session) is np.ndarray and session.dtype.kind == "S" and session.ndim == 1:
        return _FROM_IDS, session
    return session, None


def _session_field(msg: "Message") -> Any:
    ids = msg._ids
    if ids is None:
        return msg._session
    return msgpack.ExtType(IDS_EXT, _WIDTH.pack(ids.dtype.itemsize) + np.ascontiguousarray(ids).tobytes())


def _ext(code: int, data: bytes) -> Any:
    """A session id array from its msgpack ext (ValueError if it is not one); other exts as they are."""
    if code != IDS_EXT:
        return msgpack.ExtType(code, data)
    if len(data) < 2:
        raise ValueError("malformed message: a session id array without its width")
    (width,) = _WIDTH.unpack_from(data)
    if not width or (len(data) - 2) % width:
        raise ValueError(f"malformed message: session ids of {len(data) - 2} bytes are not rows of {width}")
    return np.frombuffer(data, dtype=f"S{width}", offset=2)


_packb = msgpack.Packer(use_bin_type=True).pack
_unpackb = msgpack.unpackb
_KINDS = tuple(Kind)

# Arrays up to this size travel inside the body (one frame, one send); larger ones as their own
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


def encode(msg: Message, seq: int) -> list:
    """Frames for one message on a link with sequence number ``seq``."""
    try:
        if msg._body is not None:  # received and never read: body and arrays go on as they came
            received = msg._wire[1]
            return [PREFIX.pack(msg.kind, len(received), seq, msg.pts_ns) + msg._body, *received]
        arrays = msg._arrays
        if arrays is None:  # arrays never read: as they came
            desc, rest = msg._wire
            body = _packb((msg._caps, _session_field(msg), msg._data, desc, msg._trace))
            return [PREFIX.pack(msg.kind, len(rest), seq, msg.pts_ns) + body, *rest]
        if not arrays:
            return [PREFIX.pack(msg.kind, 0, seq, msg.pts_ns) + _packb((msg._caps, _session_field(msg), msg._data, (),
                                                                         msg._trace))]
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
        frames[0] = PREFIX.pack(msg.kind, len(frames) - 1, seq, msg.pts_ns) + _packb(
            (msg._caps, _session_field(msg), msg._data, desc, msg._trace))
        return frames
    except struct.error as exc:
        raise ValueError(f"a message's pts_ns must be an int64 and seq a uint64 "
                         f"(pts_ns={msg.pts_ns!r}, seq={seq!r}): {exc}") from None


def decode_prefix(head: Any) -> tuple[Kind, int, int, int]:
    """(kind, array frames that follow, seq, pts_ns) of frame 0; ValueError if it is not a prefix."""
    try:
        kind, n, seq, pts = PREFIX.unpack_from(head)
    except struct.error:
        raise MalformedMessage(f"malformed message: a frame 0 of {len(head)} bytes, under the "
                               f"{PREFIX.size}-byte prefix") from None
    if kind > 2:
        raise MalformedMessage(f"malformed message: unknown kind {kind}")
    return _KINDS[kind], n, seq, pts


def decode(frames: Sequence) -> Message:
    """Message from received frames (``bytes`` or ``zmq.Frame``), its body unpacked and checked;
    raises ValueError (MalformedMessage) if malformed."""
    head = _buf(frames[0])
    kind, n, seq, pts = decode_prefix(head)
    if n != len(frames) - 1:
        raise MalformedMessage(f"malformed message: the prefix announces {n} array frames, {len(frames) - 1} came")
    return Message.received(kind, seq, pts, bytes(head[PREFIX.size:]), [_buf(f) for f in frames[1:]]).open()


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


def is_large(frames: list) -> bool:
    """True when some array frame is big enough to be worth sending without a copy."""
    for f in frames[1:]:
        if _nbytes(f) >= ZERO_COPY_MIN:
            return True
    return False


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
