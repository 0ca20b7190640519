"""Property-based and fuzz tests of every parser that takes outside input: no crash, no hang, a clear
error every time.

- Live Link Face v6 packets and their JSON cousin (``nodes.livelink``), from arbitrary bytes and
  from structure-aware mutations of valid packets (the real iPhone capture and built ones); the
  ``arkit_source`` node fed such datagrams over a real UDP socket; its numpy fast path
  (``parse_tails``) agrees with the full parser on every damaged tail.
- Graph texts (``runtime.graph.parse_graph`` + ``runtime.validate.validate_graph``): valid graphs
  with keys deleted, renamed and retyped, lines dropped or re-indented, random YAML: success or a
  ``GraphError`` whose every problem names the file (and a line inside it), nothing else.
- ``avatar/packet`` decoding: encoder streams with packets mutated at the msgpack and bit level,
  through ``nodes.wire.Decoder`` (ValueError or a frame or None; a malformed packet changes no
  decoder state) and through the page's ``web/js/wireformat.js`` under node, a few hundred packets
  per run (an ``Error`` or a frame or null, the state kept after an error, the same verdict as
  Python).
- The control API bodies on a real runner: 2xx or a 4xx with a JSON ``detail``, never a 5xx, and
  the runner keeps running.
- ``websocket_sink``'s text protocol on a real ``/ws``: an ``error`` answer or nothing, and the
  sink's process keeps serving the next client.

Every hypothesis test is derandomized with no example database (the same examples on every run,
in CI too), and bounded in examples so the file runs in well under a minute (about 35 s). Bugs
found here, all fixed, are kept as regression reproducers at the end. The Python decoders (Live Link Face, wire format) and the
JavaScript one held: no bug found in them.
"""
from __future__ import annotations

import asyncio
import copy
import json
import math
import os
import random
import re
import shutil
import socket
import struct
import subprocess
import sys
import textwrap
import time
from typing import Any, Callable, Iterator

import httpx
import msgpack
import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nodes import wire as wf
from nodes.face import arkit_names, arkit_pose_names
from nodes.livelink import (
    MAX_JSON_BYTES,
    MAX_NAME_BYTES,
    MAX_PACKET_BYTES,
    N_BLENDSHAPES,
    N_POSE,
    N_VALUES,
    SAMPLE_CAPTURE,
    TAIL_BYTES,
    PacketError,
    build_json_packet,
    build_packet,
    header_of,
    parse_datagram,
    parse_tails,
    read_container,
)
from runtime.errors import GraphError
from runtime.graph import parse_graph
from runtime.testing import NodeHarness
from runtime.validate import validate_graph
from tests.helpers import API_TEST_GRAPH, ROOT, wait_until

pytestmark = [pytest.mark.timeout(120), pytest.mark.filterwarnings("ignore:Generating overly large repr")]
FUZZ = dict(derandomize=True, database=None, deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                   HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much])


def fuzz(max_examples: int) -> Callable:
    return settings(max_examples=max_examples, **FUZZ)


# =================================================================================================
# Live Link Face: v6 packets
# =================================================================================================
REAL = read_container(SAMPLE_CAPTURE)
REASONS = {"oversized", "truncated", "version", "length", "count", "corrupt", "nonfinite", "encoding", "json"}
NAMES = arkit_names() + arkit_pose_names()


def check_llf(data: bytes) -> Any:
    """The parser's contract: a PacketError (a ValueError) with a known reason and a message, or a
    frame with 52 + 9 finite values and a device id."""
    try:
        f = parse_datagram(data)
    except PacketError as exc:
        assert exc.reason in REASONS, exc.reason
        assert isinstance(exc, ValueError) and str(exc).strip()
        return exc
    assert f.device_id and isinstance(f.device_id, str) and isinstance(f.subject, str)
    assert f.weights.shape == (N_BLENDSHAPES,) and f.pose.shape == (N_POSE,)
    assert f.weights.dtype == np.float32 and f.pose.dtype == np.float32
    assert np.isfinite(f.weights).all() and np.isfinite(f.pose).all()
    assert len(f.device_id.encode()) <= MAX_NAME_BYTES
    return f


# every field of a v6 packet of a device id of length d and subject of length s: (offset, size)
def fields(d: int, s: int) -> list[tuple[int, int]]:
    o = 1 + 4 + d + 4 + s
    return [(0, 1), (1, 4), (5 + d, 4), (o, 4), (o + 4, 4), (o + 8, 4), (o + 12, 4), (o + 16, 1)]


INT_EDGES = [0, 1, -1, 2, 31, 32, 36, 255, 256, MAX_NAME_BYTES, MAX_NAME_BYTES + 1, 2**31 - 1, -2**31, 2**16, 61, 60, 62]
FLOAT_EDGES = [0.0, -0.0, 1.0, -1.0, 1.5, math.nan, math.inf, -math.inf, 3.4e38, -3.4e38, 1e-45, 0.999999]


@st.composite
def valid_packets(draw: st.DrawFn) -> bytes:
    """A real packet, or a built one with random names, frame, sub-frame, rate and values."""
    if draw(st.booleans()):
        return draw(st.sampled_from(REAL))
    device = draw(st.text(min_size=1, max_size=40).filter(lambda t: len(t.encode()) <= MAX_NAME_BYTES))
    subject = draw(st.text(max_size=20))
    values = draw(st.lists(st.floats(width=32, allow_nan=False, allow_infinity=False), min_size=N_VALUES,
                           max_size=N_VALUES))
    return build_packet(device, values[:N_BLENDSHAPES], values[N_BLENDSHAPES:], subject=subject,
                        frame=draw(st.integers(-2**31, 2**31 - 1)),
                        subframe=draw(st.floats(width=32, allow_nan=False, allow_infinity=False)),
                        fps=(draw(st.integers(1, 2**31 - 1)), draw(st.integers(1, 2**31 - 1))))


def _mutation() -> st.SearchStrategy:
    pos = st.integers(0, 400)
    return st.one_of(
        st.tuples(st.just("set"), pos, st.integers(0, 255)),
        st.tuples(st.just("flip"), pos, st.integers(0, 7)),
        st.tuples(st.just("cut"), pos),
        st.tuples(st.just("extend"), st.binary(min_size=1, max_size=16)),
        st.tuples(st.just("insert"), pos, st.binary(min_size=1, max_size=8)),
        st.tuples(st.just("delete"), pos, st.integers(1, 8)),
        st.tuples(st.just("int32"), st.integers(0, 7), st.sampled_from(INT_EDGES)),  # a header field
        st.tuples(st.just("value"), st.integers(0, N_VALUES - 1), st.sampled_from(FLOAT_EDGES)),
        st.tuples(st.just("splice"), st.sampled_from(REAL), pos),
    )


