"""mapper: ARKit batches -> CC4 / ARKit morphs, with constraints and secondary rules from YAML."""
from __future__ import annotations

import numpy as np
import pytest

from nodes.face import MorphTableError, arkit_names, load_morph_table
from runtime import Message, ParamError
from runtime.testing import NodeHarness, run_through

ARKIT = arkit_names()


def arkit(**values: float) -> np.ndarray:
    """One row of 52 ARKit weights, zero except the named shapes."""
    row = np.zeros(52, dtype=np.float32)
    for name, v in values.items():
        row[ARKIT.index(name)] = v
    return row


def batch(*rows: np.ndarray, sessions: list[str] | None = None, **data) -> Message:
    sessions = sessions or [f"s{i}" for i in range(len(rows))]
    pose = np.arange(len(rows) * 9, dtype=np.float32).reshape(len(rows), 9) / 10
    return Message("arkit/blendshapes", data or None, {"weights": np.stack(rows), "pose": pose},
                   pts_ns=123, session=sessions)


def mapped(h: NodeHarness, msg: Message) -> tuple[Message, dict[str, np.ndarray]]:
    """Feed one batch; return the output message and {morph name: column}."""
    out = h.feed("in", msg)
    assert len(out) == 1
    m = out[0][1]
    names = m.data["names"] if m.caps == "morphs/cc4" else ARKIT
    return m, {n: m.arrays["weights"][:, i] for i, n in enumerate(names)}


@pytest.mark.parametrize("profile,caps", [("standard", "morphs/cc4"), ("extended", "morphs/cc4"),
                                          ("identity", "arkit/blendshapes")])
def test_shipped_tables_compile(profile, caps):
    t = load_morph_table(profile)
    assert t.caps == caps
    assert t.matrix.shape == (52, len(t.names)) and len(set(t.names)) == len(t.names)
    assert (t.matrix.any(axis=1)).all()  # every ARKit shape lands somewhere


def test_standard_batch_one_shape_drives_several_morphs():
    h = NodeHarness("mapper", profile="standard")
    msg = batch(arkit(eyeBlinkLeft=0.8, eyeLookInLeft=0.4), arkit(browInnerUp=0.6), arkit(cheekPuff=0.7, mouthFunnel=0.5),
                active=[True, False, True])
    m, col = mapped(h, msg)
    assert m.caps == "morphs/cc4" and m.session == ["s0", "s1", "s2"]
    assert m.data["names"] == list(load_morph_table("standard").names)
    assert m.data["active"] == [True, False, True]
    np.testing.assert_array_equal(m.arrays["pose"], msg.arrays["pose"])
    np.testing.assert_allclose(col["Eye_Blink_L"], [0.8, 0, 0], atol=1e-6)
    np.testing.assert_allclose(col["Eye_L_Look_R"], [0.4, 0, 0], atol=1e-6)  # looking in = to the right
    np.testing.assert_allclose(col["Brow_Raise_Inner_L"], [0, 0.6, 0], atol=1e-6)
    np.testing.assert_allclose(col["Brow_Raise_Inner_R"], [0, 0.6, 0], atol=1e-6)
    np.testing.assert_allclose(col["Cheek_Puff_L"], [0, 0, 0.7], atol=1e-6)
    np.testing.assert_allclose(col["Cheek_Puff_R"], [0, 0, 0.7], atol=1e-6)
    np.testing.assert_allclose(col["Mouth_Funnel"], [0, 0, 0.5], atol=1e-6)
    assert m.arrays["weights"].dtype == np.float32 and m.arrays["weights"].shape == (3, len(col))


def test_extended_splits_and_weights():
    h = NodeHarness("mapper", profile="extended")
    _, col = mapped(h, batch(arkit(mouthFunnel=0.5), arkit(noseSneerLeft=0.5, mouthPressRight=1.0)))
    for quarter in ("Mouth_Funnel_Up_L", "Mouth_Funnel_Up_R", "Mouth_Funnel_Down_L", "Mouth_Funnel_Down_R"):
        np.testing.assert_allclose(col[quarter], [0.5, 0], atol=1e-6)
    np.testing.assert_allclose(col["Nose_Sneer_L"], [0, 0.5], atol=1e-6)
    np.testing.assert_allclose(col["Nose_Nostril_Raise_L"], [0, 0.15], atol=1e-6)
    np.testing.assert_allclose(col["Mouth_Tighten_R"], [0, 0.3], atol=1e-6)


