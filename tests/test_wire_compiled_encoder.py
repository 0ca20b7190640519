"""The compiled ``avatar/packet`` encoder (``nodes/wire/_encoder.pyx``) against the numpy reference.

Two encoders, ``Encoder(compiled=True)`` and ``Encoder(compiled=False)``, are fed the same calls
side by side: every batch must give byte-identical packets, the same keyframe flags and seqs, the
same ValueErrors for malformed batches, and leave the same state (every slot array, the slot
table, the counts). The inputs are the recorded captures (``tests/data``) and hypothesis-generated
streams: sessions joining and leaving (expire), keyframe requests, every precision, pose on and
off, names tables (id and list), ``ref_interval`` 0/1/n, pts jumps past ``MAX_PTS_STEP``, NaN, inf
and out-of-range values, live reconfiguration. The compiled packets are also decoded
(``nodes.wire.Decoder``) to the quantized input. Hypothesis runs derandomized, without a database.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nodes import wire as wf
from nodes.livelink import SAMPLE_CAPTURE, parse_packet, read_container, read_take

try:
    importlib.import_module("nodes.wire._encoder")
except ImportError as exc:  # only when the extension is not built (make setup builds it; CI does)
    pytest.skip(f"the compiled encoder is not built ({exc}); build it with make setup", allow_module_level=True)

TAKE = Path(__file__).resolve().parent / "data" / "llf_dao_take.csv"
FRAME_NS = 16_666_667
T0 = 5_000_000_000_000
STATE = ("_live", "_force", "_has_pose", "_has_prev", "_since_key", "_seq", "_ref_seq", "_prev_seq", "_ref_pts",
         "_prev_pts", "_seen_ns", "_ref_q", "_prev_q", "_ref_pose", "_prev_pose")
fuzz = settings(max_examples=120, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


class Pair:
    """A compiled and a reference encoder driven alike; every call's results and the state compared."""

    def __init__(self, *args: Any, **kw: Any):
        self.c = wf.Encoder(*args, compiled=True, **kw)
        self.r = wf.Encoder(*args, compiled=False, **kw)
        assert self.c.compiled and not self.r.compiled
        self.dec = wf.Decoder()

    def call(self, name: str, *args: Any, **kw: Any) -> Any:
        """The same call on both: the same result, or the same ValueError; then the same state."""
        outcomes = []
        for enc in (self.c, self.r):
            try:
                outcomes.append(("ok", getattr(enc, name)(*args, **kw)))
            except ValueError as exc:
                outcomes.append(("ValueError", str(exc)))
        (kind_c, got), (kind_r, want) = outcomes
        assert (kind_c, kind_r) == (kind_r, kind_r) and (kind_c == "ok" or got == want), outcomes
        if kind_c == "ok" and name == "encode_batch":
            assert got.packets == want.packets
            assert got.keyframe.dtype == want.keyframe.dtype and np.array_equal(got.keyframe, want.keyframe)
            assert got.seq.dtype == want.seq.dtype and np.array_equal(got.seq, want.seq)
            assert all(type(p) is bytes for p in got.packets)
        elif kind_c == "ok":
            assert got == want
        self.same_state()
        return got if kind_c == "ok" else None

    def same_state(self) -> None:
        c, r = self.c, self.r
        for name in STATE:
            a, b = getattr(c, name), getattr(r, name)
            assert a.dtype == b.dtype and np.array_equal(a, b), name
        assert c._slots == r._slots and c._free == r._free and c._owner == r._owner
        assert c.counts == r.counts and c._names == r._names and c._m == r._m
        assert (c.bits, c.pose_bits, c.keyframe_interval, c.ref_interval) == (
            r.bits, r.pose_bits, r.keyframe_interval, r.ref_interval)
        if r._last_batch is None:
            assert c._last_batch is None
        else:
            assert c._last_batch[0] == r._last_batch[0] and np.array_equal(c._last_batch[1], r._last_batch[1])

    def encode(self, sessions: list[str], w: np.ndarray, pts_ns: int, names: Any, pose: np.ndarray | None = None,
               decode: bool = True) -> wf.Encoded | None:
        """Encode on both; decode the compiled packets and check them against the quantized input."""
        out = self.call("encode_batch", sessions, w, pts_ns, names, pose)
        if out is not None and decode:
            self.check_decoded(out, sessions, w, pts_ns, pose)
        return out

    def check_decoded(self, out: wf.Encoded, sessions: list[str], w: np.ndarray, pts_ns: int,
                      pose: np.ndarray | None) -> None:
        bits, pose_bits = self.c.bits, self.c.pose_bits
        want_w = wf.dequantize(wf.quantize(w, bits, *wf.WEIGHT_RANGE), bits, *wf.WEIGHT_RANGE)
        want_p = None if pose is None else wf.dequantize(wf.quantize(pose, pose_bits, *wf.POSE_RANGE), pose_bits,
                                                          *wf.POSE_RANGE)
        for i, packet in enumerate(out.packets):
            frame = self.dec.decode(packet)
            assert frame is not None and frame.session == sessions[i] and frame.keyframe == out.keyframe[i]
            assert frame.seq == out.seq[i] and frame.pts_ms == int(pts_ns) // 1_000_000
            assert np.array_equal(frame.weights, want_w[i])
            assert (frame.pose is None) if pose is None else np.array_equal(frame.pose, want_p[i])


