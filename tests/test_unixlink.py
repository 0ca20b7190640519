"""Links inside one host (``runtime.unixlink``): real SEQPACKET sockets in the abstract namespace,
a sender and a receiver end in this process, and foreign programs' garbage."""
from __future__ import annotations

import socket
import uuid
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.message import Kind, Message, encode
from runtime.unixlink import RECORD_MAX, UnixInLink, UnixOutLink, address, parse, records
from tests.helpers import wait_until


def endpoint() -> str:
    return f"unix://@avatar-test-{uuid.uuid4().hex}/l/0"


@contextmanager
def pair(policy: str = "leaky", rx_size: int = 8, tx_size: int = 4) -> Iterator[tuple[UnixInLink, UnixOutLink]]:
    """A receiving and a sending end of one link, closed after the test."""
    ep = endpoint()
    rx = UnixInLink("a.out-b.in", "in", ep, policy, rx_size)
    tx = UnixOutLink("a.out-b.in", "out", ep, policy, tx_size)
    try:
        yield rx, tx
    finally:
        tx.close(0)
        rx.close()


def batch(n: int, seed: int = 0) -> Message:
    rng = np.random.default_rng(seed)
    ids = [f"phone-{seed}-{i}" for i in range(n)]
    arrays = {"weights": rng.random((n, 52), dtype=np.float32), "pose": rng.random((n, 9), dtype=np.float32),
              "arrival_ns": np.arange(n, dtype=np.int64)}
    return Message("arkit/blendshapes", {"active": [True] * n}, arrays, pts_ns=1000 + seed, session=ids)


def receive(link: UnixInLink, count: int, tx: UnixOutLink | None = None) -> list[Message]:
    """What ``link`` receives until ``count`` messages came, flushing ``tx`` meanwhile (as the
    sender's worker loop would)."""
    got: list[Message] = []

    def read() -> bool:
        if tx is not None:
            tx.flush()
        link.read_available()
        while link.queue:
            got.append(link.queue.popleft())
        return len(got) >= count

    wait_until(read, 10, 0.001, lambda: f"{count} messages (got {len(got)}; stats {link.stats()})")
    return got


def same(a: Message, b: Message) -> None:
    assert (a.caps, a.session, a.data, a.pts_ns, a.trace) == (b.caps, b.session, b.data, b.pts_ns, b.trace)
    assert a.arrays.keys() == b.arrays.keys()
    for name in a.arrays:
        assert a.arrays[name].dtype == b.arrays[name].dtype and np.array_equal(a.arrays[name], b.arrays[name])


@pytest.mark.parametrize("rows", [1, 40, 2000, 6000])  # one record .. a batch of many records
def test_messages_arrive_whole_in_order_with_their_arrays_read_only(rows):
    with pair("block", 64, 64) as (rx, tx):
        sent = [batch(rows, seed) for seed in range(5)]
        for m in sent:
            tx.push(m)
        got = receive(rx, 5, tx)
        assert not tx.outbox
        assert [m.seq for m in got] == [0, 1, 2, 3, 4]
        for a, b in zip(got, sent):
            same(a, b)
        assert not got[0].arrays["weights"].flags.writeable
        if rows == 6000:
            assert len(records(encode(sent[0], 0))) > 1
        stats = rx.stats()
        assert stats["received"] == 5 and stats["gaps"] == stats["malformed"] == 0 and stats["senders"] == 1


def test_a_sender_before_its_receiver_keeps_the_newest_and_delivers_them_when_it_binds():
    ep = endpoint()
    tx = UnixOutLink("a.out-b.in", "out", ep, "leaky", 3)
    rx = None
    try:
        for seed in range(10):
            tx.push(batch(4, seed))
        assert not tx.stats()["connected"] and len(tx.outbox) == 3 and tx.drops == 7
        assert tx.retry_in() is not None
        rx = UnixInLink("a.out-b.in", "in", ep, "leaky", 8)
        wait_until(lambda: (tx.flush(), not tx.outbox)[1], 10, 0.005, "the outbox to go out")
        got = receive(rx, 3)
        assert [m.seq for m in got] == [7, 8, 9] and tx.stats()["connected"]
    finally:
        tx.close(0)
        if rx is not None:
            rx.close()


def test_a_receiver_that_goes_away_and_comes_back_gets_the_stream_again():
    ep = endpoint()
    rx = UnixInLink("a.out-b.in", "in", ep, "leaky", 8)
    tx = UnixOutLink("a.out-b.in", "out", ep, "leaky", 4)
    try:
        tx.push(batch(3, 0))
        receive(rx, 1)
        rx.close()  # as a node killed by SIGKILL: its socket goes with it
        tx.push(batch(3, 1))  # into the dead connection, or noticed as gone
        tx.push(batch(3, 2))
        rx = UnixInLink("a.out-b.in", "in", ep, "leaky", 8)

        def more() -> bool:
            tx.push(batch(3, 3))
            tx.flush()  # as the worker does while the outbox waits
            rx.read_available()
            return bool(rx.queue)

        wait_until(more, 10, 0.02, "messages at the new receiver")
        assert rx.queue[0].seq >= 1 and rx.stats()["resets"] == 0  # what the sender held when it found the receiver gone, or newer
    finally:
        tx.close(0)
        rx.close()


