#!/usr/bin/env python3
"""What each of text_phoneme's engines costs: espeak-ng (built in) and Festival (an option).

    .venv/bin/python tools/voice_times.py [--runs 5] [--voice cmu_us_slt_arctic_hts]

(a) synthesis, in this process, by the call text_phoneme makes (``nodes.speech.speak``,
    ``Festival.speak``): the first sentence of PARAGRAPH alone, and the whole paragraph sentence
    by sentence; the median of ``--runs``, with the speech's length. Festival is started once
    before (as a node's setup does), and its start is timed too.
(b) time to first sound: a real graph (text_phoneme -> fakesink), started afresh for each run
    (festival started in its setup), is asked to say PARAGRAPH (``Runner.call``, as POST /say
    does); the figure is when the first audio chunk reached the sink (its ``first_ns``, on the
    same monotonic clock) minus the moment of the call; the median of ``--runs``. Also how long
    the call took to answer. A browser sink then holds the voice by its fixed latency (128 ms
    from text) whatever the engine.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nodes.speech import FESTIVAL_VOICE, RATE, Festival, speak, split_sentences  # noqa: E402
from runtime.testing import start_graph  # noqa: E402

PARAGRAPH = ("The birch canoe slid on the smooth planks. Glue the sheet to the dark blue background. "
             "It's easy to tell the depth of a well. These days a chicken leg is a rare dish. "
             "Rice is often served in round bowls. The juice of lemons makes fine punch. "
             "The box was thrown beside the parked truck.")


def median_ms(values: list[float]) -> float:
    return round(statistics.median(values) * 1000, 1)


def synthesis(runs: int, voice: str) -> None:
    sentences = split_sentences(PARAGRAPH)
    print(f"(a) synthesis: first sentence ({len(sentences[0])} chars), paragraph ({len(PARAGRAPH)} chars, "
          f"{len(sentences)} sentences); median of {runs}")
    starts = []
    for _ in range(max(1, min(runs, 3))):
        t0 = time.perf_counter()
        f = Festival(voice)
        starts.append(time.perf_counter() - t0)
        f.close()
    print(f"    festival start (program, voice list, voice selected): {median_ms(starts)} ms")
    with Festival(voice) as festival:
        festival.speak("Hello.")  # as text_phoneme's setup does: the lexicon and the models loaded
        engines = {"espeak": lambda s: speak(s), "festival": lambda s: festival.speak(s)}
        for name, say in engines.items():
            first, whole, audio_s = [], [], 0.0
            for _ in range(runs):
                t0 = time.perf_counter()
                audio, _ = say(sentences[0])
                first.append(time.perf_counter() - t0)
                first_s = len(audio) / RATE
                t0 = time.perf_counter()
                audio_s = sum(len(say(s)[0]) for s in sentences) / RATE
                whole.append(time.perf_counter() - t0)
            print(f"    {name:8s}: first sentence {median_ms(first):7.1f} ms ({first_s:.2f} s of speech), "
                  f"paragraph {median_ms(whole):7.1f} ms ({audio_s:.2f} s of speech, "
                  f"real-time factor {statistics.median(whole) / audio_s:.3f})")


def first_sound(runs: int, engine: str, voice: str) -> None:
    graph = f"""
name: voice_times_{engine}
nodes:
  tts: {{type: text_phoneme, params: {{engine: {engine}, voice: "{voice if engine == 'festival' else ''}"}}}}
  rp: {{type: fakesink}}
  ra: {{type: fakesink}}
links:
  - {{from: tts.phonemes, to: rp.in, policy: block, size: 16}}
  - {{from: tts.audio, to: ra.in, policy: block, size: 64}}
"""
    delays, answers = [], []
    for _ in range(runs):  # a fresh graph each run: its sink's first message is this call's first audio
        runner = start_graph(graph)
        try:
            t0 = time.monotonic_ns()
            runner.call("tts", "say", {"session": "default", "text": PARAGRAPH}, timeout=30)
            answers.append((time.monotonic_ns() - t0) / 1e9)
            deadline = time.monotonic() + 30
            while not (sink := runner.stats()["nodes"]["ra"]["node"])["count"]:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{engine}: no audio within 30 s")
                time.sleep(0.01)
            delays.append((sink["first_ns"] - t0) / 1e9)
        finally:
            runner.stop(drain=False)
    print(f"    {engine:8s}: first audio chunk at the sink {median_ms(delays):6.1f} ms after the call "
          f"(runs: {', '.join(f'{d * 1000:.0f}' for d in delays)} ms); the call answered in {median_ms(answers):.1f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--voice", default=FESTIVAL_VOICE, help="festival's voice")
    a = ap.parse_args()
    synthesis(a.runs, a.voice)
    print(f"(b) time to first sound of a say call (a real graph), median of {a.runs}")
    for engine in ("espeak", "festival"):
        first_sound(a.runs, engine, a.voice)


if __name__ == "__main__":
    main()