def mutate_llf(data: bytes, ops: list[tuple]) -> bytes:
    b = bytearray(data)
    for op in ops:
        kind = op[0]
        n = len(b)
        if kind == "set" and n:
            b[op[1] % n] = op[2]
        elif kind == "flip" and n:
            b[op[1] % n] ^= 1 << op[2]
        elif kind == "cut":
            del b[op[1] % (n + 1):]
        elif kind == "extend":
            b += op[1]
        elif kind == "insert":
            i = op[1] % (n + 1)
            b[i:i] = op[2]
        elif kind == "delete" and n:
            i = op[1] % n
            del b[i:i + op[2]]
        elif kind in ("int32", "value") and n > 9:
            try:
                d = int.from_bytes(b[1:5], "big", signed=True)
                s = int.from_bytes(b[5 + d:9 + d], "big", signed=True) if 0 <= d < n else -1
            except ValueError:
                continue
            if not (0 <= d < n and 0 <= s < n):
                continue
            if kind == "int32":
                off, size = fields(d, s)[op[1]]
                raw = struct.pack(">i", op[2]) if size == 4 else bytes([op[2] & 0xFF])
                b[off:off + size] = raw
            else:
                off = 1 + 4 + d + 4 + s + 17 + 4 * op[1]
                b[off:off + 4] = struct.pack(">f", op[2])
        elif kind == "splice":
            b = b[:op[2] % (n + 1)] + op[1][op[2] % len(op[1]):]
    return bytes(b)


@fuzz(400)
@given(st.binary(max_size=2 * MAX_PACKET_BYTES))
def test_llf_arbitrary_bytes(data):
    check_llf(data)
    check_llf(b"\x06" + data[:MAX_PACKET_BYTES - 1])


@fuzz(600)
@given(valid_packets(), st.lists(_mutation(), min_size=1, max_size=6))
def test_llf_mutated_valid_packets(packet, ops):
    assert not isinstance(check_llf(packet), Exception)  # the unmutated packet is valid
    check_llf(mutate_llf(packet, ops))


@fuzz(400)
@given(st.sampled_from(REAL), st.lists(st.tuples(st.integers(0, TAIL_BYTES - 1), st.integers(0, 255)), min_size=1,
                                       max_size=6),
       st.lists(st.tuples(st.integers(0, N_VALUES - 1), st.sampled_from(FLOAT_EDGES)), max_size=3))
def test_llf_fast_path_agrees_with_the_full_parser(packet, edits, floats):
    """arkit_source takes packets of known devices through ``parse_tails`` (numpy, whole batches):
    for any damage to a tail it must accept exactly what ``parse_packet`` accepts, with the same values."""
    head, tail = header_of(packet), bytearray(packet[-TAIL_BYTES:])
    for pos, value in edits:
        tail[pos] = value
    for i, x in floats:
        tail[17 + 4 * i:21 + 4 * i] = struct.pack(">f", x)
    frames, values, ok = parse_tails(bytes(tail))
    result = check_llf(head + bytes(tail))
    assert bool(ok[0]) == (not isinstance(result, Exception)), result
    if ok[0]:
        assert frames[0] == result.frame
        assert np.array_equal(values[0], np.concatenate([result.weights, result.pose]))


# --- the JSON form ------------------------------------------------------------------------------
JSON_SCALARS = (st.none() | st.booleans() | st.integers() | st.integers(-10**400, 10**400) | st.floats()
                | st.text(max_size=8) | st.sampled_from([2**31, -2**31 - 1, 10**309, 1e308, -0.0]))
JSON_ANY = st.recursive(JSON_SCALARS, lambda inner: st.lists(inner, max_size=6)
                        | st.dictionaries(st.text(max_size=6), inner, max_size=6), max_leaves=24)


@st.composite
def json_packets(draw: st.DrawFn) -> bytes:
    """A valid JSON packet (by names or as a list) with its fields deleted, retyped, NaN'd, made
    huge or nested deep; or a document that is not quite JSON."""
    weights = draw(st.lists(st.floats(0, 1), min_size=52, max_size=52))
    names = draw(st.booleans())
    doc: dict[str, Any] = json.loads(build_json_packet(
        draw(st.text(min_size=1, max_size=12)),
        dict(zip(arkit_names(), weights)) if names else weights,
        draw(st.none() | st.lists(st.floats(-3, 3), min_size=9, max_size=9)),
        draw(st.none() | st.integers(-2**31, 2**31 - 1))))
    for _ in range(draw(st.integers(0, 3))):
        key = draw(st.sampled_from(["session", "blendshapes", "pose", "frame", "extra"]))
        how = draw(st.sampled_from(["delete", "retype", "nan", "huge", "deep", "bad_name", "long_list", "short"]))
        if how == "delete":
            doc.pop(key, None)
        elif how == "retype":
            doc[key] = draw(JSON_ANY)
        elif how == "nan":
            target = doc.get(key)
            x = draw(st.sampled_from([math.nan, math.inf, -math.inf, 1e39, 10**40]))
            if isinstance(target, list) and target:
                target[draw(st.integers(0, len(target) - 1))] = x
            elif isinstance(target, dict) and target:
                target[draw(st.sampled_from(sorted(target)))] = x
            else:
                doc[key] = x
        elif how == "huge":
            doc[key] = [0.5] * draw(st.integers(53, 5000))
        elif how == "deep":
            depth = draw(st.integers(100, 6000))
            doc[key] = "@DEEP%d@" % depth
        elif how == "bad_name" and isinstance(doc.get("blendshapes"), dict):
            doc["blendshapes"][draw(st.text(max_size=10))] = 0.5
        elif how == "long_list":
            doc[key] = [draw(JSON_SCALARS) for _ in range(draw(st.integers(0, 70)))]
        elif how == "short" and isinstance(doc.get(key), list):
            doc[key] = doc[key][:draw(st.integers(0, len(doc[key])))]
    text = json.dumps(doc, allow_nan=True)
    text = re.sub(r'"@DEEP(\d+)@"', lambda m: "[" * int(m.group(1)) + "]" * int(m.group(1)), text)
    raw = text.encode("utf-8", "surrogatepass")
    prefix = draw(st.sampled_from([b"", b" ", b"\n\t", b"\xef\xbb\xbf", b"\xff"]))
    return prefix + raw[:draw(st.integers(0, len(raw)))] if draw(st.integers(0, 9)) == 0 else prefix + raw


@fuzz(500)
@given(json_packets())
def test_llf_json_packets(data):
    result = check_llf(data)
    if len(data) > MAX_JSON_BYTES and data[:1] in (b"{", b" ", b"\n"):
        assert isinstance(result, PacketError) and result.reason == "oversized"


@fuzz(300)
@given(JSON_ANY)
def test_llf_json_arbitrary_documents(doc):
    check_llf(json.dumps(doc).encode())
    check_llf(json.dumps({"session": "s", "blendshapes": doc, "pose": doc}).encode())


# --- the arkit_source node, fed over UDP ---------------------------------------------------------
@fuzz(40)
@given(st.lists(st.one_of(
    valid_packets(),
    st.tuples(valid_packets(), st.lists(_mutation(), min_size=1, max_size=4)).map(lambda t: mutate_llf(*t)),
    json_packets(), st.binary(max_size=400)), min_size=1, max_size=40))
