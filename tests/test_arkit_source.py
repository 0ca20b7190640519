"""arkit_source: real UDP datagrams on 127.0.0.1, in-process and through the real runtime."""
from __future__ import annotations

import select
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from nodes.arkit_source import socket_drops
from nodes.livelink import SAMPLE_CAPTURE, build_json_packet, build_packet, parse_packet, read_container
from runtime.recording import read_recording
from runtime.testing import NodeHarness, start_graph
from tests.helpers import paced, wait_until

ROOT = Path(__file__).resolve().parents[1]
BIN = SAMPLE_CAPTURE
PACKETS = read_container(BIN)
FRAMES = [parse_packet(p) for p in PACKETS]
DEV32 = "DEADC0DE-1337-1337-1337-CAFEBABE"
DEV36 = "6F1C2E3A-94B1-4C55-A8B6-2F6D1E0B9A77"
TICK = 1 / 60


@pytest.fixture
def udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    yield s
    s.close()


@pytest.fixture
def src():
    h = NodeHarness("arkit_source", "src", host="127.0.0.1", port=0, rate=60.0, batch="all")  # every session every tick
    yield h
    h.close()


def _port(h: NodeHarness) -> int:
    return h.node.stats()["port"]


def _deliver(h: NodeHarness, udp: socket.socket, *datagrams: bytes, expect: int | None = None) -> None:
    """Send datagrams to the node and run its watcher until it has read them all."""
    target = ("127.0.0.1", _port(h))
    want = h.node.received + (len(datagrams) if expect is None else expect)
    for d in datagrams:
        udp.sendto(d, target)
    deadline = time.monotonic() + 10
    while h.node.received < want:
        assert time.monotonic() < deadline, "datagrams did not arrive"
        select.select([h.node.sock], [], [], 0.1)
        h.watched.get(h.node.sock, h.node._drain)()  # after a read the node pauses its watch (rate > 0)


def _only(out):
    assert len(out) == 1
    pad, msg = out[0]
    assert pad == "out" and msg.caps == "arkit/blendshapes"
    return msg


# --- in-process ---------------------------------------------------------------------------------
def test_two_devices_make_one_batch(src, udp):
    b = np.linspace(0, 1, 52, dtype=np.float32)
    pose = np.linspace(-0.3, 0.3, 9, dtype=np.float32)
    _deliver(src, udp, PACKETS[0], build_packet(DEV36, b, pose, frame=42))
    msg = _only(src.advance(TICK))
    assert msg.session == [DEV32, DEV36]
    assert msg.data == {"active": [True, True]}
    assert msg.arrays["weights"].dtype == np.float32 and msg.arrays["weights"].shape == (2, 52)
    assert msg.arrays["pose"].dtype == np.float32 and msg.arrays["pose"].shape == (2, 9)
    assert np.array_equal(msg.arrays["weights"], np.stack([FRAMES[0].weights, b]))
    assert np.array_equal(msg.arrays["pose"], np.stack([FRAMES[0].pose, pose]))
    assert msg.arrays["frame"].tolist() == [FRAMES[0].frame, 42]
    assert msg.arrays["arrival_ns"].dtype == np.int64 and (msg.arrays["arrival_ns"] <= msg.pts_ns).all()
    joined = [f["session"] for level, _, f in src.bus if level == "SESSION_JOINED"]
    assert joined == [DEV32, DEV36]
    # no new packets: the sessions stay, holding their last values, marked inactive
    again = _only(src.advance(TICK))
    assert again.data == {"active": [False, False]} and np.array_equal(again.arrays["weights"], msg.arrays["weights"])
    _deliver(src, udp, PACKETS[1])
    third = _only(src.advance(TICK))
    assert third.data == {"active": [True, False]}
    assert np.array_equal(third.arrays["weights"][0], FRAMES[1].weights)