def test_constraints_closed_mouth_and_blink_vs_wide():
    h = NodeHarness("mapper", profile="standard")
    _, col = mapped(h, batch(
        arkit(mouthClose=0.7, jawOpen=0.3, eyeBlinkLeft=0.9, eyeWideLeft=0.5),
        arkit(mouthClose=0.2, jawOpen=0.6, eyeBlinkLeft=0.2, eyeWideLeft=0.5, eyeBlinkRight=1.0, eyeWideRight=1.0),
        arkit(mouthClose=0.5),
    ))
    np.testing.assert_allclose(col["Mouth_Close"], [0.3, 0.2, 0.0], atol=1e-6)  # <= Jaw_Open
    np.testing.assert_allclose(col["Eye_Wide_L"], [0.1, 0.5, 0.0], atol=1e-6)   # <= 1 - Eye_Blink_L
    np.testing.assert_allclose(col["Eye_Wide_R"], [0.0, 0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(col["Eye_Blink_R"], [0.0, 1.0, 0.0], atol=1e-6)  # the blink itself is kept


def test_secondary_rules_open_jaw_pulls_cheeks_and_nostrils():
    h = NodeHarness("mapper", profile="extended")
    _, col = mapped(h, batch(arkit(jawOpen=0.5), arkit(mouthSmileLeft=0.8, cheekSquintLeft=0.1),
                             arkit(jawOpen=1.0, cheekPuff=1.0), arkit()))
    np.testing.assert_allclose(col["Jaw_Open"], [0.5, 0, 1.0, 0], atol=1e-6)
    np.testing.assert_allclose(col["Cheek_Suck_L"], [0.05, 0, 0.0, 0], atol=1e-6)  # 0 under a full puff
    np.testing.assert_allclose(col["Cheek_Suck_R"], [0.05, 0, 0.0, 0], atol=1e-6)
    np.testing.assert_allclose(col["Nose_Nostril_Dilate_L"], [0.04, 0, 0.08, 0], atol=1e-6)
    np.testing.assert_allclose(col["Cheek_Raise_L"], [0, 0.1 + 0.25 * 0.8, 0, 0], atol=1e-6)
    np.testing.assert_allclose(col["Cheek_Raise_R"], [0, 0, 0, 0], atol=1e-6)


def test_clamped_to_unit_range():
    h = NodeHarness("mapper", profile="standard")
    m, col = mapped(h, batch(arkit(mouthSmileLeft=1.0, cheekSquintLeft=1.0, jawOpen=1.7), arkit(jawOpen=-0.4)))
    w = m.arrays["weights"]
    assert w.min() >= 0.0 and w.max() <= 1.0
    np.testing.assert_allclose(col["Cheek_Raise_L"], [1.0, 0.0])  # 1 + 0.25 clamped
    np.testing.assert_allclose(col["Jaw_Open"], [1.0, 0.0])


def test_batch_equals_row_by_row():
    rng = np.random.default_rng(7)
    rows = rng.random((16, 52), dtype=np.float32)
    h = NodeHarness("mapper", profile="extended")
    whole = h.feed("in", batch(*rows))[0][1].arrays["weights"]
    single = np.concatenate([h.feed("in", batch(r, sessions=["x"]))[0][1].arrays["weights"] for r in rows])
    np.testing.assert_allclose(whole, single, atol=1e-6)


def test_identity_keeps_arkit_caps_and_names():
    h = NodeHarness("mapper", profile="identity")
    row = arkit(jawOpen=0.4, mouthClose=0.9, mouthSmileRight=0.3, eyeBlinkRight=0.7, eyeWideRight=0.6)
    m, col = mapped(h, batch(row, active=[True]))
    assert m.caps == "arkit/blendshapes" and m.data == {"active": [True]}
    expected = row.copy()
    expected[ARKIT.index("mouthClose")] = 0.4
    expected[ARKIT.index("eyeWideRight")] = 0.3
    np.testing.assert_allclose(m.arrays["weights"][0], expected, atol=1e-6)


def test_live_profile_change_and_bad_profile_keeps_the_old_one(tmp_path, monkeypatch):
    monkeypatch.setenv("AVATAR_TABLE_PATH", str(tmp_path))  # tables outside graphs/ must be allowed
    h = NodeHarness("mapper", profile="standard")
    assert h.feed("in", batch(arkit()))[0][1].arrays["weights"].shape == (1, len(load_morph_table("standard").names))
    h.set_params(profile="extended")
    assert h.feed("in", batch(arkit()))[0][1].arrays["weights"].shape == (1, len(load_morph_table("extended").names))
    with pytest.raises(ParamError, match="nope.yaml"):
        h.set_params(profile=str(tmp_path / "nope.yaml"))
    assert h.node.p.profile == "extended"
    assert h.feed("in", batch(arkit()))[0][1].arrays["weights"].shape[1] == len(load_morph_table("extended").names)


def test_wrong_width_is_dropped_with_a_warning():
    h = NodeHarness("mapper")
    bad = Message("arkit/blendshapes", None, {"weights": np.zeros((2, 51), np.float32)}, session=["a", "b"])
    assert h.feed("in", bad) == []
    assert h.bus and "(2, 52)" in h.bus[0][1]


GOOD = """caps: morphs/cc4
morphs: [Jaw_Open, Mouth_Close]
map: {MAP}
constraints: [{limit: Mouth_Close, by: Jaw_Open}]
"""


def _full_map(**override: str) -> str:
    entries = {name: "null" for name in ARKIT}
    entries.update(jawOpen="Jaw_Open", mouthClose="Mouth_Close")
    entries.update(override)
    return "{" + ", ".join(f"{k}: {v}" for k, v in entries.items()) + "}"


@pytest.mark.parametrize("text,where,what", [
    (GOOD.replace("{MAP}", _full_map(jawOpen="Jaw_Opn")), "map.jawOpen", "did you mean 'Jaw_Open'"),
    (GOOD.replace("{MAP}", _full_map(jawOpn="Jaw_Open")), "map.jawOpn", "not an ARKit blendshape name"),
    (GOOD.replace("{MAP}", "{jawOpen: Jaw_Open}"), "map", "missing"),
    (GOOD.replace("{MAP}", _full_map(jawOpen="{Jaw_Open: high}")), "map.jawOpen.Jaw_Open", "finite number"),
    (GOOD.replace("{MAP}", _full_map()).replace("by: Jaw_Open", "by: Jaw"), "constraints[0].by", "unknown morph"),
    (GOOD.replace("{MAP}", _full_map()).replace("morphs/cc4", "morphs/other"), "caps", "must be one of"),
    (GOOD.replace("{MAP}", _full_map()).replace("Mouth_Close]", "Jaw_Open]"), "morphs[1]", "listed twice"),
    (GOOD.replace("{MAP}", _full_map()) + "extra: 1\n", "extra", "unknown key"),
])
def test_bad_table_names_file_and_entry(tmp_path, monkeypatch, text, where, what):
    monkeypatch.setenv("AVATAR_TABLE_PATH", str(tmp_path))
    path = tmp_path / "bad_table.yaml"
    path.write_text(text)
    with pytest.raises(MorphTableError) as err:
        NodeHarness("mapper", profile=str(path))
    assert str(path) in str(err.value) and f": {where}:" in str(err.value) and what in str(err.value)


def test_good_custom_table(tmp_path, monkeypatch):
    monkeypatch.setenv("AVATAR_TABLE_PATH", str(tmp_path))
    path = tmp_path / "tiny.yaml"
    path.write_text(GOOD.replace("{MAP}", _full_map()))
    h = NodeHarness("mapper", profile=str(path))
    m, col = mapped(h, batch(arkit(jawOpen=0.2, mouthClose=0.5, mouthSmileLeft=1.0)))
    assert m.data["names"] == ["Jaw_Open", "Mouth_Close"]
    np.testing.assert_allclose(m.arrays["weights"], [[0.2, 0.2]], atol=1e-6)


def test_real_processes_player_mapper_recorder(tmp_path):
    messages = []
    frames = []
    for k in range(6):
        w = np.stack([arkit(jawOpen=k / 5, mouthClose=0.5), arkit(eyeBlinkLeft=1 - k / 5, eyeWideLeft=0.8)])
        frames.append(w)
        messages.append(Message("arkit/blendshapes", None, {"weights": w}, pts_ns=k * 33_333_333, session=["a", "b"]))
    got = run_through('mapper', messages, tmp_path, params={"profile": "extended"}, caps='arkit/blendshapes', speed=0)
    assert len(got) == len(frames)
    names = got[0].data["names"]
    table = load_morph_table("extended")
    for k, (m, w) in enumerate(zip(got, frames)):
        assert m.caps == "morphs/cc4" and m.session == ["a", "b"] and m.data["names"] == names
        np.testing.assert_allclose(m.arrays["weights"], table.apply(w), atol=1e-6)
        close, jaw = names.index("Mouth_Close"), names.index("Jaw_Open")
        assert m.arrays["weights"][0, close] == pytest.approx(min(0.5, k / 5), abs=1e-6)
        assert m.arrays["weights"][0, jaw] == pytest.approx(k / 5, abs=1e-6)
        assert m.arrays["weights"][1, names.index("Eye_Wide_L")] == pytest.approx(min(0.8, k / 5), abs=1e-6)
