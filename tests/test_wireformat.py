"""The avatar/packet wire format: exact round trips, loss handling, and hostile input."""
from __future__ import annotations

import re
from pathlib import Path

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from nodes import wireformat as wf

DOC = Path(__file__).resolve().parent.parent / "docs" / "wire-format.md"
FRAME_NS = 16_666_667
T0 = 5_000_000_000_000
quick = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def half_step_ok(decoded: np.ndarray, x: np.ndarray, bits: int, lo: float, hi: float) -> bool:
    """Within half a quantization step, allowing for the float32 rounding of the output."""
    tol = wf.step(bits, lo, hi) / 2 + 2.0 ** -22 * np.maximum(1.0, np.abs(x))
    return bool(np.all(np.abs(decoded.astype(np.float64) - x.astype(np.float64)) <= tol))


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


@quick
@given(seed=st.integers(0, 2**32 - 1), bits=st.integers(2, 16), pose_bits=st.integers(2, 16),
       interval=st.integers(1, 12), ref_interval=st.integers(0, 4), frames=st.integers(1, 30),
       sessions=st.integers(1, 3), with_pose=st.booleans())
def test_random_streams_round_trip_within_half_a_step(seed, bits, pose_bits, interval, ref_interval, frames,
                                                     sessions, with_pose):
    rng = np.random.default_rng(seed)
    w = stream(rng, frames, sessions)
    pose = rng.uniform(-np.pi, np.pi, (frames, sessions, wf.POSE_COLUMNS)).astype(np.float32) if with_pose else None
    enc = wf.Encoder(bits, pose_bits, interval, ref_interval)
    dec = wf.Decoder()
    for t, packets in enumerate(encode_stream(enc, w, pose)):
        for i, packet in enumerate(packets):
            frame = dec.decode(packet)
            assert frame is not None and frame.session == f"s{i}"
            assert frame.keyframe == (t % interval == 0)
            assert half_step_ok(frame.weights, w[t, i], bits, *wf.WEIGHT_RANGE)
            if with_pose:
                assert half_step_ok(frame.pose, pose[t, i], pose_bits, *wf.POSE_RANGE)
            else:
                assert frame.pose is None
    assert dec.counts["gaps"] == dec.counts["refused"] == 0


def test_morph_names_travel_in_keyframes_only():
    names = [f"Morph_{i}" for i in range(70)]
    w = stream(np.random.default_rng(1), 5, 1, m=70)
    packets = [p[0] for p in encode_stream(wf.Encoder(keyframe_interval=4), w, names=names)]
    assert [len(msgpack.unpackb(p)) for p in packets] == [10, 7, 7, 7, 10]
    dec = wf.Decoder()
    for t, p in enumerate(packets):
        frame = dec.decode(p)
        assert frame.names == tuple(names) and half_step_ok(frame.weights, w[t, 0], 8, 0.0, 1.0)


def test_out_of_range_weights_are_clipped():
    enc, dec = wf.Encoder(), wf.Decoder()
    frame = dec.decode(enc.encode(["a"], np.array([[-0.5, 1.5, np.nan] + [0.5] * 49]), T0, wf.TABLE_ARKIT52)[0])
    assert frame.weights[:3].tolist() == [0.0, 1.0, 0.0]


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
                assert msgpack.unpackb(p)[2] == 0  # only s0 is held back
    assert dec.counts["gaps"] == 1 and dec.counts["lost"] == 1 and dec.counts["refused"] == 4
    assert dec.waiting == [(0, "s0")]
    enc.request_keyframe(["s0"])  # what the decoder's owner asks for
    packets = enc.encode(sessions, w[10], T0 + 10 * FRAME_NS, wf.TABLE_ARKIT52)
    first, second = dec.decode(packets[0]), dec.decode(packets[1])
    assert first.keyframe and not second.keyframe and dec.waiting == []
    exact = wf.dequantize(wf.quantize(w[10, 0], 8, 0.0, 1.0), 8, 0.0, 1.0)
    assert np.array_equal(first.weights, exact)
    for t in range(11, 20):
        for i, p in enumerate(enc.encode(sessions, w[t], T0 + t * FRAME_NS, wf.TABLE_ARKIT52)):
            assert half_step_ok(dec.decode(p).weights, w[t, i], 8, 0.0, 1.0)


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
        assert half_step_ok(frame.weights, w[t, 0], 8, 0.0, 1.0)
        if frame.keyframe and t > lost and recovered_at is None:
            recovered_at = t
            exact = wf.dequantize(wf.quantize(w[t, 0], 8, 0.0, 1.0), 8, 0.0, 1.0)
            assert np.array_equal(frame.weights, exact)
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
        frame = tolerant.decode(p)
        assert half_step_ok(frame.weights, w[t, 0], 8, 0.0, 1.0)
    assert tolerant.counts["lost"] == strict.counts["lost"] == 1 and tolerant.counts["refused"] == 0


