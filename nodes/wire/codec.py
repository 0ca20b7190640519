"""The ``avatar/packet`` wire format: small, loss-aware packets of quantized morph weights.

Pure encoding and decoding, no I/O; ``docs/wire-format.md`` is the byte-level spec that a
browser decoder implements too. In short: weights are quantized to ``bits`` (so a decoded
weight is within half a step of the input). A keyframe is a msgpack array carrying the session,
the names table and every value. A delta packet is a msgpack ``bin`` holding one bit stream: a
short header, then each value's difference from a *prediction* made from the reference frames
the decoder holds, in a fixed (spec-defined) Exp-Golomb code: values resting at zero and values
that did not move last frame are coded as sparse run-length lists, moving ones one by one.

With ``ref_interval=1`` (the default) every frame is a reference, so a delta is predicted from
the previous two frames (linear extrapolation, damped by 3/4): the smallest packets, and after a
lost packet the decoder waits for the next keyframe (ask for one). ``ref_interval=0`` codes
every delta from the last keyframe, so a lost delta damages nothing else (for a decoder with
``resume_after_loss``), at 2.5 to 3 times the size.

This module holds what both directions share (quantization, prediction, the bit codes, packet
parsing); ``encoder.py`` and ``decoder.py`` hold the two stateful ends.
"""
from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import msgpack
import numpy as np

from .limits import MAX_SESSION_ID

VERSION = 2
TABLE_ARKIT52 = 1  # names table id: the 52 ARKit blendshapes of graphs/mappings/arkit52.yaml
TABLE_SIZES = {TABLE_ARKIT52: 52}
POSE_COLUMNS = 9  # head yaw/pitch/roll, left eye yaw/pitch/roll, right eye yaw/pitch/roll
WEIGHT_RANGE = (0.0, 1.0)
POSE_RANGE = (-math.pi, math.pi)
SEQ_MOD = 1 << 16
MAX_COLUMNS = 4096
MAX_SLOTS = 1 << 16
MAX_KEYFRAME_INTERVAL = 1 << 15
MAX_PTS_STEP = 1 << 31  # a delta's pts residual (ms) stays below this; else the encoder sends a keyframe
MAX_EG_ZEROS = 40  # longest Exp-Golomb prefix a decoder accepts

# the fixed code of a value section (docs/wire-format.md, "Delta packet")
FLOOR, QUIET, MOVING = 0, 1, 2  # column classes, known to both ends from the reference frames
RUN_K = (1, 0)  # Exp-Golomb k of zero-run lengths in the FLOOR and QUIET lists
LIST_VALUE_K = 1  # Exp-Golomb k of a listed (nonzero) residual: zigzag(r) - 1
MOVING_K_OFFSET = 2  # a MOVING column's k is max(0, bit_length(|last motion|) - 2)
WIDE_K_OFFSET = 4  # ... or, in a wide packet (far reference), max(0, bits - 4)
SMALL = 3  # with k = 0 a MOVING value z < 3 is written in 2 bits, else as 0b11 and Exp-Golomb(z - 3)

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


