"""bin: node types in one process, each one's output handed to the next as a link delivers it."""
from __future__ import annotations

import asyncio
import json
import socket
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import websockets

from nodes import wire as wf
from nodes.livelink import SAMPLE_CAPTURE, build_packets, parse_packet, read_container
from runtime import Message
from runtime.errors import GraphError, ParamRefused
from runtime.graph import parse_graph
from runtime.recording import read_recording
from runtime.testing import NodeHarness, start_graph
from runtime.validate import validate_graph
from tests.helpers import paced, wait_until

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from llf_send import device_ids, synthetic_values  # noqa: E402

TAKE = ROOT / "tests" / "data" / "llf_dao_take.csv"
FRAMES = [parse_packet(p) for p in read_container(SAMPLE_CAPTURE)][:90]
FRAME_NS = 16_666_667
SESSIONS = ["PHONE-A", "PHONE-B", "PHONE-C"]

STEPS = [
    {"name": "retarget", "type": "mapper", "params": {"profile": "identity"}},
    {"name": "face", "type": "blender", "input": "capture", "params": {"rate": 60, "tick_on_capture": True}},
    {"name": "detail", "type": "lod"},
    {"name": "encode", "type": "compressor", "params": {"keyframe_interval": 120, "ref_interval": 1}},
]


def batch(i: int, sessions: list[str]) -> Message:
    """Frame i of the real capture for these phones (each from its own offset), as arkit_source sends it."""
    rows = [FRAMES[(i + 7 * k) % len(FRAMES)] for k in range(len(sessions))]
    weights = np.clip(np.stack([f.weights for f in rows]), 0, 1).astype(np.float32)
    return Message("arkit/blendshapes", {"active": [True] * len(sessions)},
                   {"weights": weights, "pose": np.stack([f.pose for f in rows]).astype(np.float32),
                    "arrival_ns": np.full(len(sessions), 10**12 + i * FRAME_NS, dtype=np.int64)},
                   pts_ns=10**12 + i * FRAME_NS, session=list(sessions))


def _down(apart: list[NodeHarness], pads: list[str], k: int, msgs: list[Message]) -> list[Message]:
    """What the separate nodes from the k-th on make of these messages."""
    for h, pad in zip(apart[k:], pads[k:]):
        msgs = [m for inp in msgs for _, m in h.feed(pad, inp)]
    return msgs


def test_a_bin_sends_what_the_same_nodes_send_one_after_the_other():
    bin = NodeHarness("bin", nodes=STEPS)
    apart = [NodeHarness(s["type"], **s.get("params", {})) for s in STEPS]
    pads = [s.get("input", "in") for s in STEPS]
    got: list[Message] = []
    want: list[Message] = []
    for i in range(90):
        sessions = SESSIONS if i % 30 < 20 else SESSIONS[:2]  # one phone goes quiet for a while, then comes back
        msg = batch(i, sessions)
        got += [m for _, m in bin.feed("in", msg)]
        want += _down(apart, pads, 0, [msg])
        got += [m for _, m in bin.advance(1 / 60)]  # the blender's timer: frames of the quiet phone
        for k, h in enumerate(apart):
            want += _down(apart, pads, k + 1, [m for _, m in h.advance(1 / 60)])
    assert len(got) == len(want) >= 90
    for g, w in zip(got, want):
        assert g.caps == w.caps == "avatar/packet" and g.session == w.session and g.pts_ns == w.pts_ns
        assert g.data["packets"] == w.data["packets"]  # byte for byte
        assert np.array_equal(g.arrays["keyframe"], w.arrays["keyframe"]) and np.array_equal(g.arrays["seq"], w.arrays["seq"])
    stats = bin.node.stats()
    assert set(stats["nodes"]) == {"retarget", "face", "detail", "encode"}
    assert stats["packets"] == stats["nodes"]["encode"]["packets"] == sum(len(m.session) for m in got)
    assert stats["nodes"]["retarget"]["mapped"] == 90


def test_a_node_inside_a_bin_cannot_change_what_the_one_before_it_keeps():
    """The next node gets read-only arrays and data of its own, as from a link (either way round)."""
    msg = batch(0, SESSIONS)
    got = msg.delivered()
    assert not got.arrays["weights"].flags.writeable and msg.arrays["weights"].flags.writeable
    with pytest.raises(ValueError):
        got.arrays["weights"][0, 0] = 5.0
    got.data["active"][0] = False
    assert msg.data["active"] == [True, True, True] and got.session == msg.session
    msg.arrays["weights"][0, 0] = 0.75  # nor the one before it change what the next one keeps
    assert got.arrays["weights"][0, 0] != 0.75


