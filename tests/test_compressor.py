"""compressor and decompressor nodes on real Live Link Face motion: in-process and as processes."""
from __future__ import annotations

import numpy as np
import pytest

from nodes import livelink
from nodes import wire as wf
from nodes.blender import Blender
from nodes.face import OneEuro
from nodes.livelink import SAMPLE_CAPTURE  # noqa: E402
from runtime import Message
from runtime.recording import RecordingWriter, read_recording
from runtime.testing import NodeHarness, start_graph

CAPTURE = SAMPLE_CAPTURE
FRAME_NS = 16_666_667
T0 = 7_000_000_000_000

CAPTURED = [livelink.parse_packet(p) for p in livelink.read_container(CAPTURE)]
VALUES = np.array([np.concatenate([f.weights, f.pose]) for f in CAPTURED], dtype=np.float32)  # 52 weights, 9 pose
# two sessions: the capture forwards and backwards, so rows differ and both are real motion
WEIGHTS = np.stack([VALUES[:, :52], VALUES[::-1, :52]], axis=1)
POSE = np.stack([VALUES[:, 52:], VALUES[::-1, 52:]], axis=1)
SESSIONS = ["ana", "ben"]


def smoothed_capture() -> np.ndarray:
    """What the blender makes of the capture's weights: one frame per 1/60 s tick (the last one held over the
    capture's gap), clipped to 0..1, through its One Euro filter at its default params."""
    frames = np.array([f.frame for f in CAPTURED])
    ticks = np.searchsorted(frames, np.arange(frames[0], frames[-1] + 1), side="right") - 1
    euro = OneEuro(61, *(Blender.params[k].default for k in ("min_cutoff", "beta", "d_cutoff")))
    out = [euro(np.concatenate([np.clip(v[:52], 0, 1), v[52:]])[None], 1 / 60)[0, :52] for v in VALUES[ticks]]
    return np.clip(np.array(out), 0, 1).astype(np.float32)


def arkit(t: int, sessions: list[str] = SESSIONS, pose: bool = True) -> Message:
    rows = [SESSIONS.index(s) for s in sessions]
    arrays = {"weights": WEIGHTS[t, rows]}
    if pose:
        arrays["pose"] = POSE[t, rows]
    return Message("arkit/blendshapes", None, arrays, T0 + t * FRAME_NS, list(sessions))


def within_half_step(out: np.ndarray, x: np.ndarray, bits: int, lo: float, hi: float) -> bool:
    return bool(np.all(np.abs(out.astype(np.float64) - x) <= wf.step(bits, lo, hi) / 2 + 1e-6))


def keyframes(msg: Message) -> list[bool]:
    parsed = [wf.parse_packet(p) for p in msg.data["packets"]]
    assert msg.arrays["keyframe"].tolist() == [p.keyframe for p in parsed]  # the compressor states what it sent
    assert msg.arrays["seq"].tolist() == [p.seq for p in parsed]
    return [p.keyframe for p in parsed]


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


@pytest.mark.parametrize("ref_interval, limit", [(0, 54), (1, 21)])
def test_raw_capture_bytes_per_frame_at_8_bits(ref_interval, limit):
    """A size regression guard on the phone's frames as they came (measured: 51.7 and 20.3 B);
    tools/wire_size.py prints the full table."""
    comp = NodeHarness("compressor", bits=8, ref_interval=ref_interval)
    for t in range(len(VALUES)):
        comp.feed("in", arkit(t, ["ana"], pose=False))
    assert comp.node.stats()["bytes_per_packet"] < limit < 208


def test_smoothed_capture_is_at_most_20_bytes_a_frame_at_8_bits():
    """The benchmark target, on what the compressor sees in a graph: the capture after the blender's
    One Euro filter (measured: 17.9 B a frame, keyframes every 120 frames included), decoded within half a step."""
    w = smoothed_capture()
    comp, decomp = NodeHarness("compressor", bits=8), NodeHarness("decompressor")
    for t in range(len(w)):
        msg = Message("arkit/blendshapes", None, {"weights": w[t:t + 1]}, T0 + t * FRAME_NS, ["ana"])
        [(_, out)] = decomp.feed("in", comp.feed("in", msg)[0][1])
        assert within_half_step(out.arrays["weights"], w[t:t + 1], 8, *wf.WEIGHT_RANGE)
    stats = comp.node.stats()
    assert stats["keyframes"] == 2 and stats["bytes_per_packet"] <= 20


def test_capture_through_the_real_nodes_is_at_most_20_bytes_a_frame_at_8_bits():
    """The same target through mapper (identity) -> blender (defaults) -> lod (L0) -> compressor -> decompressor,
    on simulated time (measured: 18.3 B a frame for the 52 weights, 21.9 B with the blender's pose at 12 bits)."""
    mapper, blender, lod = NodeHarness("mapper", profile="identity"), NodeHarness("blender"), NodeHarness("lod")
    weights_only, with_pose = NodeHarness("compressor", bits=8), NodeHarness("compressor", bits=8)
    decomp = NodeHarness("decompressor")
    frames = [f.frame for f in CAPTURED]
    for n in range(frames[0], frames[-1] + 1):
        if n in frames:  # the capture has a gap of 8 frames: the blender holds the last one
            for _, m in mapper.feed("in", arkit(frames.index(n), ["ana"])):
                blender.feed("capture", m)
        for _, m in blender.advance(1 / 60):
            for _, m2 in lod.feed("in", m):
                with_pose.feed("in", m2)
                weights = m2.replace(arrays={"weights": m2.arrays["weights"]})
                [(_, out)] = decomp.feed("in", weights_only.feed("in", weights)[0][1])
                assert within_half_step(out.arrays["weights"], m2.arrays["weights"], 8, *wf.WEIGHT_RANGE)
    stats = weights_only.node.stats()
    assert stats["packets"] == frames[-1] - frames[0] + 1 and stats["bytes_per_packet"] <= 20
    assert with_pose.node.stats()["bytes_per_packet"] < 24


def test_force_keyframe_param_keyframes_every_session_once_then_resets():
    comp = NodeHarness("compressor")
    assert keyframes(comp.feed("in", arkit(0))[0][1]) == [True, True]
    assert keyframes(comp.feed("in", arkit(1))[0][1]) == [False, False]
    comp.set_params(force_keyframe=True)
    assert comp.node.p.force_keyframe is False
    assert keyframes(comp.feed("in", arkit(2))[0][1]) == [True, True]
    assert keyframes(comp.feed("in", arkit(3))[0][1]) == [False, False]


def test_keyframe_request_pad_asks_for_one_session():
    comp = NodeHarness("compressor", keyframe_min_gap=0)  # at once, even right after a keyframe
    comp.feed("in", arkit(0))
    assert comp.feed("requests", Message("avatar/request", {"keyframe": ["ben", "nobody"]})) == []
    assert keyframes(comp.feed("in", arkit(1))[0][1]) == [False, True]
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
