"""Lip-sync evaluation: the mouth from audio against espeak-ng's exact phoneme times, or a real face.

Without a capture (the default), Harvard sentences are said by ``text_phoneme`` (espeak-ng) with
pauses between them; its exact phoneme times are the truth, and its audio goes through
``audio_phoneme ! viseme`` (per mode). Printed for each mode, and for the text path itself:
(a) the mouthClose peak's timing error at each P/B/M (|peak - phoneme centre|), (b) the jaw's
onset delay after voicing onset at each start of speech, (c) the most jawOpen inside silences
(longer than 150 ms, 60 ms left out at each edge) and in the last frames, (d) r of the audio
path's jawOpen with the text path's on the same audio, (e) the same r for the energy-envelope
baseline (short-time RMS, 10 ms hop), and the real-time factor (CPU s of audio_phoneme + viseme
per audio s).

With a capture (``--capture``: a Live Link Face CSV, or the take's folder; ``--audio``: its .mov
or a WAV, found beside the CSV when not given): for each channel, Pearson r at zero lag and the
best r within +-1 s with its lag (> 0: ours is late), for each mode and for the baseline, and
ours as a ratio of the baseline's. The capture's first row is put on the audio's clock by the
timecodes of the CSV and the .mov when both have one, plus ``--offset-ms`` (added to the
capture's times: a capture whose face moves 200 ms after its sound needs -200). Channels the
capture barely moves (std below 0.02) are "not moved".

    .venv/bin/python tools/lipsync_eval.py [--mode all] [--sentences 10]
    .venv/bin/python tools/lipsync_eval.py --capture take/take_iPhone.csv [--audio take/take_iPhone.mov] [--offset-ms 0]

All runs are offline on simulated time (``tools/lipsync_metrics.py``): exact, whatever the load.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from jsonable import jsonable  # noqa: E402
from lipsync_metrics import (  # noqa: E402
    MODES,
    Capture,
    closed_in_silence,
    closure_timing,
    energy_envelope,
    first_timecode,
    grid_between,
    lagged_r,
    media_timecode,
    on_grid,
    onset_delays,
    read_audio,
    read_capture,
    run_audio_path,
    run_text_path,
    track_r,
)
from phoneme_eval import SENTENCES  # noqa: E402

from runtime.registry import get_node_type  # noqa: E402

CHANNELS = ("jawOpen", "mouthClose", "mouthFunnel", "mouthPucker")
MIN_STD = 0.02  # a capture channel that varies less than this is "not moved"
MAX_TIMECODE_OFFSET_S = 10.0  # a CSV and a .mov whose timecodes differ more than this are not one take


def modes_to_run(mode: str) -> list[tuple[str, str | None]]:
    """(label, mode passed to audio_phoneme) for ``--mode``; audio_phoneme without a ``mode``
    param runs once, as 'default'."""
    param = get_node_type("audio_phoneme").params.get("mode")
    if param is None:
        return [("default", None)]
    known = tuple(param.choices) if getattr(param, "choices", None) else MODES
    return [(m, m) for m in known] if mode == "all" else [(mode, mode)]


def _kv(items: Sequence[str] | None) -> dict[str, Any]:
    """``k=v`` strings -> params (values as YAML scalars: numbers, booleans, text)."""
    import yaml

    out = {}
    for item in items or ():
        k, sep, v = item.partition("=")
        if not sep:
            raise SystemExit(f"expected key=value, got {item!r}")
        out[k.strip()] = yaml.safe_load(v)
    return out


# --- espeak speech, no capture -------------------------------------------------------------------

def timing(frames: Any, phones: list, end_s: float) -> dict[str, Any]:
    """(a), (b), (c) for one path's frames."""
    return {"closure": closure_timing(frames, phones), "onset": onset_delays(frames, phones),
            "silence": closed_in_silence(frames, phones, end_s)}


