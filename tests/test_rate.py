"""rate: resampling batches to a target rate on a timer, holding or interpolating per session."""
from __future__ import annotations

import numpy as np
import pytest

from runtime import Message
from runtime.testing import NodeHarness, run_through

IN = 1 / 30   # input period (s)
OUT = 1 / 60  # output period at rate=60
NS = 1_000_000_000


def frame(t: float, values: dict[str, float], caps: str = "arkit/blendshapes", width: int = 3, **data) -> Message:
    """A batch whose row for session s is filled with values[s] (column j adds j/100)."""
    sessions = list(values)
    w = np.array([[values[s] + j / 100 for j in range(width)] for s in sessions], dtype=np.float32)
    return Message(caps, data or None, {"weights": w}, pts_ns=round(t * NS), session=sessions)


def col0(msgs) -> list[dict[str, float]]:
    return [{s: round(float(m.arrays["weights"][i, 0]), 5) for i, s in enumerate(m.session)} for _, m in msgs]


def start(**params) -> NodeHarness:
    h = NodeHarness("rate", **params)
    h.advance(OUT / 2)  # feed between ticks, never on one, so float rounding cannot reorder them
    return h


def test_30_to_60_interpolates_midpoints_per_session():
    h = start(rate=60.0, mode="interpolate")
    got = []
    for k in range(4):
        h.feed("in", frame(k * IN, {"a": k * 0.1, "b": 1 - k * 0.2}))
        got += col0(h.advance(IN))
    assert got == [
        {"a": 0.0, "b": 1.0}, {"a": 0.0, "b": 1.0},   # one frame: nothing to interpolate yet
        {"a": 0.05, "b": 0.9}, {"a": 0.1, "b": 0.8},  # half way, then the new frame
        {"a": 0.15, "b": 0.7}, {"a": 0.2, "b": 0.6},
        {"a": 0.25, "b": 0.5}, {"a": 0.3, "b": 0.4},
    ]
    # other columns move the same way
    assert h.outputs[-2][1].arrays["weights"][0, 2] == pytest.approx(0.25 + 0.02, abs=1e-6)


def test_hold_repeats_the_latest_frame():
    h = start(rate=60.0, mode="hold")
    got = []
    for k in range(3):
        h.feed("in", frame(k * IN, {"a": float(k)}))
        got += col0(h.advance(IN))
    assert got == [{"a": 0.0}, {"a": 0.0}, {"a": 1.0}, {"a": 1.0}, {"a": 2.0}, {"a": 2.0}]


def test_downsample_for_a_slow_viewer():
    h = NodeHarness("rate", rate=15.0, mode="hold")
    got = []
    for k in range(8):  # 60 Hz input: four frames per output tick
        h.feed("in", frame(k / 60, {"a": float(k)}))
        got += col0(h.advance(1 / 60))
    assert got == [{"a": 3.0}, {"a": 7.0}]


def test_sessions_keep_their_own_input_period():
    h = start(rate=60.0)
    got = []
    for k in range(4):  # a at 30 Hz; b at 15 Hz, starting one frame later
        values = {"a": k * 0.3}
        if k in (1, 3):
            values["b"] = k * 0.3
        h.feed("in", frame(k * IN, values))
        got += col0(h.advance(IN))
    b = [g.get("b") for g in got]
    assert b == [None, None, 0.3, 0.3, 0.3, 0.3, 0.45, 0.6]  # b blends over its own 1/15 s
    assert [g["a"] for g in got][-2:] == [0.75, 0.9]


def test_late_frame_continues_from_what_was_shown():
    h = start(rate=60.0)
    h.feed("in", frame(0, {"a": 0.0}))
    h.feed("in", frame(IN, {"a": 1.0}))
    assert col0(h.advance(OUT)) == [{"a": 0.5}]
    h.feed("in", frame(2 * IN, {"a": 1.0}))  # arrives early: blend from 0.5, not from 1.0
    assert col0(h.advance(IN)) == [{"a": 0.75}, {"a": 1.0}]


