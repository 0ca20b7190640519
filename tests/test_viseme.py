"""viseme: phoneme timelines -> co-articulated ARKit mouth frames (NodeHarness, simulated time)."""
from __future__ import annotations

import numpy as np
import pytest

from nodes.face import arkit_names
from nodes.viseme import Viseme
from runtime import Message, ParamError
from runtime.testing import NodeHarness

COL = {n: i for i, n in enumerate(arkit_names())}
MS = 1_000_000


def harness(**params) -> NodeHarness:
    params.setdefault("rate", 100.0)  # a 10 ms frame grid, so phoneme centres fall on frames
    params.setdefault("max_lag_ms", 0.0)  # frame-count time only: exact whatever the machine's load
    h = NodeHarness(Viseme, **params)
    h.origin = h.node.clock_ns  # the frame clock moves on with every tick; times are relative to this
    return h


def speak(h: NodeHarness, phones: list[tuple[str, int]], at_ms: int, sessions=("a",), row: int = 0) -> dict:
    """Schedule phones (name, duration ms) back to back from at_ms after the node's clock origin."""
    t0, t, rows, spans = h.origin, at_ms, [], {}
    for i, (phone, dur) in enumerate(phones):
        rows.append([row, phone, t0 + t * MS, t0 + (t + dur) * MS])
        spans[i] = (t, t + dur)
        t += dur
    h.feed("in", Message("phonemes/arpabet", {"phonemes": rows}, pts_ns=t0, session=list(sessions)))
    return spans


def frames(h: NodeHarness, out, session: str = "a") -> dict[int, tuple[np.ndarray, bool]]:
    """pts (ms after the clock origin) -> (weights, speaking) of one session."""
    t0, res = h.origin, {}
    for _, m in out:
        if session in m.session:
            i = m.session.index(session)
            res[round((m.pts_ns - t0) / MS)] = (m.arrays["weights"][i], m.data["speaking"][i])
    return res


def w(f: dict, ms: int, name: str) -> float:
    return float(f[ms][0][COL[name]])


