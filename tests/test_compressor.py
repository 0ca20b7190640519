"""compressor and decompressor nodes on real Live Link Face motion: in-process and as processes."""
from __future__ import annotations

import struct
from pathlib import Path

import msgpack
import numpy as np
import pytest

from nodes import wireformat as wf
from runtime import Message
from runtime.recording import RecordingWriter, read_recording
from runtime.testing import NodeHarness, start_graph

CAPTURE = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "livelink" / "llv_dao_packets.bin"
FRAME_NS = 16_666_667
T0 = 7_000_000_000_000


def live_link_capture() -> np.ndarray:
    """The 61 values (52 weights, 9 pose) of each packet; container format in PROVENANCE.md."""
    data = CAPTURE.read_bytes()
    _, count = struct.unpack_from(">BI", data, 0)
    off, rows = 5, []
    for _ in range(count):
        (size,) = struct.unpack_from(">I", data, off)
        p, off = data[off + 4:off + 4 + size], off + 4 + size
        o = 1
        for _ in range(2):  # device id, subject name: int32 length + bytes
            o += 4 + struct.unpack_from(">i", p, o)[0]
        o += 16  # frame number, sub-frame, fps numerator, fps denominator
        rows.append(np.frombuffer(p, ">f4", p[o], o + 1))
    return np.array(rows, dtype=np.float32)


VALUES = live_link_capture()
# two sessions: the capture forwards and backwards, so rows differ and both are real motion
WEIGHTS = np.stack([VALUES[:, :52], VALUES[::-1, :52]], axis=1)
POSE = np.stack([VALUES[:, 52:], VALUES[::-1, 52:]], axis=1)
SESSIONS = ["ana", "ben"]


def arkit(t: int, sessions: list[str] = SESSIONS, pose: bool = True) -> Message:
    rows = [SESSIONS.index(s) for s in sessions]
    arrays = {"weights": WEIGHTS[t, rows]}
    if pose:
        arrays["pose"] = POSE[t, rows]
    return Message("arkit/blendshapes", None, arrays, T0 + t * FRAME_NS, list(sessions))


def within_half_step(out: np.ndarray, x: np.ndarray, bits: int, lo: float, hi: float) -> bool:
    return bool(np.all(np.abs(out.astype(np.float64) - x) <= wf.step(bits, lo, hi) / 2 + 1e-6))


def flags(msg: Message) -> list[int]:
    return [msgpack.unpackb(p)[1] for p in msg.data["packets"]]


def test_recorded_capture_round_trips_within_half_a_step():
    comp, decomp = NodeHarness("compressor", bits=8, pose_bits=12, keyframe_interval=30), NodeHarness("decompressor")
    for t in range(len(VALUES)):
        [(_, packets)] = comp.feed("in", arkit(t))
        assert packets.caps == "avatar/packet" and packets.session == SESSIONS and packets.pts_ns == T0 + t * FRAME_NS
        [(_, out)] = decomp.feed("in", packets)
        assert out.caps == "arkit/blendshapes" and out.session == SESSIONS
        assert within_half_step(out.arrays["weights"], WEIGHTS[t], 8, *wf.WEIGHT_RANGE)
        assert within_half_step(out.arrays["pose"], POSE[t], 12, *wf.POSE_RANGE)
    assert comp.node.stats()["keyframes"] == 2 * 6
    assert decomp.node.stats()["decoded"] == 2 * len(VALUES) and decomp.node.stats()["gaps"] == 0


@pytest.mark.parametrize("ref_interval, limit", [(0, 60), (1, 31)])
def test_real_capture_bytes_per_frame_at_8_bits(ref_interval, limit):
    """A size regression guard (measured: 57.5 and 29.5); tools/wire_size.py prints the full table."""
    comp = NodeHarness("compressor", bits=8, ref_interval=ref_interval)
    for t in range(len(VALUES)):
        comp.feed("in", arkit(t, ["ana"], pose=False))
    stats = comp.node.stats()
    assert stats["bytes_per_packet"] < limit < 208


def test_force_keyframe_param_keyframes_every_session_once_then_resets():
    comp = NodeHarness("compressor")
    assert flags(comp.feed("in", arkit(0))[0][1]) == [3, 3]
    assert flags(comp.feed("in", arkit(1))[0][1]) == [0, 0]
    comp.set_params(force_keyframe=True)
    assert comp.node.p.force_keyframe is False
    assert flags(comp.feed("in", arkit(2))[0][1]) == [3, 3]
    assert flags(comp.feed("in", arkit(3))[0][1]) == [0, 0]


def test_keyframe_request_pad_asks_for_one_session():
    comp = NodeHarness("compressor")
    comp.feed("in", arkit(0))
    assert comp.feed("requests", Message("avatar/request", {"keyframe": ["ben", "nobody"]})) == []
    assert flags(comp.feed("in", arkit(1))[0][1]) == [0, 3]
    assert comp.node.stats()["keyframe_requests"] == 2


