"""text_phoneme: real espeak-ng speech and phoneme events, mapped to ARPAbet, on one timeline."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from nodes.face import LEAD_ROOM_MS
from runtime import CallRefused, Message, ParamError
from runtime.recording import read_recording
from runtime.testing import NodeHarness, run_to_eos, start_graph
from tests.helpers import kill_and_wait_restart, wait_until

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
        rows = phon[0].data["phonemes"]
        assert rows[0][2] == int(LEAD_ROOM_MS * 1e6)  # speech starts the lead-in room ahead
        h.advance(0.06)
        assert phonemes_and_audio(h.outputs)[1] == []  # not before 40 ms ahead of its pts
        h.advance(0.24)  # speech due to 0.34 s (40 ms ahead): 220 ms, 11 chunks, give or take the timer's phase
        n = len(phonemes_and_audio(h.outputs)[1])
        assert 10 <= n <= 13
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


# --- say: sentences, queueing, interrupting ------------------------------------------------------
PARAGRAPH = "The first sentence is here. The second one follows it! Is there a third? Yes; a fourth."


def audio_end(m: Message) -> int:
    return m.pts_ns + len(m.arrays["pcm"]) * 1_000_000_000 // 16000


def assert_continuous(audio: list[Message]) -> None:
    """Each chunk starts where the one before it ended (to the nanosecond's rounding)."""
    for a, b in zip(audio, audio[1:]):
        assert abs(b.pts_ns - audio_end(a)) <= 1, (a.pts_ns, b.pts_ns)


def test_split_sentences_loses_nothing() -> None:
    from nodes.speech import split_sentences

    text = 'He said "stop." Then: 3.14 is pi!\n\nNew line; and more?! ' + "word " * 120 + "end"
    parts = split_sentences(text, max_chars=100)
    assert parts[:5] == ['He said "stop."', "Then: 3.14 is pi!", "New line;", "and more?!", parts[4]]
    assert all(0 < len(p) <= 100 for p in parts)
    assert "".join(parts).replace(" ", "") == text.replace(" ", "").replace("\n", "")
    assert split_sentences("   \n ") == [] and split_sentences("no end") == ["no end"]


def test_a_long_text_speaks_sentence_by_sentence_on_one_timeline() -> None:
    h = NodeHarness("text_phoneme", synth_ahead_ms=500.0)
    try:
        answer = h.call("say", session="s", text=PARAGRAPH)
        assert answer == {"session": "s", "sentences": 5, "queued_s": 0.0, "interrupted": False, "pending_sentences": 4}
        phon, audio = phonemes_and_audio(h.outputs)
        assert len(phon) == 1 and audio == []  # the first sentence at once, its audio as it is due
        seen_at = {0: h.now}
        while len(phonemes_and_audio(h.outputs)[0]) < 5:
            h.advance(0.02)
            n = len(phonemes_and_audio(h.outputs)[0])
            seen_at.setdefault(n - 1, h.now)
            assert h.now < 30
        h.advance(5.0)
        phon, audio = phonemes_and_audio(h.outputs)
        assert len(phon) == 5 and h.node.stats()["pending_sentences"] == 0
        for i, (a, b) in enumerate(zip(phon, phon[1:])):  # sentence after sentence, no gap, no overlap
            assert b.data["phonemes"][0][2] == a.data["phonemes"][-1][3]
            assert seen_at[i + 1] * 1e9 < b.pts_ns  # each sentence's phonemes go out before its audio starts
        assert_continuous(audio)
        assert audio[0].pts_ns == phon[0].pts_ns and audio_end(audio[-1]) == phon[-1].data["phonemes"][-1][3]
        assert h.node.stats()["sentences"] == 5
    finally:
        h.close()


def test_say_queues_behind_the_sessions_speech_and_interrupt_replaces_it() -> None:
    h = NodeHarness("text_phoneme")
    try:
        h.call("say", session="s", text=PARAGRAPH)
        h.advance(0.5)
        second = h.call("say", session="s", text="And this comes after.")
        assert second["queued_s"] > 0 and second["pending_sentences"] >= 4  # behind the paragraph's rest
        other = h.call("say", session="t", text="Another avatar talks at once.")
        assert other["queued_s"] == 0.0  # sessions do not wait for each other
        h.advance(4.0)
        said = [m.data["phonemes"] for p, m in h.outputs if p == "phonemes" and m.session == ["s"]]
        assert len(said) == 6 and said[5][0][2] == said[4][-1][3]  # the new text right after the paragraph
        before = len(h.outputs)
        cut = h.call("say", session="s", text="Stop, listen to me.", interrupt=True)
        t_cut = h.now_ns()
        assert cut["interrupted"] and cut["pending_sentences"] == 0
        after = h.outputs[before:]
        phon = [m for p, m in after if p == "phonemes" and m.data["phonemes"]]  # (the other: the mouth's cut)
        lead = int(LEAD_ROOM_MS * 1e6)
        assert len(phon) == 1 and t_cut + lead <= phon[0].pts_ns <= t_cut + lead + 20_000_000  # starts now
        h.advance(10.0)
        s_audio = [m for p, m in h.outputs[before:] if p == "audio" and m.session == ["s"]]
        assert s_audio[0].pts_ns == phon[0].pts_ns  # nothing of the old speech after the cut
        assert_continuous(s_audio)
        assert audio_end(s_audio[-1]) == phon[0].data["phonemes"][-1][3]
        words = [r[1] for r in phon[0].data["phonemes"] if r[1] != "sil"]
        assert words[:4] == ["S", "T", "AA", "P"]
        t_audio = [m for p, m in h.outputs if p == "audio" and m.session == ["t"]]
        assert t_audio and t_audio[0].pts_ns < t_cut  # the other session spoke on, untouched
        stats = h.node.stats()
        assert stats["interrupts"] == 1 and stats["pending_sentences"] == 0 and stats["queued_chunks"] == 0
    finally:
        h.close()


def test_an_empty_interrupt_stops_and_closes_the_mouth() -> None:
    h = NodeHarness("text_phoneme")
    try:
        h.call("say", text=PARAGRAPH)
        h.advance(0.3)
        before = len(h.outputs)
        answer = h.call("say", text="", interrupt=True)
        assert answer["sentences"] == 0 and answer["interrupted"]
        (pad, stop), = h.outputs[before:]
        assert pad == "phonemes" and stop.data["phonemes"] == [[0, "sil", stop.pts_ns, stop.pts_ns + 100_000_000]]
        assert h.now_ns() <= stop.pts_ns <= h.now_ns() + 60_000_000  # after the audio sent (up to 40 ms ahead)
        h.advance(5.0)
        assert h.outputs[before + 1:] == []  # no more voice
    finally:
        h.close()


@pytest.mark.parametrize("args, says", [
    ({"text": ""}, "nothing to say: the text is empty"),
    ({"text": "   \n"}, "nothing to say"),
    ({"text": "x" * 10001}, "the text has 10001 characters, over the limit of 10000 (max_chars)"),
    ({"text": "hi", "session": ""}, "'session' must be a non-empty string of at most 1024"),
    ({"text": "hi", "session": "s" * 1025}, "'session' must be a non-empty string of at most 1024"),
    ({"text": 5}, "'text' must be a string, got int"),
    ({"text": "hi", "interrupt": "yes"}, "'interrupt' must be true or false"),
    ({"text": "hi", "voice": "de"}, "unknown argument(s) 'voice'"),
])
def test_say_refuses_what_it_will_not_say(args, says) -> None:
    h = NodeHarness("text_phoneme")
    try:
        with pytest.raises(ParamError, match=re.escape(says)):
            h.call("say", **args)
        assert h.outputs == [] and h.node.stats()["utterances"] == 0
        assert h.call("say", text="Still fine.")["sentences"] == 1  # and the next good one is said
    finally:
        h.close()


def test_a_sessions_waiting_text_is_bounded() -> None:
    h = NodeHarness("text_phoneme", max_queued_chars=100)
    try:
        h.call("say", text="One. Two. Three. Four. Five. Six. Seven. Eight. Nine. Ten. Eleven. Twelve.")
        with pytest.raises(ParamError, match="characters waiting to be said"):
            h.call("say", text="Thirteen. Fourteen. Fifteen. Sixteen. Seventeen.")
        assert h.call("say", text="Only this.", interrupt=True)["sentences"] == 1
    finally:
        h.close()


def test_the_text_pad_may_interrupt() -> None:
    h = NodeHarness("text_phoneme")
    try:
        h.feed("text", Message("text/plain", {"text": [PARAGRAPH]}, session=["a"]))
        h.advance(0.3)
        before = len(h.outputs)
        h.feed("text", Message("text/plain", {"text": ["Wait.", ""], "interrupt": [True, True]}, session=["a", "b"]))
        phon = [m for p, m in h.outputs[before:] if p == "phonemes" and m.data["phonemes"]]
        assert [m.session for m in phon] == [["b"], ["a"]]  # b just stops (sil), a says its new text
        assert phon[0].data["phonemes"][0][1] == "sil"
        assert h.node.stats()["pending_sentences"] == 0 and h.node.stats()["interrupts"] == 2
    finally:
        h.close()


def test_graph_says_on_request_sentence_by_sentence(tmp_path: Path, runners) -> None:
    """A real process: calls through the Runner, sentences out as they are due, one timeline."""
    rp, ra = tmp_path / "phonemes.msgpack", tmp_path / "audio.msgpack"
    runner = start_graph(f"""
name: say_calls
nodes:
  tts: {{type: text_phoneme, params: {{synth_ahead_ms: 300}}}}
  rp: {{type: recorder, params: {{path: "{rp}", flush_every: 1}}}}
  ra: {{type: recorder, params: {{path: "{ra}", flush_every: 1}}}}
links:
  - {{from: tts.phonemes, to: rp.in, policy: block, size: 8}}
  - {{from: tts.audio, to: ra.in, policy: block, size: 64}}
""")
    runners.append(runner)
    assert runner.nodes_with("say") == ["tts"]
    answer = runner.call("tts", "say", {"session": "s", "text": "One sentence. And another one."})
    assert answer["sentences"] == 2
    with pytest.raises(CallRefused, match="nothing to say"):
        runner.call("tts", "say", {"session": "s", "text": ""})

    def all_said() -> bool:
        stats = runner.stats()["nodes"]
        tts = stats["tts"]["node"]
        return (tts["sentences"] == 2 and tts["queued_chunks"] == 0 and
                stats["ra"]["node"]["written"] == stats["tts"]["outputs"]["tts.audio-ra.in"]["sent"])
    wait_until(all_said, 30, what="both sentences spoken")
    phon, audio = read_recording(rp), read_recording(ra)
    assert len(phon) == 2 and phon[1].data["phonemes"][0][2] == phon[0].data["phonemes"][-1][3]
    assert_continuous(audio)
    assert audio[0].pts_ns == phon[0].pts_ns and audio_end(audio[-1]) == phon[1].data["phonemes"][-1][3]
    spacing = np.diff([m.pts_ns for m in audio])
    assert np.median(spacing) == 20_000_000  # paced on the pts clock, chunk after chunk


def test_a_restarted_or_swapped_node_does_not_say_its_text_again(tmp_path: Path, runners) -> None:
    rp = tmp_path / "phonemes.msgpack"
    runner = start_graph(f"""
name: say_once
nodes:
  tts: {{type: text_phoneme, params: {{text: "Said once."}}}}
  rp: {{type: recorder, params: {{path: "{rp}", flush_every: 1}}}}
links:
  - {{from: tts.phonemes, to: rp.in, policy: block, size: 8}}
""")
    runners.append(runner)
    wait_until(lambda: runner.stats()["nodes"]["rp"]["node"]["written"] == 1, 10, what="the text said")
    kill_and_wait_restart(runner, "tts")
    assert runner.stats()["nodes"]["tts"]["node"]["utterances"] == 0  # on_play ran: nothing said
    runner.swap("tts", params={"wpm": 200})
    assert runner.stats()["nodes"]["tts"]["node"]["utterances"] == 0
    assert runner.call("tts", "say", {"text": "But this, yes."})["sentences"] == 1
    wait_until(lambda: runner.stats()["nodes"]["rp"]["node"]["written"] == 2, 10, what="the new text said")
    assert len(read_recording(rp)) == 2


def test_the_text_param_is_said_again_repeat_s_after_the_session_falls_quiet() -> None:
    h = NodeHarness("text_phoneme", text="Hi there.", repeat_s=1.0)
    first = [m for _, m in h.outputs if m.caps == "phonemes/arpabet"]  # said when playing started
    again = [m for p, m in h.advance(4.0) if p == "phonemes"]
    assert len(first) == 1 and len(again) == 2 and h.node.stats()["repeats"] == 2
    end = first[0].data["phonemes"][-1][3]
    due = end + 1_000_000_000 + int(LEAD_ROOM_MS * 1e6)  # quiet for repeat_s, then the lead-in room
    assert abs(again[0].pts_ns - due) <= 20_000_000
    # something else said meanwhile: the repeat waits until the session is quiet again
    n = len(h.outputs)
    h.call("say", session="default", text="Something else entirely, said in between.")
    said = [m for p, m in h.outputs[n:] if p == "phonemes"]
    assert len(said) == 1
    busy_end = said[0].data["phonemes"][-1][3]
    assert not [m for p, m in h.advance(busy_end / 1e9 - h.now + 0.9) if p == "phonemes"]  # not while it speaks
    later = [m for p, m in h.advance(4.0) if p == "phonemes"]
    assert later and later[0].pts_ns >= busy_end + 1_000_000_000 - 20_000_000
    off = NodeHarness("text_phoneme", text="Hi there.")  # repeat_s 0: once
    assert not [m for p, m in off.advance(4.0) if p == "phonemes"] and off.node.stats()["repeats"] == 0
