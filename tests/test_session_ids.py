"""Session ids as fixed-width byte arrays: on the wire (``Message.session_ids``, a msgpack ext)
and looked up with the sender's rows as hints (``SessionSlots.lookup_ids``), against the list
path they replace."""
from __future__ import annotations

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nodes.compiled import load
from runtime.message import PREFIX, MalformedMessage, Message, decode, encode, ids_array
from runtime.sessions import SessionSlots, batch_ids, batch_sessions


def test_ids_travel_as_one_array_and_read_back_as_the_list():
    names = ["phone-1", "é-2", "a-much-longer-device-identifier-3"]
    ids = ids_array(names)
    msg = decode(encode(Message("x/y", None, {"w": np.zeros((3, 2), np.float32)}, session=ids), 0))
    assert msg.carries_ids and msg.session_ids.tolist() == [n.encode() for n in names]
    assert msg.session == names and batch_sessions(msg) == names
    assert batch_ids(msg) is msg.session_ids
    plain = decode(encode(Message("x/y", None, session=names), 0))
    assert not plain.carries_ids and batch_ids(plain) == names
    assert plain.session_ids.tolist() == ids.tolist()
    forwarded = decode(encode(msg.replace(pts_ns=5), 1))  # passed on unread: still an array
    assert forwarded.carries_ids and forwarded.session == names


@pytest.mark.parametrize("ext", [b"", b"\x00\x00abc", b"\x04\x00abcdefg"])
def test_a_broken_id_array_is_a_malformed_message(ext):
    body = msgpack.packb(["x", msgpack.ExtType(1, ext), None, [], None], use_bin_type=True)
    with pytest.raises(MalformedMessage):
        decode([PREFIX.pack(0, 0, 0, 0) + body])


pool = [f"dev-{i}" + "x" * (i % 13) for i in range(40)]
batches = st.lists(st.tuples(st.lists(st.sampled_from(range(len(pool))), max_size=12, unique=True),
                             st.booleans(), st.booleans()), min_size=1, max_size=30)


@pytest.mark.parametrize("compiled", [None, load("nodes.face._filters")], ids=["numpy", "compiled"])
@settings(max_examples=150, deadline=None)
@given(batches, st.integers(0, 2**31))
def test_lookup_ids_gives_the_slots_the_list_path_gives(compiled, seq, seed):
    """Sessions join, leave (released) and come back; the sender renumbers its rows now and then
    (a restart): hints that are stale or wrong only cost the dict, never a wrong slot."""
    rng = np.random.default_rng(seed)
    by_ids, by_list = SessionSlots(4), SessionSlots(4)
    rows = {i: i for i in range(len(pool))}  # the sender's row of each id
    for members, renumber, release in seq:
        if renumber:
            perm = rng.permutation(len(pool))
            rows = {i: int(perm[i]) for i in range(len(pool))}
        names = [pool[i] for i in members]
        hint = np.array([rows[i] for i in members], dtype=np.int32)
        a, new_a = by_ids.lookup_ids(ids_array(names) if names else np.empty(0, "S1"), hint, "in", compiled)
        b, new_b = by_list.lookup(names)
        assert a.tolist() == b.tolist() and new_a.tolist() == new_b.tolist()
        assert [by_ids.ids[s] for s in a.tolist()] == names
        if release and len(a):
            gone = a[: max(1, len(a) // 2)]
            by_ids.release(gone)
            by_list.release(gone)


def test_a_hint_pointing_at_another_session_is_caught():
    slots = SessionSlots(4)
    first, _ = slots.lookup_ids(ids_array(["a", "b"]), np.array([0, 1], np.int32), "in")
    again, new = slots.lookup_ids(ids_array(["b", "a"]), np.array([0, 1], np.int32), "in")  # rows swapped
    assert again.tolist() == first[::-1].tolist() and not new.any()
    wide, new = slots.lookup_ids(ids_array(["a" * 30, "a"]), np.array([0, 1], np.int32), "in")
    assert new.tolist() == [True, False] and wide[1] == first[0]
