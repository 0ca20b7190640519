"""The avatar speaks in a real browser: the voice plays in the page and the mouth moves with it.

Debian's Chromium (Playwright) and the graph run inside a private network namespace
(tests/browser.py). Pages may play sound without a click (``--autoplay-policy``), except in the
test of a browser that refuses it. The page's ears are its own: ``window.avatar.startRecording``
samples the level of the sound being heard (a WebAudio analyser; for WebRTC, on the audio track)
and every face frame it shows, with the jaw; the tests judge those recordings.

The pages decode every frame and set it on the mesh at its time, but do not draw it (``render=0``):
CI's Chromium draws on the CPU (SwiftShader), and on two cores that starved the page's timers (its
ears sampled as few as 25 times a second instead of 200) and the graph beside it. test_browser.py
judges the drawing.
"""
from __future__ import annotations

import ast
import json
import re
import shutil
import socket
import subprocess
import sys
import wave

import numpy as np
import pytest

from tests.browser import AUTOPLAY, launch, needs_chromium, new_page, until
from tests.helpers import ROOT, wait_until

pytestmark = needs_chromium

LOUD, QUIET = 0.02, 0.003  # RMS of the sound heard: speech, and silence
def shipped(name: str, as_name: str) -> str:
    """A graph of graphs/ as a user runs it, renamed (its control channel is the test's own)."""
    return (ROOT / "graphs" / f"{name}.yaml").read_text().replace(f"name: {name}\n", f"name: {as_name}\n", 1)


# the shipped graphs; the tests' args: no greeting, WebRTC candidates on the namespace's loopback
SAY = shipped("say", "browser-say")
SAY_ARGS = {"text": "", "repeat_s": 0, "ice": "[127.0.0.1]"}
TALK = shipped("talk", "browser-talk")
TALK_ARGS = {"ice": "[127.0.0.1]"}
SENTENCE = "The birch canoe slid on the smooth planks."  # 2.2 s of espeak-ng: about 130 face frames
LONG_SENTENCE = "Peter Piper picked a peck of pickled peppers, and the birch canoe slid on the smooth planks."  # 4.8 s


def with_api(graph, netns, text: str, /, **args):
    """Start a graph with its control API (unauthenticated, loopback only, the page's origin
    allowed), its sink told the API's URL; (process, page URL, API URL)."""
    web, api = (8080, 8081) if netns else (free_port(), free_port())
    proc, url = graph(text, "--api", f"127.0.0.1:{api}", "--api-insecure-local", "--api-cors", f"http://127.0.0.1:{web}",
                      port=web, api=f"http://127.0.0.1:{api}", **args)
    return proc, url, f"http://127.0.0.1:{api}"


def type_and_say(page, text: str, interrupt: bool = False) -> None:
    """What a user does: types the sentence in the page's text box and presses enter."""
    until(page, "!document.getElementById('say-form').hidden", 20, "the page's text box")
    page.fill("#say-text", text)
    if interrupt:
        page.check("#say-interrupt")
    page.press("#say-text", "Enter")
    until(page, "document.getElementById('say-text').value === ''", 10,
          "POST /say to answer (the box empties): " + page.inner_text("#speak-status"))


@pytest.fixture(scope="module")
def loud_browser(playwright, netns, tmp_path_factory):
    """Chromium that lets a page play sound before anyone clicks."""
    b = launch(playwright, netns, tmp_path_factory.mktemp("chromium"), AUTOPLAY)
    yield b
    b.close()


