"""Streaming phoneme recognition and forced alignment with pocketsphinx.

Shared by the ``audio_phoneme`` node and ``tools/phoneme_eval.py`` so the benchmark measures
exactly what the node runs. Without a transcript, pocketsphinx's allphone search (the English
phone language model the wheel ships) decodes phones. With a transcript, the words' dictionary
pronunciations (alternatives included; unknown words through espeak-ng when it is installed)
become a phone-level grammar: each phone is a one-phone "word", so the grammar search's ordinary
word segmentation *is* the phone alignment, in one streaming pass. Silence is allowed only at
the edges and where the text has punctuation: free silence between every word lets the search
wander into a silence path it never leaves.

Free recognition has two decoders (``decoder=``). ``"phones"`` (the default) is that phone loop.
``"words"`` decodes words with the English language model and dictionary the wheel ships (the
tree search alone, so the partial path read while streaming is the one the final result comes
from); each word the search has kept unchanged for ``lag_ms`` (and that is not one of the newest
``holdback`` words) is handed to the alignment grammar above together with its neighbours, over
the utterance's stored audio between the word boundaries the search found, and comes out as
phones. A wrong word that sounds alike still gives mostly the right phones. Measured with
``tools/phoneme_eval.py``: on Festival's voice and on human recordings the words give far
fewer phone errors than the phone loop, on espeak-ng's voice a few more; they cost about three
times the CPU (RTF 0.13 against 0.05), some 90 MB and 0.4 s to start per stream, and a phone
waits for its word, so the decision delay is about 170 ms longer.

In every mode the current best path is read while audio arrives and phones are handed out once
they are stable (phones: all but the last ``holdback``, ending ``lag_ms`` before the newest
audio; words: as above, and every word at a pause or that ended ``force_ms`` ago); a handed-out
phone is never taken back. The first ``warmup_ms`` of a stream are decoded once
without search to set the cepstral mean before the real pass, since pocketsphinx's built-in
initial mean makes it lose its way on the first second of many voices. When the audio does not
fit the transcript (the grammar's end is never reached), the best partial path is kept and the
utterance is counted in ``failed``.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .pcm import RATE

FRAME_RATE = 100  # pocketsphinx frames per second
PHONES = ("AA AE AH AO AW AY B CH D DH EH ER EY F G HH IH IY JH K L M N NG OW OY P R S SH T TH "
          "UH UW V W Y Z ZH").split()
_TOKEN = re.compile(r"([a-z0-9]+(?:'[a-z0-9]+)*)|([,.;:!?\n])")
_UNIT = "ph_"  # prefix of the one-phone dictionary words of the alignment grammar
DECODERS = ("phones", "words")  # free recognition: the phone loop, or words aligned to phones
# the word search: the tree pass only (the flat and best-path passes rescore the whole utterance
# at its end, which a stream cannot wait for), at most 3000 HMMs a frame, with phone lookahead;
# this keeps it near RTF 0.1 on one core with the wheel's 130k-word dictionary
_PAD_FRAMES = 10  # quiet frames before a stretch of stored audio aligned again
_WORD_SEARCH = {"fwdflat": False, "bestpath": False, "maxhmmpf": 3000, "pl_window": 5}
_BOUNDARY_SLACK = 5  # frames (50 ms) a continuation may move a handed-out boundary


@dataclass(frozen=True, slots=True)
class Phone:
    """One phone: ARPAbet without stress (``sil`` for silence), seconds from the stream start."""

    phone: str
    start: float
    end: float


def arpabet(name: str) -> str:
    """Our phone name for a pocketsphinx word or phone (fillers such as +NSN+ and SIL -> sil)."""
    if name.startswith(_UNIT):
        name = name[len(_UNIT):]
    name = name.split("(")[0].upper()
    return name if name in _PHONE_SET else "sil"


_PHONE_SET = frozenset(PHONES)


def transcript_words(text: str) -> list[tuple[str, bool]]:
    """Lower-cased words as the dictionary spells them, each with "punctuation follows"."""
    out: list[tuple[str, bool]] = []
    for m in _TOKEN.finditer(text.lower().replace("\u2019", "'")):
        if m.group(1):
            out.append((m.group(1), False))
        elif out:
            out[-1] = (out[-1][0], True)
    return out


def _model_path(sub: str) -> str:
    from pocketsphinx import get_model_path

    return get_model_path(sub)


def _decoder(**config: object):
    from pocketsphinx import Decoder

    return Decoder(lm=None, loglevel="FATAL", dither=True, seed=1, **config)  # dither: digital silence has no log energy


def _default_g2p(word: str) -> list[str] | None:
    """Pronunciation of a word the dictionary lacks, from espeak-ng if it is installed."""
    from .espeak import espeak_g2p

    try:
        return espeak_g2p(word)
    except OSError:
        return None


class PhonemeStream:
    """One audio stream at 16 kHz: ``feed`` int16 samples, get the phones decided so far.

    Times are seconds since the first sample fed. ``set_transcript`` ends the current
    utterance and aligns what follows to the given text (``None``: recognise freely).
    ``decoder`` chooses free recognition's search: ``"phones"`` (the phone loop) or ``"words"``
    (words, aligned to phones once they settle). ``holdback``: the newest phones (words: words)
    held back, by default 3 (words: 0); ``lag_ms``: a phone must end this long before the
    newest audio (words: a word must have stayed in the best path this long); ``force_ms``
    (words): a word that ended this long ago goes out even if the search still changes it.
    """

    def __init__(self, transcript: str | None = None, *, holdback: int | None = None, lag_ms: float = 100.0,
                 max_utterance_s: float = 20.0, warmup_ms: float = 500.0, silprob: float = 0.5,
                 g2p: Callable[[str], list[str] | None] | None = _default_g2p, decoder: str = "phones",
                 force_ms: float = 600.0, batch_ms: float = 40.0):
        if decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {', '.join(DECODERS)}, not {decoder!r}")
        self.decoder = decoder
        self.force_frames = int(round(force_ms * FRAME_RATE / 1000))
        self.holdback = holdback if holdback is not None else (0 if decoder == "words" else 3)
        self.lag_frames = int(round(lag_ms * FRAME_RATE / 1000))
        self.max_utt_frames = int(max_utterance_s * FRAME_RATE)
        self.warmup = int(warmup_ms * RATE / 1000)
        self.batch = max(1, int(batch_ms * RATE / 1000))  # decoded together: the search's per-call cost halves from 20 to 40 ms
        self.silprob = silprob
        # quiet noise fed after the last sample before an alignment ends: a final phone that
        # ends with the audio could not otherwise finish its HMM before the grammar's end
        self.tail = np.random.default_rng(0).integers(-2, 3, int(0.2 * RATE)).astype(np.int16)
        self._min_phones = 0  # fewest phones a complete path through the current grammar has
        self.g2p = g2p
        self.samples = 0  # fed so far
        self.cpu_s = 0.0
        self.oov: list[str] = []  # transcript words found neither in the dictionary nor by g2p
        self.failed = 0  # aligned utterances whose audio did not fit the transcript
        self._recognizer = None
        self._aligner = None
        self._decoder = None
        self._grammars = 0  # alignment grammars made so far (each search needs a new name)
        self._pending = np.zeros(0, np.int16)  # held until the cepstral mean is warmed up
        self._warm: set[int] = set()  # ids of decoders whose mean is set
        self._in_utt = False
        self._utt_sample0 = 0  # stream sample at which the current utterance started
        self._utt_samples = 0
        self._committed = 0  # utterance frame up to which phones were handed out
        self._best: list = []  # the latest non-empty best path (kept in case the final one fails)
        self._audio = bytearray()  # the utterance's audio (words: aligned again once its words settle)
        self._seen: dict[tuple[str, int, int], int] = {}  # word of the best path -> frame it appeared
        self._context: tuple[str, int, tuple[list[list[str]], bool]] | None = None  # last word handed out:
        # (word, start frame, its unit of the alignment grammar)
        self.set_transcript(transcript)

    @property
    def audio_s(self) -> float:
        return self.samples / RATE

    @property
    def rtf(self) -> float:
        """Processing (CPU) seconds per audio second."""
        return self.cpu_s / self.audio_s if self.samples else 0.0

    @property
    def aligning(self) -> bool:
        return self._decoder is not None and self._decoder is self._aligner

    @property
    def _words(self) -> bool:
        """Free recognition of words (their phones aligned once they settle)."""
        return self.decoder == "words" and not self.aligning

    def set_transcript(self, text: str | None) -> list[Phone]:
        """Finish the current utterance; align the audio that follows to ``text``."""
        t0 = time.thread_time()
        out = self._decode(self._take_pending()) if len(self._pending) and id(self._decoder) in self._warm else []
        out += self._end_utterance()
        words = transcript_words(text or "")
        units = self._pronunciations(words)
        if units:
            d = self._aligner_decoder()
            self._grammars += 1
            name = f"align{self._grammars}"
            d.add_fsg(name, _grammar(d, units, name, self.silprob))
            self._min_phones = sum(min(len(p) for p in prons) for prons, _ in units)
            d.activate_search(name)
            if self._grammars > 1:
                d.remove_search(f"align{self._grammars - 1}")
            self._decoder = d
        else:
            self._decoder = self._recognizer_decoder()
        self.cpu_s += time.thread_time() - t0
        return out

    def feed(self, pcm: np.ndarray) -> list[Phone]:
        """Decode more audio (int16 mono at 16 kHz); the phones that became stable."""
        pcm = np.ascontiguousarray(pcm, dtype=np.int16)
        if not len(pcm):
            return []
        t0 = time.thread_time()
        self.samples += len(pcm)
        out: list[Phone] = []
        self._share_mean()
        warm = id(self._decoder) in self._warm
        self._pending = np.concatenate([self._pending, pcm])
        if len(self._pending) >= (self.batch if warm else self.warmup):
            out = self._decode(self._take_pending())
        self.cpu_s += time.thread_time() - t0
        return out

    def finish(self) -> list[Phone]:
        """End of input (or of a stretch of it): everything still held back."""
        t0 = time.thread_time()
        out = self._decode(self._take_pending()) if len(self._pending) else []
        out += self._end_utterance()
        self.cpu_s += time.thread_time() - t0
        return out

    # --- internals -----------------------------------------------------------------------------
    def _take_pending(self) -> np.ndarray:
        pcm, self._pending = self._pending, np.zeros(0, np.int16)
        self._warm_up(pcm)
        return pcm

    def _share_mean(self) -> None:
        """A decoder switched to (free <-> aligned) starts from the other one's cepstral mean."""
        d = self._decoder
        if id(d) in self._warm:
            return
        for other in (self._recognizer, self._aligner):
            if other is not None and other is not d and id(other) in self._warm:
                d.set_cmn(other.get_cmn())
                self._warm.add(id(d))
                return

    def _warm_up(self, pcm: np.ndarray) -> None:
        """Set the decoder's cepstral mean from this audio (decoded without search)."""
        d = self._decoder
        if id(d) in self._warm:
            return
        self._warm.add(id(d))
        d.start_utt()
        d.process_raw(pcm.tobytes(), no_search=True)
        d.get_cmn(True)
        try:
            d.end_utt()
        except RuntimeError:
            pass  # nothing was searched, so there is no result: expected

    def _decode(self, pcm: np.ndarray) -> list[Phone]:
        d = self._decoder
        if not self._in_utt:
            d.start_utt()
            self._in_utt = True
            self._utt_sample0 = self.samples - len(pcm) - len(self._pending)
            self._utt_samples, self._committed, self._best = 0, 0, []
            self._audio, self._seen, self._context = bytearray(), {}, None
        d.process_raw(pcm.tobytes())
        self._utt_samples += len(pcm)
        segs = list(d.seg() or [])
        out: list[Phone] = []
        if self._words:
            self._audio += pcm.tobytes()
            out = self._settled_words(segs)
        elif segs and self._plausible(segs):
            self._best = segs
            out = self._stable(segs)
        frames = self._utt_samples * FRAME_RATE // RATE
        if not self.aligning and frames > self.max_utt_frames and (self._at_pause(segs) or (
                self._words and frames > 2 * self.max_utt_frames)):  # the words' stored audio is bounded too
            out += self._end_utterance()  # bound memory and keep a long free stream fresh
        return out

    def prepare(self) -> "PhonemeStream":
        """Make both decoders now (each takes ~0.15-0.3 s of CPU, holding the GIL), so a stream
        made ahead of need costs nothing when its first audio or transcript comes."""
        self._recognizer_decoder()
        self._aligner_decoder()
        return self

    def _recognizer_decoder(self):
        if self._recognizer is None:
            if self.decoder == "words":
                from pocketsphinx import Decoder

                self._recognizer = Decoder(loglevel="FATAL", **_WORD_SEARCH)  # the default LM and dictionary
            else:
                self._recognizer = _decoder(allphone=_model_path("en-us/en-us-phone.lm.bin"), backtrace=True,
                                            beam=1e-20, pbeam=1e-20, lw=2.0)
        return self._recognizer

    def _aligner_decoder(self):
        if self._aligner is None:
            self._aligner = _decoder(fsgusefiller=False)
            for i, p in enumerate(PHONES):
                self._aligner.add_word(_UNIT + p, p, update=i == len(PHONES) - 1)
        return self._aligner

    def _pronunciations(self, words: list[tuple[str, bool]]) -> list[tuple[list[list[str]], bool]]:
        """For each word, its pronunciations as phone lists (dictionary, else g2p), and its pause flag."""
        if not words:
            return []
        d = self._aligner_decoder()
        out = []
        for w, pause in words:
            prons, k = [], 1
            while True:
                p = d.lookup_word(w if k == 1 else f"{w}({k})")
                if not p:
                    break
                prons.append(p.split())
                k += 1
            if not prons and self.g2p is not None:
                prons.append([p for p in (self.g2p(w) or []) if p in _PHONE_SET])
            prons = [p for p in prons if p]
            if prons:
                out.append((prons, pause))
            else:
                self.oov.append(w)
                if out and pause:
                    out[-1] = (out[-1][0], True)
        return out

    def _plausible(self, segs: list) -> bool:
        """False for a grammar search's partial path that contradicts what was handed out.

        The grammar search's partial result is the best path *ending a word in this frame*;
        between phone ends that can be a path still sitting in the initial silence, which would
        hand out nonsense. A real continuation keeps the handed-out boundary and its progress.
        """
        if not self.aligning:
            return True
        phones = sum(1 for s in segs if arpabet(s.word) != "sil")
        best = sum(1 for s in self._best if arpabet(s.word) != "sil")
        if phones < best - 3:
            return False
        # a later partial path may move an already handed-out boundary by a few frames (the
        # search re-weighs it), and a silence may be cut differently (the boundary then falls inside one);
        # demanding the boundary exactly stalled the aligner for the whole utterance
        c = self._committed
        return c == 0 or any(abs(s.end_frame + 1 - c) <= _BOUNDARY_SLACK
                             or (arpabet(s.word) == "sil" and s.start_frame <= c <= s.end_frame + 1) for s in segs)

    def _settled_words(self, segs: list, final: bool = False) -> list[Phone]:
        """Phones of the words at the head of the best path that settled, aligned in the stored audio.

        A word settles once the path has held it (same word, same frames) for ``lag_ms`` and it
        is not one of the newest ``holdback`` words; at a pause everything before the silence
        settles, and a word that ended ``force_ms`` ago goes out as the path has it then (the
        bound on the delay).
        """
        now = self._utt_samples * FRAME_RATE // RATE
        keys = [(s.word, s.start_frame, s.end_frame) for s in segs]
        self._seen = {k: self._seen.get(k, now) for k in keys}
        n = len(segs)
        if not final:
            n = 0
            for s, k in zip(segs, keys):
                if now - self._seen[k] < self.lag_frames and now - s.end_frame - 1 < self.force_frames:
                    break
                n += 1
            words = [i for i, s in enumerate(segs) if not _filler(s.word)]
            for i in words[-self.holdback:] if self.holdback else []:
                if now - segs[i].end_frame - 1 < self.force_frames:
                    n = min(n, i)
                    break
            if self._at_pause(segs):
                n = len(segs) - 1
        new = [s for s in segs[:n] if s.end_frame + 1 > self._committed]
        ctx = self._context
        if new and ctx is not None and (new[0].word, new[0].start_frame) == ctx[:2] and new[0].start_frame < self._committed:
            new = new[1:]  # the word handed out last, only its end moved: the words after it take those frames
        return self._word_phones(new) if new else []

    def _word_phones(self, words: list) -> list[Phone]:
        """The phones of decoded words (fillers: silence) from the frame handed out so far to the
        last word's end: their pronunciations (the ones the search chose) aligned in the stored
        audio, the word handed out before them leading in; where that finds no complete path,
        each word's frames shared evenly by its phones."""
        rec = self._recognizer_decoder()
        end = words[-1].end_frame + 1
        first, skip = min(words[0].start_frame, self._committed), 0
        units: list[tuple[list[list[str]], bool]] = []
        spans: list[tuple[list[str], int, int]] = []  # (phones, start, end frame) per word, for the fallback
        ctx = self._context
        if ctx is not None and words[0].start_frame >= self._committed:
            # the word before leads in: a word that must start in the first frame is often not found
            units.append(ctx[2])
            first, skip = ctx[1], len(ctx[2][0][0])
        last = None
        for s in words:
            pron = None if _filler(s.word) else rec.lookup_word(s.word)
            if pron:
                units.append(([pron.split()], False))
                spans.append((pron.split(), s.start_frame, s.end_frame + 1))
                last = (s.word, s.start_frame, len(units) - 1)
            else:
                if units:
                    units[-1] = (units[-1][0], True)
                spans.append((["sil"], s.start_frame, s.end_frame + 1))
        segs = self._align_span(units, first, end) if last is not None else []
        if segs and skip:  # the leading word's phones went out before
            k = next(i for i, (p, _, _) in enumerate(segs) if p != "sil" and (skip := skip - 1) == 0)
            segs = segs[k + 1:]
        elif not segs:
            for phones, f0, f1 in spans:
                step = max(1, (f1 - f0) // len(phones))
                segs += [(p, min(f0 + j * step, f1 - 1), f1 if j == len(phones) - 1 else min(f0 + (j + 1) * step, f1))
                         for j, p in enumerate(phones)]
        if last is not None:
            self._context = (last[0], last[1], units[last[2]])
        out: list[Phone] = []
        for phone, _, f1 in segs:
            f1 = min(f1, end)
            if f1 <= self._committed:
                continue
            self._add(out, phone, self._committed, f1)  # from the last end: no gap where the alignment left one
            self._committed = f1
        if self._committed < end:  # the alignment ended early: its last phone lasts to the words' end
            if out:
                out[-1] = Phone(out[-1].phone, out[-1].start, self._utt_sample0 / RATE + end / FRAME_RATE)
            else:
                self._add(out, "sil", self._committed, end)
            self._committed = end
        return out

    def _align_span(self, units: list[tuple[list[list[str]], bool]], first: int, end: int) -> list[tuple[str, int, int]]:
        """(phone, start, end frame) of ``units`` aligned in the stored audio's frames first..end;
        empty when the grammar's end is not reached (the audio does not fit these words)."""
        a = self._aligner_decoder()
        self._grammars += 1
        name = f"align{self._grammars}"
        a.add_fsg(name, _grammar(a, units, name, self.silprob))
        a.activate_search(name)
        if self._grammars > 1:
            a.remove_search(f"align{self._grammars - 1}")
        a.set_cmn(self._recognizer_decoder().get_cmn())
        pcm = bytes(self._audio[first * RATE // FRAME_RATE * 2:end * RATE // FRAME_RATE * 2])
        # quiet before: the front end's noise estimate starts from an utterance's first frames (were
        # they speech, it would take the speech for noise and remove it); quiet after: room for the
        # last phone's HMM to end, as for a transcript
        a.start_utt()
        a.process_raw(self.tail[:_PAD_FRAMES * RATE // FRAME_RATE].tobytes() + pcm + self.tail.tobytes())
        try:
            a.end_utt()
            found = list(a.seg() or [])
        except RuntimeError:
            return []
        if sum(1 for s in found if arpabet(s.word) != "sil") < sum(len(p[0]) for p, _ in units):
            return []
        shift = first - _PAD_FRAMES
        segs = [(arpabet(s.word), max(first, shift + s.start_frame), shift + s.end_frame + 1) for s in found
                if shift + s.end_frame + 1 > first]
        while segs and segs[-1][0] == "sil" and not units[-1][1]:
            segs.pop()  # the last word ends where the search says: silence after it is the padding's
        return segs

    def _at_pause(self, segs: list) -> bool:
        return bool(segs) and arpabet(segs[-1].word) == "sil" and segs[-1].end_frame - segs[-1].start_frame >= 30

    def _stable(self, segs: list, final: bool = False) -> list[Phone]:
        if final:
            n, limit = len(segs), 1 << 30
        else:
            n, limit = max(0, len(segs) - self.holdback), self._utt_samples * FRAME_RATE // RATE - self.lag_frames
            if self._at_pause(segs):  # a pause confirms the phones before it: no later phones will come to
                n = max(n, len(segs) - 1)  # (the end of speech would otherwise wait for the utterance's end)
        out: list[Phone] = []
        for s in segs[:n]:
            end = s.end_frame + 1
            if end > limit:
                break
            if end <= self._committed:
                continue
            if s.start_frame < self._committed - _BOUNDARY_SLACK // 2 and not final:
                continue  # a handed-out phone whose end the search moved later: the next one starts at the old end
            self._add(out, arpabet(s.word), self._committed if self._committed else s.start_frame, end)
            self._committed = end
        return out

    def _add(self, out: list[Phone], phone: str, start_f: int, end_f: int) -> None:
        base = self._utt_sample0 / RATE
        start, end = base + start_f / FRAME_RATE, base + end_f / FRAME_RATE
        if phone == "sil" and out and out[-1].phone == "sil":
            out[-1] = Phone("sil", out[-1].start, end)
        else:
            out.append(Phone(phone, start, end))

    def _end_utterance(self) -> list[Phone]:
        if not self._in_utt:
            return []
        d = self._decoder
        end = (self._utt_sample0 + self._utt_samples) / RATE
        if self.aligning:
            d.process_raw(self.tail.tobytes())
        try:
            d.end_utt()
            segs = list(d.seg() or [])
        except RuntimeError:
            segs = []
        self._in_utt = False
        if self.aligning and sum(1 for s in segs if arpabet(s.word) != "sil") < self._min_phones:
            self.failed += 1  # no complete path: audio and transcript disagree somewhere
            segs = self._best
        phones = self._settled_words(segs, final=True) if self._words else self._stable(segs, final=True)
        self._audio, self._seen, self._context = bytearray(), {}, None
        out = [p if p.end <= end else Phone(p.phone, p.start, end) for p in phones if p.start < end]
        if out and out[-1].end < end and out[-1].phone == "sil":
            out[-1] = Phone("sil", out[-1].start, end)
        return out


def _filler(word: str) -> bool:
    """A word search's silence or noise (<s>, </s>, <sil>, [NOISE], ...), not a word."""
    return word.startswith(("<", "[", "+"))


def _grammar(d, units: list[tuple[list[list[str]], bool]], name: str, silprob: float):
    """Phone-level grammar: the words in order, each one of its pronunciations; silence at the
    edges and after words followed by punctuation."""
    trans: list[tuple] = [(0, 0, silprob, "<sil>")]
    state, fresh = 0, 1
    for k, (prons, pause) in enumerate(units):
        end, fresh = fresh, fresh + 1
        for pron in prons:
            cur = state
            for j, p in enumerate(pron):
                to = end if j == len(pron) - 1 else fresh
                if to == fresh:
                    fresh += 1
                trans.append((cur, to, 1.0 / len(prons) if j == 0 else 1.0, _UNIT + p))
                cur = to
        if pause or k == len(units) - 1:
            trans.append((end, end, silprob, "<sil>"))
        state = end
    return d.create_fsg(name, 0, state, trans)


def recognize(pcm: np.ndarray, transcript: str | None = None, *, chunk_ms: int = 20, **options) -> tuple[list[Phone], float]:
    """Phones of a whole 16 kHz int16 recording fed in ``chunk_ms`` pieces, and the CPU RTF."""
    stream = PhonemeStream(transcript, **options)
    step = RATE * chunk_ms // 1000
    out: list[Phone] = []
    for i in range(0, len(pcm), step):
        out += stream.feed(pcm[i:i + step])
    out += stream.finish()
    return merge_silences(out), stream.rtf


def merge_silences(phones: list[Phone]) -> list[Phone]:
    """Adjacent ``sil`` phones as one."""
    out: list[Phone] = []
    for p in phones:
        if out and p.phone == "sil" and out[-1].phone == "sil":
            out[-1] = Phone("sil", out[-1].start, p.end)
        else:
            out.append(p)
    return out
