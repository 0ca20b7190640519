"""Festival as text_phoneme's second engine: real festival and its HTS voice, driven through one
long-lived process; its phones mapped to ARPAbet on the audio's timeline; text that cannot
escape its string; clear errors; a real graph and the say interface.

Tests that need festival are skipped, saying why, when it or its voice is not installed
(``make test`` installs both: festival festvox-us-slt-hts)."""
from __future__ import annotations

import os
import shutil
import stat
import time
from pathlib import Path

import numpy as np
import pytest

from nodes.speech import (
    FESTIVAL_VOICE,
    PHONES,
    Festival,
    FestivalError,
    arpabet_table,
    festival_text,
    parse_segments,
    scheme_string,
    segments_to_phones,
)
from runtime import CallRefused, Message, ParamError, ParamRefused
from runtime.recording import read_recording
from runtime.testing import NodeHarness, run_to_eos, start_graph
from tests.helpers import wait_until

VALID = set(PHONES) | {"sil"}
MAPPING = "mappings/festival_arpabet.yaml"


@pytest.fixture(scope="module")
def festival():
    """One festival with the default voice for the module; skips when festival or the voice is missing."""
    if shutil.which("festival") is None:
        pytest.skip("festival is not installed (apt-get install festival festvox-us-slt-hts; make test installs them)")
    try:
        f = Festival(FESTIVAL_VOICE)
    except FestivalError as exc:
        if "has no voice" in str(exc):
            pytest.skip(f"festival's voice {FESTIVAL_VOICE} is not installed (apt-get install festvox-us-slt-hts): {exc}")
        raise
    yield f
    f.close()


def words(phones: list[tuple[str, float, float]]) -> list[str]:
    return [p for p, _, _ in phones if p != "sil"]


def assert_covers(audio: np.ndarray, phones: list[tuple[str, float, float]]) -> None:
    """The phones cover the audio in order: from 0 to its end, each where the one before ended."""
    assert audio.dtype == np.int16 and len(audio) > 0
    assert phones[0][1] == 0.0
    assert phones[-1][2] == pytest.approx(len(audio) / 16000, abs=0.002)
    assert all(a[2] == pytest.approx(b[1]) for a, b in zip(phones, phones[1:]))
    assert all(s < e for _, s, e in phones)
    assert all(p in VALID for p, _, _ in phones)


# --- without festival ---------------------------------------------------------------------------
def test_scheme_strings_cannot_be_escaped() -> None:
    assert scheme_string('say "hi" \\ (now)') == '"say \\"hi\\" \\\\ (now)"'
    assert scheme_string('") (system "touch /tmp/x")') == '"\\") (system \\"touch /tmp/x\\")"'
    assert festival_text("Caf\u00e9 \u201cquoted\u201d \u2014 it\u2019s\nhere\x00") == 'Cafe "quoted"  -  it\'s here '


def test_segments_become_arpabet_on_the_audio_timeline() -> None:
    segs = parse_segments("#\n0.1000 100 pau\n0.1800 100 hh\n0.2500 100 ax\n0.3300 100 l\n0.5000 100 ow\n0.6000 100 pau\n")
    assert segs == [("pau", 0.1), ("hh", 0.18), ("ax", 0.25), ("l", 0.33), ("ow", 0.5), ("pau", 0.6)]
    unknown: set[str] = set()
    phones = segments_to_phones(segs, 9600, 16000, arpabet_table(MAPPING), unknown)
    assert [p for p, _, _ in phones] == ["sil", "HH", "AH", "L", "OW", "sil"] and unknown == set()
    assert phones[1][1] == pytest.approx(0.1) and phones[-1][2] == pytest.approx(0.6)
    # a phone the table lacks is counted, and its time goes to the phone before it
    table = {k: v for k, v in arpabet_table(MAPPING).items() if k != "l"}
    phones = segments_to_phones(segs, 9600, 16000, table, unknown)
    assert unknown == {"l"} and [p for p, _, _ in phones] == ["sil", "HH", "AH", "OW", "sil"]
    assert phones[2][2] == pytest.approx(0.33)
    with pytest.raises(FestivalError, match="past the end of its audio"):
        segments_to_phones(segs, 4800, 16000, table)
    with pytest.raises(FestivalError, match="before it starts"):
        segments_to_phones([("hh", 0.2), ("ax", 0.1)], 9600, 16000, table)


