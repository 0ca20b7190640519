"""The encoding end of the ``avatar/packet`` codec: per-session state, keyframes and delta packets.

One ``encode_batch`` call codes a batch of S sessions; the format is ``docs/wire-format.md``, the
shared pieces are in ``codec.py``. The per-row work runs in C (``_encoder.pyx``) when that
extension is built, else in the numpy code here, vectorised over rows, which stays the reference:
both write the same bytes and leave the same state (``tests/test_wire_compiled_encoder.py``).
"""
from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any, Iterable, NamedTuple, Sequence

import msgpack
import numpy as np

from .codec import (
    MAX_KEYFRAME_INTERVAL,
    MAX_PTS_STEP,
    MAX_SLOTS,
    POSE_COLUMNS,
    POSE_RANGE,
    SEQ_MOD,
    VERSION,
    WEIGHT_RANGE,
    Fields,
    Names,
    _bin_headers,
    _eg,
    _int,
    _names,
    _place,
    _zigzag,
    keyframe_values,
    names_size,
    predict,
    quantize,
    section_fields,
)
from .limits import MAX_SESSION_ID

_INT64 = (-(1 << 63), (1 << 63) - 1)


def _core(compiled: bool | None) -> ModuleType | None:
    """The compiled core for ``Encoder(compiled=...)``: None asks ``nodes.compiled`` (built, and not
    ``AVATAR_PURE_PYTHON``), True requires it (ImportError if not built), False never uses it."""
    if compiled is False:
        return None
    if compiled is True:
        return importlib.import_module("nodes.wire._encoder")
    from nodes.compiled import load
    return load("nodes.wire._encoder")


class Encoded(NamedTuple):
    """One encoded batch: a packet per session row, and what each is."""

    packets: list[bytes]
    keyframe: np.ndarray  # bool (S,): the row's packet is a keyframe
    seq: np.ndarray  # int64 (S,): the row's wire seq (0 .. SEQ_MOD - 1)


