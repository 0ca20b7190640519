"""The compiled UDP receive (``nodes/livelink/_udp.pyx``: recvmmsg, known devices' packets parsed
in C) against the reference (``recvmsg`` per datagram, ``parse_datagram``/``parse_tails``).

- ``Receiver.drain`` reads each datagram exactly as ``socket.recvmsg`` does (bytes, source
  address, kernel timestamp: checked by peeking at the same datagram first), and parses a known
  device's packet to the values ``parse_tails`` gives, handing back everything else;
- its table of known headers follows adds and removes (thousands of devices, tombstones, growth);
- two ``arkit_source`` nodes, one compiled and one on the reference code, fed the same datagrams
  over real loopback UDP (the recorded iPhone capture, many devices, bursts larger than one
  recvmmsg batch, corrupt, truncated, oversized, empty and JSON datagrams mixed in, hypothesis
  streams) emit identical batches: sessions, weights, pose, frames, arrival stamps, active flags,
  and the same stats, warnings, joins and leaves;
- ``send_batch`` (sendmmsg) sends every packet in order and counts refusals.

Skipped only when the extension is not built.
"""
from __future__ import annotations

import errno
import select
import socket
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nodes import arkit_source
from nodes.livelink import (
    N_BLENDSHAPES,
    SAMPLE_CAPTURE,
    TAIL_BYTES,
    PacketError,
    build_json_packet,
    build_packet,
    header_of,
    parse_datagram,
    parse_packet,
    parse_tails,
    read_container,
)
from runtime.testing import NodeHarness
from tests.helpers import wait_until

try:
    from nodes.livelink import _udp
except ImportError:  # not built: the reference code runs, nothing to compare
    _udp = None

pytestmark = [pytest.mark.skipif(_udp is None, reason="nodes.livelink._udp is not built (make setup)"),
              pytest.mark.timeout(180)]
FUZZ = dict(derandomize=True, database=None, deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                   HealthCheck.function_scoped_fixture])

PACKETS = read_container(SAMPLE_CAPTURE)
FRAMES = [parse_packet(p) for p in PACKETS]
VALUES = np.array([np.concatenate([f.weights, f.pose]) for f in FRAMES], np.float32)
DEV32 = FRAMES[0].device_id
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
STAMP_SPACE = socket.CMSG_SPACE(16)


def device(i: int) -> str:
    """Device ids of 32 and 36 characters, as the app sends them."""
    return f"{i:08X}-1337-4000-8000-{i * 7919:012X}" if i % 2 else f"{i:08X}{i * 31:024X}"


def packet(dev: str, row: int, frame: int, subject: str = "Avatar", scale: float = 1.0) -> bytes:
    v = VALUES[row % len(VALUES)].copy()
    v[:N_BLENDSHAPES] *= scale  # > 1: weights above 1, < 0: below 0, both clamped and counted
    return build_packet(dev, v[:N_BLENDSHAPES], v[N_BLENDSHAPES:], subject=subject, frame=frame)


def damaged(raw: bytes, how: str) -> bytes:
    """A packet broken in one of the ways the fast path must hand back (or the parser refuse)."""
    head, tail = raw[:-TAIL_BYTES], bytearray(raw[-TAIL_BYTES:])
    if how == "count":
        tail[16] = 60
    elif how == "fps":
        tail[8:12] = struct.pack(">i", 0)
    elif how == "den":
        tail[12:16] = struct.pack(">i", -3)
    elif how == "nan":
        tail[17 + 4 * 30:21 + 4 * 30] = struct.pack(">f", float("nan"))
    elif how == "inf_pose":
        tail[17 + 4 * 58:21 + 4 * 58] = struct.pack(">f", float("-inf"))
    elif how == "subframe":
        tail[4:8] = struct.pack(">f", float("inf"))
    elif how == "truncated":
        return raw[:-7]
    elif how == "trailing":
        return raw + b"\0\0"
    elif how == "version":
        return b"\x05" + raw[1:]
    elif how == "length":
        return raw[:1] + struct.pack(">i", 300) + raw[5:]
    return head + bytes(tail)