def test_non_float_arrays_are_held_and_data_is_passed():
    h = start(rate=60.0)
    for k in range(2):
        msg = frame(k * IN, {"a": float(k), "b": float(k)}, caps="morphs/cc4", names=["x", "y", "z"],
                    active=[True, k == 0])
        msg.arrays["ids"] = np.array([[k], [k + 10]], dtype=np.int32)
        h.feed("in", msg)
    m = h.advance(OUT)[0][1]
    assert m.caps == "morphs/cc4" and m.session == ["a", "b"]
    assert m.data == {"names": ["x", "y", "z"], "active": [True, False]}
    assert m.arrays["ids"].tolist() == [[1], [11]]
    assert m.arrays["weights"][:, 0].tolist() == [0.5, 0.5]


def test_quiet_session_is_dropped_and_its_slot_reused_clean():
    h = start(rate=60.0, session_timeout=0.1, mode="hold")
    h.feed("in", frame(0, {"gone": 0.9, "stays": 0.1}))
    for k in range(1, 12):
        h.advance(OUT)
        h.feed("in", frame(k * OUT, {"stays": 0.1}))
    assert h.outputs[-1][1].session == ["stays"]
    h.feed("in", Message("arkit/blendshapes", None, {"pose": np.ones((1, 9), np.float32)}, session=["new"]))
    m = h.advance(OUT)[0][1]
    assert set(m.session) == {"stays", "new"}
    assert m.arrays["weights"][m.session.index("new")].tolist() == [0.0, 0.0, 0.0]  # not 'gone's values


def test_many_sessions_grow_the_state():
    h = start(rate=60.0, mode="hold")
    ids = [f"s{i}" for i in range(40)]
    h.feed("in", frame(0, {s: i / 100 for i, s in enumerate(ids)}))
    m = h.advance(OUT)[0][1]
    assert sorted(m.session) == sorted(ids)
    assert {s: round(float(v), 5) for s, v in zip(m.session, m.arrays["weights"][:, 0])} == \
        {s: i / 100 for i, s in enumerate(ids)}


def test_live_rate_and_mode_change():
    h = start(rate=60.0, mode="hold")
    h.feed("in", frame(0, {"a": 0.0}))
    assert len(h.advance(1.0)) == 60
    h.set_params(rate=20.0)
    assert len(h.advance(1.025)) == 20  # ticks 50 ms apart now
    h.feed("in", frame(1.0, {"a": 1.0}))
    assert col0(h.advance(0.05)) == [{"a": 1.0}]
    h.set_params(mode="interpolate")
    h.feed("in", frame(1.1, {"a": 2.0}))
    assert col0(h.advance(0.05)) == [{"a": 1.5}]  # from what hold showed, half of 1/10 s


def test_eos_shows_the_last_frame():
    h = start(rate=60.0)
    h.feed("in", frame(0, {"a": 0.0}))
    h.feed("in", frame(IN, {"a": 1.0}))
    assert col0(h.advance(OUT)) == [{"a": 0.5}]
    assert col0(h.eos()) == [{"a": 1.0}]


def test_nothing_emitted_without_sessions():
    h = start(rate=60.0)
    assert h.advance(0.5) == []


def test_real_processes_player_rate_recorder(tmp_path):
    messages = []
    n = 10
    for k in range(n):  # 30 Hz ramps: a up, b down
        messages.append(frame(k * IN, {"a": k / (n - 1), "b": 1 - k / (n - 1)}))
    got = run_through('rate', messages, tmp_path, params={"rate": 60.0, "mode": "interpolate"}, caps='arkit/blendshapes', speed=1.0)
    assert len(got) >= 2
    a = [float(m.arrays["weights"][m.session.index("a"), 0]) for m in got if "a" in m.session]
    b = [float(m.arrays["weights"][m.session.index("b"), 0]) for m in got if "b" in m.session]
    assert all(m.caps == "arkit/blendshapes" and set(m.session) <= {"a", "b"} for m in got)
    assert all(0.0 <= v <= 1.0 for v in a + b)
    assert a == sorted(a) and b == sorted(b, reverse=True)  # interpolation never overshoots a ramp
    assert a[-1] == pytest.approx(1.0) and b[-1] == pytest.approx(0.0)  # EOS shows the last frame