class Encoder:
    """Encodes batches of sessions into packets; per-session state lives in slot-indexed arrays.

    ``compiled``: run the C core (True: required), the numpy reference (False), or whichever is
    available (None); the packets and the state are the same either way.
    """

    def __init__(self, bits: int = 8, pose_bits: int = 12, keyframe_interval: int = 60, ref_interval: int = 1,
                 compiled: bool | None = None, sid_base: int = 0):
        self._core = _core(compiled)
        # the sid a packet carries is its session's slot plus this: encoders whose streams one viewer
        # may switch between (nodes.wire.layered) give theirs apart, so one decoder takes them all
        self.sid_base = _int(sid_base, "sid_base", 0, MAX_SLOTS - 1)
        self._names_packed: bytes | None = None  # the names table as msgpack, for the compiled keyframes
        self.bits, self.pose_bits = 8, 12
        self.keyframe_interval, self.ref_interval = 60, 1
        self._slots: dict[str, int] = {}
        self._free: list[int] = []
        self._owner: list[str | None] = []
        self._names: Names | None = None
        self._m = 0
        self._last_batch: tuple[tuple, np.ndarray] | None = None  # the last batch's sessions and their slots
        self._alloc(0)
        self.counts = {"packets": 0, "keyframes": 0, "bytes": 0}
        self._pack = msgpack.Packer(use_bin_type=True).pack
        self.configure(bits=bits, pose_bits=pose_bits, keyframe_interval=keyframe_interval, ref_interval=ref_interval)

    @property
    def compiled(self) -> bool:
        """True when batches run through the compiled core."""
        return self._core is not None

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

    def last_keyframe(self, session: str) -> tuple[int, int] | None:
        """(wire seq of the session's last keyframe, frames coded since it), or None when its next
        frame is a keyframe anyway (a session not coded yet, or one asked for already)."""
        slot = self._slots.get(session)
        if slot is None or self._force[slot]:
            return None
        since = int(self._since_key[slot])
        return (int(self._seq[slot]) - 1 - since) % SEQ_MOD, since

    @property
    def sessions(self) -> list[str]:
        return list(self._slots)

    def expire(self, now_ns: int, idle_ns: int) -> list[str]:
        """Give back the slots of sessions not seen for ``idle_ns``; returns their ids."""
        live = np.flatnonzero(self._live & (self._seen_ns < now_ns - idle_ns))
        gone = [self._owner[i] for i in live.tolist()]
        if gone:
            self._last_batch = None
        for slot, s in zip(live.tolist(), gone):
            del self._slots[s]
            self._owner[slot] = None
            self._free.append(slot)
        self._live[live] = False
        return gone

    def encode(self, sessions: Sequence[str], weights: np.ndarray, pts_ns: int, names: Names | Sequence[str],
               pose: np.ndarray | None = None) -> list[bytes]:
        """One packet per session row; raises ValueError for a malformed batch."""
        return self.encode_batch(sessions, weights, pts_ns, names, pose).packets

    def encode_batch(self, sessions: Sequence[str], weights: np.ndarray, pts_ns: int, names: Names | Sequence[str],
                     pose: np.ndarray | None = None) -> "Encoded":
        """``encode``, plus each row's keyframe flag and wire ``seq``, so nobody downstream has to
        read them back out of the bytes."""
        w = np.asarray(weights)
        if w.ndim != 2 or w.shape[0] != len(sessions):
            raise ValueError(f"weights must be (S, M) with S = {len(sessions)} sessions, got shape {w.shape}")
        names = _names(names if isinstance(names, int) else list(names))  # what a decoder would accept
        if names_size(names) != w.shape[1]:
            raise ValueError(f"{w.shape[1]} weight columns, but the names table has {names_size(names)}")
        if pose is not None and np.shape(pose) != (len(sessions), POSE_COLUMNS):
            raise ValueError(f"pose must be (S, {POSE_COLUMNS}), got shape {np.shape(pose)}")
        batch = tuple(sessions)
        if self._last_batch is not None and self._last_batch[0] == batch:  # the same sessions as last time
            slots = self._last_batch[1]
        else:
            slots = self._slots_of(batch)
            self._last_batch = (batch, slots)
        if names != self._names:
            self._set_columns(names, w.shape[1])
        self._seen_ns[slots] = pts_ns
        if self._core is not None:
            pts_ms = int(pts_ns) // 1_000_000
            if _INT64[0] <= pts_ms <= _INT64[1]:  # else the reference raises as it does
                return self._encode_compiled(batch, slots, w, pts_ms, names, pose)
        return self._encode_reference(sessions, slots, w, pts_ns, names, pose)

    def _slots_of(self, batch: tuple) -> np.ndarray:
        """The batch's slots, new sessions given one in row order; ValueError for a malformed batch."""
        if self._core is None:
            if any(not isinstance(s, str) or len(s) > MAX_SESSION_ID for s in batch):
                raise ValueError(f"session ids must be strings of at most {MAX_SESSION_ID} characters")
            if len(set(batch)) != len(batch):
                raise ValueError("a session appears twice in one batch")
            return np.array([self._slot_for(s) for s in batch], dtype=np.int64)
        slots = np.empty(len(batch), dtype=np.int64)
        new = self._core.lookup_slots(batch, self._slots, MAX_SESSION_ID, len(self._live), slots)
        if new == -1:
            raise ValueError(f"session ids must be strings of at most {MAX_SESSION_ID} characters")
        if new == -2:
            raise ValueError("a session appears twice in one batch")
        if new:  # ``_slot_for`` for each new session in row order, the arrays set at once
            rows = np.flatnonzero(slots < 0)
            taken: list[int] = []
            free, table, owner = self._free, self._slots, self._owner  # lists grown in place by _alloc
            try:
                for i in rows.tolist():
                    slot = free.pop() if free else self._take_slot()
                    session = batch[i]
                    table[session] = slot
                    owner[slot] = session
                    taken.append(slot)
            finally:
                slots[rows[:len(taken)]] = taken
                self._live[taken] = True
                self._force[taken] = True  # seq goes on from the slot's last session, so old deltas never match
        return slots

    def _encode_compiled(self, batch: tuple, slots: np.ndarray, w: np.ndarray, pts_ms: int, names: Names,
                         pose: np.ndarray | None) -> "Encoded":
        """``_encode_reference`` in C: the same packets, counts and state."""
        if w.dtype == np.float32:
            w32, w64 = np.ascontiguousarray(w), None
        else:
            w32, w64 = None, np.ascontiguousarray(w, dtype=np.float64)
        pose64 = None if pose is None else np.ascontiguousarray(pose, dtype=np.float64)
        n = len(slots)
        key, seq = np.zeros(n, dtype=bool), np.empty(n, dtype=np.int64)
        u8 = np.uint8
        lo, hi = WEIGHT_RANGE
        plo, phi = POSE_RANGE
        packets, n_key, n_bytes, self._names_packed = self._core.encode_rows(
            slots, w64, w32, pose64, pts_ms, self.bits, self.pose_bits,
            lo, hi, min(max(0.0, lo), hi), ((1 << self.bits) - 1) / (hi - lo),
            plo, phi, min(max(0.0, plo), phi), ((1 << self.pose_bits) - 1) / (phi - plo),
            self.keyframe_interval, self.ref_interval,
            self._force.view(u8), self._has_pose.view(u8), self._has_prev.view(u8),
            self._since_key, self._seq, self._ref_seq, self._prev_seq, self._ref_pts, self._prev_pts,
            self._ref_q, self._prev_q, self._ref_pose, self._prev_pose,
            batch, self._names_packed, lambda: self._pack(names if isinstance(names, int) else list(names)),
            key.view(u8), seq, self.sid_base)
        self.counts["packets"] += n
        self.counts["keyframes"] += n_key
        self.counts["bytes"] += n_bytes
        return Encoded(packets, key, seq)

    def _encode_reference(self, sessions: Sequence[str], slots: np.ndarray, w: np.ndarray, pts_ns: int,
                          names: Names, pose: np.ndarray | None) -> "Encoded":
        """The rows' packets, vectorised in numpy: the reference the compiled core must match."""
        has_pose = pose is not None
        q = quantize(w, self.bits, *WEIGHT_RANGE)
        qp = quantize(pose, self.pose_bits, *POSE_RANGE) if has_pose else None
        pts_ms = int(pts_ns) // 1_000_000
        seq = self._seq[slots]
        back = (seq - self._ref_seq[slots]) % SEQ_MOD
        motion = self._has_prev[slots] & (back == 1) & ((self._ref_seq[slots] - self._prev_seq[slots]) % SEQ_MOD == 1)
        expect = np.where(motion, self._ref_pts[slots] - self._prev_pts[slots], 0)
        pts_res = pts_ms - self._ref_pts[slots] - expect
        since = self._since_key[slots] + 1
        key = (self._force[slots] | (since >= self.keyframe_interval) | (self._has_pose[slots] != has_pose)
               | (np.abs(pts_res) >= MAX_PTS_STEP) | (back == 0))
        since[key] = 0
        ref = key | ((since % self.ref_interval == 0) if self.ref_interval else False)
        out: list[bytes | None] = [None] * len(slots)
        wire_names = names if isinstance(names, int) else list(names)
        k = np.flatnonzero(key)
        if k.size:
            bodies = keyframe_values(q[k], self.bits, None if qp is None else qp[k], self.pose_bits)
            for i, body in zip(k.tolist(), bodies):
                out[i] = self._pack([VERSION, int(slots[i]) + self.sid_base, int(seq[i]), pts_ms, sessions[i], wire_names, self.bits,
                                     self.pose_bits if has_pose else 0, body])
        d = np.flatnonzero(~key)
        if d.size == len(slots):  # no keyframe: every row a delta, in order
            out = self._deltas(slots, seq, ref, back, pts_res, motion, q, qp)
        elif d.size:
            for i, packet in zip(d.tolist(), self._deltas(slots[d], seq[d], ref[d], back[d], pts_res[d], motion[d],
                                                          q[d], None if qp is None else qp[d])):
                out[i] = packet
        r = slots[ref]
        self._prev_q[r], self._ref_q[r] = self._ref_q[r], q[ref]
        self._prev_seq[r], self._ref_seq[r] = self._ref_seq[r], seq[ref]
        self._prev_pts[r], self._ref_pts[r] = self._ref_pts[r], pts_ms
        if has_pose:
            self._prev_pose[r], self._ref_pose[r] = self._ref_pose[r], qp[ref]
        self._has_prev[r] = ~key[ref]
        self._has_pose[slots[key]] = has_pose
        self._since_key[slots] = since
        self._seq[slots] = (seq + 1) % SEQ_MOD
        self._force[slots] = False
        self.counts["packets"] += len(out)
        self.counts["keyframes"] += int(key.sum())
        self.counts["bytes"] += sum(map(len, out))
        return Encoded(out, key, seq.astype(np.int64))  # type: ignore[arg-type]

    def _deltas(self, slots: np.ndarray, seq: np.ndarray, ref: np.ndarray, back: np.ndarray, pts_res: np.ndarray,
                motion: np.ndarray, q: np.ndarray, qp: np.ndarray | None) -> list[bytes]:
        """These delta rows' packets: each a msgpack bin holding the row's bit stream."""
        n = slots.size
        link = 2 * (back - 1) + (~ref).astype(np.int64)
        pts_v, pts_w = _eg(_zigzag(pts_res), 0)  # up to 65 bits: split in two fields of at most 32
        header = [_eg(slots + self.sid_base, 0), (seq, np.full(n, 16)), _eg(link, 0),
                  (pts_v >> 32, np.maximum(pts_w - 32, 0)), (pts_v & 0xFFFFFFFF, np.minimum(pts_w, 32))]
        sections = [(q, self._ref_q[slots], self._prev_q[slots], self.bits)]
        if qp is not None:
            sections.append((qp, self._ref_pose[slots], self._prev_pose[slots], self.pose_bits))

        def fields(rows: np.ndarray | None, wide: bool) -> tuple[np.ndarray, list[Fields]]:
            """Bits per row and fields (from the value sections' start) of these rows (None: all)."""
            parts: list[Fields] = []
            total = None
            for now, refq, prevq, bits in sections:
                if rows is not None:
                    now, refq, prevq, moving = now[rows], refq[rows], prevq[rows], motion[rows]
                else:
                    moving = motion
                prev = prevq if moving.all() else np.where(moving[:, None], prevq, refq)
                pred, cls, k = predict(refq, prev, bits, wide)
                size, f = section_fields(now - pred, cls, k, bits)
                if total is not None:
                    f = [x._replace(end=x.end + total[:, None] if x.end.ndim == 2 else x.end + total[x.row]) for x in f]
                parts += f
                total = size if total is None else total + size
            return total, parts

        bits, body = fields(None, False)
        still = np.flatnonzero(~motion)  # no motion: the encoder may send the wide variant, if smaller
        wide = np.zeros(n, dtype=bool)
        if still.size:
            wbits, wbody = fields(still, True)
            smaller = wbits < bits[still]
            if smaller.any():
                wide[still[smaller]] = True
                bits[still[smaller]] = wbits[smaller]
                body = [f.rows(~wide) for f in body] + [f.rows(smaller, still) for f in wbody]
        header.append((wide.astype(np.int64), np.where(motion, 0, 1)))  # the W bit, only without motion
        head_bits = sum(h[1] for h in header)
        header.insert(0, _bin_headers((bits + head_bits + 7) // 8))  # the msgpack bin around the stream
        hw = np.stack([h[1] for h in header], axis=1)
        hv = np.stack([h[0] for h in header], axis=1)
        head_bits = hw.sum(axis=1)
        head = Fields(None, np.cumsum(hw, axis=1), hw, hv.astype(np.uint64))
        return _place([([head], np.zeros(n, dtype=np.int64)), (body, head_bits)], head_bits + bits)

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
        self._has_prev = grow(g("_has_prev"), False, bool)
        for name in ("_since_key", "_seq", "_ref_seq", "_prev_seq", "_ref_pts", "_prev_pts", "_seen_ns"):
            setattr(self, name, grow(g(name), 0, np.int64))
        self._ref_q = grow(g("_ref_q"), 0, np.int64, self._m)
        self._prev_q = grow(g("_prev_q"), 0, np.int64, self._m)
        self._ref_pose = grow(g("_ref_pose"), 0, np.int64, POSE_COLUMNS)
        self._prev_pose = grow(g("_prev_pose"), 0, np.int64, POSE_COLUMNS)
        self._owner += [None] * (n - len(self._owner))

    def _set_columns(self, names: Names, m: int) -> None:
        """A new names table: every session starts again from a keyframe."""
        self._names, self._m = names, m
        self._names_packed = None
        self._ref_q = np.zeros((len(self._live), m), dtype=np.int64)
        self._prev_q = np.zeros((len(self._live), m), dtype=np.int64)
        self._force[:] = True

    def _slot_for(self, session: str) -> int:
        slot = self._slots.get(session)
        if slot is not None:
            return slot
        slot = self._take_slot()
        self._slots[session] = slot
        self._owner[slot] = session
        self._live[slot] = True
        self._force[slot] = True  # seq goes on from the slot's last session, so old deltas never match
        return slot

    def _take_slot(self) -> int:
        """A free slot (the last one given back first), growing the arrays when there is none."""
        if self._free:
            return self._free.pop()
        slot = len(self._live)
        if slot + self.sid_base >= MAX_SLOTS:
            raise ValueError(f"more than {MAX_SLOTS - self.sid_base} live sessions")
        self._alloc(max(16, 2 * slot))
        self._free.extend(range(len(self._live) - 1, slot, -1))
        return slot
