"""Phoneme timing benchmark: audio_phoneme's recognizer against espeak-ng's exact phoneme times.

espeak-ng speaks each sentence and reports, through its phoneme events, the sample at which
every phoneme starts: that is the ground truth. The recognizer (``nodes.speech.recognizer``,
the code the node runs, fed in 20 ms chunks as a stream) then decodes the audio without and
with the transcript. Phone sequences are matched by edit distance; a boundary error is
|reference start - recognized start| of a matched phone (the utterance's first phone, which
starts at 0 by construction, is left out). "failed" counts sentences whose audio the
aligner could not fit to the whole transcript (it then keeps its best partial path).

    .venv/bin/python tools/phoneme_eval.py [--sentences N] [--wpm 175] [--holdback 3]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nodes.speech import Phone, PhonemeStream, merge_silences, speak  # noqa: E402

# Harvard sentences (IEEE 1969 recommended practice for speech quality measurements)
SENTENCES = [
    "The birch canoe slid on the smooth planks.",
    "Glue the sheet to the dark blue background.",
    "It's easy to tell the depth of a well.",
    "These days a chicken leg is a rare dish.",
    "Rice is often served in round bowls.",
    "The juice of lemons makes fine punch.",
    "The box was thrown beside the parked truck.",
    "The hogs were fed chopped corn and garbage.",
    "Four hours of steady work faced us.",
    "A large size in stockings is hard to sell.",
    "The boy was there when the sun rose.",
    "A rod is used to catch pink salmon.",
    "The source of the huge river is the clear spring.",
    "Kick the ball straight and follow through.",
    "Help the woman get back to her feet.",
    "A pot of tea helps to pass the evening.",
    "Smoky fires lack flame and heat.",
    "The soft cushion broke the man's fall.",
    "The salt breeze came across from the sea.",
    "The girl at the booth sold fifty bonds.",
]


def match(ref: list[tuple[str, float, float]], hyp: list[Phone]) -> tuple[list[float], int, int]:
    """Boundary errors (ms) of label-matched phones, the number matched, and the edit distance."""
    n, m = len(ref), len(hyp)
    d = np.zeros((n + 1, m + 1), np.int32)
    d[:, 0], d[0, :] = np.arange(n + 1), np.arange(m + 1)
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            sub = d[i - 1, j - 1] + (ref[i - 1][0] != hyp[j - 1].phone)
            d[i, j] = min(sub, d[i - 1, j] + 1, d[i, j - 1] + 1)
    errors, matched, i, j = [], 0, n, m
    while i > 0 and j > 0:
        same = ref[i - 1][0] == hyp[j - 1].phone
        if d[i, j] == d[i - 1, j - 1] + (not same):
            if same:
                matched += 1
                if ref[i - 1][1] > 0:
                    errors.append(abs(ref[i - 1][1] - hyp[j - 1].start) * 1000)
            i, j = i - 1, j - 1
        elif d[i, j] == d[i - 1, j] + 1:
            i -= 1
        else:
            j -= 1
    return errors, matched, int(d[n, m])


def evaluate(sentences: list[str], wpm: int = 175, cold: bool = False, **options) -> dict[str, dict[str, float]]:
    """Per mode ('free', 'transcript'): RTF (CPU and wall), boundary error median/p90, match rate.

    The sentences play one after another through one stream, as a session's audio reaches the
    node (the decoder's cepstral mean carries over); ``cold`` starts a new stream per sentence.
    """
    results: dict[str, dict[str, float]] = {}
    clips = [(s, *speak(s, wpm=wpm)) for s in sentences]
    audio_s = sum(len(a) for _, a, _ in clips) / 16000
    step = 16000 * 20 // 1000
    for mode in ("free", "transcript"):
        errors: list[float] = []
        matched = ref_n = edits = failed = 0
        cpu = 0.0
        stream = None
        wall0 = time.perf_counter()
        for text, audio, ref in clips:
            if stream is None or cold:
                if stream is not None:
                    cpu += stream.cpu_s
                    failed += stream.failed
                stream = PhonemeStream(None, **options)
            offset = stream.audio_s
            hyp = stream.set_transcript(text if mode == "transcript" else None)
            for i in range(0, len(audio), step):
                hyp += stream.feed(audio[i:i + step])
            hyp += stream.finish()
            hyp = [Phone(p.phone, p.start - offset, p.end - offset) for p in merge_silences(hyp)]
            e, mt, ed = match(ref, hyp)
            errors += e
            matched += mt
            ref_n += len(ref)
            edits += ed
        cpu += stream.cpu_s
        failed += stream.failed
        wall = time.perf_counter() - wall0
        results[mode] = {
            "rtf_cpu": cpu / audio_s, "rtf_wall": wall / audio_s,
            "median_ms": float(np.median(errors)) if errors else float("nan"),
            "p90_ms": float(np.percentile(errors, 90)) if errors else float("nan"),
            "matched": matched / ref_n, "per": edits / ref_n, "boundaries": len(errors), "failed": failed,
        }
    results["audio_s"] = {"seconds": audio_s, "sentences": len(sentences)}
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sentences", type=int, default=len(SENTENCES), help="how many of the built-in sentences")
    ap.add_argument("--wpm", type=int, default=175, help="espeak speaking rate")
    ap.add_argument("--holdback", type=int, default=3, help="phones held back while streaming")
    ap.add_argument("--lag-ms", type=float, default=100.0, help="how far behind the newest audio a phone must end")
    ap.add_argument("--cold", action="store_true", help="a new stream (cold cepstral mean) for every sentence")
    args = ap.parse_args(argv)
    res = evaluate(SENTENCES[: args.sentences], args.wpm, args.cold, holdback=args.holdback, lag_ms=args.lag_ms)
    a = res.pop("audio_s")
    print(f"{a['sentences']:.0f} sentences, {a['seconds']:.1f} s of espeak-ng speech at {args.wpm} wpm, "
          f"streamed in 20 ms chunks (holdback {args.holdback}, lag {args.lag_ms:.0f} ms, "
          f"{'a new stream per sentence' if args.cold else 'one stream'})")
    print(f"{'mode':<11} {'RTF cpu':>8} {'RTF wall':>9} {'median ms':>10} {'p90 ms':>8} {'matched':>8} {'PER':>6} "
          f"{'n':>5} {'failed':>6}")
    for mode, r in res.items():
        print(f"{mode:<11} {r['rtf_cpu']:8.3f} {r['rtf_wall']:9.3f} {r['median_ms']:10.1f} {r['p90_ms']:8.1f} "
              f"{r['matched']:8.1%} {r['per']:6.2f} {r['boundaries']:5.0f} {r['failed']:6.0f}")
    ok = res["transcript"]["rtf_cpu"] < 0.2 and res["transcript"]["median_ms"] < 30 and res["free"]["rtf_cpu"] < 0.2
    print("targets (RTF < 0.2, median boundary error < 30 ms with a transcript):", "met" if ok else "NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