def evaluate_speech(sentences: Sequence[str], modes: Sequence[tuple[str, str | None]], *, wpm: int = 175,
                    audio_params: dict | None = None, viseme: dict | None = None) -> dict[str, Any]:
    """The no-capture report: espeak speech through the text path and the audio path per mode."""
    speech = run_text_path(sentences, text_params={"wpm": wpm}, viseme=viseme)
    end_s = len(speech.pcm) / 16000
    text = speech.frames
    text_jaw = text.channel("jawOpen")
    env_t, env = energy_envelope(speech.pcm)
    report: dict[str, Any] = {
        "speech": {"sentences": len(sentences), "audio_s": end_s, "wpm": wpm,
                   "phones": sum(1 for p in speech.phones if p[0] != "sil"),
                   "bilabials": sum(1 for p in speech.phones if p[0].rstrip("012") in ("P", "B", "M"))},
        "paths": {"text": {**timing(text, speech.phones, end_s), "latency_ms": text.latency_ms}},
        "baseline": {"vs_text": track_r(env_t, env, text.times, text_jaw).as_dict()},
    }
    for label, mode in modes:
        frames = run_audio_path(speech.pcm, mode=mode, audio_params=audio_params, viseme=viseme)
        report["paths"][label] = {
            **timing(frames, speech.phones, end_s),
            "vs_text": track_r(frames.times, frames.channel("jawOpen"), text.times, text_jaw).as_dict(),
            "rtf": frames.cpu_s / frames.audio_s, "cpu_s": frames.cpu_s, "latency_ms": frames.latency_ms,
            "params": frames.params,
        }
    return report


def format_speech(report: dict[str, Any]) -> str:
    s = report["speech"]
    lines = [f"espeak-ng speech: {s['sentences']} sentences, {s['audio_s']:.1f} s at {s['wpm']} wpm, "
             f"{s['phones']} phones, {s['bilabials']} P/B/M",
             f"{'':<9}{'latency':>8} | {'(a) P/B/M closure error ms':<27} | {'(b) jaw onset ms':<17} | "
             f"{'(c) jawOpen in silence':<22} | {'(d) jawOpen r vs text':<21} | {'RTF':>5}",
             f"{'path':<9}{'ms':>8} | {'median':>7}{'p90':>6}{'<=40':>6}{'missed':>8} | {'median':>7}{'p90':>5}{'miss':>5} | "
             f"{'max':>6}{'median':>8}{'last':>8} | {'r0':>6}{'best':>6}{'lag ms':>9} |"]
    base = report["baseline"]["vs_text"]
    for label, p in report["paths"].items():
        c, o, q = p["closure"], p["onset"], p["silence"]
        vs = p.get("vs_text")
        r = f"{vs['r0']:6.2f}{vs['best_r']:6.2f}{vs['lag_ms']:+9.0f}" if vs else f"{'-':>6}{'-':>6}{'-':>9}"
        rtf = f"{p['rtf']:5.3f}" if "rtf" in p else f"{'-':>5}"
        lines.append(f"{label:<9}{p['latency_ms']:8.0f} | {c['median']:7.1f}{c['p90']:6.1f}{c['within']:6.0%}"
                     f"{c['missed']:4d}/{c['bilabials']:<3d} | {o['median']:7.0f}{o['p90']:5.0f}{o['missed']:5d} | "
                     f"{q['max_jaw']:6.3f}{q['median_max_jaw']:8.3f}{q['last_jaw']:8.3f} | {r} | {rtf}")
    lines.append(f"(e) energy-envelope baseline, r with the text path's jawOpen: r0 {base['r0']:.2f}, "
                 f"best {base['best_r']:.2f} at {base['lag_ms']:+.0f} ms")
    for label, p in report["paths"].items():
        if "vs_text" in p:
            lines.append(f"    {label}: r0 {p['vs_text']['r0']:.2f} = {_ratio(p['vs_text']['r0'], base['r0']):.2f} x the baseline's")
    return "\n".join(lines)


# --- a real capture ------------------------------------------------------------------------------

