"""The ``avatar/packet`` wire format: small, loss-aware packets of quantized morph weights.

Pure encoding and decoding, no I/O; ``docs/wire-format.md`` is the byte-level spec that a
browser decoder implements too. In short: weights are quantized to ``bits`` (so a decoded
weight is within half a step of the input), each packet is a msgpack array, and a packet's
values are Rice-coded differences, in quantized units, from a *reference* frame the decoder
holds. Keyframes are self-contained and always references. By default only keyframes are
references, so losing a delta packet never damages the packets after it; ``ref_interval``
makes every n-th frame a reference too (n=1: deltas from the previous frame, the smallest
packets, but a lost packet then stops decoding until the next keyframe).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, NamedTuple, Sequence

import msgpack
import numpy as np

VERSION = 1
FLAG_KEY = 1  # self-contained frame (always also a reference)
FLAG_REF = 2  # the decoder keeps this frame as the reference for the deltas that follow
TABLE_ARKIT52 = 1  # names table id: the 52 ARKit blendshapes of graphs/mappings/arkit52.yaml
TABLE_SIZES = {TABLE_ARKIT52: 52}
POSE_COLUMNS = 9  # head yaw/pitch/roll, left eye yaw/pitch/roll, right eye yaw/pitch/roll
WEIGHT_RANGE = (0.0, 1.0)
POSE_RANGE = (-math.pi, math.pi)
ESCAPE = 8  # a unary quotient of 8 means "value stored verbatim in the escape section"
SEQ_MOD = 1 << 16
MAX_COLUMNS = 4096
MAX_SLOTS = 1 << 16
MAX_KEYFRAME_INTERVAL = 1 << 15

Names = int | tuple[str, ...]


# --- quantization --------------------------------------------------------------------------
def quantize(x: np.ndarray, bits: int, lo: float, hi: float) -> np.ndarray:
    """Integer steps 0..2**bits-1 over [lo, hi]; values outside are clipped, NaN counts as 0."""
    levels = (1 << bits) - 1
    x = np.nan_to_num(np.asarray(x, dtype=np.float64), nan=min(max(0.0, lo), hi), posinf=hi, neginf=lo)
    return np.rint((np.clip(x, lo, hi) - lo) * (levels / (hi - lo))).astype(np.int64)


def dequantize(q: np.ndarray, bits: int, lo: float, hi: float) -> np.ndarray:
    return (lo + np.asarray(q, dtype=np.float64) * ((hi - lo) / ((1 << bits) - 1))).astype(np.float32)


def step(bits: int, lo: float, hi: float) -> float:
    """One quantization step; a round trip is within half of it."""
    return (hi - lo) / ((1 << bits) - 1)


# --- value blocks (bit level) ---------------------------------------------------------------
def encode_blocks(deltas: np.ndarray, bits: int) -> list[bytes]:
    """One block per row of ``deltas`` (S, M) in quantized units; vectorised over the batch.

    Block: a byte ``(bits-1) << 4 | k``, a changed-column bitmap, then for the changed columns a
    unary section (quotients), a remainder section (k bits each) and an escape section.
    """
    d = np.asarray(deltas, dtype=np.int64)
    rows, m = d.shape
    nz = d != 0
    v = np.where(nz, np.where(d > 0, 2 * d, -2 * d - 1) - 1, 0)  # zigzag - 1: >= 0
    ks = np.arange(min(bits, 15) + 1)
    quo = v[:, :, None] >> ks
    cost = np.where(quo >= ESCAPE, ESCAPE + 1 + bits + 1, quo + 1 + ks)
    k = (cost * nz[:, :, None]).sum(axis=1).argmin(axis=1)  # best Rice parameter per row
    kk = k[:, None]
    q = v >> kk
    esc = nz & (q >= ESCAPE)
    plain = nz & ~esc
    zeros = np.zeros((rows, 1), dtype=np.int64)
    widths = [np.full((rows, 1), 8), np.ones((rows, m), dtype=np.int64), zeros + (-m) % 8,
              np.where(nz, np.minimum(q, ESCAPE) + 1, 0), np.where(plain, kk, 0), np.where(esc, bits + 1, 0)]
    values = [((bits - 1) << 4 | k)[:, None], nz.astype(np.int64), zeros,
              np.ones((rows, m), dtype=np.int64), v & ((1 << kk) - 1), v]
    body = sum(w.sum(axis=1) for w in widths)
    widths.append(((-body) % 8)[:, None])
    values.append(zeros)
    w = np.hstack(widths)
    nbytes = w.sum(axis=1) // 8
    flat = _pack_fields(w.ravel(), np.hstack(values).ravel())
    ends = np.cumsum(nbytes).tolist()
    return [flat[a:b] for a, b in zip([0] + ends[:-1], ends)]


def _pack_fields(widths: np.ndarray, values: np.ndarray) -> bytes:
    """Concatenate (value, width) bit fields MSB-first and pack them into bytes."""
    keep = widths > 0
    widths, values = widths[keep], values[keep]
    if widths.size == 0:
        return b""
    ends = np.cumsum(widths)
    field = np.repeat(np.arange(widths.size), widths)
    shift = ends[field] - 1 - np.arange(ends[-1])
    return np.packbits(((values[field] >> shift) & 1).astype(np.uint8)).tobytes()


def decode_block(block: bytes, m: int) -> tuple[int, np.ndarray]:
    """``(bits, deltas)`` of one block for ``m`` columns; ValueError if it is malformed."""
    nb = (m + 7) // 8
    if len(block) < 1 + nb:
        raise ValueError(f"value block of {len(block)} bytes is shorter than its header and bitmap ({1 + nb})")
    raw = np.frombuffer(block, dtype=np.uint8)
    bits, k = (int(raw[0]) >> 4) + 1, int(raw[0]) & 15
    if k > bits:
        raise ValueError(f"value block: Rice parameter {k} exceeds the precision ({bits} bits)")
    bitmap = np.unpackbits(raw[1:1 + nb])
    if bitmap[m:].any():
        raise ValueError("value block: bitmap padding bits must be zero")
    idx = np.flatnonzero(bitmap[:m])
    n = idx.size
    stream = np.unpackbits(raw[1 + nb:])
    deltas = np.zeros(m, dtype=np.int64)
    if n == 0:
        if stream.size:
            raise ValueError("value block: bytes after an empty bitmap")
        return bits, deltas
    ones = np.flatnonzero(stream[:n * (ESCAPE + 1)])
    if ones.size < n:
        raise ValueError("value block: unary section is cut short")
    ends = ones[:n]
    u = np.diff(ends, prepend=-1) - 1
    if u.max() > ESCAPE:
        raise ValueError("value block: unary quotient longer than the escape code")
    esc = u == ESCAPE
    n_esc = int(esc.sum())
    pos = int(ends[-1]) + 1
    used = pos + (n - n_esc) * k + n_esc * (bits + 1)
    if (used + 7) // 8 != stream.size // 8:
        raise ValueError(f"value block: {stream.size // 8 + 1 + nb} bytes, its contents need {(used + 7) // 8 + 1 + nb}")
    if stream[used:].any():
        raise ValueError("value block: padding bits must be zero")
    v = np.empty(n, dtype=np.int64)
    v[~esc] = (u[~esc] << k) | _read_uints(stream, pos, n - n_esc, k)
    v[esc] = _read_uints(stream, pos + (n - n_esc) * k, n_esc, bits + 1)
    z = v + 1
    deltas[idx] = np.where(z & 1, -((z + 1) >> 1), z >> 1)
    return bits, deltas


def _read_uints(stream: np.ndarray, pos: int, count: int, width: int) -> np.ndarray:
    if count == 0 or width == 0:
        return np.zeros(count, dtype=np.int64)
    chunk = stream[pos:pos + count * width].reshape(count, width).astype(np.int64)
    return chunk @ (np.int64(1) << np.arange(width - 1, -1, -1, dtype=np.int64))


# --- packets (msgpack level) ----------------------------------------------------------------
class Packet(NamedTuple):
    """A parsed, structurally valid packet; its value blocks are decoded by ``Decoder``."""

    flags: int
    sid: int
    seq: int
    back: int  # keyframe: 0; delta: seq - back (mod 2**16) is the reference's seq
    pts: int  # milliseconds; keyframe: absolute, delta: since the reference
    weights: bytes
    pose: bytes | None
    session: str | None  # keyframes only
    names: Names | None  # keyframes only

    @property
    def keyframe(self) -> bool:
        return bool(self.flags & FLAG_KEY)


def parse_packet(data: bytes) -> Packet:
    """Check a packet's structure; raises ValueError (and nothing else) saying what is wrong."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ValueError(f"a packet is bytes, got {type(data).__name__}")
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several types; the caller gets one
        raise ValueError(f"packet is not msgpack: {exc}") from None
    if not isinstance(obj, list) or not 7 <= len(obj) <= 10:
        raise ValueError("a packet is a msgpack array of 7 to 10 elements")
    if not _is_int(obj[0]) or obj[0] != VERSION:
        raise ValueError(f"unsupported wire format version {obj[0]!r} (this decoder reads {VERSION})")
    flags = _int(obj[1], "flags", 0, 3)
    if flags == FLAG_KEY:
        raise ValueError("flags: a keyframe must also carry the REF flag")
    sid, seq = _int(obj[2], "sid", 0, MAX_SLOTS - 1), _int(obj[3], "seq", 0, SEQ_MOD - 1)
    back, pts = _int(obj[4], "back", 0, SEQ_MOD - 1), _int(obj[5], "pts", -(1 << 63), (1 << 63) - 1)
    weights = _bin(obj[6], "weights")
    if flags & FLAG_KEY:
        if len(obj) != 10:
            raise ValueError(f"a keyframe has 10 elements, got {len(obj)}")
        if back != 0:
            raise ValueError("back must be 0 in a keyframe")
        pose = None if obj[7] is None else _bin(obj[7], "pose")
        if not isinstance(obj[8], str) or len(obj[8]) > 1024:
            raise ValueError("session must be a string of at most 1024 characters")
        return Packet(flags, sid, seq, back, pts, weights, pose, obj[8], _names(obj[9]))
    if len(obj) > 8:
        raise ValueError(f"a delta packet has 7 or 8 elements, got {len(obj)}")
    if back == 0:
        raise ValueError("back must be at least 1 in a delta packet")
    pose = _bin(obj[7], "pose") if len(obj) == 8 else None
    return Packet(flags, sid, seq, back, pts, weights, pose, None, None)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _int(x: Any, what: str, lo: int, hi: int) -> int:
    if not _is_int(x) or not lo <= x <= hi:
        raise ValueError(f"{what} must be an integer in {lo}..{hi}, got {x!r}")
    return x


