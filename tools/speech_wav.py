"""Writes espeak-ng speech to a WAV file: the voice the demo graphs, the browser tests and the
benchmarks lip-sync when no recording of a person is at hand (the repository holds none).

    .venv/bin/python tools/speech_wav.py out/speech.wav [--text "..."] [--wpm 175] [--pause 0.4]

Without ``--text`` it says four Harvard sentences (IEEE 1969), each followed by ``--pause``
seconds of silence: 16 kHz mono 16-bit PCM. ``make setup`` writes ``out/speech.wav`` this way
(``graphs/lipsync_audio.yaml`` plays it).
"""
from __future__ import annotations

import argparse
import sys
import wave
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nodes.speech import RATE, speak  # noqa: E402

SENTENCES = [
    "The birch canoe slid on the smooth planks.",
    "Glue the sheet to the dark blue background.",
    "It's easy to tell the depth of a well.",
    "Kick the ball straight and follow through.",
]


def speech(texts: list[str], wpm: int = 175, pause_s: float = 0.4) -> np.ndarray:
    """The texts spoken one after the other, each followed by ``pause_s`` of silence (int16, 16 kHz)."""
    parts = []
    for text in texts:
        audio, _ = speak(text, wpm=wpm)
        parts += [audio, np.zeros(int(pause_s * RATE), np.int16)]
    return np.concatenate(parts)


def write_wav(path: Path, pcm: np.ndarray, rate: int = RATE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.astype("<i2").tobytes())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("path", type=Path)
    ap.add_argument("--text", action="append", help="a text to say (repeat for several); default: four Harvard sentences")
    ap.add_argument("--wpm", type=int, default=175)
    ap.add_argument("--pause", type=float, default=0.4, help="seconds of silence after each text")
    args = ap.parse_args(argv)
    pcm = speech(args.text or SENTENCES, args.wpm, args.pause)
    write_wav(args.path, pcm)
    print(f"wrote {args.path} ({len(pcm) / RATE:.1f} s of speech, {RATE} Hz mono)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
