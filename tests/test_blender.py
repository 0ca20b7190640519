"""blender: capture + visemes + emotion + idle motion -> one ARKit frame per session per tick."""
from __future__ import annotations

import os
import re

import numpy as np
import pytest

from nodes.blender import Blender
from nodes.face import TablePathError, arkit_names, tables
from runtime import Message, ParamError
from runtime.testing import NodeHarness

COL = {n: i for i, n in enumerate(arkit_names())}
DT = 1.0 / 60.0
QUIET = dict(breath_amount=0.0, gaze_amount=0.0, micro_per_min=0.0)  # isolate one layer
RAW = dict(min_cutoff=1000.0)  # the One Euro filter out of the way: exact layer values


def shapes(**weights: float) -> np.ndarray:
    row = np.zeros((1, 52), dtype=np.float32)
    for name, v in weights.items():
        row[0, COL[name]] = v
    return row


def series(out, name: str, session: str = "a") -> np.ndarray:
    """One channel of one session over the emitted frames."""
    return np.array([m.arrays["weights"][m.session.index(session), COL[name]] for _, m in out if session in m.session])


def run(h: NodeHarness, seconds: float, capture: np.ndarray | None = None, visemes: np.ndarray | None = None,
        speaking: bool = True, active: bool = True) -> list:
    """Feed capture and/or viseme frames of session 'a' once per frame period for ``seconds``."""
    out = []
    for _ in range(int(round(seconds / DT))):
        if capture is not None:
            h.feed("capture", Message("arkit/blendshapes", {"active": [active]}, {"weights": capture},
                                      session=["a"]))
        if visemes is not None:
            h.feed("visemes", Message("arkit/blendshapes", {"speaking": [speaking]}, {"weights": visemes},
                                      session=["a"]))
        out += h.advance(DT)
    return out


def blinks(lid: np.ndarray) -> np.ndarray:
    """Frame indices where the eyelid crosses half-closed on the way down."""
    return np.flatnonzero((lid[1:] > 0.5) & (lid[:-1] <= 0.5)) + 1


def test_idle_blinks_at_natural_intervals_over_a_minute() -> None:
    h = NodeHarness(Blender, sessions=["a"])
    out = h.advance(60.0)
    assert len(out) == 3600 and out[0][1].session == ["a"] and out[0][1].data["active"] == [False]
    lid = series(out, "eyeBlinkLeft")
    starts = blinks(lid)
    gaps = np.diff(starts) * DT
    assert 10 <= len(starts) <= 30
    assert gaps.min() > 0.6 and gaps.max() < 12.0 and 2.0 <= gaps.mean() <= 6.0
    assert np.std(gaps) > 0.3  # natural, not a metronome
    for s in starts:
        closed = lid[s:s + 15] > 0.5
        assert lid[s:s + 15].max() > 0.8  # the lid really closes
        assert 2 <= closed.sum() <= 10  # for about 100-150 ms
    np.testing.assert_array_equal(lid, series(out, "eyeBlinkRight"))


def test_idle_breathes_and_moves_the_eyes() -> None:
    h = NodeHarness(Blender, sessions=["a"], micro_per_min=0.0)
    out = h.advance(30.0)
    nose = series(out, "noseSneerLeft")
    assert 0.0 < nose.max() < 0.05  # tiny
    spectrum = np.abs(np.fft.rfft(nose - nose.mean()))
    peak_hz = np.fft.rfftfreq(len(nose), DT)[spectrum.argmax()]
    assert 0.15 <= peak_hz <= 0.35
    gaze = np.array([m.arrays["pose"][0, 3:5] for _, m in out])  # left eye yaw, pitch
    fast = np.hypot(*np.diff(gaze, axis=0).T) > 0.003
    saccades = np.flatnonzero(fast[1:] & ~fast[:-1])
    assert 8 <= len(saccades) <= 40  # a new fixation every 0.5 .. 3 s
    assert np.abs(gaze).max() < 0.3  # small ones
    look = series(out, "eyeLookOutLeft") + series(out, "eyeLookInLeft")
    assert look.max() > 0.02


def test_same_seed_same_face_other_seed_other_face() -> None:
    frames = [np.array([m.arrays["weights"] for _, m in NodeHarness(Blender, sessions=["a", "b"], seed=s).advance(10)])
              for s in (7, 7, 8)]
    np.testing.assert_array_equal(frames[0], frames[1])
    assert not np.array_equal(frames[0], frames[2])
    assert not np.array_equal(frames[0][:, 0], frames[0][:, 1])  # sessions have their own rhythm