DAMAGE = ("count", "fps", "den", "nan", "inf_pose", "subframe", "truncated", "trailing", "version", "length")
JUNK = [b"", b"\x06", b"\x06\xff\xff\xff\xff", b"{", b'{"session": 1}', b" " * 300, b"\x06" * 5000,
        b"{" + b" " * 20000, b"\x06" * 20000, bytes(range(256)) * 2]


# --- the receiver alone ---------------------------------------------------------------------------
@pytest.fixture
def pair_of_sockets():
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    rx.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    rx.bind(("127.0.0.1", 0))
    rx.setblocking(False)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.connect(rx.getsockname())
    yield rx, tx
    rx.close()
    tx.close()


def _peek_then_drain(rx: socket.socket, r: "_udp.Receiver", expected_slots: dict[bytes, int]) -> int:
    """Every datagram in the socket: peeked with recvmsg, then read by the receiver one at a time;
    both must see the same bytes, address and kernel stamp. Returns how many there were."""
    count = 0
    while True:
        try:
            data, anc, _, addr = rx.recvmsg(65536, STAMP_SPACE, socket.MSG_PEEK)
        except BlockingIOError:
            return count
        n, err, handed = r.drain(rx.fileno(), 1)
        assert (n, err) == (1, 0)
        sec, nsec = struct.unpack("qq", anc[0][2]) if anc else (0, 0)
        assert int(r.stamp[0]) == (sec * 1_000_000_000 + nsec if sec else 0)
        slot = expected_slots.get(data[:-TAIL_BYTES]) if len(data) > TAIL_BYTES else None
        frames, values, ok = parse_tails(data[-TAIL_BYTES:]) if slot is not None else (None, None, [False])
        if slot is not None and ok[0]:
            assert handed == [] and int(r.slot[0]) == slot
            assert int(r.frame[0]) == int(frames[0]) and r.values[0].tobytes() == values[0].tobytes()
        else:
            if len(data) > _udp.SLOT_BYTES:  # cut by the kernel, handed back at its length: the same verdict
                assert handed[0][1] == data[:_udp.SLOT_BYTES] + bytes(len(data) - _udp.SLOT_BYTES)
                assert verdict(handed[0][1]) == verdict(data) and verdict(data)[0] == "oversized"
                data = handed[0][1]
            assert handed == [(0, data, addr)] and int(r.slot[0]) == -1
        count += 1


def verdict(data: bytes) -> tuple[str, str]:
    try:
        parse_datagram(data)
    except PacketError as exc:
        return exc.reason, str(exc)
    return "ok", ""


def test_the_receiver_reads_what_recvmsg_reads(pair_of_sockets):
    rx, tx = pair_of_sockets
    r = _udp.Receiver(64, batch=16)
    known = {header_of(PACKETS[0]): 3}
    r.add_header(header_of(PACKETS[0]), 3)
    datagrams = PACKETS[:40] + [damaged(PACKETS[1], how) for how in DAMAGE] + JUNK + [packet("new", 1, 1)]
    for d in datagrams:
        tx.send(d)
    assert _peek_then_drain(rx, r, known) == len(datagrams)


