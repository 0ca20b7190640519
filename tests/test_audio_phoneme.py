"""audio_phoneme: real pocketsphinx on real espeak-ng speech, with espeak's own phoneme times as truth."""
from __future__ import annotations

import importlib.util
import wave
from pathlib import Path

import numpy as np
import pytest

from runtime import Message
from runtime.recording import read_recording
from runtime.testing import NodeHarness, run_to_eos

try:
    from nodes.speech import Espeak, speak
    Espeak.get()
except OSError as exc:  # pragma: no cover - depends on the machine
    pytest.skip(f"espeak-ng is not installed ({exc}); apt-get install libespeak-ng1", allow_module_level=True)

from nodes.speech import PHONES, Phone, Resampler, to_int16

VALID = set(PHONES) | {"sil"}
TEXT = "Hello world, this is the avatar speaking. Kick the ball straight and follow through."
PTS0 = 5_000_000_000


def _eval_module():
    spec = importlib.util.spec_from_file_location("phoneme_eval", Path(__file__).resolve().parent.parent / "tools" / "phoneme_eval.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def speech() -> tuple[np.ndarray, list[tuple[str, float, float]]]:
    return speak(TEXT)


def chunks(pcm: np.ndarray, session: str = "s", step: int = 320, pts0: int = PTS0) -> list[Message]:
    return [Message("audio/pcm", {"rate": 16000}, {"pcm": pcm[i:i + step]}, pts_ns=pts0 + i * 62_500, session=[session])
            for i in range(0, len(pcm), step)]


def rows_of(outputs: list[tuple[str, Message]]) -> list[list]:
    return [r for _, m in outputs for r in m.data["phonemes"]]


def as_phones(rows: list[list], pts0: int = PTS0) -> list[Phone]:
    return [Phone(r[1], (r[2] - pts0) / 1e9, (r[3] - pts0) / 1e9) for r in rows]


def check_timeline(rows: list[list], pts0: int, duration_s: float) -> None:
    assert all(r[1] in VALID for r in rows)
    assert all(r[2] < r[3] for r in rows)
    assert all(a[3] <= b[2] for a, b in zip(rows, rows[1:])), "phones overlap or go back in time"
    assert rows[0][2] >= pts0 and rows[-1][3] <= pts0 + duration_s * 1e9 + 1e6


def test_free_recognition_streams_phonemes_during_the_audio(speech) -> None:
    pcm, _ = speech
    h = NodeHarness("audio_phoneme")
    try:
        msgs = chunks(pcm)
        early = []
        for m in msgs[: len(msgs) // 2]:
            early += h.feed("in", m)
        assert early, "nothing was decided during the first half of the audio"
        rest = []
        for m in msgs[len(msgs) // 2:]:
            rest += h.feed("in", m)
        rest += h.eos()
        rows = rows_of(early + rest)
        check_timeline(rows, PTS0, len(pcm) / 16000)
        assert sum(1 for r in rows if r[1] != "sil") >= 30
        assert all(m.caps == "phonemes/arpabet" and m.session == ["s"] for _, m in early + rest)
        stats = h.node.stats()
        assert stats["rtf"] > 0 and stats["audio_s"] == pytest.approx(len(pcm) / 16000, abs=0.01)
    finally:
        h.close()


def test_alignment_with_transcript_matches_espeak_timings(speech) -> None:
    pcm, truth = speech
    h = NodeHarness("audio_phoneme", transcript=TEXT)
    try:
        out = []
        for m in chunks(pcm):
            out += h.feed("in", m)
        during = len(out)
        out += h.eos()
        assert during > 0, "alignment only came out at the end"
        rows = rows_of(out)
        check_timeline(rows, PTS0, len(pcm) / 16000)
        errors, matched, _ = _eval_module().match(truth, as_phones(rows))
        assert matched >= 0.8 * len(truth)
        assert np.median(errors) < 60, f"median boundary error {np.median(errors):.1f} ms"
    finally:
        h.close()


def test_transcript_on_the_text_pad_and_44k1_input(speech) -> None:
    """Text for a session arrives on the pad; audio comes at 44.1 kHz and is resampled."""
    pcm, truth = speech
    r = Resampler(16000, 44100)
    pcm44 = to_int16(np.concatenate([r.process(pcm.astype(np.float32)), r.flush()]))
    h = NodeHarness("audio_phoneme")
    try:
        h.feed("text", Message("text/plain", {"text": [TEXT]}, session=["tts"], pts_ns=PTS0))
        assert h.node.stats()["aligning"] == 1
        out = []
        for i in range(0, len(pcm44), 882):
            out += h.feed("in", Message("audio/pcm", {"rate": 44100}, {"pcm": pcm44[i:i + 882]},
                                        pts_ns=PTS0 + i * 10**9 // 44100, session=["tts"]))
        out += h.eos()
        rows = rows_of(out)
        errors, matched, _ = _eval_module().match(truth, as_phones(rows))
        assert np.median(errors) < 60 and matched >= 0.8 * len(truth)
    finally:
        h.close()


def test_a_pts_gap_starts_a_new_utterance(speech) -> None:
    pcm, _ = speech
    part = pcm[:16000]
    h = NodeHarness("audio_phoneme", warmup_ms=0)
    try:
        out = []
        for m in chunks(part) + chunks(part, pts0=PTS0 + 10 * 10**9):
            out += h.feed("in", m)
        out += h.eos()
        rows = rows_of(out)
        assert any(r[2] >= PTS0 + 10 * 10**9 for r in rows)
        assert not any(PTS0 + 1.01e9 < r[2] < PTS0 + 10 * 10**9 for r in rows), "phones inside the gap"
    finally:
        h.close()


def test_graph_wav_to_phonemes(tmp_path: Path, speech) -> None:
    pcm, truth = speech
    r = Resampler(16000, 44100)
    x = to_int16(np.concatenate([r.process(pcm.astype(np.float32)), r.flush()]))
    wav = tmp_path / "speech.wav"
    with wave.open(str(wav), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(44100)
        w.writeframes(np.repeat(x[:, None], 2, axis=1).tobytes())
    rec = tmp_path / "phonemes.msgpack"
    run_to_eos(f"""
nodes:
  src: {{type: audio_source, params: {{path: "{wav}", realtime: false}}}}
  asr: {{type: audio_phoneme, params: {{transcript: "{TEXT}"}}}}
  rec: {{type: recorder, params: {{path: "{rec}"}}}}
links:
  - {{from: src.out, to: asr.in, policy: block, size: 16}}
  - {{from: asr.out, to: rec.in, policy: block, size: 16}}
""", timeout=60)
    msgs = read_recording(rec)
    rows = [r for m in msgs for r in m.data["phonemes"]]
    pts0 = rows[0][2]
    check_timeline(rows, pts0, len(pcm) / 16000)
    errors, matched, _ = _eval_module().match(truth, as_phones(rows, pts0))
    assert np.median(errors) < 60 and matched >= 0.8 * len(truth)


def test_a_text_waits_for_the_audio_before_its_pts(speech) -> None:
    """The text and audio pads' messages travel side by side: an utterance's end marker (an empty
    text at the audio's end pts) that overtakes the last chunks waits for them, then finishes it."""
    pcm, truth = speech
    msgs = chunks(pcm, "s")
    end = msgs[-1].pts_ns + len(msgs[-1].arrays["pcm"]) * 62_500
    h = NodeHarness("audio_phoneme")
    try:
        out = h.feed("text", Message("text/plain", {"text": [TEXT]}, session=["s"], pts_ns=PTS0))
        for m in msgs[:-3]:
            out += h.feed("in", m)
        out += h.feed("text", Message("text/plain", {"text": [""]}, session=["s"], pts_ns=end))
        assert h.node.stats()["aligning"] == 1  # held: the last three chunks have not come
        for m in msgs[-3:]:
            out += h.feed("in", m)
        stats = h.node.stats()
        assert stats["aligning"] == 0 and stats["failed_alignments"] == 0  # finished at its end, whole
        rows = rows_of(out)
        assert rows[-1][3] == end and len([r for r in rows if r[1] != "sil"]) == len([p for p in truth if p[0] != "sil"])
    finally:
        h.close()


def test_audio_that_stops_coming_ends_its_utterance_within_gap_ms(speech) -> None:
    """A stream cut off mid-sentence (a stalled upload): the phones held back for later audio go
    out gap_ms after the last sample, well within the declared latency, not when audio comes again."""
    pcm, _ = speech
    h = NodeHarness("audio_phoneme", gap_ms=200.0)
    cut = int(len(pcm) * 0.6) // 320 * 320
    for m in chunks(pcm[:cut], pts0=0):  # at real time: each chunk when its pts comes
        h.advance(max(0.0, m.pts_ns / 1e9 - h.now))
        h.feed("in", m)
    end = cut * 62_500
    h.advance(end / 1e9 - h.now + 0.02)
    before = len(rows_of(h.outputs))
    held = rows_of(h.advance(0.25))  # gap_ms and one look of the timer later
    assert held and h.node.stats()["quiet_ends"] == 1, "the held-back phones did not go out"
    assert len(rows_of(h.outputs)) > before and max(r[3] for r in held) <= end + 1_000_000
    assert not rows_of(h.advance(2.0)), "nothing more without audio"
    later = chunks(pcm[cut:cut + 16000], pts0=int(h.now * 1e9))  # audio again: a new utterance, anchored anew
    for m in later:
        h.advance(max(0.0, m.pts_ns / 1e9 - h.now))
        h.feed("in", m)
    rows = rows_of(h.advance(0.5))
    assert all(r[2] >= later[0].pts_ns for r in rows)


def test_a_node_running_behind_neither_ends_the_voice_nor_makes_a_recognizer_in_it(speech) -> None:
    """Chunks that come 300 ms after their pts (the node fell behind on a loaded machine) but keep
    coming are one utterance: no quiet end (that would close the mouth mid-voice), and no spare
    recognizer made in it (0.15-0.3 s of CPU that would freeze the mouth); the spare comes after
    a second of quiet."""
    pcm, _ = speech
    h = NodeHarness("audio_phoneme", mode="live")
    try:
        assert h.node._spare is not None  # made at setup, both decoders
        assert h.node._spare._recognizer is not None and h.node._spare._aligner is not None
        behind = 0.3
        for m in chunks(pcm, pts0=0):
            h.advance(max(0.0, m.pts_ns / 1e9 + behind - h.now))
            h.feed("in", m)
            assert h.node._spare is None or h.now < 0.1, f"a spare was made at {h.now:.2f} s, in the voice"
        assert h.node.stats()["quiet_ends"] == 0
        frames = [m for _, m in h.outputs if "articulation" in m.arrays]
        assert frames and all(m.arrays["articulation"].shape[0] for m in frames)
        h.advance(0.5)
        assert h.node.stats()["quiet_ends"] == 1 and h.node._spare is None  # the voice ended; not a second yet
        h.advance(1.5)
        assert h.node._spare is not None
    finally:
        h.close()