def test_emotion_transition_is_eased_and_reaches_its_target() -> None:
    h = NodeHarness(Blender, sessions=["a"], transition_ms=400.0, **QUIET, **RAW)
    h.advance(1.0)
    h.set_params(emotion="happy")
    smile = series(h.advance(1.0), "mouthSmileLeft")  # frame i is at (i + 1) / 60 s
    assert np.all(np.diff(smile) >= 0)
    assert smile[1] < 0.03  # eases in ...
    assert smile[11] == pytest.approx(0.3, abs=0.02)  # ... symmetric around the middle (200 ms) ...
    assert 0.57 < smile[21] < 0.6  # ... eases out
    assert smile[23] == pytest.approx(0.6, abs=1e-3) and smile[-1] == pytest.approx(0.6, abs=1e-3)
    h.set_params(intensity=0.5)
    assert series(h.advance(1.0), "mouthSmileLeft")[-1] == pytest.approx(0.3, abs=1e-3)


def test_emotion_transition_through_the_smoother_stays_monotone() -> None:
    h = NodeHarness(Blender, sessions=["a"], transition_ms=300.0, **QUIET)
    h.advance(1.0)
    h.set_params(emotion="surprised")
    brow = series(h.advance(1.5), "browOuterUpLeft")
    assert np.all(np.diff(brow) >= -1e-6)
    assert brow[int(0.7 / DT)] == pytest.approx(0.7, abs=0.01)
    h.set_params(emotion="sad")  # change of mind mid-way: no jump
    h.advance(0.15)
    h.set_params(emotion="angry")
    brow = series(h.advance(1.0), "browDownLeft")
    assert np.abs(np.diff(brow)).max() < 0.1


def test_per_session_emotions_and_unknown_ones_refused() -> None:
    h = NodeHarness(Blender, sessions=["a"], transition_ms=100.0, **QUIET, **RAW)
    h.set_params(emotions={"b": ["sad", 0.5]})  # b is animated from now on
    out = h.advance(1.0)
    assert out[-1][1].session == ["a", "b"]
    assert series(out, "browInnerUp", "b")[-1] == pytest.approx(0.3, abs=1e-3)
    assert series(out, "mouthFrownLeft", "b")[-1] == pytest.approx(0.25, abs=1e-3)
    assert series(out, "browInnerUp", "a")[-1] == 0.0
    with pytest.raises(ParamError, match="unknown emotion 'bored'"):
        h.set_params(emotion="bored")
    with pytest.raises(ParamError, match="unknown emotion 'glee'"):
        h.set_params(emotions={"a": ["glee", 1.0]})
    assert h.node.p.emotion == "neutral" and h.node.p.emotions == {"b": ["sad", 0.5]}
    with pytest.raises(ParamError, match="unknown emotion"):
        NodeHarness(Blender, emotion="bored")


