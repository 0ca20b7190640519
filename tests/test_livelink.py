"""Live Link Face packets: every real packet parses, and no input raises anything but ValueError."""
from __future__ import annotations

import json
import math
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nodes.face import arkit_names, arkit_pose_names
from nodes.livelink import (
    MAX_NAME_BYTES,
    MAX_PACKET_BYTES,
    N_VALUES,
    SAMPLE_CAPTURE,
    PacketError,
    build_container,
    build_json_packet,
    build_packet,
    build_packets,
    export_columns,
    parse_datagram,
    parse_json_packet,
    parse_packet,
    read_container,
)

BIN = SAMPLE_CAPTURE
PACKETS = read_container(BIN)
FRAMES = [parse_packet(p) for p in PACKETS]
DEVICE = "DEADC0DE-1337-1337-1337-CAFEBABE"


def _reason(data: bytes) -> str:
    with pytest.raises(PacketError) as info:
        parse_packet(data)
    assert isinstance(info.value, ValueError) and str(info.value)
    return info.value.reason


# --- the real capture ------------------------------------------------------------------------
def test_every_real_packet_parses():
    assert len(PACKETS) == 180 and all(len(p) == 320 for p in PACKETS)
    for f in FRAMES:
        assert f.device_id == DEVICE and len(f.device_id) == 32
        assert f.subject == "LLV Default Device"
        assert f.fps == (60, 1)
        assert f.weights.shape == (52,) and f.weights.dtype == np.float32
        assert f.pose.shape == (9,) and f.pose.dtype == np.float32
        assert np.isfinite(f.weights).all() and np.isfinite(f.pose).all()
        assert f.weights.min() >= 0.0 and f.weights.max() <= 1.0
        assert 0.0 <= f.subframe < 1.0
    steps = np.diff([f.frame for f in FRAMES])
    assert (steps > 0).all() and np.count_nonzero(steps != 1) == 1  # one gap in the capture


def test_real_values_read_as_big_endian_floats():
    raw = PACKETS[0]
    tail = 1 + 4 + 32 + 4 + 18 + 17
    expected = struct.unpack(">61f", raw[tail:])
    got = np.concatenate([FRAMES[0].weights, FRAMES[0].pose])
    assert got.tolist() == pytest.approx(expected, abs=0)
    assert FRAMES[0].frame == struct.unpack_from(">i", raw, 1 + 4 + 32 + 4 + 18)[0]


def test_builder_reproduces_every_real_packet_bit_for_bit():
    for f, raw in zip(FRAMES, PACKETS):
        assert build_packet(f.device_id, f.weights, f.pose, subject=f.subject, frame=f.frame,
                            subframe=f.subframe, fps=f.fps) == raw


def test_build_packets_matches_build_packet():
    ids = [DEVICE, "0A1B2C3D-0000-4000-8000-0123456789AB"]
    values = np.stack([np.concatenate([FRAMES[i].weights, FRAMES[i].pose]) for i in (3, 4)])
    fast = build_packets(ids, values, subject="s", frame=7, subframe=0.25)
    assert fast == [build_packet(d, v[:52], v[52:], subject="s", frame=7, subframe=0.25) for d, v in zip(ids, values)]


@pytest.mark.parametrize("device", ["DEADC0DE-1337-1337-1337-CAFEBABE", "6F1C2E3A-94B1-4C55-A8B6-2F6D1E0B9A77",
                                    "x", "é" * 10, "D" * MAX_NAME_BYTES])
def test_device_ids_of_any_length(device):
    w = np.linspace(0, 1, 52, dtype=np.float32)
    f = parse_packet(build_packet(device, w, subject=""))
    assert f.device_id == device and f.subject == "" and np.array_equal(f.weights, w)


def test_out_of_range_weights_are_parsed_not_clamped():
    f = parse_packet(build_packet("dev", [1.5] * 26 + [-0.25] * 26))
    assert f.weights.max() == 1.5 and f.weights.min() == -0.25  # clamping is the node's business


# --- damage, each with its reason ----------------------------------------------------------
def test_every_truncation_of_a_real_packet_is_reported():
    raw = PACKETS[0]
    for n in range(len(raw)):
        with pytest.raises(PacketError) as info:
            parse_packet(raw[:n])
        assert info.value.reason == "truncated", (n, str(info.value))
        assert "truncated" in str(info.value)