def test_arkit_source_drops_bad_datagrams_and_keeps_serving(datagrams):
    """The node itself (in-process, real UDP socket): every datagram is counted as a packet or as
    bad by reason, the good ones come out in its batches, and nothing it receives raises."""
    h = NodeHarness("arkit_source", host="127.0.0.1", port=0, rate=60.0, max_sessions=16)
    try:
        port = h.node.sock.getsockname()[1]
        out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        good = 0
        for d in datagrams:
            if not d:
                continue  # an empty UDP datagram is legal but recvfrom cannot tell it from nothing
            out.sendto(d, ("127.0.0.1", port))
            good += not isinstance(check_llf(d), Exception)
        out.close()
        sent = sum(1 for d in datagrams if d)

        def read_all() -> bool:  # run the node's watcher until it has read every datagram sent
            h.watched.get(h.node.sock, h.node._drain)()
            return h.node.stats()["received"] >= sent

        wait_until(read_all, 10, 0.002, lambda: f"{sent} datagrams read (got {h.node.stats()['received']})")
        emitted = h.advance(0.05)
        st_ = h.node.stats()
        assert st_["received"] == sent
        assert st_["packets"] + st_["bad"] == sent
        assert st_["packets"] <= good  # good packets of a 17th device are refused (session_limit)
        assert set(st_["bad_reasons"]) <= REASONS | {"session_limit"}
        if st_["packets"]:
            msg = emitted[-1][1]
            assert msg.arrays["weights"].shape == (len(msg.session), N_BLENDSHAPES)
            assert np.isfinite(msg.arrays["weights"]).all() and np.isfinite(msg.arrays["pose"]).all()
            assert (msg.arrays["weights"] >= 0).all() and (msg.arrays["weights"] <= 1).all()
    finally:
        h.close()


# =================================================================================================
# Graph texts
# =================================================================================================
BASE_GRAPH = textwrap.dedent("""\
    name: fuzz
    description: a graph to mutate
    args: {rate: 60, out: /tmp/never-written.msgpack, level: 1}
    link_defaults: {policy: leaky, size: 8}
    nodes:
      src:
        type: testsrc
        params: {rate: "${rate}", num_buffers: 10, caps: arkit/blendshapes}
        restart: on-failure
        max_restarts: 3
      mid: {type: identity, params: {label: "x-${rate}"}}
      rec: {type: recorder, params: {path: "${out}"}}
      sink: fakesink
    links:
      - src -> mid
      - {from: mid.out, to: rec.in, policy: block, size: 64}
      - {chain: "mid -> sink", policy: leaky}
    """)
BASE_DOC = yaml.safe_load(BASE_GRAPH)
FILE = "fuzz/graph.yaml"


