"""PhonemeStream's word decoder (decoder="words"): real pocketsphinx on real espeak-ng speech."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

try:
    from nodes.speech import Espeak
    Espeak.get()
except OSError as exc:  # pragma: no cover - depends on the machine
    pytest.skip(f"espeak-ng is not installed ({exc}); apt-get install libespeak-ng1", allow_module_level=True)

from nodes.speech import PHONES, Phone, PhonemeStream, merge_silences, speak

VALID = set(PHONES) | {"sil"}
STEP = 320  # 20 ms at 16 kHz
SENTENCE = "The girl at the booth sold fifty bonds."
TWO = "Kick the ball straight and follow through. Help the woman get back to her feet."


def _eval_module():
    path = Path(__file__).resolve().parent.parent / "tools" / "phoneme_eval.py"
    spec = importlib.util.spec_from_file_location("phoneme_eval", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def stream_out(stream: PhonemeStream, pcm: np.ndarray) -> list[tuple[float, Phone]]:
    """Every phone handed out, with the stream's audio time when it was."""
    out: list[tuple[float, Phone]] = []
    for i in range(0, len(pcm), STEP):
        out += [(stream.audio_s, p) for p in stream.feed(pcm[i:i + STEP])]
    out += [(stream.audio_s, p) for p in stream.finish()]
    return out


def check_timeline(phones: list[Phone], duration_s: float) -> None:
    assert all(p.phone in VALID for p in phones)
    assert all(p.start < p.end for p in phones)
    assert all(a.end <= b.start + 1e-9 for a, b in zip(phones, phones[1:])), "phones overlap or go back in time"
    assert not phones or (phones[0].start >= 0 and phones[-1].end <= duration_s + 1e-6)


def test_words_stream_phones_while_the_audio_comes_with_a_bounded_delay() -> None:
    pcm, _ = speak(TWO)
    stream = PhonemeStream(decoder="words")
    got = stream_out(stream, pcm)
    duration = len(pcm) / 16000
    phones = [p for _, p in got]
    check_timeline(phones, duration)
    speech = [(t, p) for t, p in got if p.phone != "sil"]
    assert len(speech) >= 30
    assert sum(1 for t, _ in speech if t < duration / 2) >= 10, "little was decided during the first half"
    delays = [t - p.start for t, p in speech]
    # a word's phones wait for the word (some 0.3 s), lag_ms and at most force_ms after its end
    assert max(delays) < 1.5, f"decision delay up to {max(delays):.2f} s"
    assert np.median(delays) < 0.8
    assert stream.rtf < 0.5  # one core, with room for a loaded test machine (measured about 0.13)


def test_words_give_the_phones_of_a_harvard_sentence() -> None:
    """A new stream (cold cepstral mean) on espeak-ng's voice, which suits neither decoder: over
    the 20 sentences in one stream words and phone loop both match about half of the phones."""
    pcm, truth = speak(SENTENCE)
    stream = PhonemeStream(decoder="words")
    phones = merge_silences([p for _, p in stream_out(stream, pcm)])
    errors, matched, edits = _eval_module().match(truth, phones)
    assert matched >= 0.5 * len(truth), " ".join(p.phone for p in phones)
    assert edits <= 0.6 * len(truth)
    assert np.median(errors) < 40, f"median boundary error {np.median(errors):.1f} ms"


@pytest.mark.parametrize("kind", ["zeros", "noise", "clipped", "dc", "tiny"])
def test_words_survive_silence_noise_and_clipping(kind: str) -> None:
    rng = np.random.default_rng(3)
    speech, _ = speak("Rice is often served in round bowls.")
    pcm = {
        "zeros": np.zeros(32000, np.int16),
        "noise": rng.integers(-20000, 20000, 32000).astype(np.int16),
        "clipped": np.clip(speech.astype(np.int32) * 8, -32768, 32767).astype(np.int16),  # 6 % of samples
        "dc": (speech // 4 + 12000).astype(np.int16),
        "tiny": speech[:100],
    }[kind]
    stream = PhonemeStream(decoder="words", warmup_ms=200)
    assert stream.feed(np.zeros(0, np.int16)) == []
    phones = [p for _, p in stream_out(stream, pcm)]
    check_timeline(phones, len(pcm) / 16000)
    assert stream.finish() == []  # nothing twice
    if kind == "zeros":
        assert all(p.phone == "sil" for p in phones)
    if kind == "clipped":
        assert sum(1 for p in phones if p.phone != "sil") >= 3


def test_words_and_transcripts_take_turns_on_one_stream() -> None:
    """A transcript aligns what follows; an empty one goes back to decoding words."""
    text = "Kick the ball straight and follow through."
    pcm, truth = speak(text)
    stream = PhonemeStream(decoder="words")
    phones = [p for _, p in stream_out(stream, pcm)]
    phones += stream.set_transcript(text)
    aligned = [p for _, p in stream_out(stream, pcm)]
    assert stream.aligning and stream.failed == 0
    phones += aligned + stream.set_transcript(None)
    assert not stream.aligning and stream.decoder == "words"
    phones += [p for _, p in stream_out(stream, pcm)]
    check_timeline(phones, 3 * len(pcm) / 16000)
    offset = len(pcm) / 16000
    _, matched, _ = _eval_module().match(truth, [Phone(p.phone, p.start - offset, p.end - offset)
                                                 for p in merge_silences(aligned)])
    assert matched >= 0.8 * len(truth)


def test_the_words_stored_audio_is_bounded_without_pauses() -> None:
    """Speech with no pause long enough still ends its utterance at twice max_utterance_s."""
    pcm, _ = speak("Four hours of steady work faced us. " * 2, wpm=260)
    stream = PhonemeStream(decoder="words", max_utterance_s=1.0, warmup_ms=0)
    longest = 0
    for i in range(0, len(pcm), STEP):
        stream.feed(pcm[i:i + STEP])
        longest = max(longest, len(stream._audio))
    stream.finish()
    assert longest <= 2 * 16000 * 2 + 2 * STEP


def test_the_phone_loop_stays_the_default_and_unknown_decoders_are_refused() -> None:
    stream = PhonemeStream()
    assert stream.decoder == "phones" and stream.holdback == 3
    assert PhonemeStream(decoder="words").holdback == 0
    with pytest.raises(ValueError, match="decoder"):
        PhonemeStream(decoder="sentences")


def test_the_benchmark_measures_the_decision_delay() -> None:
    ev = _eval_module()
    clips = ev.espeak_clips(ev.SENTENCES[:1])
    for decoder in ev.DECODERS:
        r = ev.run(clips, decoder)
        assert 0 < r["delay_median_ms"] <= r["delay_p90_ms"] <= r["delay_max_ms"] < 2000
        assert 0 < r["matched"] <= 1 and r["rtf_cpu"] > 0