def test_the_requests_pad_reaches_every_node_of_the_bin_that_takes_requests():
    bin = NodeHarness("bin", nodes=STEPS)
    for i in range(30):
        bin.feed("in", batch(i, SESSIONS))
        bin.advance(1 / 60)
    bin.feed("requests", Message("avatar/request", {"keyframe": ["PHONE-B"]}))  # the compressor's
    bin.feed("requests", Message("avatar/request", {"lod": {"PHONE-A": 2}}))  # the lod's
    keyframes = {s: 0 for s in SESSIONS}
    for i in range(30, 36):
        for _, out in bin.feed("in", batch(i, SESSIONS)):
            for sid, key in zip(out.session, out.arrays["keyframe"].tolist()):
                keyframes[sid] += key
        bin.advance(1 / 60)
    assert keyframes == {"PHONE-A": 0, "PHONE-B": 1, "PHONE-C": 0}
    stats = bin.node.stats()["nodes"]
    assert stats["encode"]["keyframe_requests"] == 1 and stats["encode"]["keyframes_requested"] == 1
    assert stats["detail"]["requests"] == 1 and stats["detail"]["per_level"] == [2, 0, 1, 0]
    # what the lod keeps for its next process (Node.keep) is kept in the bin's nodes, for the bin's
    kept = {e["name"]: e.get("params", {}) for e in bin.kept["nodes"]}
    assert kept["detail"] == {"levels": {"PHONE-A": 2}} and kept["encode"] == STEPS[3]["params"]


@pytest.mark.parametrize("steps, named", [
    ([{"name": "a", "type": "nosuch"}], "nodes[0] (a): unknown node type 'nosuch'"),
    ([{"name": "encode", "type": "compressor", "params": {"bits": 99}}], "nodes[0] (encode): "),
    ([{"name": "x", "type": "mapper"}, {"name": "x", "type": "lod"}], "nodes[1] (x): the name is used twice"),
    ([{"name": "f", "type": "blender", "input": "nope"}], "nodes[0] (f): no input pad 'nope'"),
    ([{"name": "m", "type": "mapper", "colour": 1}], "nodes[0]: unknown key(s) colour"),
    ([{"name": "c", "type": "bin"}], "nodes[0] (c): a bin cannot hold a bin"),
    ([], "at least one"),
    ([{"name": "m", "type": "mapper"}, {"name": "t", "type": "testsrc"}], "nodes[1] (t): a source (testsrc) can only start a bin"),
    ([{"name": "c", "type": "compressor"}, {"name": "m", "type": "mapper"}],
     "nodes[1] (m): its 'in' takes 'arkit/blendshapes' but c sends 'avatar/packet'"),
])
def test_a_bad_bin_is_refused_before_anything_starts_naming_the_entry(steps, named):
    graph = parse_graph(json.dumps({"name": "bad_bin", "nodes": {"src": {"type": "arkit_replay", "params": {"path": str(TAKE)}},
                                                        "pipe": {"type": "bin", "params": {"nodes": steps}},
                                                        "sink": {"type": "fakesink"}},
                                    "links": ["src -> pipe.in", "pipe.out -> sink.in"]}), "<test>")
    with pytest.raises(GraphError) as exc:
        validate_graph(graph)
    assert "pipe" in str(exc.value) and named in str(exc.value)


def test_a_bin_takes_what_its_first_node_takes():
    graph = parse_graph(json.dumps({"name": "bad_link", "nodes": {
        "voice": {"type": "testsrc", "params": {"caps": "audio/pcm"}},
        "pipe": {"type": "bin", "params": {"nodes": STEPS}}, "sink": {"type": "fakesink"}},
        "links": ["voice -> pipe.in", "pipe.out -> sink.in"]}), "<test>")
    with pytest.raises(GraphError) as exc:
        validate_graph(graph)
    assert "caps mismatch on link" in str(exc.value) and "pipe.in accepts 'arkit/blendshapes'" in str(exc.value)


def test_a_bin_needs_its_in_linked_unless_a_source_starts_it():
    def problems(steps: list) -> str:
        graph = parse_graph(json.dumps({"name": "lone", "nodes": {"pipe": {"type": "bin", "params": {"nodes": steps}},
                                                                   "sink": {"type": "fakesink"}},
                                        "links": ["pipe.out -> sink.in"]}), "<test>")
        try:
            validate_graph(graph)
        except GraphError as exc:
            return str(exc)
        return ""

    assert "node 'pipe' (bin): required input 'in' is not connected" in problems(STEPS)
    assert problems([{"name": "src", "type": "testsrc", "params": {"caps": "arkit/blendshapes"}}, *STEPS[:1]]) == ""