def test_one_session_runs_its_own_smoother_params_and_the_others_do_not_notice() -> None:
    """``session_params``: a canary on one session. Two sessions get the same noisy capture; b's
    own min_cutoff smooths it harder, a's frames are bit for bit what they are without b's."""
    noise = np.random.default_rng(3).normal(0.0, 0.02, (240, 52)).astype(np.float32)

    def feed(h: NodeHarness) -> list:
        out = []
        for row in noise:
            frame = np.clip(0.5 + row, 0.0, 1.0)[None, :]
            h.feed("capture", Message("arkit/blendshapes", {"active": [True, True]},
                                      {"weights": np.repeat(frame, 2, axis=0)}, session=["a", "b"]))
            out += h.advance(DT)
        return out

    alone = feed(NodeHarness(Blender, **QUIET))
    h = NodeHarness(Blender, **QUIET)
    h.set_session_params("b", min_cutoff=0.2)
    out = feed(h)
    a, b = series(out, "jawOpen", "a"), series(out, "jawOpen", "b")
    assert np.array_equal(a, series(alone, "jawOpen", "a"))  # the others run exactly as before
    jitter = lambda x: float(np.sqrt(np.mean(np.diff(x[60:], 2) ** 2)))  # noqa: E731
    assert jitter(b) < 0.5 * jitter(a)
    slot_b = h.node.slots.slot_of["b"]
    assert h.node.euro.params_of(slot_b) == {"min_cutoff": 0.2, "beta": 2.0, "d_cutoff": 2.0}
    own = h.node.stats()["smoothing_by_session"]["b"]
    assert own["params"] == {"min_cutoff": 0.2} and own["windows"] >= 2 and own["jitter"] is not None

    h.set_session_params("b", min_cutoff=None)  # given back: the node's params, no meter of its own
    assert h.node.p.session_params == {} and "smoothing_by_session" not in h.node.stats()
    assert h.node.euro.params_of(slot_b) == h.node.euro.params_of(h.node.slots.slot_of["a"])
    h.set_session_params("gone", beta=9.0)  # a session not here yet gets its params when it comes
    h.feed("capture", Message("arkit/blendshapes", None, {"weights": np.zeros((1, 52), np.float32)}, session=["gone"]))
    h.advance(DT)
    assert h.node.euro.params_of(h.node.slots.slot_of["gone"])["beta"] == 9.0

    with pytest.raises(ParamError, match=r"'rate' cannot be set per session \(these can: beta, d_cutoff, min_cutoff\)"):
        h.set_session_params("a", rate=30.0)
    with pytest.raises(ParamError, match="session 'a': param 'min_cutoff' must be in 0.01 .. inf"):
        h.set_session_params("a", min_cutoff=0.0)
    with pytest.raises(ParamError, match="cannot be set per session"):
        NodeHarness(Blender, session_params={"a": {"emotion": "happy"}})
    assert h.node.p.session_params == {"gone": {"beta": 9.0}}


def test_visemes_own_the_mouth_while_speaking() -> None:
    h = NodeHarness(Blender, speech_fade_ms=100.0, **QUIET, **RAW)
    face = shapes(jawOpen=0.5, mouthSmileLeft=0.4, browInnerUp=0.3)
    lips = shapes(mouthClose=0.7, mouthPressLeft=0.6)  # a /p/: jaw closed
    out = run(h, 0.5, capture=face)
    assert series(out, "jawOpen")[-1] == pytest.approx(0.5, abs=1e-3)
    assert out[-1][1].data == {"active": [True], "speaking": [False]}
    out = run(h, 0.5, capture=face, visemes=lips)
    jaw = series(out, "jawOpen")
    assert 0.05 < jaw[2] < 0.45  # cross-faded, not switched
    assert np.all(np.diff(jaw) <= 1e-6)
    assert jaw[-1] < 0.01
    assert series(out, "mouthClose")[-1] == pytest.approx(0.7, abs=1e-3)
    assert series(out, "mouthSmileLeft")[-1] < 0.01  # capture's mouth is replaced wholesale
    assert series(out, "browInnerUp")[-1] == pytest.approx(0.3, abs=1e-3)  # the rest of the face is not
    assert out[-1][1].data["speaking"] == [True]
    h.set_params(emotion="surprised", transition_ms=0.0)  # an emotion may not hold the lips open
    out = run(h, 0.3, capture=face, visemes=lips)
    assert series(out, "jawOpen")[-1] < 0.01 and series(out, "eyeWideLeft")[-1] > 0.5
    out = run(h, 0.6, capture=face, visemes=lips, speaking=False)
    assert series(out, "jawOpen")[-1] == pytest.approx(0.75, abs=1e-3)  # capture 0.5 + surprised 0.25
    h.set_params(emotion="neutral")
    run(h, 0.3, capture=face, visemes=lips)
    out = run(h, 0.7, capture=face)  # viseme frames stop coming: speech times out
    assert series(out, "jawOpen")[-1] == pytest.approx(0.5, abs=1e-3)


def test_at_the_end_of_the_input_the_last_frame_is_shown_and_the_fades_run_out() -> None:
    h = NodeHarness(Blender, speech_fade_ms=100.0, capture_fade_ms=50.0, **QUIET, **RAW)
    run(h, 0.3, visemes=shapes(mouthClose=0.2))
    # the last viseme frame of a file arrives between two ticks, then the stream ends
    h.feed("visemes", Message("arkit/blendshapes", {"speaking": [True]}, {"weights": shapes(mouthClose=0.7)},
                              session=["a"]))
    out = h.eos()
    frames = [m for pad, m in out if pad == "out"]
    assert len(frames) == 1 + 6  # this tick, then 100 ms (the longer fade) at 60 Hz
    assert series(out, "mouthClose")[0] == pytest.approx(0.7, abs=0.01)  # the last word is shown, not cut