def test_rate_0_emits_each_read_at_once_with_only_the_fresh_sessions(udp):
    h = NodeHarness("arkit_source", "src", host="127.0.0.1", port=0, rate=0.0)
    try:
        b = np.full(52, 0.25, np.float32)
        _deliver(h, udp, PACKETS[0])
        _deliver(h, udp, build_packet(DEV36, b, np.zeros(9, np.float32), frame=7))
        msgs = [m for _, m in h.outputs]
        assert [m.session for m in msgs] == [[DEV32], [DEV36]]  # no timer tick needed, nobody repeated
        assert np.array_equal(msgs[1].arrays["weights"][0], b)
        assert msgs[1].pts_ns == int(msgs[1].arrays["arrival_ns"][0])  # pts: when the packet arrived
        assert h.advance(1.0) == []  # ticks only expire sessions (on the real clock, as arrivals are)
    finally:
        h.close()


def test_fresh_batches_hold_only_the_sessions_with_a_new_packet(udp):
    h = NodeHarness("arkit_source", "src", host="127.0.0.1", port=0, rate=240.0, batch="fresh")
    try:
        b = np.full(52, 0.5, np.float32)
        _deliver(h, udp, PACKETS[0], build_packet(DEV36, b, np.zeros(9, np.float32), frame=1))
        first = _only(h.advance(1 / 240))
        assert first.session == [DEV32, DEV36] and first.data == {"active": [True, True]}
        assert h.advance(1 / 240) == []  # nothing new: no batch, nobody repeated
        _deliver(h, udp, build_packet(DEV36, b * 2, np.zeros(9, np.float32), frame=2))
        second = _only(h.advance(1 / 240))
        assert second.session == [DEV36] and np.array_equal(second.arrays["weights"][0], b * 2)
        assert second.arrays["frame"].tolist() == [2] and second.arrays["arrival_ns"].shape == (1,)
        assert h.node.stats()["sessions"] == 2  # the quiet one is still a session
    finally:
        h.close()


def test_nothing_is_emitted_without_sessions(src):
    assert src.advance(1.0) == []


def test_the_latest_packet_of_a_tick_wins(src, udp):
    _deliver(src, udp, *PACKETS[:10])
    msg = _only(src.advance(TICK))
    assert np.array_equal(msg.arrays["weights"][0], FRAMES[9].weights)
    assert src.node.stats()["packets"] == 10


def test_corrupt_packets_are_counted_warned_once_and_dropped(src, udp):
    raw = PACKETS[0]
    nan = build_packet(DEV32, [np.nan] + [0.0] * 51)
    bad = [raw[:100], b"\x07" + raw[1:], raw + b"xx", nan, b"\x06\xff\xff\xff\xff", b'{"session": 1}', b"\x06" * 5000]
    started = time.monotonic()
    _deliver(src, udp, bad[0], PACKETS[5], *bad[1:])
    stats = src.node.stats()
    assert stats["bad"] == 7 and stats["packets"] == 1
    assert stats["bad_reasons"] == {"truncated": 1, "version": 1, "oversized": 2, "nonfinite": 1, "length": 1, "json": 1}
    warnings = [(text, f) for level, text, f in src.bus if level == "WARNING"]
    assert len(warnings) == 1 or time.monotonic() - started > 1  # the first at once; the rest wait a second
    assert "truncated" in warnings[0][0] and warnings[0][1]["dropped"] == 1
    msg = _only(src.advance(TICK))
    assert np.array_equal(msg.arrays["weights"][0], FRAMES[5].weights)  # the good one in between went through


def test_warnings_are_at_most_one_a_second_and_carry_the_counts(src, udp):
    started = src.now  # the node's (simulated) clock
    _deliver(src, udp, *[b"\x01junk"] * 5)
    src.stall(1.05)  # the next warning may go out a second after the last
    src.advance(TICK)
    _deliver(src, udp, *[b"\x01junk"] * 3)
    src.advance(TICK)
    warnings = [f for level, _, f in src.bus if level == "WARNING"]
    assert len(warnings) <= 1 + (src.now - started)
    assert sum(w["dropped"] for w in warnings) + sum(src.node.window.values()) == 8
    assert warnings[-1]["total"] >= 5 and warnings[0]["reasons"] == {"version": 1}