def avatar_cli(netns, *args: str) -> str:
    """``avatar ...`` inside the namespace (where the graph's control socket is); its output."""
    prefix = netns.prefix if netns else []
    r = subprocess.run([*prefix, sys.executable, "-m", "runtime.cli", *args], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout


def say(proc, netns, text: str) -> None:
    """Sets the text_phoneme's text live (``avatar set``)."""
    avatar_cli(netns, "set", "-g", "browser-say", "tts", f"text={text}")


def viewers(netns) -> int:
    return json.loads(avatar_cli(netns, "stats", "-g", "browser-say"))["nodes"]["web"]["node"]["viewers"]


def heard_and_shown(rec: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """From a page's recording: times (ms), the level heard then, and the jaw shown then."""
    face = np.array([(t, jaw) for t, _pts, _clock, jaw in rec["face"] if jaw is not None], dtype=np.float64)
    level = np.array([(t, rms) for t, rms, _clock in rec["level"]], dtype=np.float64)
    assert len(face) and len(level), "the page showed no frame or heard nothing"
    i = np.searchsorted(face[:, 0], level[:, 0], side="right") - 1
    jaw = np.where(i >= 0, face[np.clip(i, 0, None), 1], 0.0)
    return level[:, 0], level[:, 1], jaw


def record_speech(page, start) -> dict:
    """Record while ``start()`` makes the avatar speak, until the voice has been heard and then
    quiet for a second; the recording."""
    page.evaluate("() => window.avatar.startRecording()")
    start()
    until(page, f"window.avatar.recordingSummary({LOUD}).voiced >= 40", 30, "the voice, heard in the page")
    until(page, f"window.avatar.recordingSummary({LOUD}, {QUIET}).quietMs >= 1000", 30, "silence after the voice")
    return page.evaluate("() => window.avatar.stopRecording()")


def check_spoken(rec: dict) -> None:
    """The page played non-silent audio while the jaw moved, and was silent with the mouth closed
    after (over the last 400 ms of the second of silence: the lips take a few frames to close)."""
    t, level, jaw = heard_and_shown(rec)
    voiced = level > LOUD
    assert voiced.sum() >= 40, f"only {voiced.sum()} samples of audible voice"
    assert jaw.max() > 0.2, f"the jaw never opened (max {jaw.max():.2f})"
    assert (jaw[voiced] > 0.05).mean() > 0.6, f"the jaw was open in {(jaw[voiced] > 0.05).mean():.0%} of the voice"
    tail = t >= t[-1] - 400
    assert level[tail].max() < QUIET, "the voice did not end"
    assert jaw[tail].max() < 0.05, f"the mouth stayed open after the voice ({jaw[tail].max():.2f})"


def check_in_sync(page, at_most_ms: float = 40.0) -> np.ndarray:
    """Every frame shown on the voice's clock was shown within ``at_most_ms`` of its pts (the median
    well within half of that); the offsets."""
    sync = page.evaluate("() => window.avatar.sync")
    off = np.abs(np.array(sync["offsets"]))
    assert len(off) >= 30, f"only {len(off)} frames were shown on the voice's clock"
    assert np.median(off) < at_most_ms / 2 and np.percentile(off, 95) < at_most_ms, np.percentile(off, [50, 95, 100])
    assert sync["skew"] == 0
    return off


@pytest.mark.parametrize("transport", ["webrtc", "websocket"])
def test_text_typed_in_the_page_is_heard_while_the_jaw_moves_then_silence_and_a_closed_mouth(
        graph, loud_browser, netns, transport):
    proc, url, _ = with_api(graph, netns, SAY, **SAY_ARGS)
    page = new_page(loud_browser)
    try:
        page.goto(f"{url}?transport={transport}&render=0")
        until(page, "window.avatar && window.avatar.framesDecoded >= 30", 45, "first frames")
        rec = record_speech(page, lambda: type_and_say(page, SENTENCE))
        assert page.evaluate("() => window.avatar.transport") == transport
        assert page.evaluate("() => window.avatar.voice.kind") == ("rtp" if transport == "webrtc" else "opus")
        check_spoken(rec)
        check_in_sync(page)
        assert not page.errors, page.errors
    finally:
        page.context.close()


@pytest.mark.skipif(shutil.which("festival") is None, reason="festival is not installed (make test installs it)")
def test_festivals_voice_typed_in_the_page_is_heard_in_sync_with_the_jaw(graph, loud_browser, netns):
    """The shipped say.yaml with engine=festival, as docs/voice.md runs it."""
    proc, url, _ = with_api(graph, netns, SAY, engine="festival", **SAY_ARGS)
    page = new_page(loud_browser)
    try:
        page.goto(f"{url}?transport=webrtc&render=0")
        until(page, "window.avatar && window.avatar.framesDecoded >= 30", 45, "first frames")
        rec = record_speech(page, lambda: type_and_say(page, SENTENCE))
        check_spoken(rec)
        check_in_sync(page)
        tts = json.loads(avatar_cli(netns, "stats", "-g", "browser-say"))["nodes"]["tts"]["node"]
        assert tts["engine"] == "festival" and tts["sentences"] >= 1 and tts["failed"] == 0
        assert not page.errors, page.errors
    finally:
        page.context.close()


def test_a_page_without_an_opus_decoder_plays_the_pcm_fallback(graph, loud_browser, netns):
    proc, url = graph(SAY, **SAY_ARGS)
    page = new_page(loud_browser)
    try:
        page.add_init_script("delete window.AudioDecoder;")
        page.goto(f"{url}?transport=websocket&render=0")
        until(page, "window.avatar && window.avatar.framesDecoded >= 30", 45, "first frames")
        rec = record_speech(page, lambda: say(proc, netns, SENTENCE))
        assert page.evaluate("() => window.avatar.voice.kind") == "pcm"
        check_spoken(rec)
        check_in_sync(page)
    finally:
        page.context.close()


@pytest.fixture(scope="module")
def strict_browser(playwright, netns, tmp_path_factory):
    """Chromium that lets a page play sound only once the user has acted on it (desktop Chrome's
    default, said explicitly). Playwright's ``page.evaluate`` counts as the user acting (it runs
    with a user gesture), so a test of the refusal must not call it before the sound is refused."""
    b = launch(playwright, netns, tmp_path_factory.mktemp("chromium"), "--autoplay-policy=document-user-activation-required")
    yield b
    b.close()


def test_a_browser_that_refuses_autoplay_asks_for_a_click_and_the_face_moves_meanwhile(graph, strict_browser, netns):
    proc, url = graph(SAY, **SAY_ARGS)
    page = new_page(strict_browser)
    try:
        # Nothing may look into the page until the sound is refused: Playwright's evaluate and its
        # selector waits run with a user gesture, which lets the page play sound. The graph says
        # when the page is connected, the page's console when it holds the sound back.
        page.goto(f"{url}?transport=websocket&render=0")
        wait_until(lambda: viewers(netns) >= 1, 45, 0.2, "the page to connect")
        with page.expect_console_message(lambda m: "click to enable sound" in m.text, timeout=20_000):
            say(proc, netns, SENTENCE)
        assert page.is_visible("#sound")
        assert page.inner_text("#sound") == "click to enable sound"
        assert page.evaluate("() => window.avatar.voice.blocked")
        until(page, "window.avatar.influences('jawOpen') > 0.1", 20, "the mouth to move without the sound")
        assert page.evaluate("() => window.avatar.voiceClock") is None  # faces as they come: no clock without sound
        page.click("#sound")
        until(page, "!window.avatar.voice.blocked && document.getElementById('sound').hidden", 10, "the sound on")
        rec = record_speech(page, lambda: say(proc, netns, SENTENCE))
        check_spoken(rec)
    finally:
        page.context.close()


def test_a_viewer_joining_mid_sentence_hears_and_sees_the_rest_in_sync(graph, loud_browser, netns):
    proc, url = graph(SAY, **SAY_ARGS)
    first, late = new_page(loud_browser), new_page(loud_browser)
    try:
        first.goto(f"{url}?transport=webrtc&render=0")
        until(first, "window.avatar && window.avatar.framesDecoded >= 30", 45, "first frames")
        first.evaluate("() => window.avatar.startRecording()")
        say(proc, netns, " ".join([LONG_SENTENCE] * 2))  # about 10 s of speech: the late viewer gets 5 or more
        until(first, f"window.avatar.recordingSummary({LOUD}).voiced >= 100", 30, "the first viewer hearing it")
        late.goto(f"{url}?transport=webrtc&render=0")  # mid-sentence
        until(late, "window.avatar && window.avatar.framesDecoded >= 1", 45, "the late viewer's first frame")
        rec = record_speech(late, lambda: None)
        check_spoken(rec)
        check_in_sync(late)
    finally:
        first.context.close()
        late.context.close()


# --- any voice: POST /speak (curl), the WebSocket (the Python client of docs/voice.md) ----------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def speech_wav(path, rate: int = 16000, text: str = SENTENCE) -> np.ndarray:
    """espeak-ng saying ``text``, as a 16-bit mono WAV at ``rate``; the samples."""
    from nodes.speech import Resampler, speak

    audio, _ = speak(text)
    if rate != 16000:
        rs = Resampler(16000, rate)
        x = np.concatenate([rs.process(audio.astype(np.float32)), rs.flush()])
        audio = np.clip(np.rint(x), -32768, 32767).astype(np.int16)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(audio.astype("<i2").tobytes())
    return audio


def in_netns(netns, *cmd: str, stdin: bytes | None = None) -> str:
    """A command inside the namespace (where the API listens); its output. It must succeed."""
    r = subprocess.run([*(netns.prefix if netns else []), *cmd], input=stdin, capture_output=True, timeout=120)
    assert r.returncode == 0, (cmd, r.stdout, r.stderr)
    return r.stdout.decode()


def test_a_wav_posted_with_curl_is_heard_in_the_page_with_the_mouth_moving(graph, loud_browser, netns, tmp_path):
    proc, url, api = with_api(graph, netns, TALK, **TALK_ARGS)
    wav = tmp_path / "hello.wav"
    samples = speech_wav(wav, rate=22050)
    page = new_page(loud_browser)
    try:
        page.goto(f"{url}?transport=webrtc&render=0")
        until(page, "window.avatar && window.avatar.framesDecoded >= 30", 45, "first frames")
        answer: dict = {}
        rec = record_speech(page, lambda: answer.update(json.loads(in_netns(
            netns, "curl", "-sS", "--fail-with-body", "-H", "Content-Type: audio/wav", "--data-binary", f"@{wav}",
            f"{api}/speak?session=default&transcript={SENTENCE.replace(' ', '%20')}"))))
        assert answer["rate"] == 22050 and abs(answer["seconds"] - len(samples) / 22050) < 0.01, answer
        check_spoken(rec)
        check_in_sync(page)
    finally:
        page.context.close()


def test_a_chunked_pcm_stream_from_curl_is_heard_in_the_page(graph, loud_browser, netns, tmp_path):
    proc, url, api = with_api(graph, netns, TALK, **TALK_ARGS)
    pcm = speech_wav(tmp_path / "unused.wav")
    page = new_page(loud_browser)
    try:
        page.goto(f"{url}?transport=websocket&render=0")
        until(page, "window.avatar && window.avatar.framesDecoded >= 30", 45, "first frames")
        answer: dict = {}
        # curl -T - sends stdin with Transfer-Encoding: chunked, as a live stream is sent
        rec = record_speech(page, lambda: answer.update(json.loads(in_netns(
            netns, "curl", "-sS", "--fail-with-body", "-X", "POST", "-T", "-", "-H", "Content-Type: audio/pcm",
            f"{api}/speak?session=default&rate=16000", stdin=pcm.astype("<i2").tobytes()))))
        assert answer["bytes"] == 2 * len(pcm) and answer["rate"] == 16000, answer
        check_spoken(rec)
        check_in_sync(page)
    finally:
        page.context.close()


def test_the_websocket_client_of_the_docs_is_heard_in_the_page(graph, loud_browser, netns, tmp_path):
    doc = (ROOT / "docs" / "voice.md").read_text()
    client = re.search(r'```python\n("""Streams a 16-bit WAV.*?)```', doc, re.S).group(1)
    (tmp_path / "speak_ws.py").write_text(client)
    wav = tmp_path / "hello.wav"
    speech_wav(wav)
    proc, url, api = with_api(graph, netns, TALK, **TALK_ARGS)
    assert api == "http://127.0.0.1:8081" or not netns  # the client's address, as documented
    page = new_page(loud_browser)
    try:
        page.goto(f"{url}?transport=webrtc&render=0")
        until(page, "window.avatar && window.avatar.framesDecoded >= 30", 45, "first frames")
        out: list[str] = []
        rec = record_speech(page, lambda: out.append(in_netns(
            netns, sys.executable, str(tmp_path / "speak_ws.py"), str(wav), SENTENCE)))
        ended = ast.literal_eval(out[0].strip().splitlines()[-1])  # the client prints the last message it got
        assert ended["type"] == "ended" and ended["reason"] == "end", out
        check_spoken(rec)
    finally:
        page.context.close()


def fake_mic(playwright, netns, where, pcm48: np.ndarray):
    """Chromium whose microphone plays ``pcm48`` (48 kHz, looped), and lets pages play sound."""
    mic = where / "mic.wav"
    with wave.open(str(mic), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(48000)
        w.writeframes(pcm48.astype("<i2").tobytes())
    return launch(playwright, netns, where, AUTOPLAY, "--use-fake-ui-for-media-stream",
                  "--use-fake-device-for-media-stream", f"--use-file-for-fake-audio-capture={mic}")


@pytest.fixture(scope="module")
def mic_browser(playwright, netns, tmp_path_factory):
    """Its microphone says LONG_SENTENCE after a second of silence, again and again (the viewer may
    start hearing it anywhere: a short one left too little voice once on a loaded machine)."""
    where = tmp_path_factory.mktemp("mic")
    speech = speech_wav(where / "speech.wav", rate=48000, text=LONG_SENTENCE)
    b = fake_mic(playwright, netns, where, np.concatenate([np.zeros(48000, np.int16), speech]))
    yield b
    b.close()


@pytest.fixture(scope="module")
def silent_mic_browser(playwright, netns, tmp_path_factory):
    """Its microphone hears nothing at all."""
    b = fake_mic(playwright, netns, tmp_path_factory.mktemp("silent-mic"), np.zeros(2 * 48000, np.int16))
    yield b
    b.close()


def present(url: str, browser) -> tuple:
    """A presenter's page (decode only) and a viewer's page of the session; the viewer recording,
    the presenter's microphone on. (presenter, viewer)."""
    presenter, viewer = new_page(browser), new_page(browser)
    presenter.goto(f"{url}?transport=webrtc&render=0")
    viewer.goto(f"{url}?transport=webrtc&render=0")
    until(viewer, "window.avatar && window.avatar.framesDecoded >= 30", 45, "the viewer's first frames")
    until(presenter, "!document.getElementById('mic').hidden", 20, "the presenter's microphone button")
    viewer.evaluate("() => window.avatar.startRecording()")
    presenter.click("#mic")
    until(presenter, "window.avatar.microphone.on && window.avatar.microphone.sent.frames > 0", 20,
          "the microphone streaming: " + presenter.inner_text("#speak-status"))
    return presenter, viewer


def test_a_microphone_in_one_page_moves_the_mouth_in_another(graph, mic_browser, netns):
    proc, url, api = with_api(graph, netns, TALK, **TALK_ARGS)
    presenter = viewer = None
    try:
        presenter, viewer = present(url, mic_browser)
        until(viewer, f"window.avatar.recordingSummary({LOUD}).voiced >= 40", 40, "the viewer hearing the microphone")
        until(viewer, f"window.avatar.recordingSummary({LOUD}, {QUIET}).quietMs >= 600", 30, "the pause in it")
        rec = viewer.evaluate("() => window.avatar.stopRecording()")
        assert presenter.evaluate("() => window.avatar.voice.muted")  # the presenter does not hear itself late
        presenter.click("#mic")  # off
        until(presenter, "!window.avatar.microphone.on", 10, "the microphone off")
        t, level, jaw = heard_and_shown(rec)
        voiced = level > LOUD
        assert jaw.max() > 0.2 and (jaw[voiced] > 0.05).mean() > 0.5, (jaw.max(), (jaw[voiced] > 0.05).mean())
        assert not presenter.evaluate("() => window.avatar.voice.muted")
        assert not presenter.errors and not viewer.errors, (presenter.errors, viewer.errors)
    finally:
        for pg in (presenter, viewer):
            if pg is not None:
                pg.context.close()


STALLING_CLIENT = '''
import json, sys, time, wave
from websockets.sync.client import connect

with wave.open(sys.argv[1]) as wav, connect(sys.argv[2]) as ws:
    ws.send(json.dumps({"type": "start", "session": "default", "codec": "pcm", "rate": wav.getframerate()}))
    ws.recv()
    frames = wav.getframerate() // 50
    t0 = time.monotonic()
    for i in range(int(sys.argv[3])):  # part of the sentence, at real time, then nothing: a stalled stream
        ws.send(wav.readframes(frames))
        time.sleep(max(0.0, t0 + (i + 1) / 50 - time.monotonic()))
    while (msg := json.loads(ws.recv()))["type"] != "ended":
        pass
    print(json.dumps(msg))
'''


def test_a_voice_that_stalls_mid_sentence_ends_cleanly_and_the_mouth_closes(graph, loud_browser, netns, tmp_path):
    (tmp_path / "stall.py").write_text(STALLING_CLIENT)
    wav = tmp_path / "hello.wav"
    speech_wav(wav, text=LONG_SENTENCE)
    proc, url, api = with_api(graph, netns, TALK, **TALK_ARGS)
    page = new_page(loud_browser)
    try:
        page.goto(f"{url}?transport=websocket&render=0")
        until(page, "window.avatar && window.avatar.framesDecoded >= 30", 45, "first frames")
        out: list[str] = []
        rec = record_speech(page, lambda: out.append(in_netns(
            netns, sys.executable, str(tmp_path / "stall.py"), str(wav), api.replace("http", "ws") + "/speak", "150")))
        assert json.loads(out[0])["reason"] == "stall", out  # the node ended the stream that stopped coming
        # the three seconds it got (of 4.8: past "Peter Piper picked a peck of pickled peppers", whose
        # closed lips alone left the jaw shut in up to 41 % of the voice) were heard with the mouth
        # moving, then silence, mouth closed
        check_spoken(rec)
    finally:
        page.context.close()


def test_a_microphone_that_sends_silence_streams_and_moves_nothing(graph, silent_mic_browser, netns):
    proc, url, api = with_api(graph, netns, TALK, **TALK_ARGS)
    presenter = viewer = None
    try:
        presenter, viewer = present(url, silent_mic_browser)
        until(presenter, "window.avatar.microphone.sent.frames >= 150", 30, "three seconds of the silent microphone")
        more_frames = viewer.evaluate("() => window.avatar.framesShown") + 60
        until(viewer, f"window.avatar.framesShown >= {more_frames}", 20, "the viewer's face going on")
        rec = viewer.evaluate("() => window.avatar.stopRecording()")
        assert presenter.evaluate("() => window.avatar.microphone.on")  # still streaming: silence is no error
        presenter.click("#mic")
        t, level, jaw = heard_and_shown(rec)
        assert level.max() < LOUD and jaw.max() < 0.1, (level.max(), jaw.max())  # breathing, no speech
        stats = json.loads(avatar_cli(netns, "stats", "-g", "browser-talk"))["nodes"]
        assert stats["voice"]["node"]["refused"] == 0 and stats["voice"]["state"] == "PLAYING"
        assert not presenter.errors and not viewer.errors, (presenter.errors, viewer.errors)
    finally:
        for pg in (presenter, viewer):
            if pg is not None:
                pg.context.close()
