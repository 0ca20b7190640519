"""The link message encoding: round trips, arrays without copies, malformed frames refused."""
from __future__ import annotations

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.message import PREFIX, Kind, MalformedMessage, Message, decode, encode


def test_round_trip_with_arrays_and_batch_sessions():
    w = np.random.default_rng(1).random((3, 52), dtype=np.float32)
    msg = Message("arkit/blendshapes", {"active": [True, False, True]}, {"weights": w, "pose": np.zeros((3, 9), np.float32)},
                  pts_ns=123, session=["a", "b", "c"], trace="t1")
    got = decode(encode(msg, 7))
    assert (got.caps, got.seq, got.pts_ns, got.session, got.trace, got.kind) == ("arkit/blendshapes", 7, 123, ["a", "b", "c"], "t1", Kind.DATA)
    assert got.data == {"active": [True, False, True]}
    np.testing.assert_array_equal(got.arrays["weights"], w)
    assert got.arrays["pose"].shape == (3, 9)


def test_small_arrays_ride_in_the_header_large_ones_in_their_own_frames():
    small, large = np.zeros(52, np.float32), np.zeros((1000, 52), np.float32)
    assert len(encode(Message("x", arrays={"w": small}), 0)) == 1
    frames = encode(Message("x", arrays={"w": small, "big": large}), 0)
    assert len(frames) == 2 and frames[1] is large


def test_received_arrays_are_views_of_the_frame():
    frames = encode(Message("x", arrays={"v": np.arange(5000, dtype=np.float32)}), 0)
    buf = bytearray(bytes(np.asarray(frames[1]).data))
    got = decode([frames[0], buf])
    assert np.shares_memory(got.arrays["v"], np.frombuffer(buf, dtype=np.uint8))


def test_a_message_passed_on_unread_keeps_its_received_bytes():
    """A node that never reads the arrays (identity) forwards the frames it got: no numpy on its path."""
    big, small = np.arange(20000, dtype=np.float32), np.arange(52, dtype=np.float32)
    frames = encode(Message("x", {"n": 1}, {"small": small, "big": big}, pts_ns=5, session="s"), 0)
    got = decode([frames[0], bytes(np.asarray(frames[1]).data)])
    assert got._arrays is None  # not built yet
    again = encode(got.replace(data={"n": 2}), 9)
    assert again[1] is got._wire[1][0]  # the received frame itself, not a copy
    out = decode([again[0], again[1]])
    assert (out.seq, out.data, out.session) == (9, {"n": 2}, "s")
    np.testing.assert_array_equal(out.arrays["big"], big)
    np.testing.assert_array_equal(out.arrays["small"], small)
    got.arrays["small"] = small * 2  # read and changed: the new arrays travel
    np.testing.assert_array_equal(decode(encode(got, 1)).arrays["small"], small * 2)


def test_non_contiguous_arrays_are_sent_correctly():
    a = np.arange(20, dtype=np.float32).reshape(4, 5)[:, ::2]
    got = decode([bytes(f) if not isinstance(f, np.ndarray) else f.tobytes() for f in encode(Message("x", arrays={"a": a}), 0)])
    np.testing.assert_array_equal(got.arrays["a"], a)


def _frame0(body: list, kind: int = 0, arrays: int = 0) -> bytes:
    return PREFIX.pack(kind, arrays, 0, 0) + msgpack.packb(body)


@pytest.mark.parametrize("frames", [
    [b""], [b"\xc1"], [PREFIX.pack(9, 0, 0, 0) + msgpack.packb(["x", None, None, [], None])],  # unknown kind
    [_frame0(["x", None])], [PREFIX.pack(0, 0, 0, 0) + b"\xc1"],  # a body that is not 5 fields, or not msgpack
    [_frame0(["x", None, None, [["a", "<f4", [4]]], None])],  # array frame missing
    [_frame0(["x", None, None, [["a", "<f4", [4]]], None], arrays=1), b"abc"],  # wrong size
    [_frame0(["x", None, None, [["a", "nonsense", [1]]], None], arrays=1), b"abcd"],
    [_frame0(["x", None, None, [["a", "<f4", [4], b"abc"]], None])],  # inline, wrong size
    [_frame0(["x", None, None, 5, None])],
    [_frame0(["x", None, None, [["a", "O", [1], b"abcdefgh"]], None])],  # objects: no raw bytes
    [_frame0(["x", None, None, [["a", "(2,)<f4", [1], b"abcdefgh"]], None])],  # sub-array dtype
    [_frame0(["x", None, None, [["a", "<f4", [-1], b""]], None])],  # negative dimension
    [_frame0(["x", None, None, [["a", "<f4", [1]]], None], arrays=1), b"abcd", b"efgh"],  # a frame too many
])
def test_malformed_frames_raise_value_error(frames):
    with pytest.raises(ValueError, match="malformed message"):
        decode(frames)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), min_size=1, max_size=3))
def test_random_frames_never_raise_anything_but_value_error(frames):
    try:
        decode(frames)
    except ValueError:
        pass


def test_a_body_left_unread_goes_on_byte_for_byte_and_opens_when_touched():
    """What a passthrough node gets: the body still packed. Unread, it is forwarded as it came;
    reading or setting any field unpacks it first, so nothing set is lost and nothing read is stale."""
    from runtime.message import decode_prefix

    msg = Message("x/y", {"n": 7}, {"v": np.arange(3, dtype=np.float32)}, pts_ns=11, session=["a", "b"], trace="t")
    head = encode(msg, 4)[0]
    kind, n, seq, pts = decode_prefix(head)
    lazy = Message.received(kind, seq, pts, head[PREFIX.size:], [])
    assert (lazy.kind, lazy.seq, lazy.pts_ns, lazy._body is not None) == (Kind.DATA, 4, 11, True)
    again = encode(lazy, 5)[0]
    assert again[PREFIX.size:] == head[PREFIX.size:] and decode([again]).seq == 5
    lazy.data = {"n": 8}  # set before any read: the rest of the body is kept
    out = decode(encode(lazy, 6))
    assert (out.caps, out.session, out.data, out.trace) == ("x/y", ["a", "b"], {"n": 8}, "t")
    np.testing.assert_array_equal(out.arrays["v"], [0, 1, 2])
    bad = Message.received(Kind.DATA, 0, 0, b"\xc1", [])
    with pytest.raises(MalformedMessage):
        _ = bad.caps  # reading a field unpacks the body