def evaluate_capture(pcm: np.ndarray, capture: Capture, modes: Sequence[tuple[str, str | None]], *,
                     channels: Sequence[str] = CHANNELS, min_std: float = MIN_STD, max_lag_s: float = 1.0,
                     audio_params: dict | None = None, viseme: dict | None = None) -> dict[str, Any]:
    """Per channel: the capture's spread, and r (zero lag, best within +-max_lag_s) of each mode's
    frames and of the energy envelope against it, all on one 100 Hz grid over their common span."""
    env_t, env = energy_envelope(pcm)
    runs = {}
    for label, mode in modes:
        runs[label] = run_audio_path(pcm, mode=mode, audio_params=audio_params, viseme=viseme)
    grid = grid_between(capture.times, env_t, *(f.times for f in runs.values()))
    report: dict[str, Any] = {
        "capture": {"path": capture.path, "frames": len(capture.times), "offset_ms": capture.offset_s * 1000,
                    "span_s": float(capture.times[-1] - capture.times[0]) if len(capture.times) else 0.0},
        "audio_s": len(pcm) / 16000, "compared_s": float(grid[-1] - grid[0]) if grid.size else 0.0,
        "rtf": {label: f.cpu_s / f.audio_s for label, f in runs.items()},
        "latency_ms": {label: f.latency_ms for label, f in runs.items()},
        "channels": {},
    }
    if grid.size < 10:
        raise ValueError("the capture and the audio do not overlap (check --offset-ms)")
    base = on_grid(env_t, env, grid)
    for name in channels:
        ref = on_grid(capture.times, capture.channel(name), grid)
        entry: dict[str, Any] = {"capture_std": float(ref.std()), "moved": bool(ref.std() >= min_std)}
        if entry["moved"]:
            b = lagged_r(base, ref, max_lag_s=max_lag_s)
            entry["baseline"] = b.as_dict()
            for label, f in runs.items():
                o = lagged_r(on_grid(f.times, f.channel(name), grid), ref, max_lag_s=max_lag_s)
                entry[label] = {**o.as_dict(), "ratio_r0": _ratio(o.r0, b.r0), "ratio_best": _ratio(o.best_r, b.best_r)}
        report["channels"][name] = entry
    return report


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0.05 and math.isfinite(a) else math.nan


def format_capture(report: dict[str, Any]) -> str:
    c = report["capture"]
    lines = [f"capture {c['path']}: {c['frames']} frames over {c['span_s']:.1f} s, first at {c['offset_ms']:+.0f} ms "
             f"on the audio's clock; {report['audio_s']:.1f} s of audio; compared over {report['compared_s']:.1f} s",
             "RTF " + ", ".join(f"{k} {v:.3f}" for k, v in report["rtf"].items())
             + "; latency ms " + ", ".join(f"{k} {v:.0f}" for k, v in report["latency_ms"].items()),
             f"{'channel':<12} {'track':<10} {'r0':>6} {'best':>6} {'lag ms':>7} {'r0/base':>8} {'best/base':>9}"]
    for name, e in report["channels"].items():
        if not e["moved"]:
            lines.append(f"{name:<12} not moved (capture std {e['capture_std']:.3f})")
            continue
        for label, v in e.items():
            if not isinstance(v, dict):
                continue
            ratios = (f"{v['ratio_r0']:8.2f} {v['ratio_best']:9.2f}" if "ratio_r0" in v else f"{'':>8} {'':>9}")
            lines.append(f"{name:<12} {label:<10} {v['r0']:6.2f} {v['best_r']:6.2f} {v['lag_ms']:+7.0f} {ratios}")
    return "\n".join(lines)


def find_take(capture: Path, audio: Path | None) -> tuple[Path, Path]:
    """The CSV and the audio file of a take: given, or the one .mov (else .wav) beside the CSV."""
    if capture.is_dir():
        csvs = sorted(capture.glob("*.csv"))
        if len(csvs) != 1:
            raise SystemExit(f"{capture}: expected one .csv in the take folder, found {len(csvs)}")
        capture = csvs[0]
    if audio is None:
        for ext in ("*.mov", "*.MOV", "*.wav"):
            found = sorted(capture.parent.glob(ext))
            if len(found) == 1:
                audio = found[0]
                break
        else:
            raise SystemExit(f"no --audio given and no single .mov or .wav beside {capture}")
    return capture, audio


