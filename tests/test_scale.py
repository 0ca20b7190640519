"""Many sessions through one real graph: devices join and leave while it runs, and the others never skip a frame.

200 simulated Live Link Face devices send real v6 packets over UDP on 127.0.0.1 to a running
``arkit_source -> mapper -> blender -> lod -> compressor -> recorder`` graph (every node its own
process). Then half of them go quiet (they time out and leave every node, whose state arrays give
their rows back) while 100 new ones join (the arrays grow), and later 50 more join (reusing freed
rows). The compressor's output is decoded per session with ``nodes.wire.Decoder``: the
sessions that stayed appear in every batch and their wire seqs have no gap. No speed is asserted.
"""
from __future__ import annotations

import socket
import sys
import threading
from pathlib import Path

from nodes.livelink import build_packets
from nodes.wire import Decoder
from runtime.recording import read_recording
from runtime.testing import start_graph
from tests.helpers import paced, wait_until

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from llf_send import device_ids, synthetic_values  # noqa: E402

GRAPH = """
name: scale
args: {out: out.msgpack}
link_defaults: {policy: block, size: 64}
nodes:
  capture: {type: arkit_source, params: {host: 127.0.0.1, port: 0, rate: 60, session_timeout: 0.4}}
  retarget: {type: mapper, params: {profile: identity}}
  face: {type: blender, params: {rate: 60, session_timeout_s: 0.6}}  # on its timer: every batch holds every session
  detail: {type: lod, params: {session_timeout: 0.6}}
  encode: {type: compressor, params: {keyframe_interval: 120, idle_s: 0.6}}
  rec: {type: recorder, params: {path: "${out}"}}
links:
  - capture -> retarget -> face.capture
  - face -> detail -> encode.in
  - encode -> rec
"""

IDS = device_ids(350)
STAY, GONE, NEW, LATE = IDS[:100], IDS[100:200], IDS[200:300], IDS[300:350]


class Devices(threading.Thread):
    """Sends one packet per device in ``self.active`` every 1/60 s until stopped."""

    def __init__(self, port: int):
        super().__init__(daemon=True)
        self.port = port
        self.active: list[str] = []
        self.stop = threading.Event()
        self.frames = 0

    def run(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        index = {d: i for i, d in enumerate(IDS)}
        try:
            for _ in paced(60, self.stop.is_set):  # a phone's pace, kept by deadline
                ids = list(self.active)
                values = synthetic_values(self.frames / 60, len(IDS))[[index[d] for d in ids]]
                for p in build_packets(ids, values, frame=self.frames):
                    sock.sendto(p, ("127.0.0.1", self.port))
                self.frames += 1
        finally:
            sock.close()


def _wait(what: str, cond, timeout: float = 60.0) -> None:
    wait_until(cond, timeout, 0.1, what)


def test_sessions_join_and_leave_while_the_others_flow_without_gaps(tmp_path) -> None:
    out = tmp_path / "packets.msgpack"
    runner = start_graph(GRAPH, out=out)
    devices = None
    try:
        stats = lambda name: runner.stats()["nodes"][name]["node"]  # noqa: E731

        def record_batches(n: int, what: str) -> None:  # the graph runs n ticks with these sessions
            start = runner.stats()["nodes"]["rec"]["in"]
            _wait(f"{n} batches recorded {what}", lambda: runner.stats()["nodes"]["rec"]["in"] >= start + n)

        devices = Devices(stats("capture")["port"])
        devices.active = STAY + GONE
        devices.start()
        _wait("200 sessions at the compressor", lambda: stats("encode")["sessions"] == 200)
        record_batches(30, "with the first 200")
        devices.active = STAY + NEW  # half go quiet, 100 new ones join
        _wait("the quiet ones to leave every node", lambda: stats("encode")["sessions"] == 200
              and stats("face")["sessions"] == 200 and stats("capture")["left"] == 100)
        record_batches(30, "after the first change")
        devices.active = STAY + NEW + LATE  # 50 more, in rows the quiet ones gave back
        _wait("250 sessions at the compressor", lambda: stats("encode")["sessions"] == 250)
        record_batches(30, "with all 250")
        capture = stats("capture")
        links = runner.stats()["links"]
    finally:
        if devices is not None:
            devices.stop.set()
            devices.join(5)
        runner.stop()

    assert capture["joined"] == 350 and capture["left"] == 100 and capture["bad"] == 0
    assert all(not link["drops"] and not link["gaps"] for link in links.values()), links
    batches = [m for m in read_recording(out) if m.caps == "avatar/packet"]
    first_full = next(i for i, m in enumerate(batches) if set(STAY) <= set(m.session))
    assert len(batches) - first_full > 60
    decoders: dict[str, Decoder] = {}
    last_seq: dict[str, int] = {}
    keyframes: dict[str, int] = {}
    for i, m in enumerate(batches):
        if i > first_full:  # the sessions that stayed are in every batch: no hiccup when others come and go
            assert set(STAY) <= set(m.session), f"batch {i} misses {sorted(set(STAY) - set(m.session))[:3]}"
        assert len(set(m.session)) == len(m.session)
        assert m.arrays["arrival_ns"].shape == (len(m.session),)
        for sid, packet in zip(m.session, m.data["packets"]):
            dec = decoders.setdefault(sid, Decoder())
            frame = dec.decode(packet)
            assert frame is not None, f"{sid}: packet {dec.counts['packets']} not decodable ({dec.status})"
            assert frame.session == sid
            if sid in last_seq:  # every session's wire seq goes up by one, packet after packet
                assert frame.seq == (last_seq[sid] + 1) % 65536, f"{sid}: seq {last_seq[sid]} -> {frame.seq}"
            else:
                assert frame.keyframe  # a session starts with a keyframe
            last_seq[sid] = frame.seq
            keyframes[sid] = keyframes.get(sid, 0) + frame.keyframe
    assert set(decoders) == set(IDS)
    assert all(d.counts["gaps"] == 0 and d.counts["refused"] == 0 for d in decoders.values())
    assert not set(GONE) & set(batches[-1].session)  # the quiet ones left
    assert set(batches[-1].session) == set(STAY + NEW + LATE)
