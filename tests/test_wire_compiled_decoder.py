"""The compiled avatar/packet decoder (nodes/wire/_decoder.pyx) against the pure-Python reference.

Identical frames, statuses, counts, waiting lists, stream states and ValueError texts, packet by
packet: over the recorded Live Link Face capture, hypothesis-generated streams (sessions joining
and leaving, keyframes, lost, reordered, duplicated and damaged packets, every precision, pose,
resume_after_loss), arbitrary and mutated bytes, and unusual but valid msgpack encodings; the same
batches from ``decode_batch``, and the same messages from the decompressor node.
"""
from __future__ import annotations

import copy
import struct

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nodes import wire as wf
from nodes.compiled import load
from nodes.livelink import SAMPLE_CAPTURE, parse_packet, read_container
from nodes.wire.decoder import Batch, CompiledDecoder, Frame
from runtime import Message
from runtime.testing import NodeHarness

pytestmark = pytest.mark.skipif(load("nodes.wire._decoder") is None,
                                reason="the compiled decoder is not built (make), or AVATAR_PURE_PYTHON is set")

T0 = 5_000_000_000_000
FRAME_NS = 16_666_667
fuzz = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# --- comparing the two --------------------------------------------------------------------------
def pair(resume: bool = False) -> tuple[wf.Decoder, wf.Decoder]:
    ref, comp = wf.Decoder(resume, compiled=False), wf.Decoder(resume, compiled=True)
    assert type(ref) is wf.Decoder and type(comp) is CompiledDecoder
    return ref, comp


def outcome(dec: wf.Decoder, packet: object, now_ns: int) -> tuple[str, object]:
    try:
        return "frame", dec.decode(packet, now_ns)
    except ValueError as exc:
        return "error", str(exc)


def same_frame(a: Frame | None, b: Frame | None) -> None:
    assert (a is None) == (b is None)
    if a is None or b is None:
        return
    for f in ("sid", "seq", "session", "keyframe", "pts_ms", "names", "bits"):
        x, y = getattr(a, f), getattr(b, f)
        assert x == y and type(x) is type(y), (f, x, y)
    for x, y in ((a.weights, b.weights), (a.pose, b.pose)):
        assert (x is None) == (y is None)
        if x is not None:
            assert x.dtype == y.dtype == np.float32 and x.shape == y.shape and x.tobytes() == y.tobytes()


def same_state(ref: wf.Decoder, comp: wf.Decoder) -> None:
    assert ref.status == comp.status and ref.last_loss == comp.last_loss
    assert ref.counts == comp.counts
    assert ref.waiting == comp.waiting
    assert ref._streams == comp._streams
    assert list(ref._streams) == list(comp._streams)  # the same order too


def step(ref: wf.Decoder, comp: wf.Decoder, packet: object, now_ns: int = 0, state: bool = True) -> tuple[str, object]:
    """Both decode the packet: the same frame or the same error, then the same state."""
    a, b = outcome(ref, packet, now_ns), outcome(comp, packet, now_ns)
    assert a[0] == b[0], (a, b)
    if a[0] == "error":
        assert a[1] == b[1]
    else:
        same_frame(a[1], b[1])  # type: ignore[arg-type]
    if state:
        same_state(ref, comp)
    return a


def same_batch(a: Batch, b: Batch) -> None:
    assert a.status.dtype == b.status.dtype == np.uint8 and a.status.tolist() == b.status.tolist()
    assert a.losses == b.losses and a.errors == b.errors
    assert len(a.groups) == len(b.groups)
    for x, y in zip(a.groups, b.groups):
        assert x.names == y.names and x.rows.tolist() == y.rows.tolist() and x.rows.dtype == y.rows.dtype
        for u, v in ((x.weights, y.weights), (x.pose, y.pose)):
            assert (u is None) == (v is None)
            if u is not None:
                assert u.dtype == v.dtype == np.float32 and u.shape == v.shape and u.tobytes() == v.tobytes()


def batches(packets: list[object], sizes: list[int]) -> list[list[object]]:
    out, i = [], 0
    for k in sizes * (len(packets) + 1):
        if i >= len(packets):
            break
        out.append(packets[i:i + k])
        i += k
    return out


