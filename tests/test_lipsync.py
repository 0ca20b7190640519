"""Lip-sync through real processes on espeak-ng speech (exact phoneme times): the mouth opens with
the voice in live mode, closes in silences and at the end, and the lips close at each P/B/M."""
from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

from nodes.face import arkit_names
from nodes.speech import speak
from runtime.recording import read_recording
from runtime.testing import run_to_eos

NAMES = arkit_names()
JAW, CLOSE = NAMES.index("jawOpen"), NAMES.index("mouthClose")
FIRST = "The birch canoe slid on the smooth planks."
SECOND = "Help the woman get back to her feet."
LEAD_S, PAUSE_S, TRAIL_S = 0.5, 0.8, 0.6


def write_wav(path: Path, pcm: np.ndarray) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(pcm.astype("<i2").tobytes())


def two_sentences() -> tuple[np.ndarray, list[tuple[str, float, float]], list[tuple[float, float]]]:
    """Both sentences with silence around and between; phones and utterance spans in seconds."""
    a, pa = speak(FIRST)
    b, pb = speak(SECOND)
    z = lambda s: np.zeros(int(s * 16000), np.int16)  # noqa: E731
    pcm = np.concatenate([z(LEAD_S), a, z(PAUSE_S), b, z(TRAIL_S)])
    t_b = LEAD_S + len(a) / 16000 + PAUSE_S
    phones = [(p, s + LEAD_S, e + LEAD_S) for p, s, e in pa] + [(p, s + t_b, e + t_b) for p, s, e in pb]
    spans = [(LEAD_S, LEAD_S + len(a) / 16000), (t_b, t_b + len(b) / 16000)]
    return pcm, phones, spans