def _paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path to a key or list item in a document."""
    out = []
    if isinstance(doc, dict):
        for k, v in doc.items():
            out.append(prefix + (k,))
            out += _paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out.append(prefix + (i,))
            out += _paths(v, prefix + (i,))
    return out


YAML_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12),
    st.sampled_from(["", "${rate}", "${nope}", "${", "a -> b", "->", "src.out -> ", ".", "src..out", "leaky", "block",
                     "never", "always", "testsrc", "nosuch", "mod:Cls", "nodes.identity:Identity", "-1", "0",
                     "1e309", ".nan", "~", "2020-01-01", "yes", "[1, 2", "{a: 1", "&a x", "*a", "!!binary abc", "\t",
                     "feedback", "true"]),
)
YAML_VALUES = st.recursive(YAML_SCALARS, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8) | st.integers(), inner, max_size=4), max_leaves=10)


@st.composite
def graph_texts(draw: st.DrawFn) -> str:
    doc = copy.deepcopy(BASE_DOC)
    for _ in range(draw(st.integers(1, 4))):
        paths = _paths(doc)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = doc
        for p in path[:-1]:
            parent = parent[p]
        key = path[-1]
        how = draw(st.sampled_from(["delete", "rename", "retype", "add", "swap_type"]))
        if how == "delete":
            del parent[key]
        elif how == "rename" and isinstance(parent, dict):
            parent[draw(st.text(max_size=10) | st.sampled_from(list(BASE_DOC) + ["type", "params", "from", "to",
                                                                                  "policy", "size", "chain"]))] = parent.pop(key)
        elif how == "retype":
            parent[key] = draw(YAML_VALUES)
        elif how == "add" and isinstance(parent, dict):
            parent[draw(st.text(max_size=10))] = draw(YAML_VALUES)
        elif how == "add" and isinstance(parent, list):
            parent.append(draw(YAML_VALUES))
        elif how == "swap_type":
            parent[key] = draw(st.sampled_from(["testsrc", "identity", "fakesink", "recorder", "compressor", "lod",
                                                "websocket_sink", "blender", "arkit/blendshapes", "avatar/packet"]))
    text = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
    lines = text.splitlines()
    for _ in range(draw(st.integers(0, 2))):  # line-level damage: drop, duplicate, re-indent, insert
        if not lines:
            break
        i = draw(st.integers(0, len(lines) - 1))
        how = draw(st.sampled_from(["drop", "dup", "indent", "dedent", "insert", "cut"]))
        if how == "drop":
            del lines[i]
        elif how == "dup":
            lines.insert(i, lines[i])
        elif how == "indent":
            lines[i] = "  " + lines[i]
        elif how == "dedent":
            lines[i] = lines[i][2:]
        elif how == "insert":
            lines.insert(i, draw(st.text(max_size=20)))
        else:
            lines[i] = lines[i][:draw(st.integers(0, len(lines[i])))]
    return "\n".join(lines) + "\n"


def check_graph(text: str) -> None:
    nlines = text.count("\n") + 1
    try:
        graph = parse_graph(text, FILE)
        validate_graph(graph)
    except GraphError as exc:
        assert exc.problems, "a GraphError without problems"
        for p in exc.problems:
            assert p.file == FILE and p.message.strip(), p
            assert p.line is None or 1 <= p.line <= nlines, (p, nlines)
            assert str(p).startswith(f"{FILE}:{p.line}: error: " if p.line else f"{FILE}: error: ")
        return


def test_the_base_graph_is_valid():
    validate_graph(parse_graph(BASE_GRAPH, FILE))


@fuzz(500)
@given(graph_texts())
def test_graph_mutations_give_graph_errors_with_lines(text):
    check_graph(text)


@fuzz(300)
@given(st.one_of(st.text(max_size=200), YAML_VALUES.map(lambda v: yaml.safe_dump(v, allow_unicode=True)),
                 st.lists(st.sampled_from(BASE_GRAPH.splitlines()), max_size=20).map("\n".join)))
def test_random_yaml_gives_graph_errors(text):
    check_graph(text)


# =================================================================================================
# avatar/packet: the Python decoder
# =================================================================================================
T0 = 5_000_000_000_000


@st.composite
def encoded_streams(draw: st.DrawFn) -> list[bytes]:
    """Packets of a real encoder: 1-3 sessions, any precision and mode, with or without pose,
    the ARKit table or a names list; in order."""
    enc = wf.Encoder(draw(st.integers(1, 16)), draw(st.integers(1, 16)), draw(st.integers(1, 8)),
                     draw(st.integers(0, 3)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    sessions = [f"s{i}" for i in range(draw(st.integers(1, 3)))]
    names = draw(st.sampled_from([wf.TABLE_ARKIT52, None]))
    m = 52 if names == wf.TABLE_ARKIT52 else draw(st.integers(1, 70))
    names = names if names is not None else [f"m{i}" for i in range(m)]
    with_pose = draw(st.booleans())
    w = rng.random((len(sessions), m)).astype(np.float32)
    packets = []
    for t in range(draw(st.integers(2, 12))):
        w = np.clip(w + rng.normal(0, 0.05, w.shape) * (rng.random(w.shape) < 0.5), 0, 1).astype(np.float32)
        pose = rng.uniform(-3, 3, (len(sessions), 9)) if with_pose else None
        packets += enc.encode(sessions, w, T0 + t * 16_666_667, names, pose)
    return packets


MSGPACK_ANY = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats() | st.text(max_size=8) | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=10) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=12)


@st.composite
def wire_mutation(draw: st.DrawFn, packet: bytes) -> bytes:
    """Damage at the byte level, at the msgpack level (a keyframe's fields), or in a delta's bits."""
    how = draw(st.sampled_from(["byte", "bit", "cut", "extend", "field", "elements", "bits", "body"]))
    b = bytearray(packet)
    if how == "byte":
        b[draw(st.integers(0, len(b) - 1))] = draw(st.integers(0, 255))
    elif how == "bit":
        b[draw(st.integers(0, len(b) - 1))] ^= 1 << draw(st.integers(0, 7))
    elif how == "cut":
        del b[draw(st.integers(0, len(b) - 1)):]
    elif how == "extend":
        b += draw(st.binary(min_size=1, max_size=8))
    obj = msgpack.unpackb(packet)
    if how == "field" and isinstance(obj, list):
        obj[draw(st.integers(0, 8))] = draw(MSGPACK_ANY | st.sampled_from(
            [2, 1, 0, 65535, 65536, -1, 16, 17, 2**63 - 1, -2**63, "x" * 1025, [], ["a"] * 4097, b"", True]))
        return msgpack.packb(obj, use_bin_type=True)
    if how == "elements" and isinstance(obj, list):
        obj = obj[:draw(st.integers(0, 9))] + draw(st.lists(MSGPACK_ANY, max_size=2))
        return msgpack.packb(obj, use_bin_type=True)
    if how in ("bits", "body"):
        body = bytearray(obj[8] if isinstance(obj, list) else obj)
        if how == "bits" and body:
            for _ in range(draw(st.integers(1, 4))):
                body[draw(st.integers(0, len(body) - 1))] ^= 1 << draw(st.integers(0, 7))
        else:
            body = body[:draw(st.integers(0, len(body)))] + draw(st.binary(max_size=4))
        if isinstance(obj, list):
            obj[8] = bytes(body)
            return msgpack.packb(obj, use_bin_type=True)
        return msgpack.packb(bytes(body), use_bin_type=True)
    return bytes(b)


@st.composite
def damaged_streams(draw: st.DrawFn) -> list[tuple[bytes, bool]]:
    """A stream with some packets damaged (damaged copies before, or instead of, the real ones),
    some lost, some repeated: (packet, is_original)."""
    out = []
    for p in draw(encoded_streams()):
        roll = draw(st.integers(0, 9))
        if roll < 3:
            out.append((draw(wire_mutation(p)), False))
        if roll == 3:
            continue  # lost
        if roll == 4:
            out.append((p, True))  # a duplicate
        if roll != 5:
            out.append((p, True))
        else:
            out.append((draw(wire_mutation(p)), False))  # only a damaged copy arrives
    return out


def check_frame(f: wf.Frame) -> None:
    m = wf.names_size(f.names)
    assert f.weights.dtype == np.float32 and f.weights.shape == (m,)
    assert np.all((f.weights >= 0) & (f.weights <= 1))
    assert 0 <= f.sid < wf.MAX_SLOTS and 0 <= f.seq < wf.SEQ_MOD and isinstance(f.session, str)
    if f.pose is not None:
        assert f.pose.shape == (9,) and np.all(np.abs(f.pose) <= np.float32(math.pi) + 1e-6)


@fuzz(300)
@given(damaged_streams(), st.booleans())
def test_wire_decoder_raises_only_value_error_and_a_refused_packet_changes_nothing(stream, resume):
    dec = wf.Decoder(resume_after_loss=resume)
    for packet, _ in stream:
        before = copy.deepcopy(dec._streams)
        try:
            frame = dec.decode(packet)
        except ValueError as exc:
            assert str(exc).strip()
            assert dec._streams == before, "a malformed packet changed the decoder's state"
            assert dec.status == "malformed"
            continue
        if frame is not None:
            check_frame(frame)
        else:
            assert dec.status in ("refused", "late")


@fuzz(300)
@given(st.binary(max_size=200), MSGPACK_ANY)
def test_wire_decoder_arbitrary_input(data, obj):
    for packet in (data, msgpack.packb(obj, use_bin_type=True)):
        try:
            frame = wf.Decoder().decode(packet)
        except ValueError as exc:
            assert str(exc).strip()
        else:
            assert frame is None or check_frame(frame) is None


# =================================================================================================
# avatar/packet: the page's JavaScript decoder under node
# =================================================================================================
JS_HARNESS = r"""
import fs from "node:fs";
import { AvatarDecoder } from "%s";
const hex = (h) => Uint8Array.from(h.match(/../g) || [], (x) => parseInt(x, 16));
const snapshot = (d) => JSON.stringify([...d.streams]);
const decoders = {}, out = [];
for (const line of fs.readFileSync(0, "utf8").trim().split("\n")) {
  const { dec, p } = JSON.parse(line);
  const d = (decoders[dec] ??= new AvatarDecoder({ resumeAfterLoss: dec.startsWith("tolerant") }));
  const before = snapshot(d);
  try {
    const f = d.decodeBytes(hex(p));
    out.push(f === null ? ["none"] : ["ok", f.seq, f.q]);
  } catch (e) {
    out.push(["error", e instanceof Error, e && e.constructor && e.constructor.name, String(e && e.message),
              snapshot(d) === before]);
  }
}
process.stdout.write(JSON.stringify(out));
"""
JS_DECODER = ROOT / "web" / "js" / "wireformat.js"
JS_OK = shutil.which("node") is not None and (ROOT / "web" / "node_modules" / "@msgpack" / "msgpack").is_dir()


def _js_streams(seed: int) -> Iterator[tuple[str, list[bytes]]]:
    """A few hundred damaged packets in several streams, drawn from the strategies above with a seed."""
    rnd = random.Random(seed)
    for case in range(24):
        enc = wf.Encoder(rnd.randint(1, 16), rnd.randint(1, 16), rnd.randint(1, 8), rnd.randint(0, 3))
        rng = np.random.default_rng(rnd.getrandbits(32))
        sessions = [f"s{i}" for i in range(rnd.randint(1, 3))]
        names: Any = wf.TABLE_ARKIT52 if rnd.random() < 0.7 else [f"m{i}" for i in range(rnd.randint(1, 40))]
        m = wf.names_size(names if isinstance(names, int) else tuple(names))
        w = rng.random((len(sessions), m)).astype(np.float32)
        packets = []
        for t in range(rnd.randint(4, 14)):
            w = np.clip(w + rng.normal(0, 0.05, w.shape), 0, 1).astype(np.float32)
            pose = rng.uniform(-3, 3, (len(sessions), 9)) if case % 2 else None
            for p in enc.encode(sessions, w, T0 + t * 16_666_667, names, pose):
                roll = rnd.random()
                if roll < 0.45:
                    packets.append(_js_mutate(p, rnd))
                if roll < 0.1:
                    continue
                packets.append(p)
        yield f"{'tolerant' if case % 3 == 0 else 'strict'}{case}", packets


def _js_mutate(p: bytes, rnd: random.Random) -> bytes:
    b = bytearray(p)
    how = rnd.choice(["byte", "bit", "cut", "extend", "field", "bits", "elements"])
    obj = msgpack.unpackb(p)
    if how == "byte":
        b[rnd.randrange(len(b))] = rnd.randrange(256)
    elif how == "bit":
        b[rnd.randrange(len(b))] ^= 1 << rnd.randrange(8)
    elif how == "cut":
        del b[rnd.randrange(len(b)):]
    elif how == "extend":
        b += bytes(rnd.randrange(256) for _ in range(rnd.randint(1, 6)))
    elif how == "field" and isinstance(obj, list):
        obj[rnd.randrange(9)] = rnd.choice([2, 1, 0, 65535, 65536, -1, 16, 17, 2**53, 2**53 + 1, -2**53, 2**63 - 1,
                                            "x" * 1025, "é" * 600, [], ["a"] * 3, b"", True, None, 1.5, {"a": 1}])
        return msgpack.packb(obj, use_bin_type=True)
    elif how == "elements" and isinstance(obj, list):
        return msgpack.packb(obj[:rnd.randrange(10)], use_bin_type=True)
    elif how == "bits":
        body = bytearray(obj[8] if isinstance(obj, list) else obj)
        if body:
            body[rnd.randrange(len(body))] ^= 1 << rnd.randrange(8)
        if isinstance(obj, list):
            obj[8] = bytes(body)
            return msgpack.packb(obj, use_bin_type=True)
        return msgpack.packb(bytes(body), use_bin_type=True)
    return bytes(b)


@pytest.mark.skipif(not JS_OK, reason="needs node and web/node_modules (npm ci in web/)")
@pytest.mark.parametrize("seed", [1, 2])
def test_js_decoder_throws_only_errors_keeps_its_state_and_agrees_with_python(tmp_path, seed):
    lines, expected = [], []
    for name, packets in _js_streams(seed):
        dec = wf.Decoder(resume_after_loss=name.startswith("tolerant"))
        for p in packets:
            lines.append(json.dumps({"dec": name, "p": p.hex()}))
            try:
                f = dec.decode(p)
            except ValueError:
                expected.append(("error",))
                continue
            expected.append(("none",) if f is None else ("ok", f.seq, wf.quantize(f.weights, f.bits, 0.0, 1.0).tolist()))
    (tmp_path / "harness.mjs").write_text(JS_HARNESS % JS_DECODER.as_uri())
    run = subprocess.run(["node", str(tmp_path / "harness.mjs")], input="\n".join(lines), capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout)
    assert len(got) == len(expected) >= 300
    kinds = {}
    for i, (e, g) in enumerate(zip(expected, got)):
        if g[0] == "error":
            assert g[1] is True, f"packet {i}: threw a non-Error {g}"
            assert g[3].strip(), f"packet {i}: an Error without a message"
            assert g[4] is True, f"packet {i}: a thrown packet changed the decoder's state ({g[3]})"
            kinds[g[2]] = kinds.get(g[2], 0) + 1
        assert e[0] == g[0] and (e[0] != "ok" or list(e[1:]) == g[1:]), (i, lines[i], e, g[:4])
    assert set(kinds) <= {"Error", "RangeError", "DecodeError"}, kinds
    assert {e[0] for e in expected} == {"ok", "none", "error"}


# =================================================================================================
# The control API: hypothesis bodies against a real runner
# =================================================================================================
API_SECRET = "fuzz-secret-" + "f" * 32
API_GRAPH = API_TEST_GRAPH.format(name="fuzzapi")
# Params left out of the fuzz because a valid value stops or floods the graph by design (a finite
# num_buffers ends the stream, error_after raises on purpose, dump prints every message, a huge
# rate or width or delay, or a frame clock allowed to lag for ever, makes the machine the bottleneck).
API_SKIP_PARAMS = {"num_buffers", "rate", "width", "error_after", "delay_ms", "dump", "max_lag_ms"}
# Bodies carry what once answered 500 (the regressions at the end) among the rest: NaN and
# Infinity (sent as JSON's NaN literals), integers beyond 64 bits, lone surrogates (as \ud800
# escapes) and nesting hundreds to thousands deep.
NONFINITE = st.sampled_from([math.nan, math.inf, -math.inf])
BODY_TEXT = st.text(alphabet=st.characters(blacklist_categories=()), max_size=12) | st.sampled_from(
    ["\ud800", "a\udfffb", "\udc80\ud800"])
BODY_SCALARS = (st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | st.integers() | st.floats()
                | st.sampled_from([2**64, -2**63 - 1, 99999999999999999999999, 10**400]) | NONFINITE
                | BODY_TEXT | st.sampled_from(["happy", "sad", "neutral", "", "a", "face", "mid", "x" * 200])
                | st.integers(100, 3000).map(lambda depth: f"@DEEP{depth}@"))  # a list nested that deep
BODY_JSON = st.recursive(BODY_SCALARS, lambda inner: st.lists(inner, max_size=4)
                         | st.dictionaries(BODY_TEXT, inner, max_size=4), max_leaves=12)


def body_text(body: Any) -> str:
    """JSON text of a generated body: NaN and Infinity as literals, each ``@DEEPn@`` a list n deep."""
    text = json.dumps(body, allow_nan=True)
    return re.sub(r'"@DEEP(\d+)@"', lambda m: "[" * int(m.group(1)) + "]" * int(m.group(1)), text)


def _declared_params() -> dict[str, dict[str, Any]]:
    from runtime.registry import get_node_type

    nodes = yaml.safe_load(API_GRAPH)["nodes"]
    return {name: {k: p for k, p in get_node_type(spec["type"]).params.items() if k not in API_SKIP_PARAMS}
            for name, spec in nodes.items()}


DECLARED = _declared_params()


def _value_for(p: Any) -> st.SearchStrategy:
    """A value a param might be given: of its type near its range, or of another type."""
    if p.choices:
        typed = st.sampled_from(list(p.choices)) | BODY_TEXT
    elif p.type is float:
        lo = -1e6 if p.min is None else p.min - 1
        hi = 1e6 if p.max is None else p.max + 1
        typed = st.floats(lo, hi, allow_nan=False, allow_infinity=False) | NONFINITE
    elif p.type is int:
        typed = (st.integers(-2**31 if p.min is None else int(p.min) - 2, 2**31 if p.max is None else int(p.max) + 2)
                 | st.sampled_from([2**63 - 1, 2**63, -2**63 - 1, 2**64, 10**30]))
    elif p.type is bool:
        typed = st.booleans()
    elif p.type is str:
        typed = BODY_TEXT
    else:
        typed = BODY_JSON
    return st.one_of(typed, typed, typed, BODY_JSON)


@st.composite
def params_bodies(draw: st.DrawFn) -> tuple[str, Any]:
    """Mostly a running node and one or two of its declared params, near their ranges or of another
    type; sometimes a node that is not there, unknown params, or a body of the wrong shape."""
    real = draw(st.integers(0, 9)) < 8
    name = draw(st.sampled_from(sorted(DECLARED)) if real else st.sampled_from(["ghost", "a.b", "x" * 129, "%20", "-"]))
    declared = DECLARED.get(name, {})
    if draw(st.integers(0, 9)) == 0:
        return name, draw(BODY_JSON)
    params = {}
    for _ in range(draw(st.integers(0, 2)) if draw(st.integers(0, 9)) == 0 else 1):
        if declared and draw(st.integers(0, 9)) < 8:
            key = draw(st.sampled_from(sorted(declared)))
            params[key] = draw(_value_for(declared[key]))
        else:
            params[draw(BODY_TEXT)] = draw(BODY_JSON)
    body: dict[str, Any] = {"params": params}
    if draw(st.integers(0, 9)) == 0:
        body[draw(BODY_TEXT)] = draw(BODY_JSON)
    return name, body


@st.composite
def emotion_bodies(draw: st.DrawFn) -> Any:
    """Half plausible (a preset, an intensity near 0..1, a node), half with a field of the wrong shape."""
    body: dict[str, Any] = {"emotion": draw(st.sampled_from(["happy", "sad", "angry", "neutral", "nosuch", "",
                                                             "x" * 65]))}
    if draw(st.booleans()):
        body["intensity"] = draw(st.floats(-0.2, 1.2) | NONFINITE)
    if draw(st.booleans()):
        body["node"] = draw(st.sampled_from(["face", "face", "mid", "ghost", "bad name", "x" * 129]))
    if draw(st.booleans()):
        body["transition_ms"] = draw(st.floats(-10, 70000) | NONFINITE)
    for _ in range(draw(st.integers(0, 2)) if draw(st.booleans()) else 0):
        body[draw(st.sampled_from(["emotion", "intensity", "node", "transition_ms", "colour"]) | BODY_TEXT)] = \
            draw(BODY_JSON)
    return body if draw(st.integers(0, 9)) else draw(BODY_JSON)


@st.composite
def swap_bodies(draw: st.DrawFn) -> tuple[str, Any]:
    """Mostly plausible swaps (same or other type, declared params near their ranges), some with bad
    fields; a swap that succeeds starts a process, so there are few examples of these."""
    name = draw(st.sampled_from(["mid", "sink", "facesink", "ghost"]))
    own = {"mid": "identity", "sink": "fakesink", "facesink": "fakesink"}.get(name, "fakesink")
    kind = draw(st.sampled_from([None, None, own, "identity", "fakesink", "testsrc", "nosuch", "nodes.identity:Identity",
                                 "json:JSONDecoder", "nosuchmodule:X", ":", "x:", ":x"]) | BODY_TEXT)
    declared = {k: p for k, p in get_type_params(kind or own).items() if k not in API_SKIP_PARAMS}
    params = {}
    for _ in range(draw(st.integers(0, 2))):
        if declared and draw(st.integers(0, 3)):
            key = draw(st.sampled_from(sorted(declared)))
            params[key] = draw(_value_for(declared[key]))
        else:
            params[draw(BODY_TEXT)] = draw(BODY_JSON)
    body: dict[str, Any] = {}
    if kind is not None:
        body["type"] = kind
    if params:
        body["params"] = params
    if draw(st.booleans()):
        body["timeout_s"] = draw(st.floats(0.05, 10) | NONFINITE)
    if draw(st.integers(0, 3)) == 0:  # one field of the wrong shape
        body[draw(st.sampled_from(["type", "params", "timeout_s", "colour"]))] = draw(BODY_JSON)
    return name, body


def get_type_params(kind: Any) -> dict[str, Any]:
    from runtime.errors import NodeTypeError
    from runtime.registry import get_node_type

    try:
        return dict(get_node_type(kind).params) if isinstance(kind, str) and kind else {}
    except (NodeTypeError, ValueError):
        return {}


@pytest.fixture(scope="module")
def api_runner(tmp_path_factory) -> Iterator[tuple[Any, str]]:
    from runtime.api import ApiConfig, ApiServer
    from runtime.testing import start_graph

    secret = tmp_path_factory.mktemp("fuzzapi") / "secret"
    secret.write_text(API_SECRET)
    runner = start_graph(API_GRAPH)
    server = ApiServer(runner, ApiConfig(port=0, secret_file=str(secret), rate=100000, burst=100000)).start()
    try:
        yield runner, server.url
    finally:
        server.stop()
        runner.stop(drain=False)


@pytest.fixture(scope="module")
def api_client(api_runner) -> Iterator[httpx.Client]:
    from runtime.api import make_token

    headers = {"Authorization": f"Bearer {make_token(API_SECRET, 'admin')}"}
    with httpx.Client(base_url=api_runner[1], headers=headers, timeout=60) as c:
        yield c


API_STATUSES: dict[str, dict[int, int]] = {}


def check_answer(r: httpx.Response) -> None:
    kind = r.request.url.path.rsplit("/", 1)[-1]
    API_STATUSES.setdefault(kind, {})[r.status_code] = API_STATUSES.setdefault(kind, {}).get(r.status_code, 0) + 1
    assert r.status_code < 500, f"{r.request.method} {r.request.url.path} {r.request.content[:300]!r}: {r.status_code} {r.text[:300]}"
    assert 200 <= r.status_code < 300 or 400 <= r.status_code < 500, r.status_code
    if r.status_code >= 400:
        assert r.headers["content-type"].startswith("application/json"), r.headers["content-type"]
        detail = r.json()["detail"]
        assert detail and isinstance(detail, (str, list)), r.text


def post_json(c: httpx.Client, path: str, body: Any) -> httpx.Response:
    return c.post(path, content=body_text(body).encode(), headers={"content-type": "application/json"})


@fuzz(150)
@given(body=emotion_bodies())
def test_api_emotion_bodies(api_client, body):
    check_answer(post_json(api_client, "/emotion", body))


@fuzz(200)
@given(case=params_bodies())
def test_api_params_bodies(api_client, case):
    name, body = case
    check_answer(post_json(api_client, f"/nodes/{name}/params", body))


@fuzz(40)
@given(case=swap_bodies())
def test_api_swap_bodies(api_client, case):
    name, body = case
    check_answer(post_json(api_client, f"/nodes/{name}/swap", body))


@fuzz(60)
@given(raw=st.one_of(st.binary(max_size=64), BODY_TEXT.map(lambda t: t.encode("utf-8", "surrogatepass")),
                     st.sampled_from([b"", b"{", b"[]", b"null", b"{\"params\": }", b"{}" * 100, b"[" * 5000,
                                      b"[" * 30000 + b"]" * 30000, b"{\"params\": " + b"[" * 30000 + b"]" * 30000 + b"}"])),
       path=st.sampled_from(["/emotion", "/nodes/mid/params", "/nodes/sink/swap"]),
       ctype=st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded", ""]))
def test_api_raw_bodies(api_client, raw, path, ctype):
    check_answer(api_client.post(path, content=raw, headers={"content-type": ctype} if ctype else {}))


def test_api_runner_survived_the_fuzz(api_runner, api_client):
    runner, url = api_runner
    assert httpx.get(f"{url}/health").status_code == 200
    assert not runner.wait(0)
    stats = api_client.get("/stats").json()
    assert set(stats["nodes"]) == set(DECLARED)
    errors = [m["text"] for m in runner.bus.messages("ERROR")]
    assert not errors, f"an accepted request crashed a node: {errors[:3]}"
    print("answers by endpoint and status:", API_STATUSES)
    for kind in ("emotion", "params", "swap"):  # the fuzz reached the runner, not only the validation
        assert any(200 <= code < 300 for code in API_STATUSES[kind]), (kind, API_STATUSES[kind])
    swaps = runner.bus.messages("NODE_SWAPPED")
    assert swaps, "no swap succeeded"


# =================================================================================================
# websocket_sink: the viewer text protocol on a real /ws
# =================================================================================================
TAKE = ROOT / "tests" / "data" / "llf_dao_take.csv"
WS_GRAPH = json.dumps({
    "name": "fuzzws",
    "nodes": {
        "take": {"type": "arkit_replay", "params": {"path": str(TAKE), "loop": True, "session": "s1"}},
        "encode": {"type": "compressor", "params": {"keyframe_interval": 30}},
        "sink": {"type": "websocket_sink", "params": {"port": 0, "ping_interval": 0.0,
                                                       "keyframe_min_interval_ms": 0.0}},
    },
    "links": ["take -> encode.in", {"from": "encode", "to": "sink", "policy": "block", "size": 64},
              {"from": "sink.requests", "to": "encode.requests", "feedback": True}],
})
WS_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)  # a text frame is UTF-8:
# a lone surrogate cannot be sent raw (the client cannot encode it); BODY_JSON sends it as an escape
ws_json = st.one_of(
    st.fixed_dictionaries({"type": st.sampled_from(["subscribe", "keyframe", "echo", "hello", "error", ""]) | BODY_JSON},
                          optional={"session": st.sampled_from(["s1", "nobody", None, "", "x" * 1025]) | BODY_JSON,
                                    "lod": st.sampled_from([0, 3, 4, -1, None, True, 1.5]) | BODY_JSON,
                                    "seq": st.sampled_from([0, 65535, 65536, -1, True, None]) | BODY_JSON}),
    BODY_JSON,
)
ws_messages = st.one_of(
    ws_json.map(body_text),
    WS_TEXT,
    st.binary(max_size=64),
    st.sampled_from(["", "{", "null", "[]", '{"type": "subscribe", "session": "s1"}', "{}" * 1000,
                     '{"type": "echo", "session": "s1", "seq": 1}', "[" * 500 + "]" * 500, "x" * 60000,
                     "[" * 30000 + "]" * 30000, '{"type": "subscribe", "session": ' + "[" * 5000 + "]" * 5000 + "}"]),
)
WS_TYPES = {"hello", "subscribed", "sessions", "error"}


@pytest.fixture(scope="module")
def ws_sink() -> Iterator[tuple[Any, int]]:
    from runtime.testing import start_graph

    runner = start_graph(WS_GRAPH)
    try:
        yield runner, runner.stats()["nodes"]["sink"]["node"]["port"]
    finally:
        runner.stop(drain=False)


async def _ws_session(port: int, messages: list) -> list[tuple[Any, list[dict]]]:
    """Send each message, then a sentinel the sink must answer with an error naming it: what came
    back before that answer is the sink's reaction to the message."""
    import websockets

    out = []
    async with websockets.connect(f"ws://127.0.0.1:{port}/ws", max_size=None) as ws:
        hello = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert hello["type"] == "hello" and hello["transport"] == "websocket"
        for i, m in enumerate(messages):
            await ws.send(m)
            sentinel = f"sentinel-{i}"
            await ws.send(json.dumps({"type": sentinel}))
            texts: list[dict] = []
            async with asyncio.timeout(10):
                while True:
                    reply = await ws.recv()
                    if isinstance(reply, bytes):
                        continue  # packets of a session the message subscribed to
                    doc = json.loads(reply)
                    if doc.get("type") == "error" and sentinel in doc.get("error", ""):
                        break
                    texts.append(doc)
            out.append((m, texts))
    return out


@fuzz(40)
@given(messages=st.lists(ws_messages, min_size=1, max_size=6))
def test_websocket_sink_answers_any_text_with_an_error_or_nothing(ws_sink, messages):
    runner, port = ws_sink
    for m, texts in asyncio.run(_ws_session(port, messages)):
        for t in texts:
            assert t.get("type") in WS_TYPES, (m, t)
            if t["type"] == "error":
                assert isinstance(t["error"], str) and t["error"].strip()
        if isinstance(m, str) and texts:
            errors = [t for t in texts if t["type"] == "error"]
            assert len(errors) <= 1, (m, texts)


def test_websocket_sink_keeps_serving_after_the_fuzz(ws_sink):
    """The same process (never restarted) serves a new viewer its session from a keyframe."""
    import websockets

    runner, port = ws_sink

    async def view() -> int:
        dec = wf.Decoder()
        n = 0
        async with websockets.connect(f"ws://127.0.0.1:{port}/ws?session=s1") as ws:
            async with asyncio.timeout(15):
                while n < 20:
                    m = await ws.recv()
                    if isinstance(m, bytes):
                        assert dec.decode(m) is not None, dec.status
                        n += 1
        return n

    assert asyncio.run(view()) == 20
    stats = runner.stats()["nodes"]["sink"]
    assert stats["restarts"] == 0 and stats["node"]["protocol_errors"] > 0
    assert not runner.bus.messages("ERROR"), runner.bus.messages("ERROR")


# =================================================================================================
# Bugs this file found (all fixed): their minimal reproducers, kept as regression tests. The
# strategies above generate these inputs too (no filter steers around them any more); these pin
# the exact case that failed.
def _strict_graph(text: str) -> None:
    """parse + validate: success or GraphError naming the file, nothing else."""
    try:
        validate_graph(parse_graph(text, FILE))
    except GraphError as exc:
        assert all(p.file == FILE for p in exc.problems)


GRAPH_CRASHES = {
    "args-not-a-mapping": "args: [1, 2]\nnodes: {a: testsrc}\n",  # graph.py graph_from_dict: dict(args)
    "link_defaults-not-a-mapping": "link_defaults: [1]\nnodes: {a: testsrc}\n",  # defaults.update(...)
    "max_restarts-not-an-int": "nodes: {a: {type: testsrc, max_restarts: abc}}\n",  # int(...)
    "links-not-a-list": "nodes: {a: testsrc}\nlinks: 5\n",  # for entry in links
    "param-name-not-a-string": "nodes: {a: {type: testsrc, params: {1: 2}}}\n",  # params.py difflib on an int
    "complex-yaml-key": "? [a]\n: 1\nnodes: {a: testsrc}\n",  # yamlsource.py: unhashable key
    "type-with-empty-module": "nodes: {a: {type: ':'}}\n",  # registry.py: import_module('')
    "arg-name-not-a-string": "args: {1: 2}\nnodes: {a: {type: testsrc, params: {caps: '${x}'}}}\n",  # ', '.join
    "deep-nesting": "nodes: " + "[" * 2000 + "]" * 2000 + "\n",  # RecursionError from the YAML constructor
}


@pytest.mark.parametrize("text", list(GRAPH_CRASHES.values()), ids=list(GRAPH_CRASHES))
def test_regression_graph_loader_crash(text):
    """The graph loader crashed (TypeError, ValueError or RecursionError, at the place each case's
    comment names) instead of raising a GraphError naming the file."""
    _strict_graph(text)


LAUGHS = "args:\n  a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"  a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]\n" for i in range(1, 8)) + \
    "nodes: {n: {type: testsrc, params: {caps: *a7}}}\n"