def test_every_phone_of_festivals_set_is_in_the_table() -> None:
    table = arpabet_table(MAPPING)
    radio = ("pau h# brth aa ae ah ao aw ax axr ay eh er ey ih iy ow oy uh uw el em en b ch d dh dx f g hh hv jh "
             "k l m n nx ng p r s sh t th v w y z zh").split()
    assert set(radio) <= set(table)
    assert all(set(v) <= VALID for v in table.values())


def fake_festival(tmp_path: Path, body: str) -> str:
    path = tmp_path / "festival"
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_a_missing_hanging_or_dying_festival_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FestivalError, match="festival is not installed .*festival festvox-us-slt-hts"):
        Festival(program=str(tmp_path / "nowhere" / "festival"))
    t0 = time.monotonic()
    with pytest.raises(FestivalError, match=r"did not list its voices within 1 s \(killed\)"):
        Festival(program=fake_festival(tmp_path, "exec sleep 60"), timeout=1.0)
    assert time.monotonic() - t0 < 10
    with pytest.raises(FestivalError, match="exited with code 3 while asked to list its voices; it said: no voices here"):
        Festival(program=fake_festival(tmp_path, "echo no voices here; exit 3"))


# --- real festival ------------------------------------------------------------------------------
def test_festival_speech_has_phones_covering_the_audio_in_order(festival: Festival) -> None:
    unknown: set[str] = set()
    audio, phones = festival.speak("Hello world, this is the avatar speaking.", unknown=unknown)
    assert_covers(audio, phones)
    assert 1.0 < len(audio) / 16000 < 5.0 and festival.rate and festival.rate >= 16000
    assert unknown == set() and len(words(phones)) >= 20
    assert phones[0][0] == "sil" and phones[-1][0] == "sil"


def test_a_known_words_phones_are_the_expected_arpabet(festival: Festival) -> None:
    assert words(festival.speak("Hello.")[1]) == ["HH", "AH", "L", "OW"]
    assert words(festival.speak("Yes, thank you.")[1]) == ["Y", "EH", "S", "TH", "AE", "NG", "K", "Y", "UW"]


def test_every_phone_of_a_varied_text_is_in_the_table(festival: Festival) -> None:
    unknown: set[str] = set()
    festival.speak("The quick brown fox jumps over the lazy dog; George's thirty-six azure ships "
                   "measure a pleasure, bottle, button, little, fire, our, near, poor, hair, boy, cow, judge.",
                   unknown=unknown)
    assert unknown == set()


def test_text_is_spoken_literally_never_evaluated(festival: Festival, tmp_path: Path) -> None:
    victim = tmp_path / "injected"
    attacks = [f'") (system "touch {victim}") ("',
               f'\\") (system "touch {victim}")',
               f'Hello" (system "touch {victim}") "',
               f'(system "touch {victim}")']
    for text in attacks:
        audio, phones = festival.speak(text)
        assert len(audio) and words(phones)  # said, as words
    assert not victim.exists()
    # quotes and brackets are read as punctuation, a backslash as the word: the words come out as written
    plain = words(festival.speak("Say stop and go backslash now.")[1])
    assert words(festival.speak('Say "stop" (and) go \\ now.')[1]) == plain
    assert festival.restarts == 0 and festival.speak("Still here.")[0].size  # the process is fine
    # and the attack is a real one: the same form, evaluated, does run the command
    festival._request(f'(system "touch {victim}")', "run the attack's form")
    assert victim.exists()


def test_a_text_with_nothing_to_say_gives_nothing(festival: Festival) -> None:
    for text in ("...", "", "\u65e5\u672c\u8a9e"):  # punctuation, nothing, no ASCII letters
        audio, phones = festival.speak(text)
        assert len(audio) == 0 and phones == []


def test_a_graph_with_festival_but_no_festival_program_does_not_load(monkeypatch) -> None:
    import nodes.text_phoneme
    from runtime import GraphError, parse_graph, validate_graph

    monkeypatch.setattr(nodes.text_phoneme.shutil, "which", lambda name: None)
    with pytest.raises(GraphError, match="festival is not installed .*festival festvox-us-slt-hts"):
        validate_graph(parse_graph("nodes:\n  tts: {type: text_phoneme, params: {engine: festival}}\n", "<test>"))
    validate_graph(parse_graph("nodes:\n  tts: {type: text_phoneme}\n", "<test>"))  # espeak needs no festival