def test_a_burst_is_read_in_batches_in_order(pair_of_sockets):
    rx, tx = pair_of_sockets
    r = _udp.Receiver(4096, batch=64)
    devices = [device(i) for i in range(300)]
    for i, d in enumerate(devices):
        r.add_header(header_of(packet(d, 0, 0)), i)
    burst = [packet(d, i + k, k) for k in range(3) for i, d in enumerate(devices)]
    burst[500:500] = [b"junk", damaged(burst[10], "nan")]
    assert _udp.send_batch(tx.fileno(), burst) == (len(burst), 0)
    n, err, handed = r.drain(rx.fileno())
    assert (n, err) == (len(burst), 0)
    assert [(row, data) for row, data, _ in handed] == [(500, b"junk"), (501, burst[501])]
    good = [p for p in burst if p not in (b"junk", burst[501])]
    rows = np.r_[0:500, 502:n]
    frames, values, ok = parse_tails(b"".join(p[-TAIL_BYTES:] for p in good))
    assert ok.all() and np.array_equal(r.frame[rows], frames) and r.values[rows].tobytes() == values.tobytes()
    assert r.slot[rows].tolist() == [devices.index(parse_packet(p).device_id) for p in good]
    stamps = r.stamp[:n]
    assert (stamps > 0).all() and (np.diff(stamps) >= 0).all()  # kernel receive times, in order
    assert r.drain(rx.fileno()) == (0, 0, [])


def test_the_cap_bounds_one_drain(pair_of_sockets):
    rx, tx = pair_of_sockets
    r = _udp.Receiver(100, batch=32)
    _udp.send_batch(tx.fileno(), [b"x%d" % i for i in range(250)])
    got = [r.drain(rx.fileno())[0] for _ in range(4)]
    assert got == [100, 100, 50, 0]
    assert r.drain(rx.fileno(), 10)[0] == 0
    _udp.send_batch(tx.fileno(), [b"y"] * 30)
    assert r.discard(rx.fileno()) == (30, 30, 0)


def test_the_header_table_follows_adds_and_removes(pair_of_sockets):
    rx, tx = pair_of_sockets
    r = _udp.Receiver(4096, batch=256)
    model: dict[bytes, int] = {}
    devices = [device(i) for i in range(3000)]
    heads = [header_of(packet(d, 0, 0)) for d in devices]
    for i, h in enumerate(heads):
        r.add_header(h, i)
        model[h] = i
    for i in range(0, 3000, 3):  # a third leave, some come back with another slot: tombstones, regrowth
        r.remove_header(heads[i])
        del model[heads[i]]
    for i in range(0, 3000, 9):
        r.add_header(heads[i], 5000 + i)
        model[heads[i]] = 5000 + i
    r.add_header(heads[1], 77)  # a header moved to another slot
    model[heads[1]] = 77
    r.remove_header(b"never added")
    assert r.headers() == model
    burst = [packet(d, i, i) for i, d in enumerate(devices)]
    for lo in range(0, len(burst), 1000):
        _udp.send_batch(tx.fileno(), burst[lo:lo + 1000])
        n, err, handed = r.drain(rx.fileno())
        assert (n, err) == (1000, 0)
        want = [model.get(h, -1) for h in heads[lo:lo + 1000]]
        assert r.slot[:n].tolist() == want
        assert [row for row, _, _ in handed] == [i for i, s in enumerate(want) if s < 0]
    r.clear_headers()
    assert r.headers() == {}


def test_send_batch_counts_refused_packets_and_never_raises():
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    closed_port = probe.getsockname()[1]
    probe.close()  # nobody listens there: ICMP port unreachable comes back as ECONNREFUSED
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        tx.connect(("127.0.0.1", closed_port))
        sent, errors = _udp.send_batch(tx.fileno(), [b"a"] * 50)
        assert sent + errors == 50 and sent >= 1
        with pytest.raises(TypeError):
            _udp.send_batch(tx.fileno(), ["text"])
        assert _udp.send_batch(tx.fileno(), [b"a"] * 5, 3, 3) == (0, 0)
    finally:
        tx.close()
    assert "Connection refused" in _udp.errno_text(errno.ECONNREFUSED)


