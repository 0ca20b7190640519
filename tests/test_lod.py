"""lod: per-session levels of detail (morph subsets held at 0, rate decimation), set live."""
from __future__ import annotations

import numpy as np
import pytest

from nodes.face import LodTableError, arkit_names, load_morph_table
from runtime import Message
from runtime.testing import NodeHarness, run_through

ARKIT = arkit_names()
STANDARD = list(load_morph_table("standard").names)


def ones(sessions: list[str], k: int = 0, caps: str = "arkit/blendshapes", **data) -> Message:
    """Frame k of a batch: every weight 1 (so a kept morph reads 1, a dropped one 0), pose = k."""
    width = 52 if caps == "arkit/blendshapes" else len(STANDARD)
    if caps == "morphs/cc4":
        data["names"] = STANDARD
    arrays = {"weights": np.ones((len(sessions), width), np.float32),
              "pose": np.full((len(sessions), 9), k, np.float32)}
    return Message(caps, data or None, arrays, pts_ns=k * 16_666_667, session=sessions)


def run(h: NodeHarness, sessions: list[str], frames: int, start: int = 0) -> dict[str, list[int]]:
    """Feed frames; return {session: [frame indices it was emitted in]}."""
    seen: dict[str, list[int]] = {s: [] for s in sessions}
    for k in range(start, start + frames):
        for _, m in h.feed("in", ones(sessions, k)):
            for s in m.session:
                seen[s].append(k)
    return seen


def kept(m: Message, session: str, names: list[str]) -> set[str]:
    row = m.arrays["weights"][m.session.index(session)]
    assert set(np.unique(row).tolist()) <= {0.0, 1.0}
    return {n for n, v in zip(names, row) if v == 1.0}


def test_decimation_per_level():
    h = NodeHarness("lod", levels={"l0": 0, "l1": 1, "l2": 2, "l3": 3})
    seen = run(h, ["l0", "l1", "l2", "l3"], 8)
    assert seen == {"l0": list(range(8)), "l1": list(range(8)), "l2": [0, 2, 4, 6], "l3": [0, 4]}


def test_nothing_emitted_when_no_session_is_due():
    h = NodeHarness("lod", level=3)
    emitted = [len(h.feed("in", ones(["a", "b"], k))) for k in range(8)]
    assert emitted == [1, 0, 0, 0, 1, 0, 0, 0]


def test_morph_subsets_arkit():
    h = NodeHarness("lod", levels={"l0": 0, "l1": 1, "l2": 2, "l3": 3})
    m = h.feed("in", ones(["l0", "l1", "l2", "l3"], 0, active=[True, True, False, True]))[0][1]
    assert kept(m, "l0", ARKIT) == set(ARKIT)
    assert kept(m, "l3", ARKIT) == {"jawOpen", "jawForward", "jawLeft", "jawRight", "eyeBlinkLeft", "eyeBlinkRight"}
    l2 = kept(m, "l2", ARKIT)
    assert {"jawOpen", "mouthSmileLeft", "mouthDimpleRight", "eyeLookUpLeft", "eyeBlinkRight", "browInnerUp"} <= l2
    assert not l2 & {"jawLeft", "cheekPuff", "noseSneerLeft", "tongueOut"}
    l1 = kept(m, "l1", ARKIT)
    assert {"jawOpen", "mouthFunnel", "mouthSmileRight", "eyeBlinkLeft", "eyeLookInRight", "browDownLeft"} <= l1
    assert not l1 & {"mouthDimpleLeft", "mouthShrugUpper", "jawLeft", "cheekSquintLeft", "tongueOut"}
    assert len(l1) < len(l2) < 52
    assert m.data == {"active": [True, True, False, True], "lod": [0, 1, 2, 3]}
    assert m.arrays["weights"].shape == (4, 52)  # full width: dropped morphs are held at 0


def test_morph_subsets_cc4_names():
    h = NodeHarness("lod", levels={"l1": 1, "l2": 2, "l3": 3})
    m = h.feed("in", ones(["l1", "l2", "l3"], 0, caps="morphs/cc4"))[0][1]
    assert m.caps == "morphs/cc4" and m.data["names"] == STANDARD and m.data["lod"] == [1, 2, 3]
    assert kept(m, "l3", STANDARD) == {"Jaw_Open", "Jaw_Forward", "Jaw_L", "Jaw_R", "Eye_Blink_L", "Eye_Blink_R"}
    l2 = kept(m, "l2", STANDARD)
    assert {"Jaw_Open", "Mouth_Pucker", "Mouth_Close", "Eye_L_Look_Up", "Brow_Drop_R"} <= l2
    assert not l2 & {"Jaw_L", "Cheek_Puff_L", "Nose_Sneer_R", "Tongue_Out"}
    l1 = kept(m, "l1", STANDARD)
    assert {"Jaw_Open", "Mouth_Smile_L", "Eye_Blink_R", "Eye_R_Look_L", "Brow_Raise_Inner_L"} <= l1
    assert not l1 & {"Mouth_Dimple_L", "Mouth_Shrug_Upper", "Cheek_Raise_L"}