def test_viseme_frames_through_the_blender_keep_closures() -> None:
    """viseme -> blender in lock-step: PP still closes and FF still tucks after blending and smoothing."""
    from nodes.viseme import Viseme

    lips, face = NodeHarness(Viseme, max_lag_ms=0.0), NodeHarness(Blender, micro_per_min=0.0)
    t0, ms, at, rows = lips.node.clock_ns, 1_000_000, 300, []
    for phone, dur in [("AA1", 160), ("P", 70), ("AA1", 160), ("F", 80), ("OW", 200)]:
        rows.append([0, phone, t0 + at * ms, t0 + (at + dur) * ms])
        at += dur
    lips.feed("in", Message("phonemes/arpabet", {"phonemes": rows}, pts_ns=t0, session=["a"]))
    out = []
    for _ in range(90):
        for _, m in lips.advance(DT):
            face.feed("visemes", m)
        out += face.advance(DT)
    jaw, close, roll = (series(out, n) for n in ("jawOpen", "mouthClose", "mouthRollLower"))
    centre = 0.495 + lips.node.p.lookahead_ms / 1000.0  # the /p/'s frame leaves the viseme node this late
    pp = slice(int(centre / DT) - 4, int(centre / DT) + 5)
    assert jaw.max() > 0.5 and jaw[pp].min() < 0.06 and close[pp].max() > 0.6
    assert roll.max() > 0.55
    speaking = [m.data["speaking"][0] for _, m in out]
    assert not speaking[0] and any(speaking) and not speaking[-1]


def test_bad_tables_are_refused_and_the_old_ones_kept(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("AVATAR_TABLE_PATH", str(tmp_path))  # tables outside graphs/ must be allowed
    bad = tmp_path / "emotions.yaml"
    bad.write_text("presets: {neutral: {}, smug: {mouthSmirk: 0.5}}\n")
    with pytest.raises(ParamError, match="unknown ARKit blendshape 'mouthSmirk'"):
        NodeHarness(Blender, emotion_table=str(bad))
    h = NodeHarness(Blender, sessions=["a"])
    with pytest.raises(ParamError, match="mouthSmirk"):
        h.set_params(emotion_table=str(bad))
    assert h.node.p.emotion_table == "mappings/emotions.yaml" and "happy" in h.node.presets
    h.set_params(emotion="happy")
    only_neutral = tmp_path / "neutral.yaml"
    only_neutral.write_text("presets: {neutral: {}}\n")
    with pytest.raises(ParamError, match="unknown emotion 'happy'"):  # good table, but it lacks the emotion in use
        h.set_params(emotion_table=str(only_neutral))
    assert "happy" in h.node.presets and len(h.node.micro) > 0
    h.advance(0.5)


def test_tables_of_the_wrong_shape_are_refused_and_the_old_ones_kept(tmp_path, monkeypatch) -> None:
    """A table that is not a mapping (or holds the wrong shapes) used to crash the node with an
    AttributeError; now it is a ParamError naming the file, and the node runs on."""
    monkeypatch.setenv("AVATAR_TABLE_PATH", str(tmp_path))
    h = NodeHarness(Blender, sessions=["a"])
    cases = {
        "list.yaml": ("[1, 2, 3]\n", "must be a YAML mapping, got a list"),
        "presets_list.yaml": ("presets: [happy]\n", "presets: must map names"),
        "entry_list.yaml": ("presets: {neutral: [1]}\n", "'neutral': must map ARKit shapes"),
        "weight_text.yaml": ("presets: {neutral: {jawOpen: wide}}\n", "a weight must be a finite number"),
        "not_yaml.yaml": ("presets: {neutral: [\n", "cannot read the table"),
    }
    for name, (text, says) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ParamError, match=re.escape(says)) as err:
            h.set_params(emotion_table=str(tmp_path / name))
        assert name in str(err.value)
        assert h.node.p.emotion_table == "mappings/emotions.yaml" and "happy" in h.node.presets
    for text in ("[1, 2]\n", "visemes: [1]\n", "visemes: {sil: [1]}\n"):
        (tmp_path / "vis.yaml").write_text(text)
        with pytest.raises(ParamError, match="vis.yaml"):
            h.set_params(viseme_table=str(tmp_path / "vis.yaml"))
        assert h.node.p.viseme_table == "mappings/viseme_arkit.yaml"
    with pytest.raises(ParamError, match="must be a YAML mapping"):
        NodeHarness(Blender, emotion_table=str(tmp_path / "list.yaml"))
    h.set_params(emotion="happy")
    assert h.advance(0.2)