def test_lost_packets_wait_for_keyframe_then_recover_exactly():
    comp, decomp = NodeHarness("compressor", ref_interval=1), NodeHarness("decompressor")
    for t in range(4):
        decomp.feed("in", comp.feed("in", arkit(t))[0][1])
    lost = comp.feed("in", arkit(4))[0][1]
    only_ana = lost.replace(session=["ana"], data={"packets": lost.data["packets"][:1]})
    decomp.feed("in", only_ana)  # ben's packet never arrives
    [(_, out)] = decomp.feed("in", comp.feed("in", arkit(5))[0][1])
    assert out.session == ["ana"]  # ben is held back, not guessed
    stats = decomp.node.stats()
    assert stats["gaps"] == 1 and stats["lost"] == 1 and stats["waiting_for_keyframe"] == ["ben"]
    assert any("ben: 1 packet(s) lost; waiting for a keyframe" in text for _, text, _ in decomp.bus)
    comp.feed("requests", Message("avatar/request", {"keyframe": stats["waiting_for_keyframe"]}))
    [(_, out)] = decomp.feed("in", comp.feed("in", arkit(6))[0][1])
    assert out.session == SESSIONS and decomp.node.stats()["waiting"] == 0
    exact = wf.dequantize(wf.quantize(WEIGHTS[6, 1], 8, *wf.WEIGHT_RANGE), 8, *wf.WEIGHT_RANGE)
    assert np.array_equal(out.arrays["weights"][1], exact)


def test_morph_names_come_back_as_morphs_cc4():
    names = [f"Morph_{i}" for i in range(52)]
    comp, decomp = NodeHarness("compressor"), NodeHarness("decompressor")
    for t in range(3):
        msg = Message("morphs/cc4", {"names": names}, {"weights": WEIGHTS[t]}, T0 + t * FRAME_NS, SESSIONS)
        [(_, out)] = decomp.feed("in", comp.feed("in", msg)[0][1])
        assert out.caps == "morphs/cc4" and out.data == {"names": names} and "pose" not in out.arrays
        assert within_half_step(out.arrays["weights"], WEIGHTS[t], 8, 0.0, 1.0)


def test_malformed_input_is_dropped_with_a_warning():
    comp, decomp = NodeHarness("compressor"), NodeHarness("decompressor")
    assert comp.feed("in", Message("morphs/cc4", None, {"weights": WEIGHTS[0]}, T0, SESSIONS)) == []
    assert comp.feed("in", Message("arkit/blendshapes", None, {"weights": WEIGHTS[0, :, :50]}, T0, SESSIONS)) == []
    assert comp.node.stats()["rejected"] == 2 and len(comp.bus) == 2
    good = comp.feed("in", arkit(0))[0][1]
    broken = good.replace(data={"packets": [b"\x93\x01\x02", good.data["packets"][1]]})
    [(_, out)] = decomp.feed("in", broken)
    assert out.session == ["ben"] and decomp.node.stats()["malformed"] == 1
    assert decomp.feed("in", good.replace(data={"packets": "nope"})) == []
    assert decomp.node.stats()["bad_messages"] == 1 and decomp.bus


GRAPH = """
name: wire_round_trip
args: {src: in.msgpack, dst: out.msgpack}
link_defaults: {policy: block, size: 16}
nodes:
  play: {type: player, params: {path: "${src}", caps: arkit/blendshapes, speed: 0}}
  comp: {type: compressor, params: {bits: 8, keyframe_interval: 50}}
  decomp: decompressor
  rec: {type: recorder, params: {path: "${dst}"}}
links:
  - play -> comp.in
  - comp -> decomp
  - decomp -> rec
"""


def test_graph_of_processes_round_trips_the_capture(tmp_path):
    src, dst = tmp_path / "in.msgpack", tmp_path / "out.msgpack"
    writer = RecordingWriter(src)
    for t in range(len(VALUES)):
        writer.write(arkit(t), T0 + t * FRAME_NS)
    writer.close()
    runner = start_graph(GRAPH, src=src, dst=dst)
    try:
        assert runner.wait(60), "the graph did not reach EOS"
    finally:
        runner.stop(drain=False)
    assert runner.exit_code == 0
    out = read_recording(dst)
    assert len(out) == len(VALUES)
    for t, msg in enumerate(out):
        assert msg.caps == "arkit/blendshapes" and msg.session == SESSIONS
        assert within_half_step(msg.arrays["weights"], WEIGHTS[t], 8, *wf.WEIGHT_RANGE)
        assert within_half_step(msg.arrays["pose"], POSE[t], 12, *wf.POSE_RANGE)
