"""The decoding end of the ``avatar/packet`` codec: per-session reference frames, loss detection.

What ``web/js/wireformat.js`` does in the browser; the format is ``docs/wire-format.md``.
``Decoder`` here is the reference; when the compiled core (``nodes/wire/_decoder.pyx``) is built,
``Decoder()`` returns a ``CompiledDecoder``, the same decoder in C (identical frames, statuses,
counts and errors, asserted by ``tests/test_wire_compiled_decoder.py``); ``Decoder(compiled=False)``
is always the reference. ``decode_batch`` decodes a whole ``avatar/packet`` message into one
array per frame shape, the decompressor's work without an array per packet.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, NamedTuple, Sequence

import numpy as np

from ..compiled import load
from .codec import (
    POSE_COLUMNS,
    POSE_RANGE,
    SEQ_MOD,
    WEIGHT_RANGE,
    BitReader,
    Names,
    Packet,
    dequantize,
    max_delta_bytes,
    names_size,
    parse_packet,
    read_keyframe_values,
    read_values,
)

# a packet's outcome in ``Batch.status``; ``Decoder.status`` says the same in words
DECODED, REFUSED, LATE, MALFORMED = 0, 1, 2, 3


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


class Group(NamedTuple):
    """The decoded rows of a batch that share a frame shape (names, pose or not), in packet order."""

    names: Names
    rows: np.ndarray  # intp (n,): the rows' indices in the batch
    weights: np.ndarray  # float32 (n, M)
    pose: np.ndarray | None  # float32 (n, 9), or None: these frames have no pose


class Batch(NamedTuple):
    """What ``decode_batch`` made of a batch of packets."""

    status: np.ndarray  # uint8 (S,): DECODED, REFUSED, LATE or MALFORMED per packet
    losses: dict[int, int]  # row -> packets found missing by it (``last_loss`` of that packet)
    errors: dict[int, str]  # row -> why its packet is malformed (the ValueError's text)
    groups: list[Group]  # by first appearance


@dataclass
class _Stream:
    """What a decoder holds for one sid: the latest reference frame and the one before it."""

    last_seq: int = -1
    waiting: bool = False
    seen_ns: int = 0
    session: str | None = None
    names: Names | None = None
    bits: int = 0
    pose_bits: int = 0
    ref_seq: int = -1  # -1: no reference
    ref_pts: int = 0
    ref_q: list[int] = field(default_factory=list)  # quantized values
    ref_pose: list[int] | None = None
    prev_seq: int = -1  # -1: no previous reference
    prev_pts: int = 0
    prev_q: list[int] = field(default_factory=list)
    prev_pose: list[int] | None = None


class Decoder:
    """Decodes packets of any number of sessions, refusing deltas it cannot apply exactly.

    After a gap in a session's packet seq it refuses deltas until the next keyframe and lists
    the session in ``waiting`` (the sender should be asked for a keyframe). With
    ``resume_after_loss`` it keeps applying deltas whose reference it still holds, which is
    exact: a delta names its reference by seq, and references are never overwritten silently.
    """

    def __new__(cls, resume_after_loss: bool = False, compiled: bool | None = None) -> "Decoder":
        """``compiled``: None uses the compiled core when it is built, True requires it, False
        is the reference."""
        if cls is Decoder and _core(compiled) is not None:
            return super().__new__(CompiledDecoder)
        return super().__new__(cls)

    def __getnewargs__(self) -> tuple[bool, bool]:
        """A copy (pickle, deepcopy) of the reference stays the reference."""
        return self.resume_after_loss, False

    def __init__(self, resume_after_loss: bool = False, compiled: bool | None = None):
        self.resume_after_loss = resume_after_loss
        self.counts = {"packets": 0, "keyframes": 0, "decoded": 0, "gaps": 0, "lost": 0, "refused": 0,
                       "late": 0, "malformed": 0}
        self.last_loss = 0  # packets found missing by the latest decode call
        self.status = ""  # outcome of the latest decode call: decoded, refused, late or malformed
        self._streams: dict[int, _Stream] = {}

    @property
    def waiting(self) -> list[tuple[int, str | None]]:
        """(sid, session) of every stream that needs a keyframe before it can decode again."""
        return [(sid, st.session) for sid, st in self._streams.items() if st.waiting]

    def decode(self, packet: bytes, now_ns: int = 0) -> Frame | None:
        """The frame a packet carries, or None if it cannot be applied (loss, late); ValueError if malformed."""
        self.counts["packets"] += 1
        self.last_loss = 0
        self.status = "malformed"
        try:
            p = parse_packet(packet)
            frame = self._decode(p, self._streams.get(p.sid) or _Stream(), now_ns)
        except ValueError:
            self.counts["malformed"] += 1
            raise
        self.status = "decoded" if frame is not None else self.status
        return frame

    def decode_batch(self, packets: Sequence[Any], now_ns: int = 0) -> Batch:
        """Every packet decoded in order, as ``decode`` would, the frames stacked by shape: one
        weights array per names table for a message of many sessions, no Frame per packet."""
        status = np.empty(len(packets), dtype=np.uint8)
        losses: dict[int, int] = {}
        errors: dict[int, str] = {}
        groups: dict[tuple[Names, bool], tuple[list[int], list[Frame]]] = {}
        for i, packet in enumerate(packets):
            try:
                frame = self.decode(packet, now_ns)
            except ValueError as exc:
                status[i], errors[i] = MALFORMED, str(exc)
                continue
            if self.last_loss:
                losses[i] = self.last_loss
            if frame is None:
                status[i] = REFUSED if self.status == "refused" else LATE
                continue
            status[i] = DECODED
            rows, frames = groups.setdefault((frame.names, frame.pose is not None), ([], []))
            rows.append(i)
            frames.append(frame)
        return Batch(status, losses, errors, [
            Group(names, np.array(rows, dtype=np.intp), np.stack([f.weights for f in frames]),
                  np.stack([f.pose for f in frames if f.pose is not None]) if pose else None)
            for (names, pose), (rows, frames) in groups.items()])

    def forget_idle(self, now_ns: int, idle_ns: int) -> int:
        """Drop the state of streams not seen for ``idle_ns``; returns how many."""
        old = [sid for sid, st in self._streams.items() if st.seen_ns < now_ns - idle_ns]
        for sid in old:
            del self._streams[sid]
        return len(old)

    def _decode(self, p: Packet, st: _Stream, now_ns: int) -> Frame | None:
        lost = 0
        if st.last_seq >= 0:
            lost = (p.seq - st.last_seq - 1) % SEQ_MOD
            if lost >= SEQ_MOD // 2:  # behind the newest packet: a duplicate or reordered one
                self.counts["late"] += 1
                self.status = "late"
                return None
        if p.keyframe:
            m = names_size(p.names)
            q, qp = read_keyframe_values(p.body, m, p.bits, p.pose_bits)
            q, qp = q.tolist(), None if qp is None else qp.tolist()
            st.session, st.names, st.bits, st.pose_bits, st.waiting = p.session, p.names, p.bits, p.pose_bits, False
            st.ref_seq, st.ref_pts, st.ref_q, st.ref_pose, st.prev_seq = p.seq, p.pts, q, qp, -1
            self._seen(p, st, lost, now_ns)
            self.counts["keyframes"] += 1
            return self._frame(p, st, p.pts, q, qp)
        if lost and not self.resume_after_loss:
            st.waiting = True
        if st.waiting or st.ref_seq < 0 or (p.seq - p.back) % SEQ_MOD != st.ref_seq:
            st.waiting = True
            self._seen(p, st, lost, now_ns, decoded=False)
            self.counts["refused"] += 1
            self.status = "refused"
            return None
        motion = p.back == 1 and st.prev_seq >= 0 and (st.ref_seq - st.prev_seq) % SEQ_MOD == 1
        pts = st.ref_pts + p.pts + (st.ref_pts - st.prev_pts if motion else 0)
        br: BitReader = p.body
        if br.size > 8 * max_delta_bytes(len(st.ref_q) + (POSE_COLUMNS if st.pose_bits else 0)):
            raise ValueError(f"a delta of {br.size // 8} bytes is longer than any for its {len(st.ref_q)} columns")
        wide = not motion and bool(br.read(1))
        q = read_values(br, st.ref_q, st.prev_q if motion else None, st.bits, wide)
        qp = None if not st.pose_bits else read_values(br, st.ref_pose, st.prev_pose if motion else None,
                                                       st.pose_bits, wide)
        br.finish()
        if p.ref:
            st.prev_seq, st.prev_pts, st.prev_q, st.prev_pose = st.ref_seq, st.ref_pts, st.ref_q, st.ref_pose
            st.ref_seq, st.ref_pts, st.ref_q, st.ref_pose = p.seq, pts, q, qp
        self._seen(p, st, lost, now_ns)
        return self._frame(p, st, pts, q, qp)

    def _frame(self, p: Packet, st: _Stream, pts: int, q: list[int], qp: list[int] | None) -> Frame:
        pose = None if qp is None else dequantize(qp, st.pose_bits, *POSE_RANGE)
        return Frame(p.sid, p.seq, st.session or "", p.keyframe, pts, st.names,  # type: ignore[arg-type]
                     dequantize(q, st.bits, *WEIGHT_RANGE), pose, st.bits)

    def _seen(self, p: Packet, st: _Stream, lost: int, now_ns: int, decoded: bool = True) -> None:
        """Commit: the stream is known from now on, its last seq is this packet's."""
        self._streams[p.sid] = st
        st.last_seq = p.seq
        st.seen_ns = now_ns
        if decoded:
            self.counts["decoded"] += 1
        if lost:
            self.last_loss = lost
            self.counts["gaps"] += 1
            self.counts["lost"] += lost