# --- the recorded captures ----------------------------------------------------------------------
def capture() -> tuple[np.ndarray, np.ndarray]:
    """The real Live Link Face packets: weights (T, 52) and pose (T, 9), float32."""
    frames = [parse_packet(p) for p in read_container(SAMPLE_CAPTURE)]
    return np.stack([f.weights for f in frames]), np.stack([f.pose for f in frames])


def replay(pair: Pair, weights: np.ndarray, pose: np.ndarray | None, sessions: int, frames: int,
           names: Any = wf.TABLE_ARKIT52, requests: Callable[[int], list[str]] = lambda t: []) -> list[int]:
    """``sessions`` sessions playing the capture, each from its own offset; returns the bytes per frame."""
    ids = [f"device-{i:03d}" for i in range(sessions)]
    offsets = np.arange(sessions) * 7
    sizes = []
    for t in range(frames):
        rows = (t + offsets) % len(weights)
        pair.call("request_keyframe", requests(t))
        out = pair.encode(ids, weights[rows], T0 + t * FRAME_NS, names, None if pose is None else pose[rows])
        sizes.append(sum(map(len, out.packets)))
    return sizes


@pytest.mark.parametrize("bits, pose_bits, ref_interval, keyframe_interval", [
    (8, 12, 1, 60), (8, 12, 0, 60), (6, 10, 3, 25), (12, 16, 1, 120), (16, 16, 2, 7), (1, 1, 1, 60), (4, 2, 0, 1),
])
def test_the_real_capture_gives_byte_identical_packets(bits, pose_bits, ref_interval, keyframe_interval):
    weights, pose = capture()
    pair = Pair(bits, pose_bits, keyframe_interval, ref_interval)
    sizes = replay(pair, weights, pose, 12, len(weights) + 20, requests=lambda t: ["device-003"] if t % 17 == 5 else [])
    assert pair.c.counts["keyframes"] > 12 and sum(sizes) == pair.c.counts["bytes"]


def test_the_real_capture_without_pose_and_with_a_names_list():
    weights, _ = capture()
    names = [f"morph{i}" for i in range(52)]
    for ref_interval in (0, 1, 4):
        replay(Pair(9, 12, 30, ref_interval), weights, None, 5, 90, names=names)


def test_the_csv_take_gives_byte_identical_packets():
    take = read_take(TAKE)
    for bits, ref_interval in ((8, 1), (10, 0), (7, 2)):
        pair = Pair(bits, 12, 60, ref_interval)
        replay(pair, take.weights, take.pose, 8, min(len(take.weights), 200))


def test_five_thousand_sessions_joining_at_once():
    """All keyframes in one batch, then all deltas: the compiled path handles both in full."""
    weights, pose = capture()
    pair = Pair(8, 12, 60, 1)
    ids = [f"phone-{i}" for i in range(5000)]
    rows = np.arange(5000) % len(weights)
    for t in range(3):
        out = pair.encode(ids, weights[(rows + t) % len(weights)], T0 + t * FRAME_NS, wf.TABLE_ARKIT52,
                          pose[(rows + t) % len(weights)], decode=t == 0)
        assert out.keyframe.all() == (t == 0) and out.keyframe.any() == (t == 0)


def test_a_still_capture_frame_stays_identical_over_keyframe_references():
    """ref_interval 0: every delta from the keyframe, without motion: the wide and normal codings compete."""
    weights, pose = capture()
    pair = Pair(8, 12, 1000, 0)
    for t in range(len(weights)):
        pair.encode(["a", "b"], np.stack([weights[0], weights[t]]), T0 + t * FRAME_NS, wf.TABLE_ARKIT52,
                    np.stack([pose[0], pose[t]]))


