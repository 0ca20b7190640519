"""Acoustic articulation (nodes.speech.articulation), per-speaker calibration, the frames' wire
format and their fusion with phoneme shapes: real espeak-ng speech, no recorded constants."""
from __future__ import annotations

import numpy as np
import pytest

from nodes.face import arkit_names
from nodes.face.fusion import Fusion
from nodes.speech import speak
from nodes.speech.articulation import CHANNELS, FRAME_NS, Articulator, algorithmic_delay_ns
from nodes.speech.articulation_msg import ArticulationRuns, read_articulation
from nodes.speech.speaker import SpeakerLevels

TEXT = "The birch canoe slid on the smooth planks. Glue the sheet to the dark blue background."
JAW, VOICE = CHANNELS.index("jaw"), CHANNELS.index("voice")


@pytest.fixture(scope="module")
def speech() -> tuple[np.ndarray, list]:
    pcm, phones = speak(TEXT)
    pad = np.zeros(8000, np.int16)  # half a second of silence either side
    return np.concatenate([pad, pcm, pad]), [(p, s + 0.5, e + 0.5) for p, s, e in phones]


def frames_of(x: np.ndarray, smooth: str = "causal", chunk: int = 320) -> np.ndarray:
    a = Articulator(smooth)
    out = [a.feed(x[i:i + chunk]) for i in range(0, len(x), chunk)] + [a.flush()]
    return np.concatenate(out)


def scaled(pcm: np.ndarray, gain: float) -> np.ndarray:
    return np.clip(np.rint(pcm.astype(np.float64) * gain), -32768, 32767).astype(np.int16)


def test_one_frame_per_10_ms_whatever_the_chunking(speech) -> None:
    pcm, _ = speech
    for smooth in ("causal", "centred"):
        a, b = frames_of(pcm, smooth, 320), frames_of(pcm, smooth, 77)
        assert len(a) == len(b) == (len(pcm) - 256) // 160 + 1  # one per 10 ms whose window the audio completes
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert algorithmic_delay_ns("causal") == 16_000_000 and algorithmic_delay_ns("centred") == 36_000_000
    assert FRAME_NS == 10_000_000


def test_the_jaw_opens_on_vowels_and_the_mouth_is_closed_in_silence(speech) -> None:
    pcm, phones = speech
    f = frames_of(pcm)
    t = np.arange(len(f)) * 0.01
    vowels = np.zeros(len(f), bool)
    for p, s, e in phones:
        if p in ("AA", "AE", "AH", "AO", "AW", "AY", "EH", "ER", "EY", "IH", "IY", "OW", "UH", "UW"):
            vowels |= (t >= s + 0.02) & (t <= e - 0.02)
    silent = (t < 0.45) | (t > phones[-1][2] + 0.1)
    assert (f[vowels, JAW] > 0.15).mean() > 0.85
    assert f[silent].max() == 0.0  # closed, not merely quiet
    assert np.isfinite(f).all() and f.min() >= 0.0 and f.max() <= 1.0


def test_a_quiet_and_a_loud_speaker_open_the_jaw_alike(speech) -> None:
    """The same sentence 20 dB apart: after the running calibration the motion matches."""
    pcm, _ = speech
    loud, quiet = frames_of(scaled(pcm, 1.0)), frames_of(scaled(pcm, 0.1))
    settle = 100 + 60  # the lead-in silence and 0.6 s of voice
    a, b = loud[settle:, JAW], quiet[settle:, JAW]
    assert np.corrcoef(a, b)[0, 1] > 0.97
    assert b.mean() == pytest.approx(a.mean(), rel=0.1)
    # calibrated up front from a sample of the voice: alike from the first syllable
    lv = SpeakerLevels().calibrate(scaled(pcm, 0.1))
    early = Articulator(levels=lv).feed(scaled(pcm, 0.1))
    assert np.corrcoef(early[:, JAW], loud[:len(early), JAW])[0, 1] > 0.9


@pytest.mark.parametrize("case", ["clipped", "noisy", "very_quiet", "dc_offset", "silence", "noise_only", "nan_float"])
def test_bad_recordings_give_sensible_motion_or_a_closed_mouth(speech, case: str) -> None:
    pcm, phones = speech
    rng = np.random.default_rng(7)
    clean = frames_of(pcm)
    x: np.ndarray
    if case == "clipped":
        x = scaled(pcm, 12.0)  # hard clipped, 22 dB over full scale
    elif case == "noisy":
        voiced = pcm[np.abs(pcm) > 100].astype(np.float64)
        x = scaled(pcm + rng.normal(0, np.sqrt(np.mean(voiced ** 2)) / 10 ** (15 / 20), len(pcm)), 1.0)  # 15 dB SNR
    elif case == "very_quiet":
        x = scaled(pcm, 0.005)  # 46 dB down: a few LSBs
    elif case == "dc_offset":
        x = scaled(pcm.astype(np.float64) + 12000, 1.0)
    elif case == "silence":
        x = np.zeros(len(pcm), np.int16)
    elif case == "noise_only":
        x = scaled(rng.normal(0, 300, len(pcm)), 1.0)
    else:
        x = pcm.astype(np.float32)
        x[1000:1200] = np.nan
        x[5000] = np.inf
    f = frames_of(x)
    assert np.isfinite(f).all() and f.min() >= 0.0 and f.max() <= 1.0
    assert f[-30:, JAW].max() < 0.05, "the jaw must not stay open after the speech"
    if case in ("silence", "noise_only"):
        assert f[:, JAW].max() < 0.05 and f[:, VOICE].mean() < 0.05
    elif case == "very_quiet":
        assert f[:, JAW].max() < 0.05 or np.corrcoef(f[:, JAW], clean[:, JAW])[0, 1] > 0.6
    else:
        assert np.corrcoef(f[:, JAW], clean[:, JAW])[0, 1] > (0.6 if case != "dc_offset" else 0.98)