def test_tables_only_come_from_graphs_or_the_table_path(tmp_path, monkeypatch) -> None:
    """Table params may name files in graphs/ or in a folder of $AVATAR_TABLE_PATH, nothing else."""
    monkeypatch.delenv("AVATAR_TABLE_PATH", raising=False)
    good = tmp_path / "emotions.yaml"
    good.write_text("presets: {neutral: {}, happy: {mouthSmileLeft: 0.5}}\n")
    h = NodeHarness(Blender, sessions=["a"])
    for path in (str(good), "/etc/hostname", "/nonexistent.yaml", "../../../../../etc/hostname",
                 "mappings/../../../etc/hostname"):
        with pytest.raises(ParamError, match="outside the folders tables may come from"):
            h.set_params(emotion_table=path)
        assert h.node.p.emotion_table == "mappings/emotions.yaml"
    h.set_params(emotion_table=str(tables.GRAPHS_DIR / "mappings" / "emotions.yaml"))  # graphs/, absolute
    h.set_params(emotion_table="mappings/emotions.yaml")
    monkeypatch.setenv("AVATAR_TABLE_PATH", os.pathsep.join(["/nonexistent", str(tmp_path)]))
    h.set_params(emotion_table=str(good))
    assert sorted(h.node.presets) == ["happy", "neutral"]
    (tmp_path / "link.yaml").symlink_to("/etc/hostname")  # a link out of an allowed folder is followed
    with pytest.raises(ParamError, match="outside the folders"):
        h.set_params(emotion_table=str(tmp_path / "link.yaml"))
    with pytest.raises(TablePathError):  # the error class of nodes.face.tables, before the node words it
        tables.load_table("/etc/hostname")


def test_idle_motion_only_when_capture_is_gone() -> None:
    h = NodeHarness(Blender, capture_timeout_ms=300.0, capture_fade_ms=200.0)
    out = run(h, 10.0, capture=shapes(browDownLeft=0.2))
    lid = series(out, "eyeBlinkLeft")[30:]
    assert lid.max() < 0.01  # the capture drives the eyes: no procedural blinks
    assert np.abs(np.array([m.arrays["pose"][0] for _, m in out[30:]])).max() < 0.01
    out = h.advance(15.0)  # capture stopped
    assert out[-1][1].data["active"] == [False]
    assert len(blinks(series(out, "eyeBlinkLeft"))) >= 2
    assert series(out, "browDownLeft")[-1] < 0.01
    out = run(h, 15.0, capture=shapes(browDownLeft=0.2), active=False)  # capture says: not live
    assert len(blinks(series(out, "eyeBlinkLeft"))) >= 2


def test_micro_expressions_are_small_and_brief() -> None:
    names = ["browDownLeft", "noseSneerRight", "mouthPressLeft", "mouthSmileLeft", "eyeSquintLeft", "browOuterUpLeft"]
    quiet = dict(breath_amount=0.0, gaze_amount=0.0)
    out = NodeHarness(Blender, sessions=["a"], micro_per_min=30.0, **quiet).advance(60.0)
    act = np.stack([series(out, n) for n in names]).max(axis=0)
    on = act > 0.02
    events = np.flatnonzero(on[1:] & ~on[:-1])
    assert 10 <= len(events) <= 60
    assert 0.04 < act.max() <= 0.16
    lengths = np.diff(np.flatnonzero(np.diff(np.r_[0, on.astype(int), 0])))[::2]
    assert lengths.max() * DT < 0.7
    out = NodeHarness(Blender, sessions=["a"], micro_per_min=0.0, **quiet).advance(30.0)
    assert max(series(out, n).max() for n in names) == 0.0


