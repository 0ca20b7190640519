"""The avatar/packet wire format: exact round trips, loss handling, hostile input, and the spec's examples."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import msgpack
import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nodes import wire as wf

DOC = Path(__file__).resolve().parent.parent / "docs" / "wire-format.md"
FRAME_NS = 16_666_667
T0 = 5_000_000_000_000
quick = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def half_step_ok(decoded: np.ndarray, x: np.ndarray, bits: int, lo: float, hi: float) -> bool:
    """Within half a quantization step, allowing for the float32 rounding of the output."""
    tol = wf.step(bits, lo, hi) / 2 + 2.0 ** -22 * np.maximum(1.0, np.abs(x))
    return bool(np.all(np.abs(decoded.astype(np.float64) - x.astype(np.float64)) <= tol))


def exact(x: np.ndarray, bits: int = 8) -> np.ndarray:
    """What a decoder must return for input x: its quantized value."""
    return wf.dequantize(wf.quantize(x, bits, *wf.WEIGHT_RANGE), bits, *wf.WEIGHT_RANGE)


def stream(rng: np.random.Generator, frames: int, sessions: int, m: int = 52) -> np.ndarray:
    """Weights (T, S, M) in 0..1: slow drift plus noise, holds, jumps, and exact 0s and 1s."""
    walk = np.cumsum(rng.normal(0, 0.02, (frames, sessions, m)), axis=0) + rng.random((1, sessions, m))
    w = np.abs((walk % 2.0) - 1.0)
    w[rng.random(w.shape) < 0.1] = 0.0
    w[rng.random(w.shape) < 0.02] = 1.0
    jumps = rng.random(w.shape) < 0.03
    w[jumps] = rng.random(int(jumps.sum()))
    hold = rng.random((frames, sessions, 1)) < 0.2
    w[1:] = np.where(hold[1:], w[:-1], w[1:])
    return w.astype(np.float32)


def encode_stream(enc: wf.Encoder, w: np.ndarray, pose: np.ndarray | None = None,
                  names: wf.Names = wf.TABLE_ARKIT52) -> list[list[bytes]]:
    sessions = [f"s{i}" for i in range(w.shape[1])]
    return [enc.encode(sessions, w[t], T0 + t * FRAME_NS, names, None if pose is None else pose[t])
            for t in range(len(w))]


def is_keyframe(packet: bytes) -> bool:
    return isinstance(msgpack.unpackb(packet), list)


@quick
@given(seed=st.integers(0, 2**32 - 1), bits=st.integers(1, 16), pose_bits=st.integers(1, 16),
       interval=st.integers(1, 12), ref_interval=st.integers(0, 4), frames=st.integers(1, 30),
       sessions=st.integers(1, 3), with_pose=st.booleans())
def test_random_streams_round_trip_within_half_a_step(seed, bits, pose_bits, interval, ref_interval, frames,
                                                     sessions, with_pose):
    rng = np.random.default_rng(seed)
    w = stream(rng, frames, sessions)
    pose = rng.uniform(-np.pi, np.pi, (frames, sessions, wf.POSE_COLUMNS)).astype(np.float32) if with_pose else None
    pts = T0 + np.cumsum(rng.integers(-5, 60, frames)) * 1_000_000  # irregular, sometimes backwards
    enc = wf.Encoder(bits, pose_bits, interval, ref_interval)
    dec = wf.Decoder()
    sessions_ = [f"s{i}" for i in range(sessions)]
    for t in range(frames):
        packets = enc.encode(sessions_, w[t], int(pts[t]), wf.TABLE_ARKIT52, None if pose is None else pose[t])
        for i, packet in enumerate(packets):
            frame = dec.decode(packet)
            assert frame is not None and frame.session == f"s{i}" and frame.pts_ms == pts[t] // 1_000_000
            assert frame.keyframe == (t % interval == 0) == is_keyframe(packet)
            assert np.array_equal(frame.weights, exact(w[t, i], bits))
            assert half_step_ok(frame.weights, w[t, i], bits, *wf.WEIGHT_RANGE)
            if with_pose:
                assert half_step_ok(frame.pose, pose[t, i], pose_bits, *wf.POSE_RANGE)
            else:
                assert frame.pose is None
    assert dec.counts["gaps"] == dec.counts["refused"] == 0


@pytest.mark.parametrize("bits", [1, 2, 8, 12, 16])
@pytest.mark.parametrize("ref_interval", [0, 1])
def test_full_scale_jumps_round_trip_exactly(bits, ref_interval):
    """Residuals as large as they get: every value jumps between 0 and full scale, pose between -pi and pi."""
    t = np.arange(40)
    w = np.where(((t[:, None] + np.arange(52)) // 3) % 2 == 1, 1.0, 0.0)
    w[::7] = 0.5
    pose = np.where(w[:, :9] > 0.6, np.pi, -np.pi)
    enc, dec = wf.Encoder(bits, bits, keyframe_interval=1000, ref_interval=ref_interval), wf.Decoder()
    for i in range(len(t)):
        frame = dec.decode(enc.encode(["a"], w[i:i + 1], T0 + i * FRAME_NS, wf.TABLE_ARKIT52, pose[i:i + 1])[0])
        assert np.array_equal(frame.weights, exact(w[i], bits))
        assert half_step_ok(frame.pose, pose[i], bits, *wf.POSE_RANGE)


def test_morph_names_travel_in_keyframes_only():
    names = [f"Morph_{i}" for i in range(70)]
    w = stream(np.random.default_rng(1), 5, 1, m=70)
    packets = [p[0] for p in encode_stream(wf.Encoder(keyframe_interval=4), w, names=names)]
    assert [is_keyframe(p) for p in packets] == [True, False, False, False, True]
    assert msgpack.unpackb(packets[0])[5] == names and all("Morph" not in repr(p) for p in packets[1:4])
    dec = wf.Decoder()
    for t, p in enumerate(packets):
        frame = dec.decode(p)
        assert frame.names == tuple(names) and half_step_ok(frame.weights, w[t, 0], 8, 0.0, 1.0)


def test_out_of_range_weights_are_clipped():
    enc, dec = wf.Encoder(), wf.Decoder()
    frame = dec.decode(enc.encode(["a"], np.array([[-0.5, 1.5, np.nan] + [0.5] * 49]), T0, wf.TABLE_ARKIT52)[0])
    assert frame.weights[:3].tolist() == [0.0, 1.0, 0.0]


def test_a_still_face_costs_five_bytes_a_frame():
    """Header (sid, seq, link, pts), one bit per list: morphs held still or at 0 (a dropped LOD level) are free."""
    w = np.zeros((30, 1, 52), dtype=np.float32)
    w[:, :, :20] = np.linspace(0.1, 0.9, 20)
    packets = [p[0] for p in encode_stream(wf.Encoder(), w)]
    assert len(packets[1]) == 6 and all(len(p) == 5 for p in packets[2:])  # the first delta has no motion: W bit


@pytest.mark.parametrize("ref_interval", [0, 1, 3])
def test_lost_packet_then_keyframe_recovers_exactly(ref_interval):
    w = stream(np.random.default_rng(2), 40, 2)
    enc, dec = wf.Encoder(keyframe_interval=1000, ref_interval=ref_interval), wf.Decoder()
    sessions = ["s0", "s1"]
    for t in range(10):
        packets = enc.encode(sessions, w[t], T0 + t * FRAME_NS, wf.TABLE_ARKIT52)
        if t == 5:  # s0's packet is lost on the way
            packets = packets[1:]
        for p in packets:
            frame = dec.decode(p)
            if t > 5 and frame is None:
                assert wf.parse_packet(p).sid == 0  # only s0 is held back
    assert dec.counts["gaps"] == 1 and dec.counts["lost"] == 1 and dec.counts["refused"] == 4
    assert dec.waiting == [(0, "s0")]
    enc.request_keyframe(["s0"])  # what the decoder's owner asks for
    packets = enc.encode(sessions, w[10], T0 + 10 * FRAME_NS, wf.TABLE_ARKIT52)
    first, second = dec.decode(packets[0]), dec.decode(packets[1])
    assert first.keyframe and not second.keyframe and dec.waiting == []
    assert np.array_equal(first.weights, exact(w[10, 0]))
    for t in range(11, 20):  # and the deltas after it (predicted from frames after the loss) are exact too
        for i, p in enumerate(enc.encode(sessions, w[t], T0 + t * FRAME_NS, wf.TABLE_ARKIT52)):
            assert np.array_equal(dec.decode(p).weights, exact(w[t, i]))


@quick
@given(seed=st.integers(0, 2**32 - 1), ref_interval=st.integers(0, 3), lost=st.integers(1, 14),
       how_many=st.integers(1, 3), resume=st.booleans())
def test_any_loss_never_shows_a_wrong_frame_and_a_keyframe_recovers_exactly(seed, ref_interval, lost, how_many,
                                                                          resume):
    w = stream(np.random.default_rng(seed), 30, 1)
    enc, dec = wf.Encoder(keyframe_interval=10, ref_interval=ref_interval), wf.Decoder(resume_after_loss=resume)
    recovered_at = None
    for t in range(30):
        if t == 20 and dec.waiting:
            enc.request_keyframe(["s0"])
        packet = enc.encode(["s0"], w[t], T0 + t * FRAME_NS, wf.TABLE_ARKIT52)[0]
        if lost <= t < lost + how_many:
            continue
        frame = dec.decode(packet)
        if frame is None:
            assert dec.status == "refused" and dec.waiting == [(0, "s0")]
            assert resume or t >= lost + how_many  # strict: refused only after the gap
            continue
        assert np.array_equal(frame.weights, exact(w[t, 0]))
        if frame.keyframe and t > lost and recovered_at is None:
            recovered_at = t
    assert dec.counts["gaps"] == 1 and dec.counts["lost"] == how_many and dec.waiting == []
    if not resume:
        assert dec.counts["refused"] == (recovered_at or 30) - lost - how_many


def test_keyframe_references_let_a_tolerant_decoder_skip_a_lost_delta():
    w = stream(np.random.default_rng(3), 30, 1)
    packets = [p[0] for p in encode_stream(wf.Encoder(keyframe_interval=100, ref_interval=0), w)]
    strict, tolerant = wf.Decoder(), wf.Decoder(resume_after_loss=True)
    for t, p in enumerate(packets):
        if t == 7:
            continue
        assert (strict.decode(p) is None) == (t > 7)
        assert np.array_equal(tolerant.decode(p).weights, exact(w[t, 0]))
    assert tolerant.counts["lost"] == strict.counts["lost"] == 1 and tolerant.counts["refused"] == 0


def test_a_lost_reference_is_refused_even_by_a_tolerant_decoder():
    w = stream(np.random.default_rng(4), 12, 1)
    for ref_interval, lost in ((4, 4), (1, 6)):
        packets = [p[0] for p in encode_stream(wf.Encoder(keyframe_interval=100, ref_interval=ref_interval), w)]
        dec = wf.Decoder(resume_after_loss=True)
        results = [dec.decode(p) for t, p in enumerate(packets) if t != lost]
        assert [r is not None for r in results] == [True] * lost + [False] * (11 - lost)
        assert dec.waiting == [(0, "s0")]


def test_duplicates_and_late_packets_are_ignored():
    w = stream(np.random.default_rng(5), 6, 1)
    packets = [p[0] for p in encode_stream(wf.Encoder(), w)]
    dec = wf.Decoder()
    for p in packets[:4]:
        dec.decode(p)
    assert dec.decode(packets[3]) is None and dec.decode(packets[1]) is None and dec.status == "late"
    frame = dec.decode(packets[4])
    assert np.array_equal(frame.weights, exact(w[4, 0])) and dec.counts["late"] == 2 and dec.counts["gaps"] == 0


def test_expired_slot_is_reused_with_a_keyframe_and_continuing_seq():
    enc, dec = wf.Encoder(), wf.Decoder()
    w = np.full((1, 52), 0.25, dtype=np.float32)
    for t in range(3):
        dec.decode(enc.encode(["old"], w, T0 + t * FRAME_NS, wf.TABLE_ARKIT52)[0])
    assert enc.expire(T0 + 20 * 10**9, 10 * 10**9) == ["old"]
    packet = enc.encode(["new"], w, T0 + 21 * 10**9, wf.TABLE_ARKIT52)[0]
    fields = msgpack.unpackb(packet)
    assert fields[:3] == [wf.VERSION, 0, 3] and fields[4] == "new"
    assert dec.decode(packet).session == "new" and dec.counts["gaps"] == 0


def test_a_big_pts_jump_is_sent_as_a_keyframe():
    w = stream(np.random.default_rng(8), 3, 1)
    enc = wf.Encoder()
    pts = [T0, T0 + 2**31 * 1_000_000, T0 + 2**31 * 1_000_000 + FRAME_NS]
    packets = [enc.encode(["a"], w[t], pts[t], wf.TABLE_ARKIT52)[0] for t in range(3)]
    assert [is_keyframe(p) for p in packets] == [True, True, False]
    dec = wf.Decoder()
    assert [dec.decode(p).pts_ms for p in packets] == [p // 1_000_000 for p in pts]


def primed_decoder_and_packets() -> tuple[list[bytes], list[bytes]]:
    """Packets of four streams: sids 0, 1 predicted with motion, sids 2, 3 from their keyframe (wide or not).

    The primers (frames 0 and 1 of each) leave a decoder where the next deltas are read in full.
    """
    rng = np.random.default_rng(6)
    w, pose = stream(rng, 8, 4), rng.uniform(-3, 3, (8, 4, 9))
    moving, still = wf.Encoder(keyframe_interval=6), wf.Encoder(keyframe_interval=6, ref_interval=0)
    sessions = ["s0", "s1", "s2", "s3"]
    frames = [moving.encode(sessions[:2], w[t, :2], T0 + t * FRAME_NS, wf.TABLE_ARKIT52, pose[t, :2])
              + still.encode(sessions, w[t], T0 + t * FRAME_NS, wf.TABLE_ARKIT52, pose[t])[2:] for t in range(8)]
    return frames[0] + frames[1], [p for packets in frames for p in packets]


PRIMERS, PACKETS = primed_decoder_and_packets()


def decode_only_value_errors(data: bytes, resume: bool = False) -> None:
    dec = wf.Decoder(resume_after_loss=resume)
    for p in PRIMERS:
        dec.decode(p)
    try:
        frame = dec.decode(data)
    except ValueError:
        return
    if frame is not None:
        assert frame.weights.dtype == np.float32 and np.all((frame.weights >= 0) & (frame.weights <= 1))


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=120))
def test_random_bytes_raise_only_value_error(data):
    decode_only_value_errors(data)


@settings(max_examples=500, deadline=None)
@given(index=st.integers(0, len(PACKETS) - 1), edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)),
                                                          min_size=1, max_size=4),
       cut=st.integers(0, 10**6), extra=st.binary(max_size=4), resume=st.booleans())
def test_mutated_packets_raise_only_value_error(index, edits, cut, extra, resume):
    data = bytearray(PACKETS[index])
    for pos, value in edits:
        data[pos % len(data)] = value
    if cut % 3 == 0:
        data = data[:cut % len(data)]
    decode_only_value_errors(bytes(data) + extra, resume)


@settings(max_examples=500, deadline=None)
@given(sid=st.sampled_from([0, 2]), body=st.binary(max_size=60), resume=st.booleans())
def test_random_value_sections_raise_only_value_error(sid, body, resume):
    """The real header of the next packet of a primed stream (so the values are read), then random bits."""
    real = PACKETS[8 + sid]  # frame 2; sid 0: motion applies; sid 2: from the keyframe, with a W bit
    head = wf.parse_packet(real).body.pos
    bits = "".join(f"{b:08b}" for b in msgpack.unpackb(real))[:head] + "".join(f"{b:08b}" for b in body)
    bits += "0" * (-len(bits) % 8)
    decode_only_value_errors(msgpack.packb(int(bits, 2).to_bytes(len(bits) // 8, "big")), resume)


def test_the_fuzzed_streams_are_read_in_full():
    """What the fuzz tests rely on: after the primers, the next deltas of sids 0 and 2 are decoded, not refused."""
    dec = wf.Decoder()
    for p in PRIMERS:
        dec.decode(p)
    for sid in (0, 2):
        frame = dec.decode(PACKETS[8 + sid])
        assert frame is not None and frame.sid == sid and not frame.keyframe


@pytest.mark.parametrize("packet, why", [
    ([1, 0, 0, 0, "s", 1, 8, 0, bytes(52)], "version"),
    ([2, 0, 0, 0, "s", 1, 8, 0], "9 elements"),
    ([2, 0, 0, 0, "s", 99, 8, 0, bytes(52)], "table"),
    ([2, 0, 0, 0, "s", 1, 8, 0, "text"], "bin"),
    ([2, 0, 0, 0, "s", 1, 17, 0, bytes(52)], "bits"),
    ([2, 0, 0, 0, "s", 1, 8, 0, bytes(51)], "need 52"),
    ([2, 0, 0, 0, "s", 1, 8, 0, bytes(53)], "need 52"),
    ([2, 0, True, 0, "s", 1, 8, 0, bytes(52)], "seq"),
    ([2, 0, 0, 0, "s", 1, 7, 0, bytes(45) + b"\x01"], "padding"),
    ({"a": 1}, "array .* or bin"),
    (b"\x80", "cut short"),  # sid 0, then the seq runs out
    (b"\x00\x00\x00\x00\x00\x00\x01", "Exp-Golomb"),  # a sid of 48 zero bits
    (bytes([0x80, 0x00, 0x60]), "refused"),  # sid 0, seq 0, back 1, pts 0: a delta with no reference
])
def test_malformed_packets_say_what_is_wrong(packet, why):
    dec = wf.Decoder()
    data = msgpack.packb(packet, use_bin_type=True)
    try:
        frame = dec.decode(data)
    except ValueError as exc:
        assert re.search(why, str(exc)), str(exc)
        return
    assert why == "refused" and frame is None and dec.status == "refused" and dec.waiting == [(0, None)]


def test_a_delta_longer_than_any_valid_one_is_malformed():
    enc, dec = wf.Encoder(), wf.Decoder()
    w = stream(np.random.default_rng(9), 2, 1)
    dec.decode(enc.encode(["a"], w[0], T0, wf.TABLE_ARKIT52)[0])
    good = msgpack.unpackb(enc.encode(["a"], w[1], T0 + FRAME_NS, wf.TABLE_ARKIT52)[0])
    with pytest.raises(ValueError, match="longer than any"):
        dec.decode(msgpack.packb(good + bytes(wf.max_delta_bytes(52)), use_bin_type=True))
    with pytest.raises(ValueError, match="after the end"):
        dec.decode(msgpack.packb(good + b"\x00", use_bin_type=True))
    assert np.array_equal(dec.decode(msgpack.packb(good, use_bin_type=True)).weights, exact(w[1, 0]))


# --- the spec's worked example and JavaScript decoder ------------------------------------------
def doc_block(marker: str) -> str:
    return re.search(rf"<!-- {marker} -->\s*```\w*\n(.*?)```", DOC.read_text(), re.S).group(1)


def doc_example(name: str) -> bytes:
    """The hex dump under a '<!-- example: name -->' marker in docs/wire-format.md."""
    lines = doc_block(f"example: {name}").splitlines()
    return bytes.fromhex(re.sub(r"[^0-9a-fA-F]", "", "".join(line.split("|")[0] for line in lines)))


def doc_bits(name: str) -> str:
    """The bit strings in the first column of the table under '<!-- bits: name -->'."""
    table = re.search(rf"<!-- bits: {name} -->\n(.*?)\n\n", DOC.read_text(), re.S).group(1)
    rows = [line.split("|")[1] for line in table.splitlines()[2:]]
    return "".join(re.sub(r"[^01]", "", row) for row in rows)


EXAMPLE = np.zeros((3, 52))
EXAMPLE[0, [0, 7, 17, 43]] = [200, 200, 51, 30]
EXAMPLE[1, [0, 7, 17, 18, 43]] = [194, 199, 53, 1, 30]
EXAMPLE[2, [0, 7, 17, 18, 43]] = [189, 198, 55, 4, 30]
EXAMPLE_PTS_MS = [1000, 1017, 1033]
EXAMPLE_NAMES = ["keyframe", "delta1", "delta2"]


def test_the_documented_example_decodes_as_documented():
    dec = wf.Decoder()
    frames = [dec.decode(doc_example(name)) for name in EXAMPLE_NAMES]
    assert frames[0].keyframe and frames[0].session == "alice" and frames[0].names == wf.TABLE_ARKIT52
    assert [f.keyframe for f in frames] == [True, False, False] and [f.seq for f in frames] == [0, 1, 2]
    assert [f.pts_ms for f in frames] == EXAMPLE_PTS_MS
    for f, q in zip(frames, EXAMPLE):
        assert np.array_equal(f.weights, wf.dequantize(q, 8, 0.0, 1.0))


def test_the_documented_bit_strings_spell_the_documented_bytes():
    for name in ("delta1", "delta2"):
        body = msgpack.unpackb(doc_example(name))
        assert doc_bits(name) == "".join(f"{b:08b}" for b in body), name


def test_the_encoder_writes_the_documented_example_byte_for_byte():
    enc = wf.Encoder()
    w = wf.dequantize(EXAMPLE, 8, 0.0, 1.0)
    made = [enc.encode(["alice"], w[i:i + 1], t * 1_000_000, wf.TABLE_ARKIT52)[0] for i, t in enumerate(EXAMPLE_PTS_MS)]
    assert made == [doc_example(name) for name in EXAMPLE_NAMES]


WEB = DOC.parent.parent / "web"
JS_DECODER = WEB / "js" / "wireformat.js"
ARKIT52_YAML = DOC.parent.parent / "graphs" / "mappings" / "arkit52.yaml"
# Imports the page's own module; node resolves its "@msgpack/msgpack" import from web/node_modules.
# Each line: a decoder name and a packet's bytes as hex, decoded from the bytes as the page does.
JS_HARNESS = r"""
import fs from "node:fs";
import { AvatarDecoder, ARKIT52 } from "%s";
const hex = (h) => Uint8Array.from(h.match(/../g) || [], (x) => parseInt(x, 16));
const decoders = {}, out = [];
for (const line of fs.readFileSync(0, "utf8").trim().split("\n")) {
  const { dec, p } = JSON.parse(line);
  const d = (decoders[dec] ??= new AvatarDecoder({ resumeAfterLoss: dec.startsWith("tolerant") }));
  try {
    const f = d.decodeBytes(hex(p));
    out.push(f === null ? ["none", d.waiting] : ["ok", f.q, f.pose && f.pose.map((x) => Math.round(x * 1e6)), f.pts,
                                                  f.seq, f.session, f.keyframe, d.waiting]);
  } catch (e) { out.push(["error"]); }
}
process.stdout.write(JSON.stringify({ out, arkit52: ARKIT52 }));
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node to run the JavaScript decoder")
def test_the_pages_javascript_decoder_agrees_with_python(tmp_path):
    """web/js/wireformat.js and nodes/wireformat.py on the same packets: several streams (precisions, modes, pose,
    loss, keyframe requests, corrupted packets, bytes that are not msgpack at all), every result compared."""
    assert (WEB / "node_modules" / "@msgpack" / "msgpack").is_dir(), "web/node_modules missing: run `npm ci` in web/"
    rng = np.random.default_rng(10)
    lines, expected = [], []
    for case in range(16):
        bits, pose_bits, ref_interval = int(rng.integers(1, 17)), int(rng.integers(1, 17)), case % 4
        enc = wf.Encoder(bits, pose_bits, int(rng.integers(2, 20)), ref_interval)
        sessions = [f"s{i}" for i in range(int(rng.integers(1, 4)))]
        w = stream(rng, 30, len(sessions))
        pose = rng.uniform(-3.2, 3.2, (30, len(sessions), 9)) if case % 3 else None
        decoders = {f"{kind}{case}": wf.Decoder(resume_after_loss=kind == "tolerant")
                    for kind in ("strict", "tolerant")}
        pts = T0
        for t in range(30):
            pts += int(rng.integers(5, 40)) * 1_000_000
            if rng.random() < 0.05:
                enc.request_keyframe()
            for p in enc.encode(sessions, w[t], pts, wf.TABLE_ARKIT52, None if pose is None else pose[t]):
                if rng.random() < 0.08:
                    continue  # lost
                copies = [p]
                if rng.random() < 0.1:  # a corrupted copy arrives first
                    bad = bytearray(p)
                    bad[int(rng.integers(2, len(bad)))] ^= 1 << int(rng.integers(0, 8))
                    copies.insert(0, bytes(bad))
                for data in copies:
                    for name, dec in decoders.items():
                        lines.append(json.dumps({"dec": name, "p": data.hex()}))
                        try:
                            f = dec.decode(data)
                        except ValueError:
                            expected.append(["error"])
                            continue
                        waiting = [list(x) for x in dec.waiting]
                        if f is None:
                            expected.append(["none", waiting])
                            continue
                        q = wf.quantize(f.weights, f.bits, *wf.WEIGHT_RANGE).tolist()
                        pose_out = None if f.pose is None else np.rint(f.pose.astype(np.float64) * 1e6).astype(int)
                        expected.append(["ok", q, pose_out, f.pts_ms, f.seq, f.session, f.keyframe, waiting])
    (tmp_path / "harness.mjs").write_text(JS_HARNESS % JS_DECODER.as_uri())
    run = subprocess.run(["node", str(tmp_path / "harness.mjs")], input="\n".join(lines),
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["arkit52"] == yaml.safe_load(ARKIT52_YAML.read_text())["blendshapes"]
    assert doc_block("excerpt: web/js/wireformat.js") in JS_DECODER.read_text()  # the doc quotes the module
    got = result["out"]
    assert len(got) == len(expected) > 1000
    for i, (e, g) in enumerate(zip(expected, got)):
        if e[0] == "ok" and e[2] is not None:  # pose as float32 in Python, float64 in JS: a micro-radian apart at most
            assert g[2] is not None and np.abs(np.array(g[2]) - e[2]).max() <= 1, i
            e, g = e[:2] + e[3:], g[:2] + g[3:]
        assert e == g, (i, e, g)
    assert {e[0] for e in expected} == {"ok", "none", "error"}


@pytest.mark.parametrize("ref_interval", [0, 1])
def test_seq_wraps_from_65535_to_0_without_a_gap(ref_interval):
    w = stream(np.random.default_rng(7), 8, 1)
    enc, dec = wf.Encoder(keyframe_interval=100, ref_interval=ref_interval), wf.Decoder()
    enc.encode(["warm-up"], w[0], T0, wf.TABLE_ARKIT52)
    enc._seq[:] = 65533  # white box: as if s0's slot had carried 65533 packets before
    seqs = []
    for t, [packet] in enumerate(encode_stream(enc, w)):
        frame = dec.decode(packet)
        seqs.append(frame.seq)
        assert np.array_equal(frame.weights, exact(w[t, 0]))
    assert seqs == [65533, 65534, 65535, 0, 1, 2, 3, 4] and dec.counts["gaps"] == 0
