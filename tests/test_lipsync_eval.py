"""tools/lipsync_eval.py: its figures on espeak speech are numbers, and its alignment and lag
search are right (a synthetic capture whose JawOpen is the energy envelope itself)."""
from __future__ import annotations

import json
import math
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

try:
    from nodes.speech import Espeak
    Espeak.get()
except OSError as exc:  # pragma: no cover - depends on the machine
    pytest.skip(f"espeak-ng is not installed ({exc}); apt-get install libespeak-ng1", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from lipsync_eval import CHANNELS, evaluate_capture, evaluate_speech, modes_to_run  # noqa: E402
from lipsync_metrics import COL, MODES, energy_envelope, read_capture, run_audio_path, run_text_path, write_llf_csv  # noqa: E402

from runtime import Param  # noqa: E402
from runtime.registry import get_node_type  # noqa: E402

SENTENCE = "The box was thrown beside the parked truck."
DEFAULT = [("default", None)]  # audio_phoneme's own default mode: no mode passed


@pytest.fixture(scope="module")
def speech():
    return run_text_path([SENTENCE])


def finite(*values: float) -> bool:
    return all(isinstance(v, float) and math.isfinite(v) for v in values)


def test_espeak_report_has_every_figure() -> None:
    report = evaluate_speech([SENTENCE], DEFAULT)
    assert report["speech"]["bilabials"] >= 2  # b in box, b in beside, p in parked
    for label in ("text", "default"):
        p = report["paths"][label]
        assert p["closure"]["bilabials"] == report["speech"]["bilabials"]
        assert p["onset"]["n"] + p["onset"]["missed"] == 1  # one sentence: one start of speech
        assert finite(p["silence"]["max_jaw"], p["silence"]["last_jaw"], p["latency_ms"])
    ours = report["paths"]["default"]
    assert finite(ours["vs_text"]["r0"], ours["vs_text"]["best_r"], ours["vs_text"]["lag_ms"], ours["rtf"])
    assert 0 < ours["rtf"] < 5
    assert finite(*report["baseline"]["vs_text"].values())
    # the text path's own closures land on its phonemes: times of frames and phonemes are on one clock
    text = report["paths"]["text"]["closure"]
    assert text["missed"] == 0 and text["median"] < 40


def _capture(tmp_path: Path, pcm: np.ndarray, shift_s: float, name: str) -> Path:
    """A 60 fps Live Link Face CSV whose JawOpen at t is the envelope at t + shift_s (the face ahead of the sound)."""
    env_t, env = energy_envelope(pcm)
    times = np.arange(0.0, len(pcm) / 16000, 1 / 60)
    weights = np.zeros((len(times), len(COL)), np.float32)
    weights[:, COL["jawOpen"]] = np.interp(times + shift_s, env_t, env)
    path = tmp_path / name
    write_llf_csv(path, times, weights)
    return path


def test_capture_alignment_and_lag(tmp_path: Path, speech) -> None:
    same = evaluate_capture(speech.pcm, read_capture(_capture(tmp_path, speech.pcm, 0.0, "same.csv")), DEFAULT)
    jaw = same["channels"]["jawOpen"]
    assert jaw["baseline"]["r0"] > 0.95 and jaw["baseline"]["lag_ms"] == 0
    assert finite(jaw["default"]["r0"], jaw["default"]["best_r"])
    for name in CHANNELS[1:]:
        assert same["channels"][name]["moved"] is False  # the synthetic face moves only its jaw

    early = _capture(tmp_path, speech.pcm, 0.2, "early.csv")  # ours (the envelope) shows it 200 ms late
    b = evaluate_capture(speech.pcm, read_capture(early), [])["channels"]["jawOpen"]["baseline"]
    assert b["best_r"] > 0.95 and abs(b["lag_ms"] - 200) <= 10 and b["r0"] < b["best_r"]
    fixed = evaluate_capture(speech.pcm, read_capture(early, offset_s=0.2), [])["channels"]["jawOpen"]["baseline"]
    assert fixed["r0"] > 0.95 and fixed["lag_ms"] == 0  # --offset-ms 200 puts it back


def test_cli(tmp_path: Path, speech) -> None:
    tool = [sys.executable, str(ROOT / "tools" / "lipsync_eval.py")]
    done = subprocess.run([*tool, "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "--offset-ms" in done.stdout
    done = subprocess.run([*tool, "--sentences", "1", "--json"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["baseline"]["vs_text"]["r0"] is not None and len(report["paths"]) >= 2
    take = tmp_path / "take"
    take.mkdir()
    _capture(take, speech.pcm, 0.0, "take_iPhone.csv")
    with wave.open(str(take / "take_iPhone.wav"), "wb") as w:  # found beside the CSV
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(speech.pcm.astype("<i2").tobytes())
    done = subprocess.run([*tool, "--capture", str(take), "--mode", "all"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "jawOpen" in done.stdout and "baseline" in done.stdout and "not moved" in done.stdout


def test_mode_is_passed_only_to_an_audio_phoneme_that_has_it(monkeypatch, speech) -> None:
    cls = get_node_type("audio_phoneme")
    short = speech.pcm[: 16000]
    if "mode" not in cls.params:
        assert modes_to_run("all") == DEFAULT
        assert "mode" not in run_audio_path(short, mode="live").params["audio_phoneme"]
    monkeypatch.setitem(cls.params, "mode", Param(str, "balanced", "test", choices=MODES))
    assert modes_to_run("all") == [(m, m) for m in MODES] and modes_to_run("file") == [("file", "file")]
    assert run_audio_path(short, mode="file").params["audio_phoneme"]["mode"] == "file"