# --- prediction (shared by both ends) --------------------------------------------------------
def predict(ref: np.ndarray, prev: np.ndarray | None, bits: int,
            wide: np.ndarray | bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(prediction, class, k)`` per column from the reference and (when motion applies) the one before.

    ``motion = ref - prev`` (0 without ``prev``); prediction ``clip(ref + floor((3 * motion + 2) / 4),
    0, 2**bits - 1)``. Class FLOOR where the prediction is 0; else, in a *wide* packet, MOVING with
    ``k = max(0, bits - 4)``; else QUIET where motion is 0, MOVING with
    ``k = max(0, bit_length(|motion|) - 2)`` elsewhere. Works on any leading shape (``wide``
    broadcasts against it).
    """
    motion = np.zeros_like(ref) if prev is None else ref - prev
    pred = np.clip(ref + (3 * motion + 2) // 4, 0, (1 << bits) - 1)
    cls = np.where(pred == 0, FLOOR, np.where(wide | (motion != 0), MOVING, QUIET))
    tables = _code_tables(bits)
    if tables is not None:  # k by table lookup: one take instead of six array operations
        k_of_motion = tables[0].take(motion + ((1 << bits) - 1))
    else:
        k_of_motion = np.maximum(_bit_length(np.abs(motion)) - MOVING_K_OFFSET, 0)
    k = np.where(wide, max(0, bits - WIDE_K_OFFSET), k_of_motion) if wide is not False else k_of_motion
    return pred, cls, k


_TABLE_MAX_BITS = 12  # code tables up to this precision (12 bits: 12 x 8191 entries)


@functools.lru_cache(maxsize=None)
def _code_tables(bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """For ``bits`` of precision: k by motion + 2**bits - 1, and a MOVING column's code (value,
    width) by k * (2**(bits+1) - 1) + residual + 2**bits - 1. The encoder's hot path looks codes
    up instead of computing them; the tables are computed by the same functions (None: too big)."""
    if bits > _TABLE_MAX_BITS:
        return None
    top = (1 << bits) - 1
    span = np.arange(-top, top + 1, dtype=np.int64)  # every motion and every residual
    k_of_motion = np.maximum(_bit_length(np.abs(span)) - MOVING_K_OFFSET, 0)
    ks = np.arange(bits, dtype=np.int64)  # k < bits: at most bits - 2 from motion, bits - 4 in a wide packet
    z = np.broadcast_to(_zigzag(span)[None, :], (ks.size, span.size))
    value, width = _moving_code(z, np.broadcast_to(ks[:, None], z.shape))
    return k_of_motion, np.ascontiguousarray(value).ravel(), np.ascontiguousarray(width).ravel()


def _bit_length(x: np.ndarray) -> np.ndarray:
    """Bits needed for each non-negative integer (< 2**52): 0 -> 0, 1 -> 1, 2..3 -> 2 ..."""
    return np.frexp(np.asarray(x, dtype=np.float64))[1].astype(np.int64)


def _zigzag(r: np.ndarray) -> np.ndarray:
    return np.where(r >= 0, 2 * r, -2 * r - 1)


def _unzigzag(z: int) -> int:
    return z >> 1 if z % 2 == 0 else -((z + 1) >> 1)


# --- bit level ------------------------------------------------------------------------------
def _eg(v: np.ndarray, k: np.ndarray | int) -> tuple[np.ndarray, np.ndarray]:
    """Exp-Golomb order k of v >= 0 as one bit field (value, width): n zeros, then v + 2**k in n + k + 1 bits."""
    x = np.asarray(v, dtype=np.int64) + (np.int64(1) << k)
    return x, 2 * _bit_length(x) - 1 - k


def _pack_rows(widths: np.ndarray, values: np.ndarray) -> list[bytes]:
    """Row i: its (value, width) bit fields MSB-first, zero-padded to a whole byte.

    Widths are at most 64 bits. The rows are laid end to end (each from a byte boundary) in one
    array of 64-bit words: each field is added to the word it starts in and, if it crosses a word
    boundary, to the next; fields never overlap, so adding is or-ing.
    """
    rows = widths.shape[0]
    widths = np.asarray(widths, dtype=np.int64)
    row_bits = widths.sum(axis=1)
    row_bytes = (row_bits + 7) // 8
    cuts = np.zeros(rows + 1, dtype=np.int64)
    np.cumsum(row_bytes, out=cuts[1:])
    ends = np.cumsum(widths, axis=1)
    ends += (8 * cuts[:-1])[:, None]  # each field's end, in bits from the start of row 0
    keep = widths > 0
    w, e = widths[keep], ends[keep]
    v = np.asarray(values)[keep].astype(np.uint64)
    total = int(cuts[-1])
    words = np.zeros((total + 7) // 8 + 1, dtype=np.uint64)
    if w.size:
        a = (e - w) >> 6  # the word each field starts in
        limit = (a + 1) << 6  # the end of that word
        cross = e > limit
        shift = np.where(cross, 0, limit - e).astype(np.uint64)
        head = np.where(cross, v >> (np.maximum(e - limit, 0)).astype(np.uint64), v << shift)
        np.add.at(words, a, head)
        if cross.any():
            rest = (e - limit)[cross].astype(np.uint64)
            tail = (v[cross] & ((np.uint64(1) << rest) - np.uint64(1))) << (np.uint64(64) - rest)
            np.add.at(words, a[cross] + 1, tail)
    flat = words.byteswap().tobytes()
    bounds = cuts.tolist()
    return [flat[bounds[i]:bounds[i + 1]] for i in range(rows)]


def _bin_headers(nbytes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The msgpack ``bin`` header of a body of n bytes, as one bit field (value, width) per row."""
    n = nbytes.astype(np.int64)
    value = np.where(n < 256, (0xC4 << 8) | n, np.where(n < 65536, (0xC5 << 16) | n, (0xC6 << 32) | n))
    return value, np.where(n < 256, 16, np.where(n < 65536, 24, 40))