GRAPH = """
name: bin_test
args: {take: take.csv, out: rec.msgpack}
nodes:
  play: {type: arkit_replay, params: {path: "${take}", session: dao, loop: true}}
  pipe:
    type: bin
    params:
      nodes:
        - {name: retarget, type: mapper, params: {profile: identity}}
        - {name: face, type: blender, input: capture, params: {rate: 60, tick_on_capture: true}}
        - {name: detail, type: lod}
        - {name: encode, type: compressor, params: {keyframe_interval: 120, ref_interval: 1}}
  rec: {type: recorder, params: {path: "${out}"}}
links:
  - {from: play.out, to: pipe.in, policy: block, size: 16}
  - {from: pipe.out, to: rec.in, policy: block, size: 16}
"""


def test_a_bin_in_a_running_graph_encodes_the_take_in_one_process(tmp_path):
    out = tmp_path / "rec.msgpack"
    runner = start_graph(GRAPH, take=TAKE, out=out)
    try:
        inner = lambda: runner.stats(["pipe"])["nodes"]["pipe"]["node"]["nodes"]  # noqa: E731
        wait_until(lambda: inner()["retarget"]["mapped"] >= 90 and inner()["encode"]["packets"] >= 60, timeout=30)
        assert inner()["face"]["frames"] >= 60 and inner()["detail"]["rows_out"] >= 60
        pids = runner.pids()
        assert len({pids["play"], pids["pipe"], pids["rec"]}) == 3  # four node types, one process
        with pytest.raises(ParamRefused):  # the bin's nodes change by a hot-swap, not live
            runner.set_params("pipe", nodes=STEPS[:1])
    finally:
        runner.stop()
    msgs = read_recording(out)
    packets = [p for m in msgs for p in m.data["packets"]]
    assert len(packets) >= 60 and all(m.caps == "avatar/packet" and m.session == ["dao"] for m in msgs)
    dec = wf.Decoder()
    frames = [dec.decode(p) for p in packets]
    assert all(f is not None for f in frames) and frames[0].keyframe
    weights = np.stack([f.weights for f in frames])
    assert weights.shape == (len(packets), 52) and 0.0 <= weights.min() and weights.max() <= 1.0 and weights.std() > 0.01


GRAPH_ALL = """
name: bin_all
nodes:
  all:
    type: bin
    params:
      nodes:
        - {name: capture, type: arkit_source, params: {host: 127.0.0.1, port: 0}}
        - {name: retarget, type: mapper, params: {profile: identity}}
        - {name: face, type: blender, input: capture, params: {rate: 60, tick_on_capture: true}}
        - {name: detail, type: lod}
        - {name: encode, type: compressor, params: {keyframe_interval: 600, ref_interval: 1}}
        - {name: web, type: websocket_sink, params: {host: 127.0.0.1, port: 0}}
"""
PHONES = device_ids(3)


def _phones(port: int, stop: threading.Event) -> None:
    """Three phones at 60 Hz until stopped."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for frame in paced(60, stop.is_set):
            for packet in build_packets(PHONES, synthetic_values(frame / 60, len(PHONES)), frame=frame):
                sock.sendto(packet, ("127.0.0.1", port))


def test_a_whole_capture_pipeline_in_one_bin_serves_a_viewer_and_takes_its_requests_inside():
    """Source to sink in one process: the sink's keyframe and level requests reach the compressor
    and the lod inside the bin (a viewer joining mid-stream gets its keyframe at once, not after
    the 10 s periodic one)."""
    runner = start_graph(GRAPH_ALL)
    stop = threading.Event()
    phones = None
    try:
        inner = lambda: runner.stats(["all"])["nodes"]["all"]["node"]["nodes"]  # noqa: E731
        ports = wait_until(lambda: inner()["web"]["port"] and (inner()["capture"]["port"], inner()["web"]["port"]), 10)
        phones = threading.Thread(target=_phones, args=(ports[0], stop), daemon=True)
        phones.start()
        wait_until(lambda: inner()["encode"]["packets"] >= 3 * 90, 20, what="1.5 s of all three phones encoded")

        async def view() -> tuple[list, list[int]]:
            url = f"ws://127.0.0.1:{ports[1]}/ws?session={PHONES[1]}&lod=2"
            async with websockets.connect(url) as ws:
                dec, frames = wf.Decoder(), []
                async with asyncio.timeout(10):
                    while len(frames) < 30:
                        m = await ws.recv()
                        if isinstance(m, bytes):
                            frames.append(dec.decode(m))
                return frames, inner()["detail"]["per_level"]  # while the viewer watches at level 2

        frames, levels = asyncio.run(view())
        assert frames[0] is not None and frames[0].keyframe and all(f is not None for f in frames)
        assert {f.session for f in frames} == {PHONES[1]}
        assert inner()["encode"]["keyframe_requests"] >= 1 and inner()["encode"]["keyframes_requested"] >= 1
        assert inner()["detail"]["requests"] >= 1 and levels[2] == 1
        assert list(runner.pids()) == ["all"] and not runner.bus.messages("ERROR")
    finally:
        stop.set()
        if phones is not None:
            phones.join(5)
        runner.stop()