def test_weights_outside_0_1_are_clamped_and_counted(src, udp):
    w = np.full(52, 0.5, np.float32)
    w[:3] = [1.5, -0.25, 7.0]
    _deliver(src, udp, build_packet("dev", w))
    msg = _only(src.advance(TICK))
    assert msg.arrays["weights"][0, :4].tolist() == [1.0, 0.0, 1.0, 0.5]
    assert src.node.stats()["clamped"] == 3 and src.node.stats()["clamped_packets"] == 1


def test_silent_sessions_leave_and_their_slot_is_reused(udp):
    h = NodeHarness("arkit_source", "src", host="127.0.0.1", port=0, session_timeout=0.5, rate=60.0, batch="all")
    try:
        _deliver(h, udp, build_packet("a", np.zeros(52)), build_packet("b", np.zeros(52)))
        assert _only(h.advance(TICK)).session == ["a", "b"]
        h.stall(0.55)  # longer than the timeout
        _deliver(h, udp, build_packet("b", np.ones(52)))
        msg = _only(h.advance(0))  # the late tick
        assert msg.session == ["b"] and msg.data == {"active": [True]}
        assert [f["session"] for level, _, f in h.bus if level == "SESSION_LEFT"] == ["a"]
        _deliver(h, udp, build_packet("c", np.full(52, 0.25)))
        msg = _only(h.advance(TICK))
        assert msg.session == ["b", "c"] and msg.arrays["weights"][1, 0] == 0.25
        assert len(h.node.slots) == 2 and h.node.cap == 16  # "c" took the freed slot
        h.stall(0.55)
        assert h.advance(0) == []
        assert h.node.stats()["sessions"] == 0 and h.node.stats()["left"] == 3
    finally:
        h.close()


def test_a_pause_does_not_time_sessions_out(udp):
    h = NodeHarness("arkit_source", "src", host="127.0.0.1", port=0, session_timeout=1.0, rate=60.0, batch="all")
    try:
        _deliver(h, udp, PACKETS[0])
        h.advance(TICK)
        h.node.on_pause()  # what the runtime calls on PAUSED
        h.stall(1.1)
        h.node.on_play()
        assert _only(h.advance(0)).session == [DEV32]
    finally:
        h.close()


def test_json_packets_are_sessions_too(src, udp):
    _deliver(src, udp, build_json_packet("web-1", {"jawOpen": 0.75}, frame=3), PACKETS[0])
    msg = _only(src.advance(TICK))
    assert msg.session == ["web-1", DEV32]
    assert msg.arrays["weights"][0, 17] == 0.75 and msg.arrays["frame"].tolist() == [3, FRAMES[0].frame]


def test_sessions_beyond_the_limit_are_refused(udp):
    h = NodeHarness("arkit_source", "src", host="127.0.0.1", port=0, max_sessions=2)
    try:
        _deliver(h, udp, *(build_packet(f"dev{i}", np.zeros(52)) for i in range(3)))
        assert _only(h.advance(TICK)).session == ["dev0", "dev1"]
        assert h.node.stats()["bad_reasons"] == {"session_limit": 1}
    finally:
        h.close()


def test_many_devices_grow_the_slot_arrays(src, udp):
    ids = [f"device-{i:03d}" for i in range(40)]
    _deliver(src, udp, *(build_packet(d, np.full(52, i / 40)) for i, d in enumerate(ids)))
    msg = _only(src.advance(TICK))
    assert msg.session == ids
    assert np.allclose(msg.arrays["weights"][:, 0], np.arange(40) / 40)