class CompiledDecoder(Decoder):
    """``Decoder`` with its work in C (``nodes/wire/_decoder.pyx``): what ``Decoder()`` returns
    when the extension is built. Same results; ``decode``, ``decode_batch`` and ``forget_idle``
    are the C core's own methods, so a call costs no Python frame."""

    def __init__(self, resume_after_loss: bool = False, compiled: bool | None = None):
        core = _core(True)
        assert core is not None  # _core(True) raises instead
        self._core = core.Core(resume_after_loss, Frame, Batch, Group)
        self.decode = self._core.decode  # type: ignore[method-assign]
        self.decode_batch = self._core.decode_batch  # type: ignore[method-assign]
        self.forget_idle = self._core.forget_idle  # type: ignore[method-assign]

    @property
    def resume_after_loss(self) -> bool:
        return self._core.resume_after_loss

    @resume_after_loss.setter
    def resume_after_loss(self, value: bool) -> None:
        self._core.resume_after_loss = bool(value)

    @property
    def counts(self) -> dict[str, int]:  # type: ignore[override]
        """The reference's counts (a fresh dict: the numbers live in C)."""
        return self._core.counts()

    @property
    def status(self) -> str:  # type: ignore[override]
        return self._core.status

    @property
    def last_loss(self) -> int:  # type: ignore[override]
        return self._core.last_loss

    @property
    def waiting(self) -> list[tuple[int, str | None]]:
        return self._core.waiting()

    @property
    def _streams(self) -> dict[int, _Stream]:  # type: ignore[override]
        """A snapshot of the streams as the reference holds them (tests compare the two)."""
        return self._core.snapshot(_Stream)


def _core(compiled: bool | None) -> ModuleType | None:
    """The compiled core to use: None for the reference (``compiled=False``, or not built)."""
    if compiled is False:
        return None
    module = load("nodes.wire._decoder")
    if module is None and compiled:
        raise ImportError("the compiled avatar/packet decoder (nodes.wire._decoder) is not available: "
                          "build it (make) and unset AVATAR_PURE_PYTHON")
    return module