def test_pp_closes_the_lips_fully_at_its_centre_between_open_vowels() -> None:
    h = harness()
    spans = speak(h, [("AA1", 160), ("P", 60), ("AA1", 160)], at_ms=300)
    f = frames(h, h.advance(1.5))
    centre = sum(spans[1]) // 2
    assert w(f, centre, "jawOpen") < 0.01
    assert w(f, centre, "mouthClose") >= 0.6
    assert w(f, centre, "mouthPressLeft") >= 0.5 and w(f, centre, "mouthPressRight") >= 0.5
    for vowel in (0, 2):  # the neighbours really are open
        assert w(f, sum(spans[vowel]) // 2, "jawOpen") > 0.5
    # still closed with the other ramp shape and a very short /m/
    h = harness(ramp="exp")
    spans = speak(h, [("AA", 120), ("M", 40), ("AA", 120)], at_ms=300)
    f = frames(h, h.advance(1.5))
    assert w(f, sum(spans[1]) // 2, "jawOpen") < 0.01
    assert w(f, sum(spans[1]) // 2, "mouthClose") >= 0.6


def test_ff_tucks_the_lower_lip_and_raises_the_upper() -> None:
    h = harness()
    spans = speak(h, [("AA", 160), ("F", 80), ("IY1", 160)], at_ms=300)
    f = frames(h, h.advance(1.5))
    centre = sum(spans[1]) // 2
    assert w(f, centre, "mouthRollLower") > 0.6
    assert w(f, centre, "mouthUpperUpLeft") > 0.25
    for vowel in (0, 2):
        assert w(f, sum(spans[vowel]) // 2, "mouthRollLower") < 0.1


def test_dominance_ramps_in_before_the_phoneme_and_releases_after() -> None:
    h = harness(lead_ms=80.0, release_ms=100.0)
    (start, end), = speak(h, [("AA", 200)], at_ms=500).values()
    f = frames(h, h.advance(1.5))
    jaw = {ms: w(f, ms, "jawOpen") for ms in f}
    assert jaw[start - 90] == 0.0 and not f[start - 90][1]
    ramp_in = [jaw[ms] for ms in range(start - 70, start + 1, 10)]
    assert ramp_in[0] > 0.0 and f[start - 70][1]  # moving (and speaking) before the sound starts
    assert all(b > a for a, b in zip(ramp_in, ramp_in[1:]))
    assert jaw[start + 100] == pytest.approx(0.6, abs=1e-6)
    release = [jaw[ms] for ms in range(end, end + 101, 10)]
    assert all(b < a for a, b in zip(release, release[1:]))
    assert jaw[end + 50] > 0.0 and jaw[end + 110] == 0.0 and not f[end + 110][1]


def test_lookahead_sets_the_frame_pts() -> None:
    h = harness(rate=50.0, lookahead_ms=200.0)
    out = h.advance(0.1)
    assert out == []  # no session known yet: nothing to say
    speak(h, [("AA", 100)], at_ms=0)
    out = h.advance(0.1)
    pts = [m.pts_ns for _, m in out]
    assert np.diff(pts).tolist() == [20 * MS] * (len(pts) - 1)
    assert pts[-1] == h.node.clock_ns - 200 * MS


def test_frame_clock_jumps_forward_after_lost_ticks() -> None:
    h = harness(max_lag_ms=5.0, lookahead_ms=0.0)
    speak(h, [("AA", 100)], at_ms=0)
    h.node.clock_ns -= 30 * MS  # ticks were lost: the frame clock is 30 ms behind the (simulated) pts clock
    (_, m), = h.advance(0.01)
    assert m.pts_ns >= h.now_ns()
    (_, m2), = h.advance(0.01)
    assert m2.pts_ns >= m.pts_ns + 10 * MS  # and counts on from there


def test_stress_digits_are_stripped_and_unknown_phonemes_are_silence() -> None:
    a, b = harness(), harness()
    speak(a, [("AA1", 100), ("IY0", 100), ("T", 50)], at_ms=200)
    speak(b, [("aa", 100), ("IY", 100), ("T2", 50)], at_ms=200)
    fa, fb = frames(a, a.advance(1.0)), frames(b, b.advance(1.0))
    for ms in fa:
        np.testing.assert_array_equal(fa[ms][0], fb[ms][0])
    c = harness()
    speak(c, [("XYZ1", 100)], at_ms=200)
    fc = frames(c, c.advance(1.0))
    assert all(not s and not wts.any() for wts, s in fc.values())
    assert [level for level, *_ in c.bus] == ["WARNING"]


def test_batch_of_sessions_silent_ones_emit_silence() -> None:
    h = harness()
    speak(h, [("AA", 200)], at_ms=300, sessions=("a", "b", "c"), row=1)
    out = h.advance(1.0)
    assert all(m.session == ["a", "b", "c"] and m.arrays["weights"].shape == (3, 52) for _, m in out)
    fa, fb = frames(h, out, "a"), frames(h, out, "b")
    assert not any(s for _, s in fa.values()) and not any(wts.any() for wts, _ in fa.values())
    assert fb[400][1] and w(fb, 400, "jawOpen") == pytest.approx(0.6)


def test_a_new_batch_replaces_the_rest_of_the_old_hypothesis() -> None:
    h = harness()
    speak(h, [("AA", 200), ("UW", 200)], at_ms=300)
    speak(h, [("P", 100)], at_ms=500)  # the recogniser changed its mind from 500 ms on
    f = frames(h, h.advance(1.5))
    assert w(f, 350, "jawOpen") == pytest.approx(0.6)
    assert w(f, 550, "mouthClose") >= 0.6
    assert all(w(f, ms, "mouthPucker") == 0.0 for ms in f)


def test_eos_flushes_the_scheduled_speech() -> None:
    h = harness()
    (start, end), = speak(h, [("OW", 300)], at_ms=2000).values()
    out = h.eos()
    f = frames(h, out)
    assert max(f) >= end + 100 and not f[max(f)][1]
    assert w(f, start + 150, "mouthFunnel") > 0.5


def test_idle_sessions_are_forgotten() -> None:
    h = harness(session_timeout_s=1.0)
    speak(h, [("AA", 100)], at_ms=100)
    assert h.advance(0.5)[-1][1].session == ["a"]
    h.advance(2.0)
    assert h.advance(0.5) == []
    assert h.node.stats()["sessions"] == 0


def test_bad_table_is_refused(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("AVATAR_TABLE_PATH", str(tmp_path))  # tables outside graphs/ must be allowed
    bad = tmp_path / "phonemes.yaml"
    bad.write_text("phonemes: {AA: aah}\n")
    with pytest.raises(ParamError, match="'AA' maps to unknown viseme 'aah'"):
        NodeHarness(Viseme, phoneme_table=str(bad))
    h = harness()
    with pytest.raises(ParamError, match="not found"):
        h.set_params(viseme_table="mappings/no_such_table.yaml")
    assert h.node.p.viseme_table == "mappings/viseme_arkit.yaml"
    speak(h, [("AA", 100)], at_ms=200)
    assert w(frames(h, h.advance(1.0)), 250, "jawOpen") == pytest.approx(0.6)


def test_viseme_in_a_real_graph(tmp_path) -> None:
    """player -> viseme -> recorder as processes: EOS flushes the utterance to the recording."""
    from runtime.clock import now_ns
    from runtime.recording import RecordingWriter, read_recording
    from runtime.testing import run_to_eos

    src, dst = tmp_path / "phonemes.msgpack", tmp_path / "visemes.msgpack"
    t = now_ns() + 5_000 * MS  # comfortably after start-up; EOS flushes it without waiting
    phones = [("HH", 60), ("AH0", 80), ("L", 60), ("OW1", 200), ("P", 80), ("AA1", 150)]
    rows, at = [], t
    for phone, dur in phones:
        rows.append([0, phone, at, at + dur * MS])
        at += dur * MS
    writer = RecordingWriter(src)
    writer.write(Message("phonemes/arpabet", {"phonemes": rows}, pts_ns=now_ns(), session=["s1"]), now_ns())
    writer.close()
    run_to_eos(f"""
nodes:
  play: {{type: player, params: {{path: "{src}", caps: phonemes/arpabet, speed: 0}}}}
  lips: {{type: viseme, params: {{rate: 100}}}}
  rec: {{type: recorder, params: {{path: "{dst}", flush_every: 1}}}}
links:
  - {{from: play.out, to: lips.in, policy: block}}
  - {{from: lips.out, to: rec.in, policy: block, size: 64}}
""", timeout=60)
    msgs = read_recording(dst)
    assert msgs and all(m.caps == "arkit/blendshapes" and m.session == ["s1"] for m in msgs)
    by_pts = {m.pts_ns: m for m in msgs}
    p_start = t + 400 * MS
    centre = min(by_pts, key=lambda pts: abs(pts - (p_start + 40 * MS)))
    assert abs(centre - (p_start + 40 * MS)) <= 5 * MS
    lips = by_pts[centre].arrays["weights"][0]
    assert lips[COL["jawOpen"]] < 0.01 and lips[COL["mouthClose"]] >= 0.6
    assert any(m.data["speaking"][0] for m in msgs) and not msgs[-1].data["speaking"][0]


def test_a_table_that_is_not_a_mapping_is_refused_live_and_the_node_runs_on(tmp_path, monkeypatch):
    from runtime import ParamError
    from runtime.testing import NodeHarness

    monkeypatch.setenv("AVATAR_TABLE_PATH", str(tmp_path))
    (tmp_path / "list.yaml").write_text("[1, 2, 3]\n")
    (tmp_path / "bad_entry.yaml").write_text("visemes: {sil: 5}\n")
    h = NodeHarness("viseme")
    for table in ("list.yaml", "bad_entry.yaml"):
        with pytest.raises(ParamError, match=table):
            h.set_params(viseme_table=str(tmp_path / table))
    with pytest.raises(ParamError, match="list.yaml"):
        h.set_params(phoneme_table=str(tmp_path / "list.yaml"))
    assert h.node.p.viseme_table == "mappings/viseme_arkit.yaml"  # the old tables stay in use