def mouth(tmp_path: Path, line: str, pcm: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
    """Frames (pts in s from the audio's first sample, weights) of the audio -> mouth chain fed by
    audio_source as fast as the links take it: the audio's pts run ahead of the clock, so every
    frame is drawn with its voice there, whatever the machine's load (what is checked is where
    on the pts clock the mouth moves; how long it takes is tools/lipsync_latency.py's)."""
    wav, out, audio = tmp_path / "speech.wav", tmp_path / "mouth.msgpack", tmp_path / "audio.msgpack"
    write_wav(wav, pcm)
    runner = run_to_eos(f"""
name: lipsync
nodes:
  speech: {{type: audio_source, params: {{path: "{wav}", realtime: false}}}}
  phones: {{type: audio_phoneme, params: {{{line}}}}}
  lips: {{type: viseme, params: {{rate: 60}}}}
  rec: {{type: recorder, params: {{path: "{out}"}}}}
  arec: {{type: recorder, params: {{path: "{audio}"}}}}
links:
  - {{from: speech, to: phones, policy: block, size: 64}}
  - {{from: speech, to: arec, policy: block, size: 64}}
  - {{from: phones, to: lips, policy: block, size: 64}}
  - {{from: lips, to: rec, policy: block, size: 64}}
""", timeout=60)
    assert not runner.bus.messages("ERROR")
    latency = runner.bus.wait_for("LATENCY", node="rec", timeout=1)
    t0 = read_recording(audio)[0].pts_ns
    frames = read_recording(out)
    t = np.array([(m.pts_ns - t0) / 1e9 for m in frames])
    w = np.array([m.arrays["weights"][0] for m in frames])
    return t, w, latency


def test_live_mode_opens_the_jaw_with_the_voice_and_closes_it_in_silence(tmp_path: Path) -> None:
    pcm, _, spans = two_sentences()
    t, w, latency = mouth(tmp_path, "mode: live", pcm)
    assert latency["latency_ns"] == 50_000_000  # the articulation's window and a chunk: no phone delay
    assert np.isfinite(w).all()
    for start, _ in spans:
        opened = t[(t >= start) & (w[:, JAW] > 0.1)]
        assert len(opened) and opened[0] - start <= 0.1, f"the jaw opened {opened[0] - start:.3f} s after the voice"
    pause = (t > spans[0][1] + 0.15) & (t < spans[1][0] - 0.05)
    after = t > spans[1][1] + 0.15
    before = t < spans[0][0] - 0.05
    for name, where in (("the pause", pause), ("the end", after), ("the start", before)):
        assert where.sum() > 5 and w[where].max() < 0.02, f"the mouth is not closed in {name}: {w[where].max():.3f}"
    speaking = np.zeros(len(t), bool)
    for start, end in spans:
        speaking |= (t > start + 0.05) & (t < end - 0.05)
    assert (w[speaking, JAW] > 0.05).mean() > 0.6  # it moves while speaking, not only at the onsets


def test_the_lips_close_at_each_bilabial_with_the_transcript(tmp_path: Path) -> None:
    """Balanced mode aligned to the transcript: every P/B/M closes the lips near its time."""
    pcm, phones, _ = two_sentences()
    t, w, latency = mouth(tmp_path, f'transcript: "{FIRST} {SECOND}"', pcm)
    assert latency["latency_ns"] == 480_000_000
    errors = []
    for p, s, e in phones:
        if p in ("P", "B", "M"):
            near = (t > (s + e) / 2 - 0.08) & (t < (s + e) / 2 + 0.08)
            assert w[near, CLOSE].max() > 0.3, f"no closure at the {p} at {s:.2f} s"
            errors.append(abs(t[near][np.argmax(w[near, CLOSE])] - (s + e) / 2))
    assert len(errors) == 6 and np.median(errors) <= 0.04, f"closure peaks off by {np.round(errors, 3)} s"


def test_text_speech_closes_the_lips_within_40_ms_of_each_bilabial(tmp_path: Path) -> None:
    """The text path: exact phoneme times, and the jaw amounts from the synthesized voice."""
    out, ph = tmp_path / "mouth.msgpack", tmp_path / "phonemes.msgpack"
    run_to_eos(f"""
name: text_lips
nodes:
  tts: {{type: text_phoneme, params: {{text: "{SECOND}", eos_after_text: true, realtime: false}}}}
  lips: {{type: viseme, params: {{rate: 60}}}}
  rec: {{type: recorder, params: {{path: "{out}"}}}}
  prec: {{type: recorder, params: {{path: "{ph}"}}}}
links:
  - {{from: tts.phonemes, to: lips, policy: block, size: 64}}
  - {{from: tts.phonemes, to: prec, policy: block, size: 64}}
  - {{from: lips, to: rec, policy: block, size: 64}}
""", timeout=60)
    phonemes = [r for m in read_recording(ph) for r in m.data["phonemes"]]
    assert read_recording(ph)[0].data.get("articulation"), "the synthesized voice's articulation rides along"
    frames = read_recording(out)
    t = np.array([m.pts_ns for m in frames])
    w = np.array([m.arrays["weights"][0] for m in frames])
    bilabials = [r for r in phonemes if r[1] in ("P", "B", "M")]
    assert len(bilabials) == 3
    for _, p, s, e in bilabials:
        near = (t > (s + e) / 2 - 80e6) & (t < (s + e) / 2 + 80e6)
        peak = t[near][np.argmax(w[near, CLOSE])]
        assert w[near, CLOSE].max() > 0.3 and abs(peak - (s + e) / 2) <= 40e6, p
    end = phonemes[-1][3]
    assert t[-1] >= end and w[-1].max() < 0.02  # closed after the speech


def test_a_quiet_and_a_loud_voice_move_the_jaw_alike(tmp_path: Path) -> None:
    """The same sentences 20 dB apart, each through its own graph: after the running per-speaker
    calibration (a third of a second of voice) the jaw moves alike."""
    pcm, _, spans = two_sentences()
    quiet = np.clip(np.rint(pcm * 0.1), -32768, 32767).astype(np.int16)
    (tmp_path / "loud").mkdir()
    (tmp_path / "quiet").mkdir()
    t1, w1, _ = mouth(tmp_path / "loud", "mode: live", pcm)
    t2, w2, _ = mouth(tmp_path / "quiet", "mode: live", quiet)
    grid = np.arange(spans[0][0] + 0.4, spans[1][1], 0.01)
    a, b = np.interp(grid, t1, w1[:, JAW]), np.interp(grid, t2, w2[:, JAW])
    assert np.corrcoef(a, b)[0, 1] > 0.9
    assert b.mean() == pytest.approx(a.mean(), rel=0.15) and a.mean() > 0.05