class BitReader:
    """Reads a byte string MSB-first; every way to run off its end is a ValueError.

    The stream is held as one Python int, which is fast for packet-sized streams; the decoder
    bounds a delta's size by its column count before reading it (``max_delta_bytes``).
    """

    def __init__(self, data: bytes):
        self.size = len(data) * 8
        self.x = int.from_bytes(data, "big")
        self.pos = 0

    def read(self, width: int) -> int:
        end = self.pos + width
        if end > self.size:
            raise ValueError("bit stream is cut short")
        self.pos = end
        return (self.x >> (self.size - end)) & ((1 << width) - 1)

    def eg(self, k: int) -> int:
        """One Exp-Golomb code of order k: n zero bits, then n + k + 1 bits holding the value + 2**k."""
        rest = self.x & ((1 << (self.size - self.pos)) - 1)
        zeros = self.size - self.pos - rest.bit_length()
        if rest == 0 or zeros > MAX_EG_ZEROS:
            raise ValueError("bit stream: Exp-Golomb code cut short or too long")
        self.pos += zeros
        return self.read(zeros + k + 1) - (1 << k)

    def finish(self) -> None:
        """The stream must end here, padded with zero bits to the end of its byte."""
        if self.size - self.pos >= 8:
            raise ValueError(f"bit stream: {(self.size - self.pos) // 8} byte(s) after the end")
        if self.x & ((1 << (self.size - self.pos)) - 1):
            raise ValueError("bit stream: padding bits must be zero")


def max_delta_bytes(columns: int) -> int:
    """No delta for this many value columns (weights + pose) is longer: 8 bytes a column, 32 for the header."""
    return 8 * columns + 32


# --- value sections -------------------------------------------------------------------------
class Fields(NamedTuple):
    """Bit fields of many rows, in any order, each at its place: ``end`` bits after its section's
    start in row ``row``. Dense fields (a row of fields per row) have 2-D arrays, and ``row`` None
    (all rows) or one index per row. A field of width 0 has value 0. Values are below 2**width (uint64)."""

    row: np.ndarray | None
    end: np.ndarray
    width: np.ndarray
    value: np.ndarray

    def rows(self, keep: np.ndarray, new_index: np.ndarray | None = None) -> "Fields":
        """The fields of the rows where ``keep`` (a mask by row), the rows renamed by ``new_index``."""
        if self.row is None:
            kept = np.flatnonzero(keep)
            return Fields(kept if new_index is None else new_index[kept], self.end[kept], self.width[kept],
                          self.value[kept])  # still one row of fields per row: row is the row index
        m = keep[self.row]
        row = self.row[m]
        return Fields(row if new_index is None else new_index[row], self.end[m], self.width[m], self.value[m])