def test_datagrams_the_kernel_drops_are_counted_and_posted_as_qos(src, udp):
    """Past capacity the first drops are the kernel's (the socket's buffer is full): the source
    reads its socket's drop count and reports it, so nothing is lost silently."""
    src.node.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a buffer of a few datagrams
    packet = build_packet(DEV32, FRAMES[0].weights, FRAMES[0].pose)
    target = ("127.0.0.1", _port(src))
    sent = 0
    while socket_drops(src.node.sock) == 0:  # nobody reads: the buffer fills, then the kernel drops
        udp.sendto(packet, target)
        sent += 1
        assert sent < 10_000, "the kernel never dropped a datagram"
    src.advance(1.1)  # the drop check runs with the ticks, once a second
    qos = [f for level, _, f in src.bus if level == "QOS"]
    assert len(qos) == 1 and qos[0]["dropped"] >= 1 and qos[0]["where"] == "udp receive buffer"
    assert src.node.stats()["kernel_drops"] == qos[0]["total"] == socket_drops(src.node.sock)
    src.advance(1.1)  # nothing new dropped: nothing new posted
    assert len([1 for level, _, _ in src.bus if level == "QOS"]) == 1


def test_behind_the_newest_packet_wins_and_the_older_frames_are_shed(udp):
    """batch: fresh queues a session's second packet for the next batch; but when more than
    _BACKLOG_SLOTS sessions would wait, the node is behind: the newest packet takes the slot at
    once and the frames it replaces are counted (shed) and posted as QOS, so it catches up."""
    from nodes.arkit_source import _BACKLOG_SLOTS

    h = NodeHarness("arkit_source", "src", host="127.0.0.1", port=0, rate=240.0, batch="fresh")
    try:
        n = _BACKLOG_SLOTS + 36
        ids = [f"{i:08X}-0000-0000-0000-000000000000" for i in range(n)]
        first = [build_packet(d, FRAMES[0].weights, FRAMES[0].pose, frame=1) for d in ids]
        _deliver(h, udp, *first)
        h.advance(1 / 240)  # every session known, its first frame gone out
        few = [build_packet(d, FRAMES[1].weights, FRAMES[1].pose, frame=f) for d in ids[:3] for f in (2, 3)]
        _deliver(h, udp, *few)  # three sessions with two packets: the second waits, as ever
        assert h.node.stats()["backlogged"] == 3 and h.node.stats()["shed"] == 0
        many = [build_packet(d, FRAMES[1].weights, FRAMES[1].pose, frame=f) for f in (4, 5) for d in ids]
        _deliver(h, udp, *many)  # n sessions with two more: behind
        st = h.node.stats()
        assert st["backlogged"] == 0
        assert st["shed"] == 3 + 3 + n  # the 3 waiting frames, the 3 slots' frames, then each session's frame 4
        out = h.advance(1 / 240)
        batch = _only(out)
        assert sorted(batch.session) == sorted(ids) and set(batch.arrays["frame"].tolist()) == {5}
        h.advance(1.0)
        qos = [f for level, _, f in h.bus if level == "QOS" and f.get("where") == "source backlog"]
        assert len(qos) == 1 and qos[0]["dropped"] == qos[0]["total"] == st["shed"]
    finally:
        h.close()


def test_port_can_change_while_running(src, udp):
    old = _port(src)
    src.set_params(port=0)
    assert _port(src) != old
    _deliver(src, udp, PACKETS[0])
    assert _only(src.advance(TICK)).session == [DEV32]


def test_llf_send_tool_feeds_the_source(src):
    port = str(_port(src))
    tool = [sys.executable, str(ROOT / "tools" / "llf_send.py"), "--port", port, "--speed", "0", "--quiet"]
    subprocess.run(tool + ["--synthetic", "--devices", "3", "--count", "2"], check=True, timeout=60)
    subprocess.run(tool + ["--bin", str(BIN), "--count", "4"], check=True, timeout=60)
    deadline = time.monotonic() + 10
    while src.node.received < 10:
        assert time.monotonic() < deadline
        select.select([src.node.sock], [], [], 0.1)
        src.watched.get(src.node.sock, src.node._drain)()
    msg = _only(src.advance(TICK))
    assert len(msg.session) == 4 and DEV32 in msg.session and all(len(s) in (32, 36) for s in msg.session)
    assert np.array_equal(msg.arrays["weights"][msg.session.index(DEV32)], FRAMES[3].weights)
    assert src.node.stats()["bad"] == 0


