"""POST /speak and POST /say on a real graph (voice_in and text_phoneme into recorders) over a real
socket: a voice in as a WAV or a chunked PCM stream comes out sample for sample, paced at real
time; queue, interrupt and sessions; every bad input with its status and message, each followed
by a good request that still works."""
from __future__ import annotations

import concurrent.futures
import socket
import threading
import time
import urllib.parse
from typing import Any, Iterator

import httpx
import numpy as np
import pytest

from runtime.api import ApiConfig, ApiServer, make_token
from runtime.testing import start_graph
from tests.helpers import avatar, wait_until
from tests.speech_data import voice, wav_bytes, wav_header
from tests.voice_graph import Recorded, assert_continuous, downmix, end_of, voice_api_fixtures

SECRET = "voice-secret-" + "v" * 32
LONG = "Hello, I am the avatar. This voice comes in faster than real time, and plays out at real time."


folder, runner, secret_file, api, rec = voice_api_fixtures("voiceapi", SECRET)


def client(api: ApiServer, role: str = "operator") -> httpx.Client:
    return httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {make_token(SECRET, role)}"}, timeout=60)


def voice_stats(runner) -> dict[str, Any]:
    return runner.stats()["nodes"]["voice"]["node"]


def settled(runner) -> None:
    """Nothing is left open at the node."""
    wait_until(lambda: voice_stats(runner)["streams_open"] == 0, 10, what="every stream closed")


def post_wav(api, session: str, x: np.ndarray, **params: Any) -> httpx.Response:
    return client(api).post("/speak", params={"session": session, **params}, content=wav_bytes(x),
                             headers={"Content-Type": "audio/wav"})


def wait_for(rec: Recorded, session: str, n: int, timeout: float = 30) -> np.ndarray:
    wait_until(lambda: rec.count(session) >= n, timeout, what=lambda: f"{n} samples of '{session}' "
                                                                     f"(have {rec.count(session)})")
    return rec.samples(session)


def assert_good_request_works(api, rec, session: str) -> None:
    x = voice("Yes.")
    before = rec.count(session)
    r = post_wav(api, session, x)
    assert r.status_code == 200, r.text

    def said() -> bool:  # after whatever the session still had queued (an aborted upload's rest)
        got = rec.samples(session)
        return len(got) >= before + len(x) and np.array_equal(got[-len(x):], x)
    wait_until(said, 30, what=f"'{session}' to say 'Yes.'")


# --- a voice in ----------------------------------------------------------------------------------
def test_a_wav_upload_plays_sample_for_sample_at_real_time(api, runner, rec):
    x = voice(LONG)
    body = wav_bytes(x, 16000, channels=2)
    transcript = "Hello, I am the avatar — café"
    r = client(api).post("/speak", params={"session": "wav"}, content=body,
                         headers={"Content-Type": "audio/wav", "X-Transcript": urllib.parse.quote(transcript)})
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["session"] == "wav" and answer["node"] == "voice" and answer["bytes"] == len(body)
    assert answer["seconds"] == round(len(x) / 16000, 3) and answer["rate"] == 16000
    assert answer["queued_ms"] <= 2000 + 1100  # back-pressure: about the window (2 s) plus one piece ahead
    got = wait_for(rec, "wav", len(x))
    assert np.array_equal(got, x)  # both channels the voice: downmixed, it is the voice
    audio = rec.audio("wav")
    assert_continuous(audio)
    assert {len(m.arrays["pcm"]) for m in audio[:-1]} == {320} and audio[0].data == {"rate": 16000}
    assert all(t >= pts for pts, t in rec.arrivals("wav"))  # none came before its time: paced, not dumped
    assert rec.texts("wav") == [(transcript, audio[0].pts_ns), ("", end_of(audio[-1]))]
    assert voice_stats(runner)["full"] == 0
    settled(runner)