def test_sessions_come_and_go_with_their_input() -> None:
    h = NodeHarness(Blender, session_timeout_s=2.0, sessions=["keep"])
    h.feed("capture", Message("arkit/blendshapes", None, {"weights": np.zeros((2, 52), np.float32)},
                              session=["x", "y"]))
    assert h.advance(0.1)[-1][1].session == ["keep", "x", "y"]
    assert h.advance(4.0)[-1][1].session == ["keep"]
    h.feed("visemes", Message("arkit/blendshapes", None, {"weights": np.zeros((1, 52), np.float32)},
                              session=["z"]))
    out = h.advance(0.1)
    assert out[-1][1].session == ["keep", "z"]  # z reuses a freed slot, with a fresh state
    assert out[-1][1].arrays["weights"].shape == (2, 52) and out[-1][1].arrays["pose"].shape == (2, 9)


def test_with_tick_on_capture_each_session_gets_its_frame_when_its_capture_comes() -> None:
    """Devices on their own phases: a capture batch's sessions get their frame at once (pts: now),
    one frame per capture; sessions without capture stay on the timer; a capture that stops hands
    its session back to the timer."""
    h = NodeHarness(Blender, rate=60.0, tick_on_capture=True, sessions=["idle"], **QUIET)
    face = shapes(jawOpen=0.6)
    frames: dict[str, list[int]] = {"a": [], "b": [], "idle": []}
    capture_batches = []
    for k in range(60):  # one second: 'a' on phase 0, 'b' 7 ms later
        for sid, phase in (("a", 0.0), ("b", 0.007)):
            h.advance(k * DT + phase - h.now)
            out = h.feed("capture", Message("arkit/blendshapes", {"active": [True]}, {"weights": face}, session=[sid]))
            assert [m.session for _, m in out] == [[sid]]  # at once, alone
            assert out[0][1].pts_ns == h.now_ns()
            capture_batches.append(out[0][1])
    for _, m in h.outputs:
        for sid in m.session:
            frames[sid].append(m.pts_ns)
    assert len(frames["a"]) == len(frames["b"]) == 60  # one frame per capture packet, none from the timer
    assert 58 <= len(frames["idle"]) <= 61  # the session without capture: the timer, at 60 Hz
    assert all(m.session != ["a", "b"] for _, m in h.outputs)
    jaw = [m.arrays["weights"][0, COL["jawOpen"]] for m in capture_batches[-10:]]
    assert min(jaw) > 0.5  # the capture shows
    # 'b' stops: after 1.5 periods without capture the timer makes its frames again
    before = len(h.outputs)
    for k in range(60, 90):
        h.advance(k * DT - h.now)
        h.feed("capture", Message("arkit/blendshapes", {"active": [True]}, {"weights": face}, session=["a"]))
    later = [m.session for _, m in h.outputs[before:]]
    assert sum("b" in s for s in later) >= 25 and all(s == ["a"] for s in later if "a" in s)


def test_blender_in_a_real_graph(tmp_path) -> None:
    """blender (no inputs: idle animation) -> recorder as processes, with a live emotion change."""
    from runtime.recording import read_recording
    from runtime.testing import start_graph
    from tests.helpers import wait_until

    dst = tmp_path / "face.msgpack"
    runner = start_graph(f"""
nodes:
  face: {{type: blender, params: {{sessions: [a], transition_ms: 0, micro_per_min: 0}}}}
  rec: {{type: recorder, params: {{path: "{dst}", flush_every: 1}}}}
links:
  - face.out -> rec.in
""")

    def frames() -> list:
        try:
            return read_recording(dst)
        except (OSError, ValueError):
            return []  # not written yet, or a record half-flushed

    def wait_for(cond, timeout: float = 30.0) -> list:
        return wait_until(lambda: (msgs := frames()) and cond(msgs) and msgs, timeout, 0.05,
                          "the recording to get there")

    try:
        msgs = wait_for(lambda m: len(m) >= 10)
        assert all(m.session == ["a"] and m.arrays["weights"].shape == (1, 52) for m in msgs)
        assert msgs[0].arrays["weights"][0, COL["mouthSmileLeft"]] == 0.0
        runner.set_params("face", emotion="happy")
        wait_for(lambda m: m and m[-1].arrays["weights"][0, COL["mouthSmileLeft"]] > 0.55)
    finally:
        runner.stop(drain=True)
    pts = [m.pts_ns for m in frames()]
    assert pts == sorted(pts)
