"""The face's compiled hot paths (nodes/face/_filters.pyx) give the same bits as their references.

Each test runs the same input through a node (or filter) built on the compiled path and one built
on the numpy reference (its module's ``_c`` set to None while it is set up: each keeps the path it
was built with), and compares every output message exactly: caps, pts, sessions, data, and the
arrays' dtypes, shapes and bytes. Inputs: the recorded Live Link Face capture
(tests/data/livelink/llv_dao_packets.bin) as the capture graph batches it, and hypothesis-made
sequences of batches (sessions joining, leaving and coming back, batches of changing membership,
NaN, infinite and out-of-range values, odd dtypes and shapes, params changed live).

Skipped only when the extension is not built (``make`` builds it).
"""
from __future__ import annotations

import importlib
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nodes.blender as blender_module
import nodes.face.one_euro as one_euro_module
import nodes.lod as lod_module
from nodes.face import OneEuro, load_morph_table
from nodes.livelink import SAMPLE_CAPTURE, parse_packet, read_container
from runtime import Message
from runtime.testing import NodeHarness

try:
    _filters = importlib.import_module("nodes.face._filters")
except ImportError:  # not built: nothing to compare
    _filters = None

pytestmark = pytest.mark.skipif(_filters is None, reason="nodes.face._filters is not built (run make)")

ARKIT = "arkit/blendshapes"
MODULES = (blender_module, one_euro_module, lod_module)
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@contextmanager
def path(compiled: bool) -> Iterator[None]:
    """Nodes and filters made inside use the compiled passes, or the numpy reference."""
    saved = [m._c for m in MODULES]
    for m in MODULES:
        m._c = _filters if compiled else None
    try:
        yield
    finally:
        for m, c in zip(MODULES, saved):
            m._c = c


def pair(node_type: str, **params: Any) -> tuple[NodeHarness, NodeHarness]:
    """The same node twice: compiled, reference."""
    with path(True):
        fast = NodeHarness(node_type, **params)
    with path(False):
        ref = NodeHarness(node_type, **params)
    return fast, ref


def bits(x: np.ndarray) -> bytes:
    """An array's bytes, every NaN made the same: a NaN's sign and payload are not the value's (IEEE
    leaves them to the hardware and to the order in which a compiler puts the operands of a * b), so
    they are the one thing the compiled passes may give differently. Every other bit counts, the
    sign of a zero too."""
    if x.dtype.kind == "f":
        x = np.where(np.isnan(x), np.array(np.nan, dtype=x.dtype), x)
    return x.tobytes()


def same(got: list[tuple[str, Message]], want: list[tuple[str, Message]]) -> None:
    """The two runs emitted the same messages, bit for bit (NaN for NaN)."""
    assert len(got) == len(want)
    for (pad_a, a), (pad_b, b) in zip(got, want):
        assert pad_a == pad_b and a.caps == b.caps and a.pts_ns == b.pts_ns
        assert a.session == b.session
        assert a.data == b.data
        assert sorted(a.arrays) == sorted(b.arrays)
        for name in a.arrays:
            x, y = a.arrays[name], b.arrays[name]
            assert x.dtype == y.dtype and x.shape == y.shape, name
            assert bits(x) == bits(y), (name, np.argwhere(x.view(np.uint8) != y.view(np.uint8))[:5])


def both(fast: NodeHarness, ref: NodeHarness, action: str, *args: Any, **kwargs: Any) -> None:
    """Do the same to both and compare what they emitted."""
    got, want = getattr(fast, action)(*args, **kwargs), getattr(ref, action)(*args, **kwargs)
    if action in ("feed", "advance", "eos"):
        same(got, want)


# --- the recorded capture, batched as graphs/capture.yaml does ----------------------------------------
def recorded() -> tuple[np.ndarray, np.ndarray]:
    frames = [parse_packet(p) for p in read_container(SAMPLE_CAPTURE)]
    return (np.array([f.weights for f in frames], dtype=np.float32),
            np.array([f.pose for f in frames], dtype=np.float32))


def test_the_compiled_paths_are_the_ones_in_use() -> None:
    fast, ref = pair("blender", tick_on_capture=True)
    assert fast.node.core is not None and fast.node.euro.compiled is _filters
    assert ref.node.core is None and ref.node.euro.compiled is None
    lod_fast, lod_ref = pair("lod")
    assert lod_fast.node._c is _filters and lod_ref.node._c is None