def test_a_chunked_pcm_stream_with_frames_cut_anywhere(api, runner, rec):
    left = voice()[:24000]
    right = (left // 2).astype(np.int16)
    raw = np.stack([left, right], axis=1).astype("<i2").tobytes()  # 8 kHz stereo s16le

    def body() -> Iterator[bytes]:  # no Content-Length: Transfer-Encoding: chunked
        for i in range(0, len(raw), 1001):
            yield raw[i:i + 1001]

    r = client(api).post("/speak", params={"session": "pcm", "rate": 8000, "channels": 2}, content=body(),
                         headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 200, r.text
    assert r.json()["bytes"] == len(raw) and r.json()["seconds"] == 3.0
    assert np.array_equal(wait_for(rec, "pcm", len(left)), downmix(left, right))
    audio = rec.audio("pcm")
    assert audio[0].data == {"rate": 8000} and {len(m.arrays["pcm"]) for m in audio} == {160}
    assert_continuous(audio)

    be = voice()[:8000]
    r = client(api).post("/speak", params={"session": "l16"}, content=be.astype(">i2").tobytes(),
                         headers={"Content-Type": "audio/L16; rate=16000; channels=1"})  # RFC 2586: big-endian
    assert r.status_code == 200, r.text
    assert np.array_equal(wait_for(rec, "l16", len(be)), be)
    settled(runner)


def test_silence_is_a_voice_too(api, runner, rec):
    r = post_wav(api, "quiet", np.zeros(8000, np.int16))
    assert r.status_code == 200 and r.json()["seconds"] == 0.5
    assert np.array_equal(wait_for(rec, "quiet", 8000), np.zeros(8000, np.int16))


def test_an_upload_queues_behind_the_sessions_speech(api, runner, rec):
    a, b = voice(LONG), voice("And then this.")
    first = post_wav(api, "queue", a, transcript="first")
    assert first.status_code == 200 and first.json()["queued_ms"] > 0  # answered while it still plays
    second = post_wav(api, "queue", b, transcript="second")
    assert second.status_code == 200
    assert np.array_equal(wait_for(rec, "queue", len(a) + len(b)), np.concatenate([a, b]))
    audio = rec.audio("queue")
    assert_continuous(audio)  # b starts exactly where a ends
    marks = rec.texts("queue")
    assert [t for t, _ in marks] == ["first", "", "second", ""]
    assert marks[1][1] == marks[2][1]  # a's end marker and b's transcript at the same pts


def test_an_interrupt_cuts_the_session_and_starts_now(api, runner, rec):
    a, c = voice(LONG), voice("Stop.")
    assert post_wav(api, "cut", a).status_code == 200  # ~2 s of it still queued
    t_cut = time.monotonic_ns()
    r = post_wav(api, "cut", c, interrupt="true")
    assert r.status_code == 200, r.text
    wait_until(lambda: rec.texts("cut")[-1:] == [("", rec.texts("cut")[-1][1])] and len(rec.texts("cut")) == 2, 20,
               what="both utterances ended")
    got = rec.samples("cut")
    head = len(got) - len(c)
    assert 0 < head < len(a) and np.array_equal(got[:head], a[:head]) and np.array_equal(got[head:], c)
    audio = rec.audio("cut")
    sizes = np.cumsum([0] + [len(m.arrays["pcm"]) for m in audio])
    cut = int(np.searchsorted(sizes, head))
    old, new = audio[:cut], audio[cut:]
    assert sizes[cut] == head
    assert_continuous(old)
    assert_continuous(new)
    assert new[0].pts_ns >= max(t_cut, end_of(old[-1]))  # c starts when the interrupt came, after what was sent,
    assert new[0].pts_ns < old[0].pts_ns + len(a) * 1_000_000_000 // 16000  # not after the rest of a
    assert rec.texts("cut") == [("", end_of(old[-1])), ("", end_of(new[-1]))]
    assert voice_stats(runner)["interrupted"] >= 1


def test_two_sessions_at_once_never_wait_for_each_other(api, runner, rec):
    big, quick = voice(LONG), voice("Me too.")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        slow = pool.submit(post_wav, api, "big", big)
        wait_until(lambda: rec.count("big") > 0, 20, what="the big upload playing")
        r = post_wav(api, "quick", quick)
        assert r.status_code == 200
        assert slow.result(60).status_code == 200
    wait_for(rec, "big", len(big))
    assert np.array_equal(wait_for(rec, "quick", len(quick)), quick)
    big_audio, quick_audio = rec.audio("big"), rec.audio("quick")
    assert quick_audio[0].pts_ns < end_of(big_audio[-1]) - 1_000_000_000  # played while big still played
    assert_continuous(big_audio)
    assert_continuous(quick_audio)
    arrivals = sorted([(t, "big") for _, t in rec.arrivals("big")] + [(t, "quick") for _, t in rec.arrivals("quick")])
    order = [s for _, s in arrivals]
    assert order.index("quick") < len(order) - order[::-1].index("big") - 1  # interleaved, not one after the other


# --- every bad input, and the next good request ---------------------------------------------------
@pytest.mark.parametrize("ctype, params, body, status, says", [
    ("audio/wav", {}, b"RIFX" + bytes(100), 422, "WAV: not a RIFF/WAVE file"),
    ("audio/wav", {}, b"ID3\x04" + bytes(100), 422, "not a RIFF/WAVE file"),
    ("audio/wav", {}, wav_header()[:20], 422, "truncated WAV header (20 bytes, then the end)"),
    ("audio/wav", {}, b"", 422, "empty: no WAV header"),
    ("audio/wav", {}, wav_header(tag=2, bits=4) + bytes(100), 422, "unsupported WAV format tag 2"),
    ("audio/x-wav", {}, wav_header(block=5, bits=40) + bytes(100), 422, "unsupported WAV sample width: 40-bit PCM"),
    ("audio/wave", {}, wav_header(rate=96000) + bytes(100), 422, "the WAV header says rate 96000, outside 8000 .. 48000"),
    ("audio/vnd.wave", {}, wav_header(channels=12, block=24) + bytes(100), 422, "the WAV header says 12 channels"),
    ("audio/pcm", {"rate": 4000}, bytes(100), 422, "rate 4000 is outside 8000 .. 48000 Hz"),
    ("audio/pcm", {"rate": 16000, "channels": 9}, bytes(100), 422, "channels 9 is outside 1 .. 8"),
    ("audio/pcm", {"rate": 16000, "format": "s8"}, bytes(100), 422, "unknown sample format 's8'; formats: u8, s16le"),
    ("application/octet-stream", {}, bytes(100), 422, "raw PCM needs its rate"),
    ("audio/L16; rate=fast", {}, bytes(100), 422, "the Content-Type's rate= must be an integer"),
    ("audio/pcm", {"rate": "fast"}, bytes(100), 422, "Input should be a valid integer"),
    ("audio/pcm", {"rate": 16000, "session": "s" * 1025}, bytes(100), 422, "at most 1024 characters"),
    ("text/plain", {}, bytes(100), 415, "Content-Type must be one of audio/wav"),
    ("audio/mpeg", {}, bytes(100), 415, "got 'audio/mpeg'"),
    (None, {}, bytes(100), 415, "got 'none'"),
], ids=["riff-x", "mp3", "truncated-header", "empty", "adpcm", "40-bit", "96-khz", "12-channels", "rate-4000",
        "9-channels", "format-s8", "pcm-without-rate", "l16-bad-rate", "query-rate-text", "long-session",
        "text-plain", "mpeg", "no-content-type"])
def test_bad_input_is_refused_with_its_reason(api, runner, rec, ctype, params, body, status, says):
    before = voice_stats(runner)["utterances"]
    headers = {"Content-Type": ctype} if ctype else {}
    c = client(api)
    c.headers.pop("Content-Type", None)
    r = c.post("/speak", params={"session": "bad", **params}, content=body, headers=headers)
    assert r.status_code == status, r.text
    assert says in str(r.json()["detail"]), r.text
    settled(runner)  # nothing left open
    assert voice_stats(runner)["utterances"] - before <= 1
    assert_good_request_works(api, rec, "bad")


def test_a_body_over_the_limit_is_413_before_or_while_it_streams(runner, rec, secret_file):
    with ApiServer(runner, ApiConfig(port=0, secret_file=str(secret_file), max_upload_bytes=100_000)) as small:
        before = voice_stats(runner)
        r = client(small).post("/speak", params={"session": "big-body", "rate": 16000}, content=bytes(200_000),
                               headers={"Content-Type": "audio/pcm"})
        assert r.status_code == 413 and r.json()["detail"] == "request body larger than 100000 bytes"
        assert voice_stats(runner)["utterances"] == before["utterances"]  # refused up front: nothing opened

        def chunked() -> Iterator[bytes]:
            for _ in range(30):
                yield bytes(5000)

        r = client(small).post("/speak", params={"session": "big-body", "rate": 16000}, content=chunked(),
                               headers={"Content-Type": "audio/pcm"})
        assert r.status_code == 413 and "larger than 100000 bytes" in r.json()["detail"]
        settled(runner)
        after = voice_stats(runner)
        assert after["utterances"] == before["utterances"] + 1 and after["aborted"] == before["aborted"] + 1
        assert rec.count("big-body") <= 50_000  # what came before the limit plays out, no more
        assert_good_request_works(small, rec, "big-body")


def test_a_client_that_disconnects_mid_body_ends_its_utterance_cleanly(api, runner, rec):
    before = voice_stats(runner)["aborted"]
    loud = np.full(32000, 12000, np.int16).astype("<i2").tobytes()
    head = (f"POST /speak?session=gone&rate=16000 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {make_token(SECRET, 'operator')}\r\nContent-Type: audio/pcm\r\n"
            f"Content-Length: {len(loud) * 4}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", api.port)) as sock:
        sock.sendall(head + loud)
        wait_until(lambda: rec.count("gone") > 0, 20, what="the upload playing")
    wait_until(lambda: voice_stats(runner)["aborted"] == before + 1, 10, what="the node told to abort")
    settled(runner)
    wait_until(lambda: rec.texts("gone") and rec.texts("gone")[-1][0] == "", 20, what="the utterance's end")
    got = rec.samples("gone")
    assert 0 < len(got) <= 32000 and np.all(got[:len(got) - 160] == 12000)
    assert got[-1] < 200  # the voice stops cleanly: faded, not cut
    assert_continuous(rec.audio("gone"))
    assert_good_request_works(api, rec, "gone")


def test_an_upload_that_stalls_is_ended_by_the_node(api, runner, rec):
    x = voice()[:4800]
    before = voice_stats(runner)["stalls"]
    go_on = threading.Event()

    def body() -> Iterator[bytes]:
        yield x.astype("<i2").tobytes()
        go_on.wait(30)  # the client goes quiet: the node's stall_timeout (1 s) ends the utterance
        yield bytes(3200)

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        response = pool.submit(lambda: client(api).post("/speak", params={"session": "stall", "rate": 16000},
                                                        content=body(), headers={"Content-Type": "audio/pcm"}))
        wait_until(lambda: voice_stats(runner)["stalls"] == before + 1, 20, what="the stall")
        go_on.set()
        r = response.result(30)
    assert r.status_code == 408 and "stall_timeout" in r.json()["detail"]
    assert np.array_equal(rec.samples("stall"), x)  # what came played, and the utterance ended
    assert rec.texts("stall") == [("", end_of(rec.audio("stall")[-1]))]
    settled(runner)
    assert_good_request_works(api, rec, "stall")


def test_the_token_is_checked_before_the_body_is_read(api, runner):
    before = voice_stats(runner)["utterances"]
    r = httpx.post(f"{api.url}/speak", content=wav_bytes(voice()), headers={"Content-Type": "audio/wav"})
    assert r.status_code == 401 and "needs a bearer token" in r.json()["detail"]
    r = client(api, "viewer").post("/speak", content=wav_bytes(voice()), headers={"Content-Type": "audio/wav"})
    assert r.status_code == 403 and "needs 'operator'" in r.json()["detail"]
    r = client(api, "viewer").post("/speak", params={"rate": "fast"}, content=b"", headers={"Content-Type": "audio/pcm"})
    assert r.status_code == 403  # before the query's validation, too
    r = client(api, "viewer").post("/say", json={"text": "hi"})
    assert r.status_code == 403
    assert voice_stats(runner)["utterances"] == before


def test_speak_picks_the_node_by_interface(api, runner):
    r = client(api).post("/speak", params={"node": "tts", "rate": 16000}, content=bytes(10),
                         headers={"Content-Type": "audio/pcm"})
    assert r.status_code == 422 and "node 'tts' is a text_phoneme, whose type does not declare the 'speak'" in r.text
    r = client(api).post("/speak", params={"node": "ghost", "rate": 16000}, content=bytes(10),
                         headers={"Content-Type": "audio/pcm"})
    assert r.status_code == 404 and "no node 'ghost' runs here" in r.json()["detail"]
    r = client(api).post("/speak", params={"node": "voice", "rate": 16000, "session": "named"}, content=bytes(640),
                         headers={"Content-Type": "audio/pcm"})
    assert r.status_code == 200 and r.json()["node"] == "voice"


# --- /say -------------------------------------------------------------------------------------------
def test_say_speaks_through_every_node_that_says_things(api, runner, rec):
    r = client(api).post("/say", json={"session": "said", "text": "Hello there. How are you?"})
    assert r.status_code == 200, r.text
    assert r.json() == {"nodes": {"tts": {"session": "said", "sentences": 2, "queued_s": 0.0, "interrupted": False,
                                          "pending_sentences": 1}}}
    wait_until(lambda: len(rec.phonemes("said")) == 2, 20, what="both sentences' phonemes")
    r = client(api).post("/say", json={"session": "said", "text": "", "interrupt": True, "node": "tts"})
    assert r.status_code == 200 and r.json()["nodes"]["tts"]["interrupted"]
    for body, status, says in [
        ({"session": "said", "text": ""}, 422, "nothing to say: the text is empty"),
        ({"text": "x" * 10001}, 422, "the text has 10001 characters, over the limit of 10000"),
        ({"text": "hi", "node": "voice"}, 422, "node 'voice' is a voice_in, whose type does not declare the 'say'"),
        ({"text": "hi", "node": "ghost"}, 404, "no node 'ghost' runs here"),
        ({"text": "hi", "mood": "sad"}, 422, "Extra inputs are not permitted"),
        ({"text": "hi", "session": ""}, 422, "at least 1 character"),
    ]:
        r = client(api).post("/say", json=body)
        assert r.status_code == status and says in str(r.json()["detail"]), (body, r.text)
    assert client(api).post("/say", json={"session": "said", "text": "Fine."}).status_code == 200


def test_say_and_speak_are_404_where_no_node_does_them():
    runner = start_graph("name: novoice\nnodes: {src: {type: testsrc, params: {rate: 10}}, sink: {type: fakesink}}\n"
                         "links: [src -> sink]")
    try:
        with ApiServer(runner, ApiConfig(port=0, insecure_local=True)) as api:  # and no token needed
            r = httpx.post(f"{api.url}/say", json={"text": "hi"})
            assert r.status_code == 404 and "no node that says things" in r.json()["detail"]
            r = httpx.post(f"{api.url}/speak?rate=16000", content=bytes(10), headers={"Content-Type": "audio/pcm"})
            assert r.status_code == 404 and "no node that takes speech" in r.json()["detail"]
    finally:
        runner.stop(drain=False)


def test_the_openapi_schema_documents_the_voice_endpoints(api):
    doc = httpx.get(f"{api.url}/openapi.json").json()
    assert {"/say", "/speak"} <= set(doc["paths"])
    assert "audio/wav" in doc["paths"]["/speak"]["post"]["requestBody"]["content"]
    assert doc["components"]["schemas"]["SayBody"]["properties"]["interrupt"]["type"] == "boolean"


def test_avatar_run_takes_an_upload_limit(graph_file, avatar_run, tmp_path):
    path = graph_file(f"""
        name: voice_cli
        nodes:
          voice: {{type: voice_in}}
          rec: {{type: recorder, params: {{path: "{tmp_path}/a.msgpack"}}}}
        links:
          - {{from: voice.audio, to: rec.in, policy: block, size: 64}}
        """)
    proc = avatar_run("run", path, "--no-control", "--api", "127.0.0.1:0", "--api-insecure-local",
                      "--api-max-upload", "2K")
    url = proc.wait_for(lambda m: m["type"] == "API_LISTENING")["url"]
    r = httpx.post(f"{url}/speak?rate=16000", content=bytes(3000), headers={"Content-Type": "audio/pcm"})
    assert r.status_code == 413 and r.json()["detail"] == "request body larger than 2048 bytes"
    r = httpx.post(f"{url}/speak?rate=16000", content=bytes(2000), headers={"Content-Type": "audio/pcm"})
    assert r.status_code == 200 and r.json()["seconds"] == pytest.approx(0.0625, abs=0.001)
    bad = avatar("run", path, "--no-control", "--api", "127.0.0.1:0", "--api-insecure-local", "--api-max-upload", "2X")
    assert bad.returncode == 2 and "a size is a number of bytes, optionally with K, M or G" in bad.stderr
    bad = avatar("run", path, "--no-control", "--api-max-upload", "2K")
    assert bad.returncode == 2 and "need --api HOST:PORT" in bad.stderr