def test_oversized():
    assert _reason(PACKETS[0] + b"\0") == "oversized"
    assert _reason(b"\x06" + bytes(MAX_PACKET_BYTES)) == "oversized"
    with pytest.raises(ValueError, match="trailing bytes"):
        parse_packet(PACKETS[0] + b"junk")


@pytest.mark.parametrize("version", [0, 5, 7, 255])
def test_wrong_version(version):
    with pytest.raises(PacketError, match=f"version {version}") as info:
        parse_packet(bytes([version]) + PACKETS[0][1:])
    assert info.value.reason == "version"


@pytest.mark.parametrize("offset,length", [(1, -1), (1, 0), (1, 100000), (1, MAX_NAME_BYTES + 1), (37, -5), (37, 1 << 30)])
def test_bad_string_lengths(offset, length):
    raw = bytearray(PACKETS[0])
    raw[offset:offset + 4] = struct.pack(">i", length)
    assert _reason(bytes(raw)) == "length"


def test_string_length_pointing_past_the_end_is_truncation():
    raw = bytearray(PACKETS[0])
    raw[1:5] = struct.pack(">i", 200)
    with pytest.raises(PacketError, match="inside the device id"):
        parse_packet(bytes(raw[:120]))


@pytest.mark.parametrize("count", [0, 52, 60, 62, 255])
def test_wrong_value_count(count):
    raw = bytearray(PACKETS[0])
    raw[1 + 4 + 32 + 4 + 18 + 16] = count
    with pytest.raises(PacketError, match=f"value count {count}"):
        parse_packet(bytes(raw))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("index,name", [(17, "jawOpen"), (0, "eyeBlinkLeft"), (52, "headYaw"), (60, "rightEyeRoll")])
def test_non_finite_values(bad, index, name):
    values = np.zeros(N_VALUES, np.float32)
    values[index] = bad
    with pytest.raises(PacketError, match=name) as info:
        parse_packet(build_packet("dev", values[:52], values[52:]))
    assert info.value.reason == "nonfinite"


def test_non_finite_subframe_and_bad_fps():
    w = np.zeros(52)
    assert _reason(build_packet("dev", w, subframe=math.nan)) == "nonfinite"
    assert _reason(build_packet("dev", w, fps=(60, 0))) == "corrupt"
    assert _reason(build_packet("dev", w, fps=(-60, 1))) == "corrupt"


def test_device_id_not_utf8():
    raw = bytearray(PACKETS[0])
    raw[5] = 0xFF
    with pytest.raises(PacketError, match="not UTF-8") as info:
        parse_packet(bytes(raw))
    assert info.value.reason == "encoding"


def test_empty_datagram():
    with pytest.raises(ValueError, match="truncated"):
        parse_datagram(b"")


# --- the JSON form -------------------------------------------------------------------------
def test_json_by_name_camel_or_pascal_case():
    f = parse_datagram(build_json_packet("phone-1", {"jawOpen": 0.5, "MouthSmileLeft": 0.25}, frame=9))
    names = arkit_names()
    assert f.device_id == "phone-1" and f.frame == 9
    assert f.weights[names.index("jawOpen")] == 0.5 and f.weights[names.index("mouthSmileLeft")] == 0.25
    assert np.count_nonzero(f.weights) == 2 and not f.pose.any()


def test_json_list_with_pose():
    w = np.linspace(0, 1, 52, dtype=np.float32)
    p = np.linspace(-0.5, 0.5, 9, dtype=np.float32)
    f = parse_json_packet(build_json_packet("s", w, p))
    assert np.array_equal(f.weights, w) and np.array_equal(f.pose, p) and f.frame == -1
    assert parse_datagram(b'  \n{"session": "a", "blendshapes": {}}').device_id == "a"