def _bin(x: Any, what: str) -> bytes:
    if not isinstance(x, bytes):
        raise ValueError(f"{what} must be msgpack bin, got {type(x).__name__}")
    return x


def _names(x: Any) -> Names:
    if _is_int(x):
        if x not in TABLE_SIZES:
            raise ValueError(f"unknown names table id {x} (known: {sorted(TABLE_SIZES)})")
        return x
    if not isinstance(x, list) or not 1 <= len(x) <= MAX_COLUMNS or not all(isinstance(n, str) for n in x):
        raise ValueError(f"names must be a table id or an array of 1..{MAX_COLUMNS} strings")
    return tuple(x)


def names_size(names: Names) -> int:
    return TABLE_SIZES[names] if isinstance(names, int) else len(names)


# --- encoder --------------------------------------------------------------------------------
class Encoder:
    """Encodes batches of sessions into packets; per-session state lives in slot-indexed arrays."""

    def __init__(self, bits: int = 8, pose_bits: int = 12, keyframe_interval: int = 60, ref_interval: int = 0):
        self.bits, self.pose_bits = 8, 12
        self.keyframe_interval, self.ref_interval = 60, 0
        self._slots: dict[str, int] = {}
        self._free: list[int] = []
        self._owner: list[str | None] = []
        self._names: Names | None = None
        self._m = 0
        self._alloc(0)
        self.counts = {"packets": 0, "keyframes": 0, "bytes": 0}
        self._pack = msgpack.Packer(use_bin_type=True).pack
        self.configure(bits=bits, pose_bits=pose_bits, keyframe_interval=keyframe_interval, ref_interval=ref_interval)

    def configure(self, **settings: int) -> None:
        """Change settings live; a precision change makes every session's next frame a keyframe."""
        limits = {"bits": (1, 16), "pose_bits": (1, 16), "keyframe_interval": (1, MAX_KEYFRAME_INTERVAL),
                  "ref_interval": (0, MAX_KEYFRAME_INTERVAL)}
        for name, value in settings.items():
            lo, hi = limits[name]
            _int(value, name, lo, hi)
        if any(settings.get(b, getattr(self, b)) != getattr(self, b) for b in ("bits", "pose_bits")):
            self.request_keyframe()
        for name, value in settings.items():
            setattr(self, name, value)

    def request_keyframe(self, sessions: Iterable[str] | None = None) -> None:
        """Next frame of these sessions (all if None) is a keyframe: a new viewer, or a decoder saw loss."""
        if sessions is None:
            self._force[:] = True
            return
        for s in sessions:
            slot = self._slots.get(s)
            if slot is not None:
                self._force[slot] = True

    @property
    def sessions(self) -> list[str]:
        return list(self._slots)

    def expire(self, now_ns: int, idle_ns: int) -> list[str]:
        """Give back the slots of sessions not seen for ``idle_ns``; returns their ids."""
        live = np.flatnonzero(self._live & (self._seen_ns < now_ns - idle_ns))
        gone = [self._owner[i] for i in live.tolist()]
        for slot, s in zip(live.tolist(), gone):
            del self._slots[s]
            self._owner[slot] = None
            self._free.append(slot)
        self._live[live] = False
        return gone

    def encode(self, sessions: Sequence[str], weights: np.ndarray, pts_ns: int, names: Names | Sequence[str],
               pose: np.ndarray | None = None) -> list[bytes]:
        """One packet per session row; raises ValueError for a malformed batch."""
        w = np.asarray(weights)
        if w.ndim != 2 or w.shape[0] != len(sessions):
            raise ValueError(f"weights must be (S, M) with S = {len(sessions)} sessions, got shape {w.shape}")
        names = _names(names if isinstance(names, int) else list(names))  # what a decoder would accept
        if any(not isinstance(s, str) or len(s) > 1024 for s in sessions):
            raise ValueError("session ids must be strings of at most 1024 characters")
        if names_size(names) != w.shape[1]:
            raise ValueError(f"{w.shape[1]} weight columns, but the names table has {names_size(names)}")
        if pose is not None and np.shape(pose) != (len(sessions), POSE_COLUMNS):
            raise ValueError(f"pose must be (S, {POSE_COLUMNS}), got shape {np.shape(pose)}")
        if len(set(sessions)) != len(sessions):
            raise ValueError("a session appears twice in one batch")
        if names != self._names:
            self._set_columns(names, w.shape[1])
        slots = np.array([self._slot_for(s) for s in sessions], dtype=np.int64)
        self._seen_ns[slots] = pts_ns
        has_pose = pose is not None
        q = quantize(w, self.bits, *WEIGHT_RANGE)
        since = self._since_key[slots] + 1
        key = self._force[slots] | (since >= self.keyframe_interval) | (self._has_pose[slots] != has_pose)
        since[key] = 0
        ref = key | ((since % self.ref_interval == 0) if self.ref_interval else False)
        seq = self._seq[slots]
        pts_ms = int(pts_ns) // 1_000_000
        back = np.where(key, 0, (seq - self._ref_seq[slots]) % SEQ_MOD)
        pts = np.where(key, pts_ms, pts_ms - self._ref_pts[slots])
        wblocks = encode_blocks(q - np.where(key[:, None], 0, self._ref_q[slots]), self.bits)
        pblocks: list = [None] * len(slots)
        if has_pose:
            qp = quantize(pose, self.pose_bits, *POSE_RANGE)
            pblocks = encode_blocks(qp - np.where(key[:, None], 0, self._ref_pose[slots]), self.pose_bits)
            self._ref_pose[slots[ref]] = qp[ref]
        self._ref_q[slots[ref]] = q[ref]
        self._ref_seq[slots[ref]] = seq[ref]
        self._ref_pts[slots[ref]] = pts_ms
        self._has_pose[slots[key]] = has_pose
        self._since_key[slots] = since
        self._seq[slots] = (seq + 1) % SEQ_MOD
        self._force[slots] = False
        wire_names = names if isinstance(names, int) else list(names)
        out = []
        for i, (slot, s, b, t, k, r) in enumerate(zip(slots.tolist(), seq.tolist(), back.tolist(), pts.tolist(),
                                                        key.tolist(), ref.tolist())):
            if k:
                fields = [VERSION, FLAG_KEY | FLAG_REF, slot, s, 0, t, wblocks[i], pblocks[i], sessions[i], wire_names]
            else:
                fields = [VERSION, FLAG_REF if r else 0, slot, s, b, t, wblocks[i]] + ([pblocks[i]] if has_pose else [])
            out.append(self._pack(fields))
        self.counts["packets"] += len(out)
        self.counts["keyframes"] += int(key.sum())
        self.counts["bytes"] += sum(map(len, out))
        return out

    def _alloc(self, n: int) -> None:
        """(Re)size the slot arrays to ``n`` slots, keeping what they hold."""
        def grow(a: np.ndarray | None, fill: Any, dtype: Any, cols: int | None = None) -> np.ndarray:
            shape = (n,) if cols is None else (n, cols)
            out = np.full(shape, fill, dtype=dtype)
            if a is not None:
                out[:len(a)] = a
            return out

        g = lambda name: getattr(self, name, None)  # noqa: E731
        self._live = grow(g("_live"), False, bool)
        self._force = grow(g("_force"), True, bool)
        self._has_pose = grow(g("_has_pose"), False, bool)
        self._since_key = grow(g("_since_key"), 0, np.int64)
        self._seq = grow(g("_seq"), 0, np.int64)
        self._ref_seq = grow(g("_ref_seq"), 0, np.int64)
        self._ref_pts = grow(g("_ref_pts"), 0, np.int64)
        self._seen_ns = grow(g("_seen_ns"), 0, np.int64)
        self._ref_q = grow(g("_ref_q"), 0, np.int64, self._m)
        self._ref_pose = grow(g("_ref_pose"), 0, np.int64, POSE_COLUMNS)
        self._owner += [None] * (n - len(self._owner))

    def _set_columns(self, names: Names, m: int) -> None:
        """A new names table: every session starts again from a keyframe."""
        self._names, self._m = names, m
        self._ref_q = np.zeros((len(self._live), m), dtype=np.int64)
        self._force[:] = True

    def _slot_for(self, session: str) -> int:
        slot = self._slots.get(session)
        if slot is not None:
            return slot
        if self._free:
            slot = self._free.pop()
        else:
            slot = len(self._live)
            if slot >= MAX_SLOTS:
                raise ValueError(f"more than {MAX_SLOTS} live sessions")
            self._alloc(max(16, 2 * slot))
            self._free.extend(range(len(self._live) - 1, slot, -1))
        self._slots[session] = slot
        self._owner[slot] = session
        self._live[slot] = True
        self._force[slot] = True  # seq goes on from the slot's last session, so old deltas never match
        return slot