def test_regression_graph_alias_expansion_hang(tmp_path):
    """A graph of 9 lines whose YAML aliases expand to 10**8 strings (a "billion laughs"): the
    loader's ``${arg}`` substitution (runtime/graph.py ``_substitute``) expanded them all, minutes of
    CPU. It must be refused or loaded at once."""
    (tmp_path / "laughs.yaml").write_text(LAUGHS)
    code = ("import sys; from runtime.graph import load_graph; from runtime.errors import GraphError\n"
            "try: load_graph(sys.argv[1])\nexcept GraphError: pass\n")
    try:
        subprocess.run([sys.executable, "-c", code, str(tmp_path / "laughs.yaml")], cwd=ROOT, timeout=5,
                       capture_output=True)
    except subprocess.TimeoutExpired:
        pytest.fail("loading a 9-line graph took more than 5 s")


@pytest.fixture(scope="module")
def scratch_api(tmp_path_factory) -> Iterator[str]:
    """``avatar run --api`` in a process of its own for the API reproducers: some of them break their
    node, and a 500's traceback is logged by uvicorn (a RecursionError's is long: formatting it on a
    thread of this process races pytest's own use of ``ast`` in CPython 3.11)."""
    import signal
    import sys
    import threading

    from tests.helpers import wait_gone

    d = tmp_path_factory.mktemp("scratchapi")
    (d / "secret").write_text(API_SECRET)
    (d / "g.yaml").write_text(API_GRAPH.replace("fuzzapi", "fuzzapi_scratch"))
    with open(d / "stderr.txt", "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "runtime.cli", "run", str(d / "g.yaml"), "--no-control",
                                 "--api", "127.0.0.1:0", "--api-secret-file", str(d / "secret")],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True, process_group=0,
                                # tables the reproducers write in their tmp_path are allowed (nodes/tables.py)
                                env={**os.environ, "AVATAR_TABLE_PATH": str(tmp_path_factory.getbasetemp())})
    try:
        url = None
        deadline = time.monotonic() + 30
        while url is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                raise AssertionError(f"avatar run exited: {(d / 'stderr.txt').read_text()[-2000:]}")
            msg = json.loads(line)
            url = msg.get("url") if msg.get("type") == "API_LISTENING" else None
        assert url, "the API did not start"
        threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()  # keep the bus flowing
        yield url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        wait_gone([proc.pid])