def test_help():
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "llf_send.py"), "--help"], capture_output=True,
                         text=True, check=True, timeout=60).stdout
    assert "--devices" in out and "--csv" in out


# --- through the runtime ------------------------------------------------------------------------
GRAPH = """
name: arkit_source_test
args: {out: rec.msgpack}
nodes:
  src: {type: arkit_source, params: {host: 127.0.0.1, port: 0, rate: 500, batch: all, session_timeout: 600}}
  rec: {type: recorder, params: {path: "${out}", flush_every: 1}}
links:
  - {from: src.out, to: rec.in, policy: block, size: 512}
"""


def _wait(what: str, fn, timeout: float = 20.0):
    return wait_until(fn, timeout, 0.02, what)


def test_real_packets_through_the_runtime(tmp_path, udp):
    out = tmp_path / "rec.msgpack"
    nan = build_packet(DEV32, [0.5] * 51 + [np.inf])
    corrupt = [PACKETS[0][:77], b"\x05" + PACKETS[0][1:], PACKETS[0] + b"\0", nan, b"\x06\x00\x00\x00\x00"]
    second = build_packet(DEV36, np.full(52, 0.125, np.float32), np.full(9, 0.5, np.float32), frame=7)
    runner = start_graph(GRAPH, out=out)
    try:
        src_stats = lambda: runner.stats()["nodes"]["src"]["node"]  # noqa: E731
        target = ("127.0.0.1", src_stats()["port"])
        sent_bad = 0
        for (i, raw), _ in zip(enumerate(PACKETS), paced(1000)):  # spread over the node's 2 ms ticks
            udp.sendto(raw, target)
            if i % 36 == 5:
                udp.sendto(corrupt[sent_bad], target)
                sent_bad += 1
            if i % 30 == 29:  # keep the socket's buffer far from full, however busy the machine
                want = i + 1 + sent_bad - 30
                _wait("packets to be read", lambda want=want: src_stats()["received"] >= want)
        udp.sendto(second, target)
        stats = _wait("all packets", lambda: (s := src_stats())["packets"] == 181 and s["bad"] == sent_bad and s)
        assert sent_bad == 5
        assert stats["bad_reasons"] == {"truncated": 1, "version": 1, "oversized": 1, "nonfinite": 1, "length": 1}
        assert stats["joined"] == 2 and stats["sessions"] == 2
        warning = runner.bus.wait_for("WARNING", node="src", timeout=10)
        assert "bad packet" in warning["text"] and warning["dropped"] >= 1
        assert runner.bus.messages("SESSION_JOINED", session=DEV36)

        def both():
            return any(len(m.session) == 2 for m in read_recording(out))
        _wait("a batch with both devices", both)
    finally:
        runner.stop(drain=False)

    msgs = read_recording(out)
    by_frame = {f.frame: f for f in FRAMES}
    seen, last = [], None
    for m in msgs:
        assert m.caps == "arkit/blendshapes" and m.session[0] == DEV32
        w, p, frames, active = m.arrays["weights"], m.arrays["pose"], m.arrays["frame"], m.data["active"]
        assert w.shape == (len(m.session), 52) and p.shape == (len(m.session), 9)
        f = by_frame[int(frames[0])]
        assert np.array_equal(w[0], f.weights) and np.array_equal(p[0], f.pose)  # exactly the packet's values
        if active[0]:
            seen.append(f.frame)
        else:
            assert last is not None and int(frames[0]) == last  # held, not invented
        last = int(frames[0])
        if len(m.session) == 2:
            assert m.session[1] == DEV36 and frames[1] == 7
            assert np.all(w[1] == 0.125) and np.all(p[1] == 0.5)
    assert seen == sorted(set(seen)) and seen[-1] == FRAMES[-1].frame
    first_of_two = next(m for m in msgs if len(m.session) == 2)
    assert first_of_two.data["active"][1] is True
    assert all(a.pts_ns < b.pts_ns for a, b in zip(msgs, msgs[1:]))