# --- decoder --------------------------------------------------------------------------------
@dataclass
class Frame:
    """One decoded packet."""

    sid: int
    seq: int
    session: str
    keyframe: bool
    pts_ms: int
    names: Names
    weights: np.ndarray  # float32 (M,)
    pose: np.ndarray | None  # float32 (9,)
    bits: int


class Decoder:
    """Decodes packets of any number of sessions, refusing deltas it cannot apply exactly.

    After a gap in a session's packet seq it refuses deltas until the next keyframe and lists
    the session in ``waiting`` (the sender should be asked for a keyframe). With
    ``resume_after_loss`` it keeps applying deltas whose reference it still holds, which is
    exact: a delta names its reference by seq, and references are never overwritten silently.
    """

    def __init__(self, resume_after_loss: bool = False):
        self.resume_after_loss = resume_after_loss
        self.counts = {"packets": 0, "keyframes": 0, "decoded": 0, "gaps": 0, "lost": 0, "refused": 0,
                       "late": 0, "malformed": 0}
        self.last_loss = 0  # packets found missing by the latest decode call
        self.status = ""  # outcome of the latest decode call: decoded, refused, late or malformed
        self._slots: dict[int, int] = {}
        self._n = 0
        self._m = np.zeros(0, dtype=np.int64)
        self._last_seq = np.zeros(0, dtype=np.int64)
        self._ref_seq = np.zeros(0, dtype=np.int64)
        self._ref_pts = np.zeros(0, dtype=np.int64)
        self._has_ref = np.zeros(0, dtype=bool)
        self._waiting = np.zeros(0, dtype=bool)
        self._seen_ns = np.zeros(0, dtype=np.int64)
        self._bits = np.zeros((0, 2), dtype=np.int64)  # weights, pose (0: no pose)
        self._ref_q = np.zeros((0, 0), dtype=np.int64)
        self._ref_pose = np.zeros((0, POSE_COLUMNS), dtype=np.int64)
        self._names: list[Names | None] = []
        self._session: list[str | None] = []

    @property
    def waiting(self) -> list[tuple[int, str | None]]:
        """(sid, session) of every stream that needs a keyframe before it can decode again."""
        return [(sid, self._session[s]) for sid, s in self._slots.items() if self._waiting[s]]

    def decode(self, packet: bytes, now_ns: int = 0) -> Frame | None:
        """The frame a packet carries, or None if it cannot be applied (loss, late); ValueError if malformed."""
        self.counts["packets"] += 1
        self.last_loss = 0
        self.status = "malformed"
        try:
            p = parse_packet(packet)
            slot = self._slot_for(p.sid)
            frame = self._decode(p, slot, now_ns)
        except ValueError:
            self.counts["malformed"] += 1
            raise
        self.status = "decoded" if frame is not None else self.status
        return frame

    def forget_idle(self, now_ns: int, idle_ns: int) -> int:
        """Drop the state of streams not seen for ``idle_ns``; returns how many."""
        old = [sid for sid, s in self._slots.items() if self._seen_ns[s] < now_ns - idle_ns]
        for sid in old:
            slot = self._slots.pop(sid)
            self._has_ref[slot] = self._waiting[slot] = False
            self._last_seq[slot] = -2  # free
            self._names[slot] = self._session[slot] = None
        return len(old)

    def _decode(self, p: Packet, slot: int, now_ns: int) -> Frame | None:
        last = int(self._last_seq[slot])
        lost = 0
        if last >= 0:
            lost = (p.seq - last - 1) % SEQ_MOD
            if lost >= SEQ_MOD // 2:  # behind the newest packet: a duplicate or reordered one
                self.counts["late"] += 1
                self.status = "late"
                return None
        if p.keyframe:
            m = names_size(p.names)
            bits, q = self._values(p.weights, m, None, 0, "weights", *WEIGHT_RANGE)
            pose_bits, qp = (0, None) if p.pose is None else self._values(p.pose, POSE_COLUMNS, None, 0, "pose", *POSE_RANGE)
            if m > self._ref_q.shape[1]:
                self._ref_q = np.hstack([self._ref_q, np.zeros((self._n, m - self._ref_q.shape[1]), dtype=np.int64)])
            self._ref_q[slot, :m] = q
            if qp is not None:
                self._ref_pose[slot] = qp
            self._m[slot], self._bits[slot] = m, (bits, pose_bits)
            self._names[slot], self._session[slot] = p.names, p.session
            self._has_ref[slot], self._waiting[slot] = True, False
            self._ref_seq[slot], self._ref_pts[slot] = p.seq, p.pts
            self._seen(slot, p.seq, lost, now_ns)
            self.counts["keyframes"] += 1
            self.counts["decoded"] += 1
            return self._frame(slot, p, p.pts, q, qp)
        if lost and not self.resume_after_loss:
            self._waiting[slot] = True
        if (self._waiting[slot] or not self._has_ref[slot]
                or (p.seq - p.back) % SEQ_MOD != self._ref_seq[slot]):
            self._waiting[slot] = True
            self._seen(slot, p.seq, lost, now_ns)
            self.counts["refused"] += 1
            self.status = "refused"
            return None
        m = int(self._m[slot])
        bits, pose_bits = self._bits[slot].tolist()
        if (p.pose is None) != (pose_bits == 0):
            raise ValueError("a delta must carry a pose block exactly when its keyframe did")
        _, q = self._values(p.weights, m, self._ref_q[slot, :m], bits, "weights", *WEIGHT_RANGE)
        qp = None if p.pose is None else self._values(p.pose, POSE_COLUMNS, self._ref_pose[slot], pose_bits,
                                                     "pose", *POSE_RANGE)[1]
        pts = int(self._ref_pts[slot]) + p.pts
        if p.flags & FLAG_REF:
            self._ref_q[slot, :m] = q
            if qp is not None:
                self._ref_pose[slot] = qp
            self._ref_seq[slot], self._ref_pts[slot] = p.seq, pts
        self._seen(slot, p.seq, lost, now_ns)
        self.counts["decoded"] += 1
        return self._frame(slot, p, pts, q, qp)

    def _values(self, block: bytes, m: int, ref: np.ndarray | None, want_bits: int, what: str,
                lo: float, hi: float) -> tuple[int, np.ndarray]:
        bits, d = decode_block(block, m)
        if want_bits and bits != want_bits:
            raise ValueError(f"{what}: {bits}-bit delta on a {want_bits}-bit reference")
        q = d if ref is None else ref + d
        if q.size and (q.min() < 0 or q.max() > (1 << bits) - 1):
            raise ValueError(f"{what}: decoded value outside 0..{(1 << bits) - 1}")
        return bits, q

    def _frame(self, slot: int, p: Packet, pts: int, q: np.ndarray, qp: np.ndarray | None) -> Frame:
        bits, pose_bits = self._bits[slot].tolist()
        pose = None if qp is None else dequantize(qp, pose_bits, *POSE_RANGE)
        return Frame(p.sid, p.seq, self._session[slot] or "", p.keyframe, pts, self._names[slot],
                     dequantize(q, bits, *WEIGHT_RANGE), pose, bits)

    def _seen(self, slot: int, seq: int, lost: int, now_ns: int) -> None:
        self._last_seq[slot] = seq
        self._seen_ns[slot] = now_ns
        if lost:
            self.last_loss = lost
            self.counts["gaps"] += 1
            self.counts["lost"] += lost

    def _slot_for(self, sid: int) -> int:
        slot = self._slots.get(sid)
        if slot is not None:
            return slot
        free = np.flatnonzero(self._last_seq == -2)
        if free.size:
            slot = int(free[0])
        else:
            slot = self._n
            self._grow(max(16, 2 * self._n))
        self._slots[sid] = slot
        self._last_seq[slot] = -1
        self._has_ref[slot] = self._waiting[slot] = False
        return slot

    def _grow(self, n: int) -> None:
        def grow(a: np.ndarray, fill: Any) -> np.ndarray:
            out = np.full((n,) + a.shape[1:], fill, dtype=a.dtype)
            out[:len(a)] = a
            return out

        self._m, self._ref_seq, self._ref_pts = grow(self._m, 0), grow(self._ref_seq, 0), grow(self._ref_pts, 0)
        self._last_seq, self._seen_ns = grow(self._last_seq, -2), grow(self._seen_ns, 0)
        self._has_ref, self._waiting = grow(self._has_ref, False), grow(self._waiting, False)
        self._bits, self._ref_q, self._ref_pose = grow(self._bits, 0), grow(self._ref_q, 0), grow(self._ref_pose, 0)
        self._names += [None] * (n - self._n)
        self._session += [None] * (n - self._n)
        self._n = n