def test_a_wrong_voice_is_refused_with_the_installed_list(festival: Festival, tmp_path: Path) -> None:
    with pytest.raises(FestivalError, match=rf"festival has no voice 'no_such_voice'; installed: .*{FESTIVAL_VOICE}"):
        Festival("no_such_voice")
    victim = tmp_path / "injected"
    with pytest.raises(FestivalError, match="festival has no voice"):
        Festival(f'x) (system "touch {victim}") (voice_x')
    assert not victim.exists()
    with pytest.raises(FestivalError, match=rf"installed: .*{FESTIVAL_VOICE}"):
        NodeHarness("text_phoneme", engine="festival", voice="no_such_voice")


def test_a_festival_that_died_is_started_again(festival: Festival) -> None:
    before = festival.restarts
    os.kill(festival.pid, 9)
    audio, phones = festival.speak("I am back.")
    assert festival.restarts == before + 1 and len(audio) and words(phones)


def test_a_hung_festival_is_killed_and_started_again(festival: Festival) -> None:
    before, pid = festival.restarts, festival.pid
    with pytest.raises(FestivalError, match=r"did not sleep within 0.5 s \(killed\)"):
        festival._request('(system "sleep 30")', "sleep", timeout=0.5)
    audio, phones = festival.speak("Awake again.")
    assert festival.restarts == before + 1 and festival.pid != pid and words(phones)


def test_a_scheme_error_is_reported_with_what_festival_said(festival: Festival) -> None:
    with pytest.raises(FestivalError, match=r"festival \(cmu_us_slt_arctic_hts\) failed to add: SIOD ERROR"):
        festival._request("(+ 1 'a)", "add")
    assert words(festival.speak("Fine.")[1]) == ["F", "AY", "N"]  # the same process goes on


def test_the_rate_follows_wpm(festival: Festival) -> None:
    text = "This sentence is said at three different speeds."
    lengths = [len(festival.speak(text, wpm=w)[0]) for w in (120, 175, 260)]
    assert lengths[0] > lengths[1] * 1.2 and lengths[2] < lengths[1] / 1.2
    audio, phones = festival.speak(text, wpm=260)
    assert_covers(audio, phones)


# --- text_phoneme with engine: festival ---------------------------------------------------------
def phonemes_and_audio(outputs: list[tuple[str, Message]]) -> tuple[list[Message], list[Message]]:
    return [m for p, m in outputs if p == "phonemes"], [m for p, m in outputs if p == "audio"]


def audio_end(m: Message) -> int:
    return m.pts_ns + len(m.arrays["pcm"]) * 1_000_000_000 // 16000


def assert_continuous(audio: list[Message]) -> None:
    for a, b in zip(audio, audio[1:]):
        assert abs(b.pts_ns - audio_end(a)) <= 1, (a.pts_ns, b.pts_ns)


def test_graph_text_to_recorders(festival: Festival, tmp_path: Path) -> None:
    rp, ra = tmp_path / "phonemes.msgpack", tmp_path / "audio.msgpack"
    runner = run_to_eos(f"""
nodes:
  tts: {{type: text_phoneme, params: {{engine: festival, text: "Hello. Type a sentence, the avatar says it.",
                                      realtime: false, eos_after_text: true}}}}
  rp: {{type: recorder, params: {{path: "{rp}"}}}}
  ra: {{type: recorder, params: {{path: "{ra}"}}}}
links:
  - {{from: tts.phonemes, to: rp.in, policy: block, size: 8}}
  - {{from: tts.audio, to: ra.in, policy: block, size: 8}}
""", timeout=60)
    assert runner.exit_code == 0, runner.bus.messages("ERROR")
    phon, audio = read_recording(rp), read_recording(ra)
    assert len(phon) == 2
    rows = [r for m in phon for r in m.data["phonemes"]]
    assert [r[1] for r in rows if r[1] != "sil"][:4] == ["HH", "AH", "L", "OW"]
    assert all(r[1] in VALID for r in rows) and all(a[3] == b[2] for a, b in zip(rows, rows[1:]))
    assert audio[0].pts_ns == rows[0][2] and audio_end(audio[-1]) == rows[-1][3]
    assert_continuous(audio)
    assert sum(len(m.arrays["pcm"]) for m in audio) / 16000 == pytest.approx((rows[-1][3] - rows[0][2]) / 1e9, abs=0.002)


