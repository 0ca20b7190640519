"""text_phoneme: real espeak-ng speech and phoneme events, mapped to ARPAbet, on one timeline."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from runtime import Message
from runtime.recording import read_recording
from runtime.testing import NodeHarness, run_to_eos

try:
    from nodes.speech import Espeak, arpabet_table, espeak_g2p, speak
    Espeak.get()
except OSError as exc:  # pragma: no cover - depends on the machine
    pytest.skip(f"espeak-ng is not installed ({exc}); apt-get install libespeak-ng1", allow_module_level=True)

from nodes.speech import PHONES

VALID = set(PHONES) | {"sil"}


def phonemes_and_audio(outputs: list[tuple[str, Message]]) -> tuple[list[Message], list[Message]]:
    return [m for p, m in outputs if p == "phonemes"], [m for p, m in outputs if p == "audio"]


def test_speak_gives_16k_audio_and_contiguous_arpabet() -> None:
    audio, phones = speak("Hello world, this is the avatar.")
    assert audio.dtype == np.int16 and 1.0 < len(audio) / 16000 < 3.5
    assert all(p in VALID for p, _, _ in phones)
    assert phones[0][0] == "sil" and phones[0][1] == 0.0
    assert phones[-1][2] == pytest.approx(len(audio) / 16000, abs=0.002)
    assert all(a[2] == pytest.approx(b[1]) for a, b in zip(phones, phones[1:]))
    seq = [p for p, _, _ in phones if p != "sil"]
    assert seq[:8] == ["HH", "AH", "L", "OW", "W", "ER", "L", "D"]


def test_every_mnemonic_of_a_varied_text_is_in_the_table() -> None:
    unknown: set[str] = set()
    speak("The quick brown fox jumps over the lazy dog; George's thirty-six azure ships "
          "measure a pleasure, bottle, button, fire, our, near, poor, hair, boy, cow, judge.", unknown=unknown)
    assert unknown == set()
    assert all(set(v) <= VALID for v in arpabet_table().values())


def test_g2p_for_words_no_dictionary_has() -> None:
    assert espeak_g2p("blorptastic") == ["B", "L", "AO", "R", "P", "T", "EY", "S", "T", "IH", "K"]


def test_param_text_is_spoken_with_phonemes_on_the_audio_timeline() -> None:
    h = NodeHarness("text_phoneme", text="Hello world.", realtime=False, eos_after_text=True, session="s1")
    try:
        phon, audio = phonemes_and_audio(h.outputs)
        assert h.ended
        assert len(phon) == 1 and phon[0].session == ["s1"] and phon[0].caps == "phonemes/arpabet"
        rows = phon[0].data["phonemes"]
        assert {r[0] for r in rows} == {0} and all(r[1] in VALID for r in rows)
        assert all(r[2] < r[3] for r in rows) and all(a[3] == b[2] for a, b in zip(rows, rows[1:]))
        assert all(m.caps == "audio/pcm" and m.session == ["s1"] and m.data == {"rate": 16000} for m in audio)
        assert [len(m.arrays["pcm"]) for m in audio[:-1]] == [320] * (len(audio) - 1)
        assert audio[0].pts_ns == rows[0][2] == phon[0].pts_ns
        audio_end = audio[-1].pts_ns + len(audio[-1].arrays["pcm"]) * 1_000_000_000 // 16000
        assert abs(audio_end - rows[-1][3]) < 1_000_000  # same timeline, within 1 ms
        assert np.all(np.diff([m.pts_ns for m in audio]) == 20_000_000)
    finally:
        h.close()


def test_text_pad_batch_of_sessions() -> None:
    h = NodeHarness("text_phoneme", realtime=False)
    try:
        out = h.feed("text", Message("text/plain", {"text": ["Yes.", "No way."]}, session=["a", "b"]))
        phon, audio = phonemes_and_audio(out)
        assert len(phon) == 1 and phon[0].session == ["a", "b"]
        rows = phon[0].data["phonemes"]
        words = {i: [r[1] for r in rows if r[0] == i and r[1] != "sil"] for i in (0, 1)}
        assert words == {0: ["Y", "EH", "S"], 1: ["N", "OW", "W", "EY"]}
        assert {m.session[0] for m in audio} == {"a", "b"}
        # a second utterance of a session starts after its first one ends
        out2 = h.feed("text", Message("text/plain", {"text": ["Again."]}, session=["a"]))
        first_end = max(r[3] for r in rows if r[0] == 0)
        assert phonemes_and_audio(out2)[0][0].data["phonemes"][0][2] >= first_end
    finally:
        h.close()


def test_realtime_sends_audio_as_it_is_due() -> None:
    h = NodeHarness("text_phoneme", text="This sentence takes a while to say.", realtime=True, chunk_ms=20,
                    eos_after_text=True)
    try:
        phon, audio = phonemes_and_audio(h.outputs)
        assert len(phon) == 1 and audio == []  # phonemes at once (lookahead), audio on time
        h.advance(0.2)
        n = len(phonemes_and_audio(h.outputs)[1])
        assert 8 <= n <= 12
        h.advance(10.0)
        rows = phon[0].data["phonemes"]
        audio = phonemes_and_audio(h.outputs)[1]
        assert h.ended and sum(len(m.arrays["pcm"]) for m in audio) / 16000 == pytest.approx(
            (rows[-1][3] - rows[0][2]) / 1e9, abs=0.002)
    finally:
        h.close()


def test_graph_text_to_recorders(tmp_path: Path) -> None:
    rp, ra = tmp_path / "phonemes.msgpack", tmp_path / "audio.msgpack"
    run_to_eos(f"""
nodes:
  tts: {{type: text_phoneme, params: {{text: "Type a sentence, the avatar says it.", realtime: false, eos_after_text: true}}}}
  rp: {{type: recorder, params: {{path: "{rp}"}}}}
  ra: {{type: recorder, params: {{path: "{ra}"}}}}
links:
  - {{from: tts.phonemes, to: rp.in, policy: block, size: 8}}
  - {{from: tts.audio, to: ra.in, policy: block, size: 8}}
""", timeout=30)
    phon, audio = read_recording(rp), read_recording(ra)
    rows = phon[0].data["phonemes"]
    assert [r[1] for r in rows if r[1] != "sil"][:4] == ["T", "AY", "P", "AH"]
    assert audio[0].pts_ns == rows[0][2]
    assert sum(len(m.arrays["pcm"]) for m in audio) / 16000 == pytest.approx((rows[-1][3] - rows[0][2]) / 1e9, abs=0.002)