def test_runs_round_trip_and_malformed_ones_are_skipped() -> None:
    runs = ArticulationRuns()
    runs.add(0, 1_000, np.full((3, 4), 0.5, np.float32))
    runs.add(1, 2_000, np.zeros((2, 4), np.float32))
    runs.add(2, 3_000, np.zeros((0, 4), np.float32))  # empty: not sent
    data: dict = {}
    arrays: dict = {}
    runs.put(data, arrays)
    got = list(read_articulation(data, arrays))
    assert [(r, p, len(f)) for r, p, f in got] == [(0, 1_000, 3), (1, 2_000, 2)]
    bad = np.full((5, 4), np.nan, np.float32)
    assert [f.max() for _, _, f in read_articulation({"articulation": [[0, 0, 5]]}, {"articulation": bad})] == [0.0]
    assert list(read_articulation({"articulation": [[0, 0, 9]]}, {"articulation": bad})) == []  # too short
    assert list(read_articulation({"articulation": [["x"]]}, {"articulation": bad})) == []
    assert list(read_articulation({"articulation": [[0, 0, 1]]}, {"articulation": np.zeros((1, 3))})) == []


def test_fusion_takes_amounts_from_the_voice_and_shapes_from_the_phones() -> None:
    names = arkit_names()
    jaw, funnel, close = names.index("jawOpen"), names.index("mouthFunnel"), names.index("mouthClose")
    fusion = Fusion()
    shape = np.zeros((4, len(names)))
    shape[:, jaw], shape[:, funnel], shape[:, close] = 0.45, 0.55, 0.0  # an /o/
    cover = np.array([1.0, 1.0, 0.0, 1.0])
    art = np.array([[1.0, 1.0, 0.5, 1.0],   # loud
                    [0.3, 0.3, 0.5, 1.0],   # quiet: less jaw, same rounding shape
                    [0.8, 0.8, 1.0, 1.0],   # no phone known: the acoustic pose
                    [1.0, 1.0, 1.0, 0.0]])  # silence: closed whatever the phones say
    out = fusion.fuse(shape, cover, art)
    assert out[0, jaw] > out[1, jaw] > 0.0 and out[0, funnel] == pytest.approx(out[1, funnel])
    assert out[2, jaw] > 0.3 and out[2, funnel] > 0.2
    assert np.all(out[3] == 0.0)
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_a_calibration_wav_sets_the_speaker_up_front_and_a_bad_one_is_refused(speech, tmp_path) -> None:
    """audio_phoneme calibration=voice.wav: every new session starts from the speaker's calibration
    (a copy each), so a quiet voice's first second moves the jaw as the loud one's calibrated the
    same way; a bad file is refused, naming itself."""
    import wave

    from runtime import Message, ParamError
    from runtime.testing import NodeHarness

    pcm, _ = speech

    def first_second(x: np.ndarray, **params) -> list[np.ndarray]:
        """The articulation audio_phoneme sends for the first second of speech, per session."""
        h = NodeHarness("audio_phoneme", mode="live", **params)
        try:
            for sid in ("a", "b"):
                for i in range(0, 16000, 320):
                    h.feed("in", Message("audio/pcm", {"rate": 16000}, {"pcm": x[8000 + i:8000 + i + 320]},
                                         pts_ns=i * 62_500, session=[sid]))
            return [np.concatenate([f for _, m in h.outputs if m.session == [sid]
                                    for _, _, f in read_articulation(m.data, m.arrays)]) for sid in ("a", "b")]
        finally:
            h.close()

    def wav_of(x: np.ndarray, name: str) -> str:
        path = tmp_path / name
        with wave.open(str(path), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(16000)
            w.writeframes(x.astype("<i2").tobytes())
        return str(path)

    quiet = scaled(pcm, 0.1)
    a, b = first_second(quiet, calibration=wav_of(quiet, "quiet.wav"))
    np.testing.assert_array_equal(a, b)  # each session from the same calibration, not from the other's voice
    loud, _ = first_second(pcm, calibration=wav_of(pcm, "loud.wav"))
    assert np.corrcoef(a[:, JAW], loud[:, JAW])[0, 1] > 0.98
    assert a[:, JAW].mean() == pytest.approx(loud[:, JAW].mean(), rel=0.1)
    blank, _ = first_second(quiet)
    assert np.abs(blank[:, JAW] - a[:, JAW]).max() > 0.05  # the calibration, not a running estimate, set the levels
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF not a wav")
    with pytest.raises(ParamError, match="calibration: .*bad.wav"):
        NodeHarness("audio_phoneme", calibration=str(bad))