# --- the encoder's behaviour: the same on both paths --------------------------------------------
def test_compiled_none_follows_the_loader(monkeypatch):
    from nodes.compiled import loader as compiled
    assert wf.Encoder().compiled == (compiled.load("nodes.wire._encoder") is not None)
    monkeypatch.setenv(compiled.PURE_ENV, "1")
    monkeypatch.setattr(compiled, "_loaded", {})
    assert not wf.Encoder().compiled and wf.Encoder(compiled=True).compiled


def test_malformed_batches_raise_the_same_errors_and_change_nothing():
    pair = Pair()
    w = np.full((2, 52), 0.5, dtype=np.float32)
    pair.encode(["a", "b"], w, T0, wf.TABLE_ARKIT52)
    bad = [
        (["a", "a"], w, wf.TABLE_ARKIT52, None),
        (["a", "c", "c"], np.full((3, 52), 0.5), wf.TABLE_ARKIT52, None),
        (["a", 3], w, wf.TABLE_ARKIT52, None),
        (["a", "x" * 1025], w, wf.TABLE_ARKIT52, None),
        (["a"], w, wf.TABLE_ARKIT52, None),
        (["a", "b"], w[:, :51], wf.TABLE_ARKIT52, None),
        (["a", "b"], w, ["m"] * 52 + ["n"], None),
        (["a", "b"], w, 7, None),
        (["a", "b"], w, wf.TABLE_ARKIT52, np.zeros((2, 8))),
        (["a", "b"], w[0], wf.TABLE_ARKIT52, None),
    ]
    for sessions, weights, names, pose in bad:
        assert pair.encode(sessions, weights, T0 + FRAME_NS, names, pose) is None
    assert pair.encode(["a", "b"], w, T0 + FRAME_NS, wf.TABLE_ARKIT52).keyframe.tolist() == [False, False]


def test_session_ids_of_every_msgpack_string_size():
    """fixstr, str8, str16 headers and multi-byte UTF-8 in keyframes."""
    pair = Pair()
    ids = ["", "a", "é" * 20, "x" * 31, "x" * 32, "y" * 255, "z" * 256, "🙂" * 1024, "w" * 1024]
    w = np.linspace(0, 1, len(ids) * 52).reshape(len(ids), 52)
    for t in range(3):
        pair.encode(ids, w, T0 + t * FRAME_NS, wf.TABLE_ARKIT52)