def section_fields(r: np.ndarray, cls: np.ndarray, k: np.ndarray, bits: int | None = None) -> tuple[np.ndarray, list[Fields]]:
    """The bits coding residuals ``r`` (S, M) of the given classes: per row its length, and the fields.

    Columns go in class order (FLOOR, QUIET, MOVING), column order within a class. Each list class
    is a flag (any nonzero?) then, per nonzero, the zero run before it and its value, then the
    zero run to the list's end if it is not empty; a MOVING column is its zigzag value alone.
    Nonzeros in lists are few, so lists are worked out on them alone; moving columns densely.
    """
    s, m = r.shape
    moving = cls == MOVING
    tables = None if bits is None else _code_tables(bits)
    if tables is not None:  # ``bits``: residuals are within +-(2**bits - 1), codes come from the table
        top = (1 << bits) - 1
        at = k * (2 * top + 1)
        at += r
        at += top
        mv_v, mv_w = tables[1].take(at), tables[2].take(at)
    else:
        mv_v, mv_w = _moving_code(_zigzag(r), k)
    all_moving = bool(moving.all())
    parts: list[Fields] = []
    start = np.zeros(s, dtype=np.int64)  # where the next block starts, per row
    if not all_moving:
        mv_w = mv_w * moving
        mv_v = mv_v * moving
        for c in (FLOOR, QUIET):
            members = cls == c
            size = members.sum(axis=1)
            has = size > 0
            if not has.any():
                continue
            entries = members & (r != 0)
            er, ec = np.nonzero(entries)  # row-major: by row, then list order
            flag_rows = np.flatnonzero(has)
            any_nz = np.zeros(s, dtype=bool)
            any_nz[er] = True
            parts.append(Fields(flag_rows, start[flag_rows] + 1, np.ones(flag_rows.size, dtype=np.int64),
                                any_nz[flag_rows].astype(np.uint64)))
            bits = has.astype(np.int64)
            if er.size:
                pos = (np.cumsum(members, axis=1) - 1)[er, ec]  # index in the list
                same = np.zeros(er.size, dtype=bool)
                same[1:] = er[1:] == er[:-1]
                prev = np.where(same, np.concatenate([[-1], pos[:-1]]), -1)
                run_v, run_w = _eg(pos - prev - 1, RUN_K[c])
                val_v, val_w = _eg(_zigzag(r[er, ec]) - 1, LIST_VALUE_K)
                width = run_w + val_w
                value = (run_v.astype(np.uint64) << val_w.astype(np.uint64)) | val_v.astype(np.uint64)
                cum = np.cumsum(width)
                first = np.flatnonzero(~same)
                group = np.cumsum(~same) - 1
                within = cum - (cum[first] - width[first])[group]
                parts.append(Fields(er, start[er] + 1 + within, width, value))
                sums = np.zeros(s, dtype=np.int64)
                sums[er[first]] = np.add.reduceat(width, first)
                bits += sums
                last = np.append(first[1:], er.size) - 1  # each row's last nonzero
                tail = size[er[last]] - 1 - pos[last]  # the zero run after it, to the list's end
                t = last[tail > 0]
                if t.size:
                    tr = er[t]
                    tv, tw = _eg(tail[tail > 0], RUN_K[c])
                    parts.append(Fields(tr, start[tr] + bits[tr] + tw, tw, tv.astype(np.uint64)))
                    bits[tr] += tw
            start = start + bits
    mv_end = np.cumsum(mv_w, axis=1)
    mv_end += start[:, None]
    parts.append(Fields(None, mv_end, mv_w, mv_v.astype(np.uint64)))
    return mv_end[:, -1], parts