def _scratch_post(url: str, path: str, raw: bytes, ctype: str = "application/json") -> httpx.Response:
    from runtime.api import make_token

    headers = {"Authorization": f"Bearer {make_token(API_SECRET, 'admin')}", "content-type": ctype}
    return httpx.post(f"{url}{path}", content=raw, headers=headers, timeout=30)  # a fresh connection each


API_BUGS = {  # the bodies answered 500 (runtime/api/app.py and what it calls)
    "nan-in-a-validated-field": ("/emotion", b'{"emotion": "happy", "intensity": NaN}'),  # 422 cannot render NaN
    "body-not-utf8-nor-json": ("/nodes/mid/params", b"\xff", "text/plain"),  # jsonable_encoder: bytes.decode()
    "int-beyond-64-bits": ("/nodes/face/params", b'{"params": {"seed": 99999999999999999999999}}'),  # msgpack
    "lone-surrogate": ("/nodes/mid/params", b'{"params": {"label": "\\ud800"}}'),  # msgpack utf-8
    "swap-type-with-empty-module": ("/nodes/mid/swap", b'{"type": ":"}'),  # registry import_module('')
    "param-nested-600-deep": ("/nodes/face/params",
                              b'{"params": {"sessions": ' + b"[" * 600 + b"]" * 600 + b"}}"),  # RecursionError
}