def capture_offset(csv_path: Path, audio_path: Path, fps: float, use_timecode: bool) -> tuple[float, str]:
    """Seconds on the audio's clock of the capture's first row, from the two files' timecodes, and how it was found."""
    if not use_timecode:
        return 0.0, "timecodes not used"
    tc = media_timecode(audio_path)
    if tc is None:
        return 0.0, "no timecode in the audio file: first row at the audio's start"
    mov_tc, video_start, audio_start = tc
    offset = first_timecode(csv_path, fps) - mov_tc + video_start - audio_start
    if abs(offset) > MAX_TIMECODE_OFFSET_S:
        return 0.0, f"timecodes {offset:+.3f} s apart: not used"
    return offset, f"from the timecodes: {offset * 1000:+.0f} ms"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", default="all", choices=("all", *MODES),
                    help="audio_phoneme's mode (passed only if it has a 'mode' param); all: each of them")
    ap.add_argument("--sentences", type=int, default=10, help="how many Harvard sentences (no capture)")
    ap.add_argument("--wpm", type=int, default=175, help="espeak speaking rate (no capture)")
    ap.add_argument("--capture", type=Path, help="a Live Link Face CSV take (or its folder) of the same speech")
    ap.add_argument("--audio", type=Path, help="the capture's audio: the take's .mov, or a WAV")
    ap.add_argument("--offset-ms", type=float, default=0.0,
                    help="added to the capture's times to put them on the audio's clock (a face that moves "
                         "200 ms after its sound: -200)")
    ap.add_argument("--no-timecode", action="store_true", help="do not align the CSV and the .mov by their timecodes")
    ap.add_argument("--fps", type=float, default=60.0, help="the CSV timecodes' frame rate")
    ap.add_argument("--channels", default=",".join(CHANNELS), help="ARKit channels compared with the capture")
    ap.add_argument("--min-std", type=float, default=MIN_STD, help="a capture channel varying less is 'not moved'")
    ap.add_argument("--audio-param", action="append", metavar="K=V", help="an audio_phoneme param (repeatable)")
    ap.add_argument("--viseme-param", action="append", metavar="K=V", help="a viseme param (repeatable)")
    ap.add_argument("--json", nargs="?", const="-", metavar="PATH", help="write the report as JSON (to PATH, or stdout)")
    args = ap.parse_args(argv)
    modes = modes_to_run(args.mode)
    aparams, vparams = _kv(args.audio_param), _kv(args.viseme_param)
    t0 = time.perf_counter()
    if args.capture is not None:
        csv_path, audio_path = find_take(args.capture, args.audio)
        pcm, _ = read_audio(audio_path)
        offset, how = capture_offset(csv_path, audio_path, args.fps, not args.no_timecode)
        capture = read_capture(csv_path, args.fps, offset + args.offset_ms / 1000)
        report = evaluate_capture(pcm, capture, modes, channels=[c.strip() for c in args.channels.split(",") if c.strip()],
                                  min_std=args.min_std, audio_params=aparams, viseme=vparams)
        report["capture"]["audio"], report["capture"]["alignment"] = str(audio_path), how
        text = format_capture(report) + f"\nalignment: {how}, plus --offset-ms {args.offset_ms:+.0f}"
    else:
        report = evaluate_speech(SENTENCES[: args.sentences], modes, wpm=args.wpm, audio_params=aparams, viseme=vparams)
        text = format_speech(report)
    report["wall_s"] = time.perf_counter() - t0
    if modes == [("default", None)]:
        report["note"] = "audio_phoneme has no 'mode' param: it ran with its defaults (as 'default')"
        text += "\n" + report["note"]
    if args.json == "-":
        print(json.dumps(jsonable(report), indent=1))
    else:
        print(text)
        print(f"({report['wall_s']:.1f} s)")
        if args.json:
            Path(args.json).write_text(json.dumps(jsonable(report), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