def test_a_lost_reference_is_refused_even_by_a_tolerant_decoder():
    w = stream(np.random.default_rng(4), 12, 1)
    packets = [p[0] for p in encode_stream(wf.Encoder(keyframe_interval=100, ref_interval=4), w)]
    dec = wf.Decoder(resume_after_loss=True)
    results = [dec.decode(p) for t, p in enumerate(packets) if t != 4]  # frame 4 is a reference
    assert [r is not None for r in results] == [True] * 4 + [False] * 7
    assert dec.waiting == [(0, "s0")]


def test_duplicates_and_late_packets_are_ignored():
    w = stream(np.random.default_rng(5), 6, 1)
    packets = [p[0] for p in encode_stream(wf.Encoder(), w)]
    dec = wf.Decoder()
    for p in packets[:4]:
        dec.decode(p)
    assert dec.decode(packets[3]) is None and dec.decode(packets[1]) is None and dec.status == "late"
    assert dec.decode(packets[4]) is not None and dec.counts["late"] == 2 and dec.counts["gaps"] == 0


def test_expired_slot_is_reused_with_a_keyframe_and_continuing_seq():
    enc, dec = wf.Encoder(), wf.Decoder()
    w = np.full((1, 52), 0.25, dtype=np.float32)
    for t in range(3):
        dec.decode(enc.encode(["old"], w, T0 + t * FRAME_NS, wf.TABLE_ARKIT52)[0])
    assert enc.expire(T0 + 20 * 10**9, 10 * 10**9) == ["old"]
    packet = enc.encode(["new"], w, T0 + 21 * 10**9, wf.TABLE_ARKIT52)[0]
    fields = msgpack.unpackb(packet)
    assert fields[1] == wf.FLAG_KEY | wf.FLAG_REF and fields[2] == 0 and fields[3] == 3
    assert dec.decode(packet).session == "new" and dec.counts["gaps"] == 0


def primed_decoder_and_packets() -> tuple[list[bytes], list[bytes]]:
    rng = np.random.default_rng(6)
    enc = wf.Encoder(bits=8, keyframe_interval=5, ref_interval=2)
    w = stream(rng, 8, 2)
    pose = rng.uniform(-3, 3, (8, 2, 9))
    packets = [p for ps in encode_stream(enc, w, pose) for p in ps]
    return packets[:2], packets


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


@pytest.mark.parametrize("fields, why", [
    ([2, 3, 0, 0, 0, 0, b"\x70\x00\x00\x00\x00\x00\x00\x00", None, "s", 1], "version"),
    ([1, 1, 0, 0, 0, 0, b"", None, "s", 1], "REF"),
    ([1, 3, 0, 0, 0, 0, b"\x70", None, "s", 99], "table"),
    ([1, 3, 0, 0, 0, 0, "text", None, "s", 1], "bin"),
    ([1, 3, 0, 0, 0, 0, b"\x70" + bytes(6), None, "s", 1], "shorter"),
    ([1, 3, 0, 0, 0, 0, b"\x70" + bytes(7) + b"\x00", None, "s", 1], "bytes after"),
    ([1, 3, 0, True, 0, 0, b"\x70" + bytes(7), None, "s", 1], "seq"),
    ([1, 0, 0, 1, 0, 0, b"\x70" + bytes(7)], "back"),
])
def test_malformed_packets_say_what_is_wrong(fields, why):
    with pytest.raises(ValueError, match=why):
        wf.Decoder().decode(msgpack.packb(fields, use_bin_type=True))


def doc_example(name: str) -> bytes:
    """The hex dump under a '<!-- example: name -->' marker in docs/wire-format.md."""
    text = DOC.read_text()
    block = re.search(rf"<!-- example: {name} -->\s*```\w*\n(.*?)```", text, re.S).group(1)
    return bytes.fromhex(re.sub(r"[^0-9a-fA-F]", "", "".join(line.split("|")[0] for line in block.splitlines())))


def test_the_documented_example_decodes_as_documented():
    dec = wf.Decoder()
    key = dec.decode(doc_example("keyframe"))
    delta = dec.decode(doc_example("delta"))
    assert key.keyframe and key.session == "alice" and key.names == wf.TABLE_ARKIT52 and key.pts_ms == 1000
    expected_key = np.zeros(52)
    expected_key[[0, 7, 17]] = [200, 200, 51]
    assert np.array_equal(key.weights, wf.dequantize(expected_key, 8, 0.0, 1.0))
    expected_delta = expected_key.copy()
    expected_delta[[0, 7, 17, 18]] = [0, 199, 53, 1]
    assert not delta.keyframe and delta.seq == 1 and delta.pts_ms == 1017
    assert np.array_equal(delta.weights, wf.dequantize(expected_delta, 8, 0.0, 1.0))
    enc = wf.Encoder()
    w = wf.dequantize(np.stack([expected_key, expected_delta]), 8, 0.0, 1.0)
    made = [enc.encode(["alice"], w[i:i + 1], 1_000_000_000 + i * 17_000_000, wf.TABLE_ARKIT52)[0] for i in range(2)]
    assert made == [doc_example("keyframe"), doc_example("delta")]


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
        assert half_step_ok(frame.weights, w[t, 0], 8, 0.0, 1.0)
    assert seqs == [65533, 65534, 65535, 0, 1, 2, 3, 4] and dec.counts["gaps"] == 0