# --- streams -------------------------------------------------------------------------------------
def capture() -> tuple[np.ndarray, np.ndarray]:
    frames = [parse_packet(p) for p in read_container(SAMPLE_CAPTURE)]
    weights = np.clip(np.array([f.weights for f in frames], dtype=np.float32), 0, 1)
    return weights, np.array([f.pose for f in frames], dtype=np.float32)


CAPTURE_W, CAPTURE_POSE = capture()


def motion(rng: np.random.Generator, frames: int, sessions: int, m: int) -> np.ndarray:
    """Weights (T, S, M): drift, holds, jumps, exact 0s and 1s."""
    walk = np.cumsum(rng.normal(0, 0.02, (frames, sessions, m)), axis=0) + rng.random((1, sessions, m))
    w = np.abs((walk % 2.0) - 1.0)
    w[rng.random(w.shape) < 0.15] = 0.0
    w[rng.random(w.shape) < 0.02] = 1.0
    jumps = rng.random(w.shape) < 0.03
    w[jumps] = rng.random(int(jumps.sum()))
    hold = rng.random((frames, sessions, 1)) < 0.3
    w[1:] = np.where(hold[1:], w[:-1], w[1:])
    return w.astype(np.float32)


def mutate(rng: np.random.Generator, packet: bytes) -> bytes:
    """Damage at the byte level, at the msgpack level (a keyframe's fields), or in the bits."""
    how = rng.integers(0, 7)
    b = bytearray(packet)
    if how == 0:
        b[rng.integers(len(b))] = rng.integers(256)
    elif how == 1:
        b[rng.integers(len(b))] ^= 1 << int(rng.integers(8))
    elif how == 2:
        del b[rng.integers(len(b)):]
    elif how == 3:
        b += rng.bytes(int(rng.integers(1, 5)))
    else:
        obj = msgpack.unpackb(packet)
        if how == 4 and isinstance(obj, list):
            obj[rng.integers(9)] = [2, 1, 0, 65535, 65536, -1, 16, 17, 2**63 - 1, -2**63, "x" * 1025, [], ["a"] * 3,
                                    b"", True, None, 1.5, {"a": 1}, "\u00e9"][rng.integers(19)]
            return msgpack.packb(obj, use_bin_type=True)
        body = bytearray(obj[8] if isinstance(obj, list) else obj)
        if how == 5 and body:
            for _ in range(rng.integers(1, 4)):
                body[rng.integers(len(body))] ^= 1 << int(rng.integers(8))
        else:
            body = body[:rng.integers(len(body) + 1)] + rng.bytes(int(rng.integers(0, 4)))
        if isinstance(obj, list):
            obj[8] = bytes(body)
            return msgpack.packb(obj, use_bin_type=True)
        return msgpack.packb(bytes(body), use_bin_type=True)
    return bytes(b)


def channel(rng: np.random.Generator, packets: list[bytes], loss: float) -> list[bytes]:
    """Some packets lost, duplicated, held back (reordered) or preceded or replaced by damaged copies."""
    out: list[bytes] = []
    held: list[tuple[int, bytes]] = []
    for p in packets:
        roll = rng.random()
        if roll < loss:
            continue
        if roll < loss + 0.05:
            out.append(p)  # a duplicate now, the original below
        elif roll < loss + 0.10:
            held.append((int(rng.integers(1, 4)), p))
            continue
        elif roll < loss + 0.16:
            out.append(mutate(rng, p))
            if rng.random() < 0.5:
                continue  # only the damaged copy arrives
        out.append(p)
        held = [(n - 1, q) for n, q in held]
        out += [q for n, q in held if n <= 0]
        held = [(n, q) for n, q in held if n > 0]
    return out + [q for _, q in held]