def test_pts_of_every_msgpack_int_size_and_sign():
    pair = Pair()
    w = np.full((1, 52), 0.3)
    for pts_ms in (0, 1, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**40, -1, -32, -33, -128, -129,
                   -32768, -32769, -2**31, -2**31 - 1, -2**40, 2**63 // 10**6 - 1, -(2**63 // 10**6)):
        pair.call("request_keyframe")
        pair.encode(["a"], w, pts_ms * 1_000_000 + 999_999, wf.TABLE_ARKIT52)
        pair.encode(["a"], w, pts_ms * 1_000_000 + 999_999, wf.TABLE_ARKIT52)  # a delta of pts residual 0


def test_pts_steps_around_the_delta_limit():
    pair = Pair(keyframe_interval=1000)
    w = np.full((1, 52), 0.3)
    pts = T0
    for step in (wf.MAX_PTS_STEP - 1, wf.MAX_PTS_STEP, -wf.MAX_PTS_STEP + 1, -wf.MAX_PTS_STEP, 17, 0, -5,
                 wf.MAX_PTS_STEP * 3, 16, 16):
        pts += step * 1_000_000
        pair.encode(["a"], w, pts, wf.TABLE_ARKIT52)
    assert pair.c.counts["keyframes"] >= 3  # the first, and jumps the motion's expected step does not cover


def test_pts_outside_int64_fall_back_to_the_reference():
    pair = Pair()
    w = np.full((1, 52), 0.3)
    pair.encode(["a"], w, np.int64(T0), wf.TABLE_ARKIT52)
    pair.encode(["a"], w, float(T0 + FRAME_NS), wf.TABLE_ARKIT52)
    for enc in (pair.c, pair.r):
        with pytest.raises(OverflowError):
            enc.encode_batch(["a"], w, 2**63, wf.TABLE_ARKIT52)
    pair.same_state()


@pytest.mark.parametrize("bits", range(1, 17))
def test_every_precision_with_special_values(bits):
    rng = np.random.default_rng(bits)
    pair = Pair(bits, 17 - bits, 8, bits % 3)
    L = (1 << bits) - 1
    special = np.array([np.nan, np.inf, -np.inf, -0.0, 0.0, 1.0, -0.5, 1.5, 1e300, -1e300, 0.5 / L, 1.5 / L,
                        2.5 / L, (L - 0.5) / L, 0.5, 0.25, 0.75, 5e-324])
    sessions = [f"s{i}" for i in range(6)]
    w = rng.random((6, 52))
    for t in range(20):
        w = np.clip(w + rng.normal(0, 0.3 / (t + 1), w.shape), -0.1, 1.1)
        x = w.copy()
        x[rng.random(x.shape) < 0.1] = rng.choice(special, int((rng.random(x.shape) < 0.1).sum()) or 1)[0]
        x.flat[rng.integers(0, x.size, 8)] = rng.choice(special, 8)
        pose = rng.uniform(-4, 4, (6, 9))
        pose.flat[rng.integers(0, pose.size, 3)] = rng.choice([np.nan, np.inf, -np.inf, np.pi, -np.pi], 3)
        with np.errstate(over="ignore"):  # 1e300 as float32 is inf, as intended
            x32 = x.astype(np.float32)
        pair.encode(sessions, x32 if t % 2 else x, T0 + t * FRAME_NS, wf.TABLE_ARKIT52, pose)


def test_weights_of_other_dtypes_and_layouts():
    pair = Pair()
    base = np.random.default_rng(1).random((3, 104))
    for t, w in enumerate([base[:, ::2], base[:, :52].astype(">f4"), (base[:, :52] * 3).astype(np.int16),
                           base[:, :52].astype(np.float16), base[:, :52].tolist(), np.asfortranarray(base[:, :52])]):
        pair.encode(["a", "b", "c"], w, T0 + t * FRAME_NS, wf.TABLE_ARKIT52,
                    np.asarray(base[:, :9].T.copy().T, dtype=np.float32))


# --- hypothesis: whole streams of calls ---------------------------------------------------------
POOL = ["s0", "s1", "s2", "s3", "s4", "s5", "é🙂", "x" * 40]
SPECIAL = [np.nan, np.inf, -np.inf, -0.25, 1.25, 0.0, 1.0, 0.5]


@fuzz
@given(st.data())
def test_random_streams_give_byte_identical_packets(data):
    draw = data.draw
    bits, pose_bits = draw(st.integers(1, 16), "bits"), draw(st.integers(1, 16), "pose_bits")
    pair = Pair(bits, pose_bits, draw(st.sampled_from([1, 2, 3, 5, 60, wf.MAX_KEYFRAME_INTERVAL]), "kf"),
                draw(st.sampled_from([0, 1, 2, 3, 7]), "ref"))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1), "seed"))

    def table() -> Any:
        if draw(st.booleans(), "names list"):
            return [f"m{i}" for i in range(draw(st.integers(1, 70), "m"))]
        return wf.TABLE_ARKIT52

    names = table()
    m = wf.names_size(names if isinstance(names, int) else tuple(names))
    face = {s: rng.random(m) for s in POOL}
    with_pose = draw(st.booleans(), "pose")
    pts = draw(st.sampled_from([T0, -T0, 0, 2**62]), "t0")
    for _ in range(draw(st.integers(1, 30), "steps")):
        op = draw(st.sampled_from(["frame"] * 8 + ["request", "request_all", "expire", "configure", "names",
                                                   "pose", "malformed"]), "op")
        if op == "request":
            pair.call("request_keyframe", draw(st.lists(st.sampled_from(POOL + ["nobody"]), max_size=3)))
        elif op == "request_all":
            pair.call("request_keyframe")
        elif op == "expire":
            pair.call("expire", pts + draw(st.sampled_from([0, 10**9, 10**11])),
                      draw(st.sampled_from([1, FRAME_NS, 10**9])))
        elif op == "configure":
            settings_ = draw(st.dictionaries(st.sampled_from(["bits", "pose_bits", "keyframe_interval", "ref_interval"]),
                                             st.integers(0, 17), max_size=2))
            pair.call("configure", **settings_)
        elif op == "names":
            names = table()
            m = wf.names_size(names if isinstance(names, int) else tuple(names))
            face = {s: rng.random(m) for s in POOL}
        elif op == "pose":
            with_pose = not with_pose
        else:
            sessions = [POOL[i] for i in rng.permutation(len(POOL))[:draw(st.integers(0, len(POOL)), "n")]]
            pts += draw(st.sampled_from([FRAME_NS] * 6 + [0, -FRAME_NS, 10**9, wf.MAX_PTS_STEP * 10**6,
                                                         -wf.MAX_PTS_STEP * 10**6, 2**31 * 10**6 - 1]), "dt")
            how = draw(st.sampled_from(["drift", "drift", "still", "jump", "special"]), "how")
            for s in sessions:
                if how == "drift":
                    face[s] = np.clip(face[s] + rng.normal(0, 0.02, m) * (rng.random(m) < 0.5), 0, 1)
                elif how == "jump":
                    face[s] = rng.random(m) * (rng.random(m) < 0.6)
            w = np.array([face[s] for s in sessions]).reshape(len(sessions), m)
            if how == "special":
                w = w.copy()
                w[rng.random(w.shape) < 0.2] = SPECIAL[draw(st.integers(0, len(SPECIAL) - 1), "sp")]
            if draw(st.booleans(), "f32"):
                w = w.astype(np.float32)
            pose = rng.uniform(-3.5, 3.5, (len(sessions), 9)) if with_pose else None
            if op == "malformed":
                kind = draw(st.sampled_from(["dup", "shape", "names", "pose", "type"]), "bad")
                if kind == "dup" and sessions:
                    sessions, w = sessions + sessions[:1], np.vstack([w, w[:1]])
                    pose = None if pose is None else np.vstack([pose, pose[:1]])
                elif kind == "shape":
                    w = w[:, :-1] if m > 1 else np.zeros((len(sessions), 2))
                elif kind == "names":
                    names_ = wf.TABLE_ARKIT52 if m != 52 else ["a"] * 3
                    pair.encode(sessions, w, pts, names_, pose)
                    continue
                elif kind == "pose":
                    pose = np.zeros((len(sessions) + 1, 9))
                elif kind == "type":
                    sessions = sessions + [7]
                    w = np.vstack([w, np.zeros((1, m))])
            pair.encode(sessions, w, pts, names, pose)