def _place(sections: list[tuple[list[Fields], np.ndarray]], row_bits: np.ndarray) -> list[bytes]:
    """Each row's fields at their places, MSB-first, the row zero-padded to a whole byte.

    ``sections``: fields, and where their section starts in each row (bits). Widths are at most
    64 bits. The rows are laid end to end (each from a byte boundary) in one array of 64-bit words:
    each field is added to the word it starts in and, if it crosses a word boundary, to the next;
    fields never overlap, so adding is or-ing.
    """
    row_bytes = (row_bits + 7) // 8
    cuts = np.zeros(len(row_bits) + 1, dtype=np.int64)
    np.cumsum(row_bytes, out=cuts[1:])
    words = np.zeros((int(cuts[-1]) + 7) // 8 + 1, dtype=np.uint64)
    u = np.uint64
    for parts, origin in sections:
        base = 8 * cuts[:-1] + origin  # each row's section start, in bits from the start of row 0
        for f in parts:
            if f.end.ndim == 2:  # one row of fields per row (of all rows, or of rows ``row``)
                e = (f.end + (base if f.row is None else base[f.row])[:, None]).ravel()
                w, v = f.width.ravel(), f.value.ravel()
            else:
                e, w, v = f.end + base[f.row], f.width, f.value
            if not e.size:
                continue
            a = (e - w) >> 6  # the word each field starts in
            room = ((a + 1) << 6) - e  # bits left in that word after the field (negative: it crosses)
            np.add.at(words, a, v << np.maximum(room, 0).astype(u))
            cross = np.flatnonzero(room < 0)
            if cross.size:
                over = (-room[cross]).astype(u)
                vc = v[cross]
                words[a[cross]] += (vc >> over) - (vc << u(0))  # undo the unshifted add, add the high part
                np.add.at(words, a[cross] + 1, (vc & ((u(1) << over) - u(1))) << (u(64) - over))
    flat = words.byteswap().tobytes()
    bounds = cuts.tolist()
    return [flat[bounds[i]:bounds[i + 1]] for i in range(len(row_bits))]


def _moving_code(z: np.ndarray, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A MOVING column's code of zigzag value z: Exp-Golomb k, except that with k = 0 a z below
    SMALL is written in 2 bits and a larger one as the bits 11 then Exp-Golomb 0 of z - SMALL."""
    eg_v, eg_w = _eg(z, k)
    esc_v, esc_w = _eg(np.maximum(z - SMALL, 0), 0)
    small = (k == 0) & (z < SMALL)
    escaped = (k == 0) & (z >= SMALL)
    value = np.where(small, z, np.where(escaped, (np.int64(3) << esc_w) | esc_v, eg_v))
    return value, np.where(small, 2, np.where(escaped, 2 + esc_w, eg_w))


def read_values(br: BitReader, ref: list[int], prev: list[int] | None, bits: int, wide: bool) -> list[int]:
    """Decode one value section from ``br``: the spec's procedure, column by column in plain Python.

    Mirrors ``predict`` and ``section_fields``; raises ValueError for a malformed stream or a value
    outside 0..2**bits-1.
    """
    top = (1 << bits) - 1
    q: list[int] = []
    lists: tuple[list[int], list[int]] = ([], [])  # FLOOR, QUIET columns
    moving: list[tuple[int, int]] = []  # (column, k)
    wide_k = max(0, bits - WIDE_K_OFFSET)
    for i, r in enumerate(ref):
        m = 0 if prev is None else r - prev[i]
        p = min(max(r + (3 * m + 2) // 4, 0), top)
        q.append(p)
        if p == 0:
            lists[FLOOR].append(i)
        elif wide:
            moving.append((i, wide_k))
        elif m == 0:
            lists[QUIET].append(i)
        else:
            moving.append((i, max(0, abs(m).bit_length() - MOVING_K_OFFSET)))
    for c in (FLOOR, QUIET):
        cols = lists[c]
        n = len(cols)
        if not n or not br.read(1):
            continue
        pos = 0
        while True:
            pos += br.eg(RUN_K[c])
            if pos > n:
                raise ValueError("value section: a zero run goes past the end of its list")
            if pos == n:
                break
            q[cols[pos]] += _unzigzag(br.eg(LIST_VALUE_K) + 1)
            pos += 1
            if pos == n:
                break
    for col, k in moving:
        if k:
            z = br.eg(k)
        else:
            z = br.read(2)
            if z == SMALL:
                z += br.eg(0)
        q[col] += _unzigzag(z)
    if q and (min(q) < 0 or max(q) > top):
        raise ValueError(f"value section: a decoded value is outside 0..{top}")
    return q


# --- packets (msgpack level) ----------------------------------------------------------------
class Packet(NamedTuple):
    """A packet's header, checked; a delta's values are read by ``Decoder`` (they need its references)."""

    keyframe: bool
    sid: int
    seq: int
    ref: bool  # the decoder keeps this frame as its reference (always for keyframes)
    back: int  # keyframe: 0; delta: seq - back (mod 2**16) is the reference's seq
    pts: int  # ms; keyframe: absolute; delta: the coded residual (see Decoder)
    session: str | None  # keyframes only
    names: Names | None  # keyframes only
    bits: int  # keyframes only (0 in deltas: the keyframe's)
    pose_bits: int  # keyframes only; 0: no pose
    body: Any  # keyframe: the values bin; delta: a BitReader positioned after the header


def parse_packet(data: bytes) -> Packet:
    """Check a packet's structure; raises ValueError (and nothing else) saying what is wrong."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ValueError(f"a packet is bytes, got {type(data).__name__}")
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several types; the caller gets one
        raise ValueError(f"packet is not msgpack: {exc}") from None
    if isinstance(obj, bytes):
        br = BitReader(obj)
        sid = br.eg(0)
        if sid >= MAX_SLOTS:
            raise ValueError(f"sid {sid} is above {MAX_SLOTS - 1}")
        seq, link = br.read(16), br.eg(0)
        back, ref = (link >> 1) + 1, not link & 1
        if back >= SEQ_MOD:
            raise ValueError(f"back {back} is above {SEQ_MOD - 1}")
        pts = _unzigzag(br.eg(0))
        return Packet(False, sid, seq, ref, back, pts, None, None, 0, 0, br)
    if not isinstance(obj, list):
        raise ValueError("a packet is a msgpack array (keyframe) or bin (delta)")
    if len(obj) != 9:
        raise ValueError(f"a keyframe is an array of 9 elements, got {len(obj)}")
    if not _is_int(obj[0]) or obj[0] != VERSION:
        raise ValueError(f"unsupported wire format version {obj[0]!r} (this decoder reads {VERSION})")
    sid, seq = _int(obj[1], "sid", 0, MAX_SLOTS - 1), _int(obj[2], "seq", 0, SEQ_MOD - 1)
    pts = _int(obj[3], "pts", -(1 << 63), (1 << 63) - 1)
    if not isinstance(obj[4], str) or len(obj[4]) > MAX_SESSION_ID:
        raise ValueError(f"session must be a string of at most {MAX_SESSION_ID} characters")
    names = _names(obj[5])
    bits, pose_bits = _int(obj[6], "bits", 1, 16), _int(obj[7], "pose_bits", 0, 16)
    if not isinstance(obj[8], bytes):
        raise ValueError(f"values must be msgpack bin, got {type(obj[8]).__name__}")
    return Packet(True, sid, seq, True, 0, pts, obj[4], names, bits, pose_bits, obj[8])


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _int(x: Any, what: str, lo: int, hi: int) -> int:
    if not _is_int(x) or not lo <= x <= hi:
        raise ValueError(f"{what} must be an integer in {lo}..{hi}, got {x!r}")
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


def keyframe_values(q: np.ndarray, bits: int, qp: np.ndarray | None, pose_bits: int) -> list[bytes]:
    """Keyframes' values bins, one per row: every weight in ``bits`` bits, then every pose value in ``pose_bits``."""
    widths = np.full(q.shape, bits)
    if qp is not None:
        widths, q = np.hstack([widths, np.full(qp.shape, pose_bits)]), np.hstack([q, qp])
    return _pack_rows(widths, q.astype(np.int64))


def read_keyframe_values(data: bytes, m: int, bits: int, pose_bits: int) -> tuple[np.ndarray, np.ndarray | None]:
    size = m * bits + POSE_COLUMNS * pose_bits
    if len(data) != (size + 7) // 8:
        raise ValueError(f"keyframe values: {len(data)} bytes, {m} weights of {bits} bits"
                         + (f" and pose of {pose_bits}" if pose_bits else "") + f" need {(size + 7) // 8}")
    stream = np.unpackbits(np.frombuffer(data, dtype=np.uint8))
    if stream[size:].any():
        raise ValueError("keyframe values: padding bits must be zero")

    def uints(start: int, count: int, width: int) -> np.ndarray:
        chunk = stream[start:start + count * width].reshape(count, width).astype(np.int64)
        return chunk @ (np.int64(1) << np.arange(width - 1, -1, -1, dtype=np.int64))

    q = uints(0, m, bits)
    return q, (uints(m * bits, POSE_COLUMNS, pose_bits) if pose_bits else None)