@st.composite
def scenarios(draw: st.DrawFn) -> dict:
    """An encoder's packets for sessions joining and leaving (slots expire and are reused), with
    keyframe requests and precision changes, then a lossy channel; and the decoders' settings."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    bits, pose_bits = draw(st.integers(1, 16)), draw(st.integers(1, 16))
    enc = wf.Encoder(bits, pose_bits, draw(st.integers(1, 12)), draw(st.integers(0, 3)))
    names = draw(st.sampled_from(["table", "list"]))
    m = 52 if names == "table" else draw(st.integers(1, 40))
    table = wf.TABLE_ARKIT52 if names == "table" else [f"m{i}" for i in range(m)]
    with_pose = draw(st.booleans())
    n = draw(st.integers(1, 4))
    frames = draw(st.integers(2, 24))
    w = motion(rng, frames, n, m)
    pose = rng.uniform(-3.5, 3.5, (frames, n, 9)) if with_pose else None
    packets = []
    for t in range(frames):
        now = T0 + t * FRAME_NS
        live = np.flatnonzero(rng.random(n) < 0.8)
        if not live.size:
            continue
        if rng.random() < 0.08:
            enc.request_keyframe([f"s{i}" for i in live[:1]])
        if rng.random() < 0.05:
            enc.configure(bits=int(rng.integers(1, 17)))
        enc.expire(now, 3 * FRAME_NS)
        packets += enc.encode([f"s{i}" for i in live], w[t, live], now, table,
                              None if pose is None else pose[t, live])
    loss = draw(st.sampled_from([0.0, 0.05, 0.2]))
    return {"packets": channel(rng, packets, loss), "resume": draw(st.booleans()),
            "batch_sizes": draw(st.lists(st.integers(1, 6), min_size=1, max_size=4))}


def primed(resume: bool = False) -> tuple[wf.Decoder, wf.Decoder, list[bytes]]:
    """Two decoders that hold three streams (motion, keyframe references and pose), and the packets
    that come next for them."""
    rng = np.random.default_rng(6)
    w, pose = motion(rng, 6, 3, 52), rng.uniform(-3, 3, (6, 3, 9))
    moving, still = wf.Encoder(keyframe_interval=50), wf.Encoder(keyframe_interval=50, ref_interval=0)
    packets = []
    for t in range(6):
        packets += moving.encode(["a", "b"], w[t, :2], T0 + t * FRAME_NS, wf.TABLE_ARKIT52, pose[t, :2])
        packets += still.encode(["z0", "z1", "c"], w[t], T0 + t * FRAME_NS, wf.TABLE_ARKIT52)[2:]  # sid 2
    ref, comp = pair(resume)
    for p in packets[:12]:
        step(ref, comp, p)
    return ref, comp, packets[12:]


# --- the recorded capture ------------------------------------------------------------------------
@pytest.mark.parametrize("bits", range(1, 17))
def test_the_recorded_capture_decodes_identically(bits):
    """The real capture, three sessions at offsets, every precision, each reference mode, some loss."""
    ref_interval = bits % 3
    enc = wf.Encoder(bits, 17 - bits, keyframe_interval=40, ref_interval=ref_interval)
    n = len(CAPTURE_W)
    rows = (np.arange(n)[:, None] + np.array([0, 50, 120])[None, :]) % n
    decoders = [pair(False), pair(True)]
    packets = []
    for t in range(n):
        pose = CAPTURE_POSE[rows[t]] if t % 90 < 60 else None  # pose comes and goes: keyframes
        packets += enc.encode(["a", "b", "c"], CAPTURE_W[rows[t]], T0 + t * FRAME_NS, wf.TABLE_ARKIT52, pose)
    for i, p in enumerate(packets):
        if i % 37 == 5:
            continue  # lost
        for ref, comp in decoders:
            step(ref, comp, p, T0 + i, state=i % 7 == 0)
    for ref, comp in decoders:
        same_state(ref, comp)
        assert ref.counts["decoded"] > n
    batch_ref, batch_comp = pair(True)
    for chunk in batches(packets, [3, 1, 7]):
        same_batch(batch_ref.decode_batch(chunk, T0), batch_comp.decode_batch(chunk, T0))
    same_state(batch_ref, batch_comp)


# --- generated streams -----------------------------------------------------------------------------
@fuzz
@given(scenarios())
def test_generated_streams_decode_identically(sc):
    ref, comp = pair(sc["resume"])
    for i, p in enumerate(sc["packets"]):
        step(ref, comp, p, T0 + i * FRAME_NS)
        if i % 5 == 4:
            assert ref.forget_idle(T0 + i * FRAME_NS, 3 * FRAME_NS) == comp.forget_idle(T0 + i * FRAME_NS, 3 * FRAME_NS)
            same_state(ref, comp)
        if i % 11 == 10:  # the setting changes live (the decompressor's on_params)
            ref.resume_after_loss = comp.resume_after_loss = not ref.resume_after_loss


@fuzz
@given(scenarios())
def test_generated_streams_decode_identically_in_batches(sc):
    ref, comp = pair(sc["resume"])
    for k, chunk in enumerate(batches(sc["packets"], sc["batch_sizes"])):
        same_batch(ref.decode_batch(chunk, T0 + k), comp.decode_batch(chunk, T0 + k))
        same_state(ref, comp)
    single = wf.Decoder(sc["resume"], compiled=True)  # the batch ends where packet-by-packet decoding ends
    for p in sc["packets"]:
        outcome(single, p, 0)
    assert single.counts == comp.counts and single.waiting == comp.waiting


# --- hostile input -------------------------------------------------------------------------------
MSGPACK_ANY = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats() | st.text(max_size=8) | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=10) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=12)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200), MSGPACK_ANY, st.booleans())
def test_arbitrary_input_gives_the_same_errors(data, obj, resume):
    ref, comp, _ = primed(resume)
    for packet in (data, msgpack.packb(obj, use_bin_type=True), msgpack.packb(data, use_bin_type=True)):
        step(ref, comp, packet)


@settings(max_examples=500, deadline=None)
@given(st.data(), st.booleans())
def test_mutated_packets_give_the_same_errors(data, resume):
    ref, comp, nxt = primed(resume)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    for p in nxt[:data.draw(st.integers(1, len(nxt)))]:
        for _ in range(data.draw(st.integers(0, 3))):
            step(ref, comp, mutate(rng, p))
        step(ref, comp, p)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([0, 1, 2]), st.binary(max_size=60), st.booleans())
def test_random_value_sections_give_the_same_errors(which, body, resume):
    """A real delta header of a primed stream (so the values are read), then random bits."""
    ref, comp, nxt = primed(resume)
    real = next(p for p in nxt if not wf.is_keyframe(p) and wf.parse_packet(p).sid == which)
    head = wf.parse_packet(real).body.pos
    bits = "".join(f"{b:08b}" for b in msgpack.unpackb(real))[:head] + "".join(f"{b:08b}" for b in body)
    bits += "0" * (-len(bits) % 8)
    step(ref, comp, msgpack.packb(int(bits, 2).to_bytes(len(bits) // 8, "big")))


@pytest.mark.parametrize("packet", [None, 7, "text", [b"x"], bytearray(b"\xc4\x01\x80"), memoryview(b"\xc4\x01\x80"),
                                    b"", b"\xc4", b"\xc4\x05\x80", b"\xc1", b"\x99", b"\x90", b"\xdc\x00\x09",
                                    memoryview(np.arange(4, dtype=np.int32))])
def test_packets_that_are_not_bytes_or_not_msgpack(packet):
    ref, comp, _ = primed()
    step(ref, comp, packet)


def test_non_bytes_packets_decode_as_bytes_do():
    ref, comp, nxt = primed()
    for p in nxt:
        step(ref, comp, bytearray(p) if len(p) % 2 else memoryview(p))


# --- valid packets in unusual encodings ------------------------------------------------------------
INT_FORMS = [(0xCC, ">B"), (0xCD, ">H"), (0xCE, ">I"), (0xCF, ">Q"), (0xD0, ">b"), (0xD1, ">h"), (0xD2, ">i"),
             (0xD3, ">q")]


def _fits(x: int, fmt: str) -> bool:
    try:
        struct.pack(fmt, x)
    except struct.error:
        return False
    return True


def pack_wide(obj: object, rng: np.random.Generator) -> bytes:
    """msgpack with each length and int in a randomly chosen (not the smallest) valid format."""
    if isinstance(obj, bool) or not isinstance(obj, (int, str, bytes, list)):
        return msgpack.packb(obj, use_bin_type=True)
    if isinstance(obj, int):
        forms = [(code, fmt) for code, fmt in INT_FORMS
                 if struct.calcsize(fmt) and _fits(obj, fmt)]
        if not forms or rng.random() < 0.3:
            return msgpack.packb(obj)
        code, fmt = forms[rng.integers(len(forms))]
        return bytes([code]) + struct.pack(fmt, obj)
    if isinstance(obj, str):
        raw = obj.encode()
        return header(len(raw), [(0xD9, 1), (0xDA, 2), (0xDB, 4)], rng) + raw
    if isinstance(obj, bytes):
        return header(len(obj), [(0xC4, 1), (0xC5, 2), (0xC6, 4)], rng) + obj
    return header(len(obj), [(0xDC, 2), (0xDD, 4)], rng) + b"".join(pack_wide(x, rng) for x in obj)


def header(n: int, forms: list[tuple[int, int]], rng: np.random.Generator) -> bytes:
    ok = [(c, size) for c, size in forms if n < 1 << (8 * size)]
    code, size = ok[rng.integers(len(ok))]
    return bytes([code]) + n.to_bytes(size, "big")


@fuzz
@given(scenarios(), st.integers(0, 2**32 - 1))
def test_valid_packets_in_any_msgpack_format_decode_identically(sc, seed):
    rng = np.random.default_rng(seed)
    ref, comp = pair(sc["resume"])
    for p in sc["packets"]:
        try:
            obj = msgpack.unpackb(p)
        except Exception:
            obj = None
        step(ref, comp, p if obj is None or rng.random() < 0.3 else pack_wide(obj, rng))


def test_names_lists_and_sessions_beyond_ascii():
    names = ["Ärger", "日本", "x" * 300, "", "\U0001f600"] + [f"m{i}" for i in range(300)]
    enc = wf.Encoder(10, 9)
    rng = np.random.default_rng(3)
    ref, comp = pair()
    sessions = ["é" * 1024, "ß", "\U0001f600" * 10]
    for t in range(6):
        for p in enc.encode(sessions, rng.random((3, len(names))), T0 + t * FRAME_NS, names, rng.uniform(-3, 3, (3, 9))):
            step(ref, comp, p)
    kind, frame = step(ref, comp, enc.encode(sessions[:1], rng.random((1, len(names))), T0 + 9 * FRAME_NS, names)[0])
    assert frame.names == tuple(names) and frame.keyframe  # pose is gone: a keyframe
    too_long = msgpack.unpackb(enc.encode(["a"], rng.random((1, len(names))), T0, names)[0])
    too_long[4] = "é" * 1025
    step(ref, comp, msgpack.packb(too_long, use_bin_type=True))
    bad_utf8 = msgpack.packb(too_long[:4] + ["é"] + too_long[5:], use_bin_type=True).replace("é".encode(), b"\xc3\x28", 1)
    step(ref, comp, bad_utf8)


def test_pts_beyond_64_bits():
    """A keyframe at an end of the int64 range, then deltas with motion that step past it: pts is a
    Python int in both decoders."""
    rng = np.random.default_rng(4)
    for edge, direction in ((2**63 - 1, 1), (-2**63, -1)):
        enc = wf.Encoder(keyframe_interval=100)
        packets = [enc.encode(["a"], rng.random((1, 52)), T0 + direction * t * 40 * FRAME_NS, wf.TABLE_ARKIT52)[0]
                   for t in range(8)]
        key = msgpack.unpackb(packets[0])
        key[3] = edge
        ref, comp = pair()
        step(ref, comp, msgpack.packb(key, use_bin_type=True))
        for p in packets[1:]:
            kind, frame = step(ref, comp, p)
            assert kind == "frame" and frame is not None
        assert abs(frame.pts_ms) > 2**63 and abs(comp._streams[0].ref_pts) > 2**63


# --- the decompressor node --------------------------------------------------------------------------
def test_the_decompressor_emits_the_same_messages():
    """Two frame shapes (ARKit with pose, a names list without), loss, damaged and repeated packets,
    a malformed message: the same messages, bus warnings and stats with either decoder."""
    rng = np.random.default_rng(8)
    arkit, other = wf.Encoder(8, 12, keyframe_interval=20), wf.Encoder(6, keyframe_interval=15, ref_interval=0)
    other.encode([f"pad{i}" for i in range(8)], np.zeros((8, 5)), T0, ["a", "b", "c", "d", "e"])  # sids 8 onward
    hosts = [NodeHarness("decompressor"), NodeHarness("decompressor", resume_after_loss=True)]
    refs = [NodeHarness("decompressor"), NodeHarness("decompressor", resume_after_loss=True)]
    for h in refs:
        h.node.dec = wf.Decoder(h.node.p.resume_after_loss, compiled=False)
    assert all(isinstance(h.node.dec, CompiledDecoder) for h in hosts)
    w = motion(rng, 120, 6, 52)
    for t in range(120):
        pts = T0 + t * FRAME_NS
        packets = arkit.encode([f"k{i}" for i in range(4)], w[t, :4], pts, wf.TABLE_ARKIT52, rng.uniform(-3, 3, (4, 9)))
        packets += other.encode(["n0", "n1"], w[t, 4:, :5], pts, ["a", "b", "c", "d", "e"])
        sessions = [f"k{i}" for i in range(4)] + ["n0", "n1"]
        keep = [i for i in range(6) if rng.random() > 0.05]
        packets, sessions = [packets[i] for i in keep], [sessions[i] for i in keep]
        if t % 13 == 3 and packets:
            packets[0] = mutate(rng, packets[0])
        if t % 17 == 5:
            packets, sessions = packets + packets[:1], sessions + sessions[:1]
        if t % 23 == 7:
            arkit.request_keyframe()
        msg = Message("avatar/packet", {"packets": packets}, None, pts, sessions)
        if t == 50:
            msg = Message("avatar/packet", {"packets": packets}, None, pts, sessions[:-1])  # lengths differ
        for h, r in zip(hosts, refs):
            out_h, out_r = h.feed("in", msg), r.feed("in", msg)
            assert len(out_h) == len(out_r)
            for (pad_h, a), (pad_r, b) in zip(out_h, out_r):
                assert pad_h == pad_r and a.caps == b.caps and a.data == b.data and a.session == b.session
                assert a.pts_ns == b.pts_ns and a.arrays.keys() == b.arrays.keys()
                for k in a.arrays:
                    assert a.arrays[k].dtype == b.arrays[k].dtype and a.arrays[k].shape == b.arrays[k].shape
                    assert a.arrays[k].tobytes() == b.arrays[k].tobytes()
            assert h.bus == r.bus
            assert h.node.stats() == r.node.stats()
    for h in hosts:
        assert h.node.stats()["decoded"] > 300 and h.node.stats()["malformed"] > 0 and h.bus


def test_pure_python_is_the_reference(monkeypatch):
    """AVATAR_PURE_PYTHON=1 (or no extension): Decoder() is the reference, and compiled=True says why not."""
    from nodes.compiled import loader as compiled

    monkeypatch.setenv(compiled.PURE_ENV, "1")
    monkeypatch.setattr(compiled, "_loaded", {})
    assert type(wf.Decoder()) is wf.Decoder
    with pytest.raises(ImportError, match="not available"):
        wf.Decoder(compiled=True)
    monkeypatch.undo()
    assert type(wf.Decoder()) is CompiledDecoder and type(wf.Decoder(compiled=False)) is wf.Decoder


def test_a_copy_of_the_reference_is_the_reference():
    ref, comp, nxt = primed(True)
    twin = copy.deepcopy(ref)
    assert type(twin) is wf.Decoder and twin.resume_after_loss and twin._streams == comp._streams
    for p in nxt:
        step(twin, comp, p)