@fuzz
@given(st.integers(1, 16), st.integers(1, 16), st.sampled_from([0, 1, 2]), st.integers(0, 2**32 - 1))
def test_random_sessions_joining_and_leaving_every_batch(bits, pose_bits, ref_interval, seed):
    """A changing session set every batch (arkit_source's 'fresh' batches): the slot lookup path."""
    rng = np.random.default_rng(seed)
    pair = Pair(bits, pose_bits, 20, ref_interval)
    pool = [f"dev{i}" for i in range(40)]
    face = rng.random((len(pool), 52))
    pts = T0
    for t in range(25):
        chosen = rng.permutation(len(pool))[:rng.integers(0, len(pool) + 1)]
        face[chosen] = np.clip(face[chosen] + rng.normal(0, 0.03, (len(chosen), 52)), 0, 1)
        pts += FRAME_NS
        pair.encode([pool[i] for i in chosen], face[chosen], pts, wf.TABLE_ARKIT52, rng.uniform(-3, 3, (len(chosen), 9)))
        if t % 6 == 5:
            pair.call("expire", pts, FRAME_NS * 3)


@pytest.mark.parametrize("bits", [12, 14, 15, 16])
def test_full_scale_jumps_after_slow_motion(bits):
    """A column moving by a step (k = 0) then jumping across the range: the longest escape codes."""
    pair = Pair(bits, bits, 1000, 1)
    L = (1 << bits) - 1
    a, b = np.full((2, 52), 0.5), np.full((2, 52), 0.5)
    b[:, ::2] += 1 / L
    b[:, 1::2] -= 1 / L
    far = np.tile([1.0, 0.0], (2, 26))
    near = np.tile([0.0, 1.0], (2, 26))
    pose = np.zeros((2, 9))
    for t, w in enumerate([a, b, far, b, a, b, near, a]):
        pair.encode(["p", "q"], w, T0 + t * FRAME_NS, wf.TABLE_ARKIT52, pose + w[:, :9] * 6 - 3)


def test_a_session_id_without_utf8_is_refused_alike_every_time():
    """A lone surrogate: msgpack cannot write the keyframe; both paths raise and change the same state."""
    pair = Pair()
    w = np.full((2, 52), 0.4)
    pair.encode(["ok"], w[:1], T0, wf.TABLE_ARKIT52)
    for t in range(1, 4):
        assert pair.encode(["ok", "bad\ud800"], w, T0 + t * FRAME_NS, wf.TABLE_ARKIT52) is None
    assert pair.encode(["ok"], w[:1], T0 + 4 * FRAME_NS, wf.TABLE_ARKIT52).keyframe.tolist() == [False]


def test_names_without_utf8_are_refused_alike_and_an_empty_batch_is_fine():
    pair = Pair()
    names = [f"m{i}" for i in range(51)] + ["bad\udc80"]
    w = np.full((1, 52), 0.4)
    for t in range(2):
        pair.encode([], np.zeros((0, 52)), T0 + t * FRAME_NS, names)
        assert pair.encode(["a"], w, T0 + t * FRAME_NS, names) is None
    pair.encode(["a"], w, T0 + 3 * FRAME_NS, [f"m{i}" for i in range(52)])