def test_rows_of_other_arrays_follow_the_due_sessions():
    h = NodeHarness("lod", levels={"slow": 2})
    h.feed("in", ones(["fast", "slow"], 0))
    m = h.feed("in", ones(["fast", "slow"], 1, active=[False, True]))[0][1]
    assert m.session == ["fast"] and m.data == {"active": [False], "lod": [0]}
    assert m.arrays["pose"].tolist() == [[1.0] * 9]


def test_live_levels_change():
    h = NodeHarness("lod", level=0)
    assert run(h, ["a", "b"], 4) == {"a": [0, 1, 2, 3], "b": [0, 1, 2, 3]}
    h.set_params(levels={"b": 3})
    assert run(h, ["a", "b"], 8, start=4) == {"a": list(range(4, 12)), "b": [4, 8]}  # b due at once
    h.set_params(level=2)  # the default for sessions not named in levels
    assert run(h, ["a", "b", "c"], 4, start=12) == {"a": [12, 14], "b": [12], "c": [12, 14]}
    m = h.feed("in", ones(["a", "b", "c"], 16))[0][1]
    assert m.data["lod"] == [2, 3, 2]


def test_viewer_requests_set_and_clear_a_session_level():
    h = NodeHarness("lod", level=0, levels={"a": 1})
    run(h, ["a", "b"], 2)
    assert h.feed("requests", Message("avatar/request", {"lod": {"b": 3}})) == []
    assert run(h, ["a", "b"], 4, start=2) == {"a": [2, 3, 4, 5], "b": [2]}  # b due at once, then every 4th
    assert h.node.p.levels == {"a": 1, "b": 3}  # what `avatar stats` and a restart see
    h.feed("requests", Message("avatar/request", {"lod": {"b": None, "a": 9}}))  # a bad level: all refused
    assert h.node.p.levels == {"a": 1, "b": 3}
    h.feed("requests", Message("avatar/request", {"lod": {"b": None}}))
    assert h.node.p.levels == {"a": 1}
    assert h.feed("in", ones(["a", "b"], 6))[0][1].data["lod"] == [1, 0]
    h.feed("requests", Message("avatar/request", {"keyframe": ["a"]}))  # not for lod: ignored
    assert h.node.stats()["requests"] == 2


def test_bad_live_levels_are_refused_and_the_old_ones_kept():
    h = NodeHarness("lod", levels={"a": 1})
    with pytest.raises(ValueError, match="'b' has level 7"):
        h.set_params(levels={"a": 2, "b": 7})
    assert h.node.p.levels == {"a": 1}
    assert h.feed("in", ones(["a"], 0))[0][1].data["lod"] == [1]


def test_wrong_width_is_dropped_with_a_warning():
    h = NodeHarness("lod")
    bad = Message("morphs/cc4", {"names": ["Jaw_Open"]}, {"weights": np.ones((1, 2), np.float32)}, session=["a"])
    assert h.feed("in", bad) == []
    assert "(1, 1)" in h.bus[0][1]


@pytest.mark.parametrize("text,what", [
    ("levels: {0: {keep: all}, 1: {keep: all}, 2: {keep: all}}", "levels: must map each of 0..3"),
    ("levels: {0: {keep: all}, 1: {keep: all}, 2: {keep: all}, 3: {every: 0, keep: all}}", "levels.3.every"),
    ("levels: {0: {keep: all}, 1: {arkit: [jawOpn]}, 2: {keep: all}, 3: {keep: all}}",
     "levels.1.arkit: pattern 'jawOpn' matches no arkit"),
    ("levels: {0: {keep: all}, 1: {keep: all}, 2: {cc4: [Mouth_Smiel*]}, 3: {keep: all}}",
     "levels.2.cc4: pattern 'Mouth_Smiel*' matches no cc4"),
    ("levels: {0: {keep: all}, 1: {keep: all}, 2: {keep: all}, 3: {every: 4}}", "levels.3: keeps nothing"),
])
def test_bad_table_names_file_and_entry(tmp_path, monkeypatch, text, what):
    monkeypatch.setenv("AVATAR_TABLE_PATH", str(tmp_path))  # tables outside graphs/ must be allowed
    path = tmp_path / "bad_lod.yaml"
    path.write_text(text)
    with pytest.raises(LodTableError) as err:
        NodeHarness("lod", table=str(path))
    assert str(path) in str(err.value) and what in str(err.value)


def test_real_processes_player_lod_recorder(tmp_path):
    messages = []
    sessions = ["l0", "l2", "l3"]
    for k in range(8):
        messages.append(ones(sessions, k))
    got = run_through('lod', messages, tmp_path, params={"levels": {"l2": 2, "l3": 3}}, caps='arkit/blendshapes', speed=0)
    frames = [int(m.arrays["pose"][0, 0]) for m in got]
    assert frames == list(range(8))  # l0 is due every frame, so every frame has a message
    rows = {s: [int(m.arrays["pose"][m.session.index(s), 0]) for m in got if s in m.session] for s in sessions}
    assert rows == {"l0": list(range(8)), "l2": [0, 2, 4, 6], "l3": [0, 4]}
    for m in got:
        assert m.data["lod"] == [{"l0": 0, "l2": 2, "l3": 3}[s] for s in m.session]
        if "l3" in m.session:
            assert kept(m, "l3", ARKIT) == {"jawOpen", "jawForward", "jawLeft", "jawRight", "eyeBlinkLeft", "eyeBlinkRight"}