@pytest.mark.parametrize("doc,match", [
    (b"{", "bad JSON"),
    (b"[1, 2]", "must be an object"),
    (b'{"blendshapes": {}}', "session"),
    (b'{"session": "", "blendshapes": {}}', "session"),
    (b'{"session": 5, "blendshapes": {}}', "session"),
    (b'{"session": "a"}', "blendshapes"),
    (b'{"session": "a", "blendshapes": [0.1, 0.2]}', "52"),
    (b'{"session": "a", "blendshapes": {"smile": 1}}', "unknown blendshape"),
    (b'{"session": "a", "blendshapes": {"jawOpen": "x"}}', "numbers"),
    (b'{"session": "a", "blendshapes": {"jawOpen": true}}', "numbers"),
    (b'{"session": "a", "blendshapes": {"jawOpen": NaN}}', "jawOpen"),
    (b'{"session": "a", "blendshapes": {"jawOpen": 1e400}}', "jawOpen"),
    (b'{"session": "a", "blendshapes": {"jawOpen": 1' + b"0" * 400 + b"}}", "too large"),
    (b'{"session": "a", "blendshapes": {}, "pose": [1, 2]}', "'pose'"),
    (b'{"session": "a", "blendshapes": {}, "frame": "x"}', "frame"),
    (b'{"session": "a", "blendshapes": ' + b"[" * 6000 + b"]" * 6000 + b"}", "bad JSON"),
    (b'{"session": "\xff", "blendshapes": {}}', "UTF-8"),
])
def test_bad_json_packets(doc, match):
    with pytest.raises(PacketError, match=match):
        parse_json_packet(doc)


# --- the container file and the export column order ----------------------------------------
def test_container_round_trip_and_damage(tmp_path):
    path = tmp_path / "c.bin"
    path.write_bytes(build_container(PACKETS[:3]))
    assert read_container(path) == PACKETS[:3]
    blob = BIN.read_bytes()
    for bad, match in [(blob[:-1], "truncated"), (blob + b"x", "unexpected bytes"), (b"\x05" + blob[1:], "version"),
                       (b"\x06", "not a packet container")]:
        path.write_bytes(bad)
        with pytest.raises(ValueError, match=match) as info:
            read_container(path)
        assert str(path) in str(info.value)


def test_export_columns_are_the_apple_names_in_export_order():
    cols = export_columns()
    apple = [n[0].upper() + n[1:] for n in arkit_names() + arkit_pose_names()]
    assert len(cols) == 61 and sorted(cols) == sorted(apple) and cols != tuple(apple)
    assert cols.index("JawRight") < cols.index("JawLeft") and cols.index("MouthRight") < cols.index("MouthLeft")
    assert cols[52:] == tuple(apple[52:])


# --- fuzzing: nothing but ValueError, ever ----------------------------------------------------
def _parse_or_value_error(data: bytes) -> None:
    try:
        f = parse_datagram(data)
    except ValueError as exc:
        assert str(exc)
        return
    assert np.isfinite(f.weights).all() and np.isfinite(f.pose).all()
    assert f.weights.shape == (52,) and f.pose.shape == (9,) and f.device_id


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=2 * MAX_PACKET_BYTES))
def test_fuzz_random_bytes(data):
    _parse_or_value_error(data)


@FUZZ
@given(st.binary(max_size=400).map(lambda b: b"\x06" + b))
def test_fuzz_random_bytes_with_the_right_version(data):
    _parse_or_value_error(data)


@FUZZ
@given(st.sampled_from(PACKETS), st.lists(st.tuples(st.integers(0, 319), st.integers(0, 255)), min_size=1, max_size=8),
       st.integers(0, 330), st.binary(max_size=8))
def test_fuzz_mutated_real_packets(raw, flips, cut, extra):
    data = bytearray(raw)
    for pos, value in flips:
        data[pos] = value
    _parse_or_value_error(bytes(data))
    _parse_or_value_error(bytes(data[:cut]) + extra)


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=5), inner, max_size=5),
    max_leaves=20)


@FUZZ
@given(st.fixed_dictionaries({}, optional={
    "session": _json_values | st.text(max_size=8),
    "blendshapes": _json_values | st.lists(st.floats(), min_size=52, max_size=52)
    | st.dictionaries(st.sampled_from(arkit_names() + ["nope"]), st.floats() | st.integers(), max_size=6),
    "pose": _json_values | st.lists(st.floats(), min_size=9, max_size=9),
    "frame": _json_values,
}))
def test_fuzz_json_packets(doc):
    _parse_or_value_error(json.dumps(doc).encode())