def test_graph_says_on_request_with_festival(festival: Festival, tmp_path: Path, runners) -> None:
    """The say interface through a real process: sentences out as they are due, one timeline."""
    rp, ra = tmp_path / "phonemes.msgpack", tmp_path / "audio.msgpack"
    runner = start_graph(f"""
name: say_festival
nodes:
  tts: {{type: text_phoneme, params: {{engine: festival, synth_ahead_ms: 1500}}}}
  rp: {{type: recorder, params: {{path: "{rp}", flush_every: 1}}}}
  ra: {{type: recorder, params: {{path: "{ra}", flush_every: 1}}}}
links:
  - {{from: tts.phonemes, to: rp.in, policy: block, size: 8}}
  - {{from: tts.audio, to: ra.in, policy: block, size: 64}}
""")
    runners.append(runner)
    assert runner.nodes_with("say") == ["tts"]
    answer = runner.call("tts", "say", {"session": "s", "text": "One sentence here. And another one follows."})
    assert answer["sentences"] == 2 and answer["pending_sentences"] == 1  # the first is being made
    with pytest.raises(CallRefused, match="nothing to say"):
        runner.call("tts", "say", {"session": "s", "text": ""})
    with pytest.raises(ParamRefused, match=rf"festival has no voice 'nope'; installed: .*{FESTIVAL_VOICE}"):
        runner.set_params("tts", voice="nope")

    def all_said() -> bool:
        stats = runner.stats()["nodes"]
        tts = stats["tts"]["node"]
        return (tts["sentences"] == 2 and tts["queued_chunks"] == 0 and not tts["synthesizing"] and
                stats["ra"]["node"]["written"] == stats["tts"]["outputs"]["tts.audio-ra.in"]["sent"])
    wait_until(all_said, 60, what="both sentences spoken")
    tts = runner.stats()["nodes"]["tts"]["node"]
    assert tts["engine"] == "festival" and tts["failed"] == 0 and tts["unknown_mnemonics"] == []
    phon, audio = read_recording(rp), read_recording(ra)
    assert len(phon) == 2 and phon[1].data["phonemes"][0][2] == phon[0].data["phonemes"][-1][3]
    assert_continuous(audio)
    assert audio[0].pts_ns == phon[0].pts_ns and audio_end(audio[-1]) == phon[1].data["phonemes"][-1][3]
    assert np.median(np.diff([m.pts_ns for m in audio])) == 20_000_000


def wait_for(h: NodeHarness, done, timeout: float = 30.0) -> None:
    """Drive a harness on the real clock's pace (festival works in real time on its thread)."""
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)
        h.advance(0.02)


def test_an_interrupt_drops_the_sentence_festival_is_making(festival: Festival) -> None:
    h = NodeHarness("text_phoneme", engine="festival", synth_ahead_ms=500.0)
    try:
        h.call("say", session="s", text="The first sentence is here. The second one follows it. A third one, too.")
        wait_for(h, lambda: phonemes_and_audio(h.outputs)[0])  # the first sentence made
        # the second is made once less than synth_ahead_ms of the first is left: interrupt then
        wait_for(h, lambda: h.node.stats()["synthesizing"])
        before = len(h.outputs)
        cut = h.call("say", session="s", text="Stop.", interrupt=True)
        assert cut["interrupted"]
        wait_for(h, lambda: h.node.stats()["sentences"] >= 2 and not h.node.stats()["synthesizing"]
                 and not h.node.stats()["pending_sentences"])
        h.advance(5.0)
        phon = [m for p, m in h.outputs[before:] if p == "phonemes" and m.data["phonemes"]]  # (not the mouth's cut)
        said = [[r[1] for r in m.data["phonemes"] if r[1] != "sil"] for m in phon]
        assert said == [["S", "T", "AA", "P"]]  # the sentence in the making when the cut came is dropped
        s_audio = [m for p, m in h.outputs[before:] if p == "audio"]
        assert_continuous(s_audio)
        assert audio_end(s_audio[-1]) == phon[0].data["phonemes"][-1][3]
    finally:
        h.close()
    assert h.node.festival is not None and h.node.festival.proc is None  # stopped in teardown


def test_festival_is_started_in_setup_and_stopped_in_teardown(festival: Festival) -> None:
    h = NodeHarness("text_phoneme", engine="festival")
    proc = h.node.festival.proc
    assert proc is not None and proc.poll() is None
    with pytest.raises(ParamError, match="festival has no voice 'nope'"):
        h.set_params(voice="nope")
    assert h.node.p.voice == ""
    h.close()
    assert proc.poll() is not None