@pytest.mark.parametrize("tick_on_capture", [True, False])
def test_recorded_capture_through_mapper_blender_lod(tick_on_capture: bool) -> None:
    """12 phones replaying the recorded capture at their own offsets, gathered at 240 Hz into the
    batches of those whose packet came (a phone goes quiet for a while, one drops out for good, a
    new one joins); mapper (identity) -> blender -> lod (level 1, then per-session levels)."""
    weights, pose = recorded()
    ids = [f"PHONE-{i:02d}" for i in range(12)]
    mapper = NodeHarness("mapper", profile="identity")
    blend = pair("blender", rate=60.0, tick_on_capture=tick_on_capture, sessions=["idle"], max_lag_ms=0)
    lods = pair("lod", level=1)
    period = 1 / 240
    arrival = 10**12
    for i in range(1200):
        slot = i % 4
        group = [s for k, s in enumerate(ids) if k % 4 == slot
                 and not (k == 5 and 300 <= i < 700)  # quiet for a while: idle motion fades in and out
                 and not (k == 7 and i >= 500)  # gone: expires
                 and not (k == 11 and i < 400)]  # joins late
        if group:
            rows = [(i // 4 + 37 * ids.index(s)) % len(weights) for s in group]
            msg = Message(ARKIT, {"active": [True] * len(group)},
                          {"weights": weights[rows], "pose": pose[rows],
                           "arrival_ns": np.arange(len(group), dtype=np.int64) + arrival + i},
                          pts_ns=arrival + i * 4_166_667, session=group)
            for _, mapped in mapper.feed("in", msg):
                for h in blend:
                    h.outputs.clear()
                got, want = blend[0].feed("capture", mapped), blend[1].feed("capture", mapped)
                same(got, want)
                for _, out in got:
                    same(lods[0].feed("in", out), lods[1].feed("in", out))
        got, want = blend[0].advance(period), blend[1].advance(period)
        same(got, want)
        for _, out in got:
            same(lods[0].feed("in", out), lods[1].feed("in", out))
        if i == 600:
            for h in blend:
                h.set_params(emotion="happy", intensity=0.7, transition_ms=300.0)
            for h in lods:
                h.set_params(levels={"PHONE-00": 2, "PHONE-04": 3, "idle": 0})
        if i == 900:
            for h in blend:
                h.set_params(emotions={"PHONE-01": ["sad", 0.5]}, min_cutoff=0.8, beta=1.0)
    same(blend[0].eos(), blend[1].eos())
    assert blend[0].node.frames > 200 and blend[0].node.stats() == blend[1].node.stats()
    assert bits(blend[0].node.euro.x) == bits(blend[1].node.euro.x)


# --- hypothesis: batches of every kind -----------------------------------------------------------------
SESSIONS = [f"s{i}" for i in range(7)]
special = st.sampled_from([np.nan, np.inf, -np.inf, -0.0, 0.0, 1.0, -1.0, 2.5, 1e-40, -3e38])
value = st.one_of(st.floats(0.0, 1.0, width=32), special, st.floats(-2.0, 3.0, width=32))


@st.composite
def batch(draw: st.DrawFn) -> dict:
    members = draw(st.lists(st.sampled_from(SESSIONS), min_size=1, max_size=6, unique=True))
    n = len(members)
    shape = draw(st.sampled_from(["usual", "usual", "usual", "no pose", "float64", "narrow", "no arrival"]))
    w = np.array(draw(st.lists(value, min_size=n * 52, max_size=n * 52)), dtype=np.float32).reshape(n, 52)
    out = {"session": members, "weights": w, "pose": None, "arrival": None, "active": None}
    if shape == "float64":
        out["weights"] = w.astype(np.float64)
    if shape == "narrow":
        out["weights"] = w[:, :40].copy()
    if shape != "no pose":
        out["pose"] = np.array(draw(st.lists(value, min_size=n * 9, max_size=n * 9)), dtype=np.float32).reshape(n, 9)
    if shape != "no arrival":
        out["arrival"] = np.arange(n, dtype=np.int64) + draw(st.integers(1, 10**15))
    flags = draw(st.sampled_from(["none", "bools", "ints"]))
    if flags == "bools":
        out["active"] = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    elif flags == "ints":
        out["active"] = draw(st.lists(st.integers(0, 2), min_size=n, max_size=n))
    return out


params = st.one_of(
    st.fixed_dictionaries({"emotion": st.sampled_from(["neutral", "happy", "sad", "angry", "surprised"]),
                           "intensity": st.floats(0.0, 1.0)}),
    st.fixed_dictionaries({"emotions": st.dictionaries(st.sampled_from(SESSIONS), st.tuples(
        st.sampled_from(["happy", "sad"]), st.floats(0.0, 1.0)).map(list), max_size=3)}),
    st.fixed_dictionaries({"transition_ms": st.floats(0.0, 2000.0)}),
    st.fixed_dictionaries({"min_cutoff": st.floats(0.05, 50.0), "beta": st.floats(0.0, 10.0),
                           "d_cutoff": st.floats(0.05, 20.0)}),
    st.fixed_dictionaries({"capture_fade_ms": st.floats(0.0, 600.0), "speech_fade_ms": st.floats(0.0, 300.0)}),
    st.fixed_dictionaries({"breath_amount": st.floats(0.0, 10.0), "gaze_amount": st.floats(0.0, 5.0),
                           "micro_per_min": st.floats(0.0, 600.0), "micro_amount": st.floats(0.0, 5.0)}),
    st.fixed_dictionaries({"capture_timeout_ms": st.floats(1.0, 800.0), "viseme_timeout_ms": st.floats(1.0, 400.0),
                           "session_timeout_s": st.floats(0.1, 3.0)}),
    st.fixed_dictionaries({"rate": st.sampled_from([30.0, 60.0, 90.0])}),
    st.fixed_dictionaries({"session_params": st.dictionaries(st.sampled_from(SESSIONS), st.dictionaries(
        st.sampled_from(["min_cutoff", "beta", "d_cutoff"]), st.floats(0.05, 20.0), min_size=1), max_size=2)}),
)

step = st.one_of(
    st.tuples(st.just("capture"), batch()),
    st.tuples(st.just("visemes"), batch()),
    st.tuples(st.just("advance"), st.floats(0.0, 0.2)),
    st.tuples(st.just("params"), params),
)


def message(b: dict, pts: int) -> Message:
    arrays = {"weights": b["weights"]}
    if b["pose"] is not None:
        arrays["pose"] = b["pose"]
    if b["arrival"] is not None:
        arrays["arrival_ns"] = b["arrival"]
    data = {} if b["active"] is None else {"active": b["active"], "speaking": b["active"]}
    return Message(ARKIT, data, arrays, pts_ns=pts, session=b["session"])


@settings(max_examples=60, **SETTINGS)
@given(tick_on_capture=st.booleans(), seed=st.integers(0, 3), steps=st.lists(step, min_size=1, max_size=40))
def test_blender_compiled_is_the_reference(tick_on_capture: bool, seed: int, steps: list) -> None:
    fast, ref = pair("blender", tick_on_capture=tick_on_capture, seed=seed, sessions=["s0"],
                     micro_per_min=120.0, blink_interval_s=0.5)
    pts = 10**12
    for kind, arg in steps:
        pts += 1_000_000
        if kind == "advance":
            both(fast, ref, "advance", arg)
        elif kind == "params":
            both(fast, ref, "set_params", **arg)
        else:
            both(fast, ref, "feed", kind, message(arg, pts))
            both(fast, ref, "advance", 1 / 240)
    same(fast.eos(), ref.eos())
    assert fast.node.stats() == ref.node.stats()
    for name in blender_module._STATE:
        a, b = getattr(fast.node, name), getattr(ref.node, name)
        assert bits(a) == bits(b), name
    assert bits(fast.node.euro.x) == bits(ref.node.euro.x) and bits(fast.node.euro.dx) == bits(ref.node.euro.dx)


lod_step = st.one_of(
    st.tuples(st.just("in"), batch(), st.integers(0, 3 * 10**9)),
    st.tuples(st.just("requests"), st.dictionaries(st.sampled_from(SESSIONS), st.one_of(st.none(), st.integers(0, 3)),
                                                   max_size=3), st.just(0)),
    st.tuples(st.just("params"), st.fixed_dictionaries({"level": st.integers(0, 3), "session_timeout": st.floats(
        0.01, 2.0)}), st.just(0)),
)


@settings(max_examples=60, **SETTINGS)
@given(steps=st.lists(lod_step, min_size=1, max_size=40))
def test_lod_compiled_is_the_reference(steps: list) -> None:
    fast, ref = pair("lod", level=1)
    pts = 10**12
    for kind, arg, gap in steps:
        pts += gap
        if kind == "params":
            both(fast, ref, "set_params", **arg)
        elif kind == "requests":
            both(fast, ref, "feed", "requests", Message("avatar/request", {"lod": arg}, pts_ns=pts))
        else:
            msg = message(arg, pts)
            if arg["weights"].shape[1] != 52:  # lod drops a batch of the wrong width; keep most of them
                msg.arrays["weights"] = np.resize(arg["weights"], (len(arg["session"]), 52))
            both(fast, ref, "feed", "in", msg)
    assert fast.node.stats() == ref.node.stats()
    assert fast.node.count.tobytes() == ref.node.count.tobytes()


# --- One Euro on its own ------------------------------------------------------------------------------
@settings(max_examples=100, **SETTINGS)
@given(data=st.data(), n=st.integers(1, 70), frames=st.integers(1, 12))
def test_one_euro_compiled_is_the_reference(data: st.DataObject, n: int, frames: int) -> None:
    """Slots twice in a batch, NaN and infinite values, steps scalar or per row, resets, params changed."""
    with path(True):
        fast = OneEuro(n, 1.5, 2.0, 2.0)
    with path(False):
        ref = OneEuro(n, 1.5, 2.0, 2.0)
    for _ in range(frames):
        rows = data.draw(st.integers(1, 6))
        slots = np.array(data.draw(st.lists(st.integers(0, 20), min_size=rows, max_size=rows)), dtype=np.intp)
        x = np.array(data.draw(st.lists(st.one_of(st.floats(-2, 2), special), min_size=rows * n,
                                        max_size=rows * n))).reshape(rows, n)
        dt = data.draw(st.one_of(st.floats(1e-4, 0.2), st.builds(lambda v: np.array(v).reshape(-1, 1), st.lists(
            st.floats(1e-4, 0.2), min_size=rows, max_size=rows))))
        if data.draw(st.booleans()):
            cut = data.draw(st.floats(0.01, 30.0))
            fast.min_cutoff = ref.min_cutoff = cut
        if data.draw(st.booleans()):
            fast.reset(slots[:1])
            ref.reset(slots[:1])
        if data.draw(st.booleans()):  # a slot's own params (a session canary), or given back
            own = data.draw(st.fixed_dictionaries({}, optional={k: st.floats(0.01, 30.0) for k in
                                                                ("min_cutoff", "beta", "d_cutoff")}))
            fast.own(int(slots[0]), **own)
            ref.own(int(slots[0]), **own)
        a, b = fast(x, dt, slots), ref(x, dt, slots)
        assert bits(a) == bits(b)
    assert bits(fast.x) == bits(ref.x) and bits(fast.dx) == bits(ref.dx)
    assert fast.primed.tobytes() == ref.primed.tobytes()


# --- the mapper's identity shortcut --------------------------------------------------------------------
def matmul_apply(table: Any, weights: np.ndarray) -> np.ndarray:
    """MorphTable.apply as it was, always through the matmul (the shortcut must give its bits)."""
    out = np.asarray(weights, dtype=np.float32) @ table.matrix
    np.clip(out, 0.0, 1.0, out=out)
    if len(table.sec_from):
        out += out[:, table.sec_from] @ table.sec_gain
        np.clip(out, 0.0, 1.0, out=out)
    if len(table.lim_target):
        upper = out[:, table.lim_by] * table.lim_scale + table.lim_offset
        out[:, table.lim_target] = np.minimum(out[:, table.lim_target], upper)
        np.clip(out, 0.0, 1.0, out=out)
    return out


@settings(max_examples=100, **SETTINGS)
@given(data=st.data(), rows=st.integers(0, 40))
def test_identity_mapping_shortcut_is_the_matmul(data: st.DataObject, rows: int) -> None:
    table = load_morph_table("identity")
    assert table.select is not None
    w = np.array(data.draw(st.lists(value, min_size=rows * 52, max_size=rows * 52)), dtype=np.float32)
    w = w.reshape(rows, 52)
    if rows and data.draw(st.booleans()):  # most batches are finite: the shortcut
        w = np.nan_to_num(w, nan=0.5, posinf=1.0, neginf=-1.0)
    assert bits(table.apply(w)) == bits(matmul_apply(table, w))


def test_identity_mapping_shortcut_over_the_recorded_capture() -> None:
    weights, _ = recorded()
    table = load_morph_table("identity")
    for n in (1, 7, 64, len(weights)):
        assert table.apply(weights[:n]).tobytes() == matmul_apply(table, weights[:n]).tobytes()
