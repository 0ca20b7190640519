"""arkit_source's defaults lose nothing: the plain launch line records every packet's frame once.

A real UDP sender, with its own Live Link Face v6 encoder written here from the documented format
(``struct``, not ``nodes.livelink``), sends 300 frames at 60 and at 120 Hz to
``arkit_source port=P ! recorder path=x.msgpack`` (one OS process per node). The face values are
the real iPhone capture in tests/data/livelink, read with this file's own container reader; each
frame gets its own frame number, so the recording says which packets came through and how often.
"""
from __future__ import annotations

import socket
import struct
from pathlib import Path

import numpy as np
import pytest

from runtime import Runner
from runtime.launch import parse_launch
from runtime.recording import read_recording
from tests.helpers import free_udp_port, paced, wait_until

CAPTURE = Path(__file__).resolve().parent / "data" / "livelink" / "llv_dao_packets.bin"
DEVICE = "4B0F6C52-7D2E-4E0A-9F61-3A8C2D5E7B10"  # a 36-character id, as recent phones send
SUBJECT = "iPhone"
N_FRAMES = 300
FIRST_FRAME = 40_000


def recorded_values(path: Path) -> list[np.ndarray]:
    """The 61 values of every packet of a container file (uint8 version, uint32 count, then
    uint32 length + payload per packet; the values are the payload's last 61 big-endian floats)."""
    raw = path.read_bytes()
    _, count = struct.unpack_from(">BI", raw, 0)
    pos, out = 5, []
    for _ in range(count):
        (n,) = struct.unpack_from(">I", raw, pos)
        payload = raw[pos + 4: pos + 4 + n]
        out.append(np.array(struct.unpack(">61f", payload[-61 * 4:]), np.float32))
        pos += 4 + n
    return out


def llf_v6(device: str, subject: str, frame: int, values: np.ndarray, fps: int) -> bytes:
    """One Live Link Face v6 packet: version, length-prefixed device id and subject, frame time
    (frame, sub-frame, fps numerator / denominator), count 61, 61 big-endian float32."""
    dev, sub = device.encode(), subject.encode()
    return (struct.pack(f">Bi{len(dev)}si{len(sub)}s", 6, len(dev), dev, len(sub), sub)
            + struct.pack(">ifiiB", frame, 0.0, fps, 1, 61) + struct.pack(">61f", *values.tolist()))


def test_a_launch_line_blocks_where_a_loss_is_a_hole() -> None:
    graph = parse_launch("arkit_source name=src ! recorder path=x.msgpack  src. ! fakesink")
    assert [(l.dst, l.policy) for l in graph.links] == [("recorder", "block"), ("fakesink", "leaky")]
    speech = parse_launch("audio_source path=s.wav ! audio_phoneme ! viseme ! recorder path=x.msgpack")
    assert {l.policy for l in speech.links} == {"block"}
    assert {l.policy for l in parse_launch("testsrc ! recorder", policy="leaky").links} == {"leaky"}  # --policy


def until(what: str, pred, timeout: float = 30.0):
    return wait_until(pred, timeout, what=what)


@pytest.mark.parametrize("hz", [60, 120])
def test_the_plain_launch_line_records_every_frame_exactly_once(tmp_path: Path, hz: int) -> None:
    values = recorded_values(CAPTURE)
    sent = {FIRST_FRAME + k: values[k % len(values)] for k in range(N_FRAMES)}
    port, out = free_udp_port(), tmp_path / "x.msgpack"
    runner = Runner(parse_launch(f"arkit_source port={port} ! recorder path={out}")).start()
    try:
        stats = lambda: runner.stats()["nodes"]["arkit_source"]["node"]  # noqa: E731
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            for (frame, v), _ in zip(sent.items(), paced(hz)):  # paced as a phone sends: on its own clock
                tx.sendto(llf_v6(DEVICE, SUBJECT, frame, v, hz), ("127.0.0.1", port))
        until("every packet read", lambda: stats()["packets"] == N_FRAMES)
        until("every frame sent on", lambda: stats()["backlogged"] == 0)
        assert stats()["superseded"] == 0 and stats()["overrun"] == 0 and stats()["bad"] == 0
    finally:
        code = runner.stop(drain=True)  # the source ends its stream: the recorder writes everything
    assert code == 0 and not runner.bus.messages("QOS")
    rows = []
    for m in read_recording(out):
        assert m.session == [DEVICE] * len(m.session) and all(m.data["active"])
        rows += list(zip(m.arrays["frame"].tolist(), m.arrays["weights"], m.arrays["pose"]))
    frames = [f for f, _, _ in rows]
    assert len(frames) == N_FRAMES, f"{len(frames)} rows for {N_FRAMES} packets"
    assert frames == sorted(sent), "a frame lost, repeated or out of order"
    for frame, w, p in rows:  # and each row holds that packet's face
        assert np.array_equal(w, np.clip(sent[frame][:52], 0.0, 1.0)) and np.array_equal(p, sent[frame][52:])


@pytest.mark.parametrize("rate", [240.0, 0.0])
def test_packets_of_one_session_within_one_tick_go_out_in_successive_batches(rate: float) -> None:
    from runtime.testing import NodeHarness

    h = NodeHarness("arkit_source", "src", host="127.0.0.1", port=0, rate=rate)
    values = recorded_values(CAPTURE)
    try:
        port = h.node.stats()["port"]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            for k in range(3):  # a burst: three frames of one phone before any tick
                tx.sendto(llf_v6(DEVICE, SUBJECT, 7 + k, values[k], 60), ("127.0.0.1", port))
            tx.sendto(llf_v6("other", SUBJECT, 1, values[5], 60), ("127.0.0.1", port))
        # on loopback a datagram is in the socket's queue when sendto returns: one read takes all four
        if rate:
            h.node._drain()
            batches = [m for k in range(4) for _, m in h.advance(1 / rate)]
        else:  # a batch per read, and one more per packet still waiting: all at once
            h.node._read()
            batches = [m for _, m in h.outputs]
        assert h.node.received == 4
        rows = [(s, f) for m in batches for s, f in zip(m.session, m.arrays["frame"].tolist())]
        assert rows == [(DEVICE, 7), ("other", 1), (DEVICE, 8), (DEVICE, 9)]
        assert all(all(m.data["active"]) for m in batches)
        assert h.node.stats()["backlogged"] == 0 and h.node.stats()["superseded"] == 0
    finally:
        h.close()