@pytest.mark.parametrize("case", list(API_BUGS.values()), ids=list(API_BUGS))
def test_regression_api_500(scratch_api, case):
    """Each body made the control API answer 500 (an exception escaped at the place the case's
    comment names); now a 4xx with a JSON detail, or a 2xx."""
    check_answer(_scratch_post(scratch_api, *case))


def test_regression_blender_table_that_is_not_a_mapping(scratch_api, tmp_path):
    """An ``emotion_table`` file holding a YAML list, not a mapping, crashed the blender node
    (AttributeError in ``_load_tables``) and the API answered 503 after 5 s; it must be refused
    with 422."""
    table = tmp_path / "list.yaml"
    table.write_text("[1, 2, 3]\n")
    r = _scratch_post(scratch_api, "/nodes/face/params",
                      json.dumps({"params": {"emotion_table": str(table)}}).encode())
    assert r.status_code == 422, (r.status_code, r.text)


def test_regression_nan_param_refused(scratch_api):
    """``Param.coerce`` (runtime/params.py) let NaN through every min/max check (each comparison
    with NaN is false): the API accepted ``delay_ms=NaN`` and the node then failed on every message.
    It must be refused with 422."""
    r = _scratch_post(scratch_api, "/nodes/mid/params", b'{"params": {"delay_ms": NaN}}')
    assert r.status_code == 422, (r.status_code, r.text)


def test_regression_websocket_deep_json_answered_with_an_error(ws_sink):
    """JSON text nested 30000 deep: the viewer protocol's handler (nodes/viewers.py ``_handle``)
    caught ValueError, not the parser's RecursionError, so the viewer was dropped without a word.
    It must get an ``error`` answer."""
    import websockets

    async def go() -> dict:
        async with websockets.connect(f"ws://127.0.0.1:{ws_sink[1]}/ws") as ws:
            await ws.recv()  # hello
            await ws.send("[" * 30000 + "]" * 30000)
            return json.loads(await asyncio.wait_for(ws.recv(), 5))

    assert asyncio.run(go())["type"] == "error"