def test_a_message_left_half_sent_by_a_dead_sender_is_dropped_and_the_link_goes_on():
    with pair() as (rx, tx):
        raw = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        raw.connect(address(rx.endpoint))
        recs = records(encode(batch(6000), 0))
        assert len(recs) > 2
        raw.sendmsg(recs[0])  # the first record of three or more, then the sender dies
        rx.read_available()
        raw.close()
        tx.push(batch(2, 5))
        got = receive(rx, 1)
        same(got[0], batch(2, 5))
        assert rx.malformed == 0 and rx.stats()["senders"] == 1


@pytest.mark.parametrize("garbage", [b"\x01", b"\xff\xff\xff\xff" + b"x" * 20, b"\x05\x00\x00\x00" + b"y" * 9])
def test_a_connection_that_breaks_the_framing_is_closed_and_counted_alone(garbage):
    """Too short for a size; a size over the limit; more bytes than the size it gave."""
    with pair() as (rx, tx), socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as raw:
        tx.push(batch(2, 0))
        receive(rx, 1)
        raw.connect(address(rx.endpoint))
        raw.send(garbage)
        wait_until(lambda: (rx.read_available(), rx.malformed == 1)[1], 10, 0.005, "the malformed count")
        assert raw.recv(8) == b""  # the receiver closed it
        tx.push(batch(2, 1))
        assert receive(rx, 1)[0].seq == 1 and rx.closed_bad == 1


def test_a_well_framed_message_with_a_bad_prefix_is_counted_and_the_connection_kept():
    ep = endpoint()
    rx = UnixInLink("a.out-b.in", "in", ep, "leaky", 8)
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        raw.connect(address(ep))
        for rec in records([b"\x00\x01"]):
            raw.sendmsg(rec)
        for rec in records(encode(batch(2, 3), 0)):
            raw.sendmsg(rec)
        got = receive(rx, 1)
        same(got[0], batch(2, 3))
        assert rx.malformed == 1 and rx.closed_bad == 0
    finally:
        raw.close()
        rx.close()


def test_a_block_link_waits_for_a_receiver_that_does_not_read_and_loses_nothing():
    with pair("block", 4, 4) as (rx, tx):
        n = 0
        while not tx.must_wait:  # the kernel's buffer fills, then the outbox
            tx.push(batch(500, n))
            n += 1
            assert n < 1000
        assert tx.drops == 0
        got: list[Message] = []

        def drained() -> bool:
            tx.flush()
            rx.read_available()
            while rx.queue:
                got.append(rx.queue.popleft())
            return len(got) == n

        wait_until(drained, 20, 0.001, lambda: f"{n} messages (got {len(got)})")
        assert [m.seq for m in got] == list(range(n)) and rx.gaps == 0


def test_an_eos_sent_before_close_is_read_after_the_sender_is_gone():
    with pair("block", 8, 8) as (rx, tx):
        tx.push(batch(3, 0))
        tx.push_control(Kind.EOS)
        tx.close(2000)
        got = receive(rx, 2)
        assert got[1].kind == Kind.EOS


frames_strategy = st.lists(st.binary(max_size=300), min_size=0, max_size=4).flatmap(
    lambda arrays: st.tuples(st.just(arrays), st.integers(0, 2**40), st.integers(-2**40, 2**40)))


@settings(max_examples=200, deadline=None)
@given(frames_strategy, st.sampled_from([10, 1000, RECORD_MAX]))
def test_records_parse_back_to_the_frames_they_carry(case, big):
    arrays, seq, pts = case
    msg = Message("x/y", {"k": 1}, {f"a{i}": np.frombuffer(b * (1 + big // max(1, len(b) or 1)), np.uint8)
                                    for i, b in enumerate(arrays) if b}, pts_ns=pts, session=["s"])
    frames = encode(msg, seq)
    recs = records(frames)
    joined = b"".join(bytes(b) for rec in recs for b in rec)
    assert all(sum(len(memoryview(b).cast("B")) for b in rec) <= RECORD_MAX for rec in recs)
    kind, seq2, pts2, body, got = parse(bytearray(joined[4:]))
    assert (kind, seq2, pts2) == (Kind.DATA, seq, pts)
    assert [bytes(f) for f in got] == [bytes(memoryview(f).cast("B")) for f in frames[1:]]
