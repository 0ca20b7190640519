"""Phoneme benchmark: audio_phoneme's recognizer, free (phone loop, words) and aligned, on several voices.

Each speech source is a list of clips (text, 16 kHz audio, reference phones). The recognizer
(``nodes.speech.recognizer``, the code the node runs) gets them as one stream in 20 ms chunks,
with ``--pause-ms`` of quiet noise between clips, as a microphone would: free recognition
(``phones``: the phone loop; ``words``: word decoding aligned to phones) is never told where a
clip ends, only the stream's end finishes it; ``aligned`` sets each clip's transcript when the
clip starts and an empty one when it ends, as the TTS nodes' end markers do.

Sources: ``espeakWPM`` (espeak-ng, Harvard sentences, its phoneme events as exact truth),
``festival`` (Festival's us_slt HTS voice, its segment times as truth), ``real`` (the human
recordings ALSA installs in /usr/share/sounds/alsa, "Front Center" and so on, or any
``--wav FILE=TEXT``). Real speech has no exact phone times: its reference is the aligner's
output on the known text (dictionary pronunciations), so there ``aligned`` is the reference
itself and the free decoders' boundary errors are against a forced alignment.

Per decoder: phone error rate (edit distance / reference phones), phones matched, boundary error
(|reference start - recognized start| of label-matched phones, clip starts left out), CPU
real-time factor, and the decision delay: for every non-silence phone, the stream's audio time
when it was handed out minus the phone's start (what the node must declare as latency).
``--delays`` adds the decision delay and accuracy of holdback/lag settings.

    .venv/bin/python tools/phoneme_eval.py [--sources espeak140 espeak175 espeak220 festival real]
        [--decoders phones words aligned] [--sentences N] [--delays]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nodes.speech import HARVARD_SENTENCES, Phone, PhonemeStream, merge_silences, read_wav, speak  # noqa: E402

SENTENCES = list(HARVARD_SENTENCES)
DECODERS = ("phones", "words", "aligned")
ALSA_SOUNDS = Path("/usr/share/sounds/alsa")
ALSA_SPEECH = ("Front_Center", "Front_Left", "Front_Right", "Rear_Center", "Rear_Left", "Rear_Right",
               "Side_Left", "Side_Right")
Clip = tuple[str, np.ndarray, list[tuple[str, float, float]]]
STEP = 16000 * 20 // 1000  # 20 ms chunks


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


# --- speech sources -----------------------------------------------------------------------------
def espeak_clips(sentences: list[str], wpm: int = 175) -> list[Clip]:
    return [(s, *speak(s, wpm=wpm)) for s in sentences]


def festival_clips(sentences: list[str]) -> list[Clip]:
    from nodes.speech import Festival

    with Festival() as f:
        return [(s, *f.speak(s)) for s in sentences]


def real_clips(wavs: list[tuple[Path, str]] | None = None) -> list[Clip]:
    """Human recordings with their text; reference phones from the aligner on that text."""
    if wavs is None:
        wavs = [(ALSA_SOUNDS / f"{n}.wav", n.replace("_", ", ")) for n in ALSA_SPEECH]
        wavs = [(p, t) for p, t in wavs if p.exists()]
    clips: list[Clip] = []
    for path, text in wavs:
        pcm = read_wav(path)
        stream = PhonemeStream(text, warmup_ms=len(pcm) / 16)  # the cepstral mean of the whole clip first
        hyp = stream.feed(pcm) + stream.finish()
        clips.append((text, pcm, [(p.phone, p.start, p.end) for p in merge_silences(hyp)]))
    return clips


def sources(names: list[str], sentences: list[str], wavs: list[tuple[Path, str]]) -> dict[str, list[Clip]]:
    out: dict[str, list[Clip]] = {}
    for name in names:
        try:
            if name.startswith("espeak"):
                out[name] = espeak_clips(sentences, int(name[6:] or 175))
            elif name == "festival":
                out[name] = festival_clips(sentences)
            elif name == "real":
                out[name] = real_clips(wavs or None)
            else:
                raise ValueError(f"unknown source {name!r}")
        except (OSError, RuntimeError) as exc:  # espeak-ng or festival missing: say so, go on
            print(f"source {name} skipped: {exc}", file=sys.stderr)
        if name in out and not out[name]:
            del out[name]
            print(f"source {name} skipped: no recordings", file=sys.stderr)
    return out


# --- one run ------------------------------------------------------------------------------------
def run(clips: list[Clip], decoder: str, pause_ms: float = 300.0, **options) -> dict[str, float]:
    """One stream through all clips; the figures described at the top of this file."""
    noise = np.random.default_rng(1).normal(0, 10, int(pause_ms * 16)).astype(np.int16)
    stream = PhonemeStream(None, decoder="words" if decoder == "words" else "phones", **options)
    hyp: list[Phone] = []
    delays: list[float] = []
    windows: list[tuple[float, float]] = []

    def take(phones: list[Phone]) -> None:
        hyp.extend(phones)
        delays.extend(stream.audio_s - p.start for p in phones if p.phone != "sil")

    wall0 = time.perf_counter()
    for text, audio, _ in clips:
        if decoder == "aligned":
            take(stream.set_transcript(text))
        start = stream.audio_s
        for i in range(0, len(audio), STEP):
            take(stream.feed(audio[i:i + STEP]))
        windows.append((start, stream.audio_s))
        if decoder == "aligned":
            take(stream.set_transcript(None))  # the end marker a TTS sends with its last chunk
        for i in range(0, len(noise), STEP):
            take(stream.feed(noise[i:i + STEP]))
    take(stream.finish())
    wall = time.perf_counter() - wall0
    errors: list[float] = []
    matched = ref_n = edits = 0
    hyp = merge_silences(hyp)
    for (_, _, ref), (t0, t1) in zip(clips, windows):
        mine = [Phone(p.phone, max(p.start, t0) - t0, min(p.end, t1) - t0) for p in hyp
                if min(p.end, t1) - max(p.start, t0) >= 0.01]  # the clip's part of each phone
        e, mt, ed = match(ref, mine)
        errors += e
        matched += mt
        ref_n += len(ref)
        edits += ed
    pct = (lambda q: float(np.percentile(delays, q) * 1000)) if delays else (lambda q: float("nan"))
    return {
        "per": edits / ref_n, "matched": matched / ref_n, "boundaries": len(errors),
        "median_ms": float(np.median(errors)) if errors else float("nan"),
        "p90_ms": float(np.percentile(errors, 90)) if errors else float("nan"),
        "rtf_cpu": stream.rtf, "rtf_wall": wall / stream.audio_s,
        "delay_median_ms": pct(50), "delay_p90_ms": pct(90), "delay_max_ms": pct(100),
        "failed": stream.failed,
    }


def evaluate(sentences: list[str], wpm: int = 175, **options) -> dict[str, dict[str, float]]:
    """espeak-ng at ``wpm``: free recognition (the phone loop) as "free", with the transcript as
    "transcript", and "audio_s" (``tools/bench_nodes.py`` prints these)."""
    clips = espeak_clips(sentences, wpm)
    return {"free": run(clips, "phones", **options), "transcript": run(clips, "aligned", **options),
            "audio_s": {"seconds": sum(len(a) for _, a, _ in clips) / 16000, "sentences": len(clips)}}


# --- report -------------------------------------------------------------------------------------
HEAD = (f"{'decoder':<9} {'PER':>5} {'matched':>8} {'bnd med':>8} {'bnd p90':>8} {'RTF cpu':>8} "
        f"{'delay med':>10} {'p90':>6} {'max':>6} {'failed':>6}")


def row(name: str, r: dict[str, float]) -> str:
    return (f"{name:<9} {r['per']:5.2f} {r['matched']:8.1%} {r['median_ms']:8.1f} {r['p90_ms']:8.1f} "
            f"{r['rtf_cpu']:8.3f} {r['delay_median_ms']:10.0f} {r['delay_p90_ms']:6.0f} {r['delay_max_ms']:6.0f} "
            f"{r['failed']:6.0f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sources", nargs="+", default=["espeak140", "espeak175", "espeak220", "festival", "real"],
                    help="espeakWPM, festival, real")
    ap.add_argument("--decoders", nargs="+", default=list(DECODERS), choices=DECODERS)
    ap.add_argument("--sentences", type=int, default=len(SENTENCES), help="how many of the Harvard sentences")
    ap.add_argument("--wav", action="append", default=[], metavar="FILE=TEXT",
                    help="a recording and its text for the 'real' source (instead of ALSA's)")
    ap.add_argument("--holdback", type=int, help="phones (words: words) held back (default: the recognizer's)")
    ap.add_argument("--lag-ms", type=float, help="phones: a phone must end this long before the newest audio; "
                    "words: a word must be unchanged this long (default: the recognizer's)")
    ap.add_argument("--pause-ms", type=float, default=300.0, help="quiet noise between clips")
    ap.add_argument("--delays", action="store_true",
                    help="also the decision delay for holdback 0, 1, 3 x lag 50, 100 ms (espeak175 or the first source)")
    args = ap.parse_args(argv)
    options = {k: v for k, v in (("holdback", args.holdback), ("lag_ms", args.lag_ms)) if v is not None}
    wavs = [(Path(w.split("=", 1)[0]), w.split("=", 1)[1]) for w in args.wav]
    data = sources(args.sources, SENTENCES[: args.sentences], wavs)
    print(f"20 ms chunks, {args.pause_ms:.0f} ms of quiet noise between clips, one stream per run; "
          f"options {options or 'default'}; decision delay of non-silence phones; boundary errors in ms")
    results: dict[str, dict[str, dict[str, float]]] = {}
    for name, clips in data.items():
        seconds = sum(len(a) for _, a, _ in clips) / 16000
        ref = "exact phone times" if name != "real" else "aligner on the known text"
        print(f"\n{name}: {len(clips)} clips, {seconds:.1f} s of speech; reference: {ref}")
        print(HEAD)
        results[name] = {}
        for dec in args.decoders:
            r = results[name][dec] = run(clips, dec, args.pause_ms, **options)
            print(row(dec, r) + ("   (the reference)" if name == "real" and dec == "aligned" else ""), flush=True)
    if args.delays and data:
        name = "espeak175" if "espeak175" in data else next(iter(data))
        settings = [("phones", h, lag) for h in (0, 1, 3) for lag in (50.0, 100.0)]
        settings += [("words", h, lag) for h in (0, 1) for lag in (50.0, 100.0, 200.0)]
        print(f"\ndecision delay by holdback and lag ({name}):")
        print(f"{'decoder':<9} {'holdback':>8} {'lag ms':>6} {'delay med':>10} {'p90':>6} {'max':>6} "
              f"{'PER':>5} {'matched':>8} {'bnd med':>8} {'bnd p90':>8}")
        for dec, h, lag in settings:
            r = run(data[name], dec, args.pause_ms, holdback=h, lag_ms=lag)
            print(f"{dec:<9} {h:>8} {lag:6.0f} {r['delay_median_ms']:10.0f} {r['delay_p90_ms']:6.0f} "
                  f"{r['delay_max_ms']:6.0f} {r['per']:5.2f} {r['matched']:8.1%} {r['median_ms']:8.1f} "
                  f"{r['p90_ms']:8.1f}", flush=True)
    rtf_ok = all(r["rtf_cpu"] < 0.2 for res in results.values() for r in res.values())
    print("\ntarget RTF < 0.2 on one core:", "met" if rtf_ok else "NOT met")
    return 0 if rtf_ok else 1


if __name__ == "__main__":
    sys.exit(main())