# --- the node, compiled against reference ---------------------------------------------------------
class Pair:
    """Two arkit_source nodes with the same params: ``c`` on the compiled receiver, ``r`` on the reference."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *, stamps: bool = False, host: str = "127.0.0.1", **params):
        self.hs = []
        for module in (_udp, None):
            monkeypatch.setattr(arkit_source, "_udp", module)
            h = NodeHarness("arkit_source", "src", host=host, port=0, **params)
            if not stamps:  # without kernel stamps a packet's arrival is the (simulated) read time: comparable
                h.node.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 0)
            self.hs.append(h)
        self.c, self.r = self.hs
        assert self.c.node._rx is not None and self.r.node._rx is None
        self.tx = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
        self.host = host

    def close(self) -> None:
        self.tx.close()
        for h in self.hs:
            h.close()

    def send(self, datagrams: list[bytes]) -> None:
        """The same datagrams to both nodes, each node reading them all before time moves on."""
        for h in self.hs:
            want = h.node.received + len(datagrams)
            target = (self.host, h.node.sock.getsockname()[1])
            for d in datagrams:
                self.tx.sendto(d, target)

            def read(h=h, want=want) -> bool:
                select.select([h.node.sock], [], [], 0.05)
                h.node._drain()
                return h.node.received >= want
            wait_until(read, 20, 0, f"{len(datagrams)} datagrams read")

    def advance(self, seconds: float) -> tuple[list, list]:
        return self.c.advance(seconds), self.r.advance(seconds)

    def check(self, outs: tuple[list, list] | None = None, arrival: bool = True) -> None:
        """The same batches, stats, events and per-slot state on both."""
        if outs is not None:
            same_batches(*outs, arrival=arrival)
        cs, rs = self.c.node.stats(), self.r.node.stats()
        cs.pop("port")
        rs.pop("port")
        if not arrival:
            for s in (cs, rs):
                for k in [k for k in s if k.startswith("gather_wait")]:
                    s.pop(k)
        assert cs == rs
        assert self.c.bus == self.r.bus
        cn, rn = self.c.node, self.r.node
        assert cn.slots == rn.slots and cn.headers == rn.headers and cn._rx.headers() == rn.headers
        for name in ("weights", "pose", "frame", "active", "used") + (("arrival", "last_ns") if arrival else ()):
            assert getattr(cn, name).tobytes() == getattr(rn, name).tobytes(), name
        assert list(cn.backlog) == list(rn.backlog)
        for slot, q in cn.backlog.items():
            rq = rn.backlog[slot]
            assert [(w.tobytes(), p.tobytes(), f) + ((a,) if arrival else ()) for w, p, f, a in q] == \
                   [(w.tobytes(), p.tobytes(), f) + ((a,) if arrival else ()) for w, p, f, a in rq]


def same_batches(a: list, b: list, arrival: bool = True) -> None:
    assert len(a) == len(b), (len(a), len(b))
    for (pa, ma), (pb, mb) in zip(a, b):
        assert pa == pb and ma.caps == mb.caps and ma.session == mb.session and ma.data == mb.data
        assert (ma.pts_ns == mb.pts_ns) or not arrival
        keys = ("weights", "pose", "frame") + (("arrival_ns",) if arrival else ())
        assert set(ma.arrays) == set(mb.arrays)
        for k in keys:
            assert ma.arrays[k].dtype == mb.arrays[k].dtype and ma.arrays[k].tobytes() == mb.arrays[k].tobytes(), k


@pytest.fixture
def pair_factory(monkeypatch):
    made: list[Pair] = []

    def make(**params) -> Pair:
        p = Pair(monkeypatch, **params)
        made.append(p)
        return p
    yield make
    for p in made:
        p.close()


@pytest.mark.parametrize("batch", ["fresh", "all"])
def test_the_recorded_capture_with_damage_mixed_in(pair_factory, batch):
    p = pair_factory(rate=240.0, batch=batch, max_sessions=64)
    second = "6F1C2E3A-94B1-4C55-A8B6-2F6D1E0B9A77"
    for k in range(0, len(PACKETS), 12):
        burst = list(PACKETS[k:k + 12])
        burst.insert(3, damaged(PACKETS[k], DAMAGE[k // 12 % len(DAMAGE)]))
        burst.insert(7, JUNK[k // 12 % len(JUNK)])
        burst.append(packet(second, k, k, scale=1.7 if k % 24 else -0.5))
        burst.append(build_json_packet("web-1", {"jawOpen": 0.25 + k / 1000, "eyeBlinkLeft": 1.5}, frame=k))
        p.send(burst)
        p.check(p.advance(1 / 240), arrival=True)
    p.check(p.advance(0.1))
    assert p.c.node.stats()["packets"] > len(PACKETS) and p.c.node.stats()["bad"] > 20


@pytest.mark.parametrize("batch,rate", [("fresh", 240.0), ("all", 60.0), ("fresh", 0.0)])
def test_many_devices_in_bursts_larger_than_a_batch(pair_factory, batch, rate):
    p = pair_factory(rate=rate, batch=batch, max_sessions=2000, session_timeout=5.0)
    devices = [device(i) for i in range(1200)]
    for k in range(4):
        burst = [packet(d, i + k, 100 + k, scale=1.0 + (i % 5) * 0.1) for i, d in enumerate(devices)]
        if k == 2:  # a second frame from some devices in the same read: they wait (fresh) or win (all)
            burst += [packet(d, i + 50, 500, scale=-1.0) for i, d in enumerate(devices[::7])]
            burst[600:600] = [damaged(burst[600], how) for how in DAMAGE]
        if k == 3:  # a device renames its subject: a second header for its session
            burst += [packet(devices[5], 1, 900, subject="Renamed"), packet(devices[5], 2, 901, subject="Renamed")]
        p.send(burst)
        p.check(p.advance(1 / 240 if rate else 0))
    for _ in range(3):  # backlogs drain one packet per batch
        p.check(p.advance(1 / 240 if rate else 0))
    assert p.c.node.stats()["sessions"] == 1200


def test_joins_leaves_limits_and_a_port_change(pair_factory):
    p = pair_factory(rate=60.0, batch="fresh", max_sessions=5, session_timeout=0.5)
    devs = [device(i) for i in range(7)]
    p.send([packet(d, i, 1) for i, d in enumerate(devs)])  # two refused: session_limit
    p.check(p.advance(1 / 60))
    for h in p.hs:
        h.stall(0.6)
    p.send([packet(devs[0], 3, 2), packet(devs[6], 4, 2)])  # the rest leave; a refused one joins now
    p.check(p.advance(0))
    for h in p.hs:
        h.set_params(port=0)  # a new socket: the known headers stay known
        h.node.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 0)
    p.send([packet(devs[0], 5, 3), packet(devs[6], 6, 3), packet(devs[6], 7, 4)])
    p.check(p.advance(1 / 60))
    p.check(p.advance(1 / 60))
    for h in p.hs:
        h.stall(0.6)
    p.check(p.advance(0))
    assert p.c.node.stats()["sessions"] == 0 and p.c.node._rx.headers() == {}
    p.send([packet(devs[0], 8, 9)])  # back after leaving: through the full parser, known again
    p.check(p.advance(1 / 60))


def test_ipv6(pair_factory):
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        p = pair_factory(host="::1", rate=60.0, batch="all")
    except RuntimeError as exc:
        pytest.skip(f"no IPv6 loopback: {exc}")
    p.send(PACKETS[:20] + [b"\x07junk", packet("v6-device", 3, 3)])
    p.check(p.advance(1 / 60))
    assert "::1" in [f for lvl, _, f in p.c.bus if lvl == "SESSION_JOINED"][0]["source"]


def test_kernel_stamps_keep_the_arrival_order(pair_factory):
    """With kernel receive times, the two nodes' stamps differ by when each read, but a batch's
    rows come out in the same arrival order and every arrival is before the batch."""
    p = pair_factory(stamps=True, rate=240.0, batch="fresh")
    devices = [device(i) for i in range(400)]
    p.send([packet(d, i, 1) for i, d in enumerate(devices)])  # they join in this order: the rows' order
    p.advance(1 / 240)
    order = np.random.default_rng(7).permutation(400)
    p.send([packet(devices[i], i, 2) for i in order])  # and send again in another
    oc, orf = p.advance(1 / 240)
    assert len(oc) == len(orf) == 1
    mc, mr = oc[0][1], orf[0][1]
    assert mc.session == mr.session == devices and mc.data == mr.data
    for m in (mc, mr):
        assert (m.arrays["arrival_ns"] <= m.pts_ns).all()
        assert np.argsort(m.arrays["arrival_ns"], kind="stable").tolist() == order.tolist()


def test_weights_are_clamped_exactly_as_numpy_clips(pair_factory):
    edge = np.array([-0.0, 0.0, 1.0, -1e-45, 1e-45, np.nextafter(np.float32(1), np.float32(2)), -3.4e38, 3.4e38,
                     np.nextafter(np.float32(0), np.float32(-1)), 0.5] * 6, np.float32)[:N_BLENDSHAPES]
    p = pair_factory(rate=60.0, batch="all")
    raw = build_packet("edge", edge, np.array([-0.0, 0.0, 1e-45, -7.5, 7.5, 0.1, -0.1, 3.4e38, -3.4e38], np.float32))
    p.send([raw, raw])
    outs = p.advance(1 / 60)
    p.check(outs)
    w = outs[0][0][1].arrays["weights"][0]
    assert w.tobytes() == np.clip(edge, 0.0, 1.0).astype(np.float32).tobytes()


# --- hypothesis: streams of datagrams -------------------------------------------------------------
DEVICES = [device(i) for i in range(6)] + [DEV32]


@st.composite
def datagram(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["good"] * 6 + ["damaged", "junk", "json", "binary", "renamed"]))
    dev = draw(st.sampled_from(DEVICES))
    raw = packet(dev, draw(st.integers(0, len(VALUES) - 1)), draw(st.integers(-2**31, 2**31 - 1)),
                 scale=draw(st.sampled_from([1.0, 1.0, 1.0, 2.0, -1.0, 0.0])))
    if kind == "damaged":
        return damaged(raw, draw(st.sampled_from(DAMAGE)))
    if kind == "junk":
        return draw(st.sampled_from(JUNK))
    if kind == "json":
        return build_json_packet(dev, VALUES[draw(st.integers(0, 20))][:N_BLENDSHAPES] * 1.2)
    if kind == "binary":
        return draw(st.binary(max_size=700))
    if kind == "renamed":
        return packet(dev, 1, 1, subject=draw(st.sampled_from(["A", "B", "C", "D", "E", ""])))
    if draw(st.integers(0, 9)) == 0:  # a float edge case in the tail
        tail = bytearray(raw[-TAIL_BYTES:])
        i = draw(st.integers(0, 60))
        x = draw(st.sampled_from([-0.0, 1e-45, -1e-45, 3.4e38, float("nan"), float("inf"), 1.0000001]))
        tail[17 + 4 * i:21 + 4 * i] = struct.pack(">f", x)
        raw = raw[:-TAIL_BYTES] + bytes(tail)
    return raw


@settings(max_examples=80, **FUZZ)
@given(st.lists(st.lists(datagram(), min_size=1, max_size=40), min_size=1, max_size=4),
       st.sampled_from([("fresh", 240.0), ("all", 60.0), ("fresh", 0.0)]), st.integers(2, 8))
def test_compiled_and_reference_agree_on_any_stream(monkeypatch, bursts, mode, max_sessions):
    batch, rate = mode
    p = Pair(monkeypatch, rate=rate, batch=batch, max_sessions=max_sessions, session_timeout=0.02)
    try:
        for burst in bursts:
            p.send(burst)
            p.check(p.advance(1 / 240 if rate else 0))
        p.check(p.advance(0.25))  # everybody leaves
        assert p.c.node._rx.headers() == {}
    finally:
        p.close()

