"""The WebSocket /speak on a real graph over a real socket: PCM and Opus utterances with
transcripts, one after another on a socket; back-pressure; interrupts from another client; every
bad message with what the server says and does (error and go on, or close with its code)."""
from __future__ import annotations

import json
from typing import Any

import httpx
import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from nodes.speech import OpusDecoder, to_int16
from runtime.api import ApiConfig, ApiServer, make_token
from tests.helpers import wait_until
from tests.speech_data import opus_packets, voice, wav_bytes
from tests.voice_graph import assert_continuous, end_of, voice_api_fixtures

SECRET = "socket-secret-" + "w" * 32
ORIGIN = "https://studio.example"
TEXT = "Hello, I am the avatar, and I speak over a WebSocket."


folder, runner, secret_file, api, rec = voice_api_fixtures("voicesocket", SECRET, cors_origins=[ORIGIN])


def url(api: ApiServer) -> str:
    return api.url.replace("http://", "ws://") + "/speak"


def bearer(role: str = "operator", subject: str | None = None) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_token(SECRET, role, subject=subject)}"}


def receive(ws: ClientConnection, kind: str | None = None, timeout: float = 20) -> dict[str, Any]:
    """The next message (of ``kind``: others, such as 'queued', are skipped)."""
    while True:
        msg = json.loads(ws.recv(timeout=timeout))
        if kind is None or msg["type"] == kind:
            return msg


def closed_with(ws: ClientConnection) -> tuple[int, str]:
    """Read until the server closes; its close code and reason."""
    with pytest.raises(ConnectionClosed) as exc:
        while True:
            ws.recv(timeout=20)
    assert exc.value.rcvd is not None
    return exc.value.rcvd.code, exc.value.rcvd.reason


def voice_stats(runner) -> dict[str, Any]:
    return runner.stats()["nodes"]["voice"]["node"]


def assert_socket_works(api: ApiServer) -> None:
    """After a bad client, the next good one is served."""
    with connect(url(api), additional_headers=bearer()) as ws:
        ws.send(json.dumps({"type": "start", "session": "after", "codec": "pcm", "rate": 16000}))
        receive(ws, "started")
        ws.send(bytes(640))
        ws.send(json.dumps({"type": "end"}))
        assert receive(ws, "ended")["samples"] == 320


def frames(x: np.ndarray, ms: int = 20, rate: int = 16000) -> list[bytes]:
    step = rate * ms // 1000
    return [x[i:i + step].astype("<i2").tobytes() for i in range(0, len(x), step)]


# --- utterances -----------------------------------------------------------------------------------
def test_pcm_utterances_one_after_another_on_one_socket(api, runner, rec):
    x, y = voice(TEXT), voice("And a second one.")
    with connect(url(api), additional_headers=bearer()) as ws:
        ws.send(json.dumps({"type": "start", "session": "ws", "codec": "pcm", "rate": 16000,
                            "transcript": "hello avatar"}))
        started = receive(ws)
        assert started["type"] == "started" and started["node"] == "voice" and started["session"] == "ws"
        assert started["rate"] == 16000 and started["codec"] == "pcm"
        for f in frames(x):  # as fast as the socket takes them: the server paces its reading
            ws.send(f)
        queued = receive(ws, "queued")
        assert 0 <= queued["ms"] <= 2000 + 100
        ws.send(json.dumps({"type": "end"}))
        ended = receive(ws, "ended")
        assert ended["reason"] == "end" and ended["samples"] == len(x) and ended["seconds"] == round(len(x) / 16000, 3)
        assert 0 < ended["queued_ms"] <= 2100  # answered while the last two seconds still play
        ws.send(json.dumps({"type": "start", "session": "ws", "codec": "pcm", "rate": 16000}))
        assert receive(ws, "started")["queued_ms"] > 0  # queued behind the first
        for f in frames(y):
            ws.send(f)
    # closing the socket ended the second utterance: it plays out
    wait_until(lambda: rec.count("ws") == len(x) + len(y), 30, what="both utterances played")
    assert np.array_equal(rec.samples("ws"), np.concatenate([x, y]))
    audio = rec.audio("ws")
    assert_continuous(audio)
    assert all(t >= pts for pts, t in rec.arrivals("ws"))  # paced: nothing before its time
    marks = rec.texts("ws")
    assert marks == [("hello avatar", audio[0].pts_ns), ("", marks[1][1]), ("", end_of(audio[-1]))]
    assert voice_stats(runner)["streams_open"] == 0


def test_opus_packets_from_a_browser_with_the_token_in_start(api, runner, rec):
    x = voice(TEXT, rate=48000)
    packets = opus_packets(x)
    with connect(url(api), origin=ORIGIN) as ws:  # a browser: no header, the token in the first message
        ws.send(json.dumps({"type": "start", "token": make_token(SECRET, "operator"), "session": "opus",
                            "codec": "opus", "channels": 1}))
        assert receive(ws)["rate"] == 48000
        ws.send(json.dumps({"type": "transcript", "text": TEXT}))
        for i, p in enumerate(packets):
            ws.send(p)
            if i == 10:
                ws.send(b"\xff\xfe\xfd")  # a packet that does not decode: said, dropped, and on we go
        error = receive(ws, "error")
        assert "an Opus packet of 3 bytes that does not decode" in error["error"]
        ws.send(json.dumps({"type": "end"}))
        ended = receive(ws, "ended")
    decoder = OpusDecoder()
    expected = to_int16(np.concatenate([decoder.decode(p) for p in packets]))
    assert ended["samples"] == len(expected)
    wait_until(lambda: rec.count("opus") == len(expected), 30, what="the Opus voice played")
    assert np.array_equal(rec.samples("opus"), expected)
    audio = rec.audio("opus")
    assert audio[0].data == {"rate": 48000} and {len(m.arrays["pcm"]) for m in audio[:-1]} == {960}
    assert_continuous(audio)
    assert [t for t, _ in rec.texts("opus")] == [TEXT, ""]


def test_an_http_upload_interrupts_a_socket_stream(api, runner, rec):
    x = voice(TEXT)
    with connect(url(api), additional_headers=bearer()) as ws:
        ws.send(json.dumps({"type": "start", "session": "talk", "codec": "pcm", "rate": 16000}))
        receive(ws, "started")
        for f in frames(x[:32000]):  # two seconds, queued
            ws.send(f)
        wait_until(lambda: rec.count("talk") > 0, 20, what="the socket's voice playing")
        stop = voice("Stop.")
        r = httpx.post(f"{api.url}/speak", params={"session": "talk", "interrupt": "true"}, content=wav_bytes(stop),
                       headers={"Content-Type": "audio/wav", **bearer()}, timeout=30)
        assert r.status_code == 200, r.text
        ws.send(frames(x[32000:])[0])
        assert receive(ws, "ended")["reason"] == "interrupted"
        ws.send(frames(x[32000:])[1])  # the utterance is over: audio without one is refused, once
        assert "send a 'start' first" in receive(ws, "error")["error"]
        ws.send(json.dumps({"type": "start", "session": "talk", "codec": "pcm", "rate": 16000}))
        assert receive(ws, "started")["type"] == "started"  # and the socket goes on
    wait_until(lambda: len(rec.texts("talk")) == 2, 20, what="both utterances ended")
    got = rec.samples("talk")
    assert np.array_equal(got[-len(stop):], stop) and len(got) < 32000 + len(stop)


def test_a_socket_that_goes_quiet_is_ended_by_the_node(api, runner, rec):
    before = voice_stats(runner)["stalls"]
    with connect(url(api), additional_headers=bearer()) as ws:
        ws.send(json.dumps({"type": "start", "session": "quiet", "codec": "pcm", "rate": 16000}))
        receive(ws, "started")
        ws.send(voice()[:3200].astype("<i2").tobytes())
        wait_until(lambda: voice_stats(runner)["stalls"] == before + 1, 20, what="the stall")
        assert receive(ws, "ended")["reason"] == "stall"  # told, though it sends nothing more
    assert np.array_equal(rec.samples("quiet"), voice()[:3200])


# --- what the server says to bad messages --------------------------------------------------------
@pytest.mark.parametrize("headers, first, code, says", [
    ({}, {"type": "start", "codec": "pcm", "rate": 16000}, 1008, "needs a bearer token"),
    ({}, {"type": "start", "token": "nonsense"}, 1008, "the token is not valid"),
    ({}, {"type": "start", "token": make_token(SECRET, "viewer")}, 1008, "role 'viewer' may not do this"),
    ({}, {"type": "end"}, 1008, "the first message must be a 'start' with a token"),
    ({}, b"\x00\x01", 1008, "the first message must be a 'start' with a token"),
    ({"Authorization": "Bearer nonsense"}, None, 1008, "the token is not valid"),
    ({"Authorization": f"Bearer {make_token(SECRET, 'viewer')}"}, None, 1008, "role 'viewer'"),
], ids=["no-token", "bad-token", "viewer-token", "end-first", "binary-first", "bad-header", "viewer-header"])
def test_a_socket_without_a_good_token_is_closed_1008(api, runner, headers, first, code, says):
    before = voice_stats(runner)["utterances"]
    with connect(url(api), additional_headers=headers) as ws:
        if first is not None:
            ws.send(first if isinstance(first, bytes) else json.dumps(first))
        error = receive(ws)
        assert error["type"] == "error" and says in error["error"]
        assert closed_with(ws)[0] == code
    assert voice_stats(runner)["utterances"] == before
    assert_socket_works(api)


def test_bad_messages_are_answered_and_the_socket_goes_on_where_it_can(api, runner, rec):
    with connect(url(api), additional_headers=bearer()) as ws:
        ws.send(b"\x00" * 640)
        assert "audio without an open utterance is dropped" in receive(ws, "error")["error"]
        ws.send(json.dumps({"type": "dance"}))
        assert "unknown message type 'dance'" in receive(ws, "error")["error"]
        ws.send(json.dumps({"type": "end"}))
        assert "no utterance is open" in receive(ws, "error")["error"]
        for start, says in [({"codec": "pcm", "rate": 4000}, "rate 4000 is outside 8000 .. 48000 Hz"),
                            ({"codec": "pcm"}, "raw PCM needs its rate"),
                            ({"codec": "pcm", "rate": 16000, "channels": 9}, "channels 9 is outside 1 .. 8"),
                            ({"codec": "pcm", "rate": 16000, "format": "s8"}, "unknown sample format 's8'"),
                            ({"codec": "wav"}, "codec must be one of pcm, opus on the WebSocket"),
                            ({"codec": "opus", "channels": 3}, "1 or 2 channels"),
                            ({"codec": "pcm", "rate": 16000, "session": "s" * 1025}, "at most 1024 characters"),
                            ({"codec": "pcm", "rate": 16000, "node": "tts"}, "does not declare the 'speak'")]:
            ws.send(json.dumps({"type": "start", **start}))
            assert says in receive(ws, "error")["error"], start
        ws.send(json.dumps({"type": "start", "session": "fixed", "codec": "pcm", "rate": 16000}))
        assert receive(ws, "started")["session"] == "fixed"  # and after all that, a good one works
        ws.send(voice()[:1600].astype("<i2").tobytes())
        ws.send(json.dumps({"type": "end"}))
        assert receive(ws, "ended")["samples"] == 1600
    wait_until(lambda: rec.count("fixed") == 1600, 10, what="the good utterance played")
    assert voice_stats(runner)["streams_open"] == 0


@pytest.mark.parametrize("message, code, says", [
    ("not json", 1007, "a text message must be a JSON object with a 'type'"),
    ("[1, 2]", 1007, "a JSON object with a 'type'"),
    (b"\x00" * (64 * 1024 + 1), 1009, None),  # over 64 KiB: uvicorn closes it (message too big)
], ids=["not-json", "not-an-object", "too-big"])
def test_a_broken_client_is_closed_with_its_code(api, runner, message, code, says):
    with connect(url(api), additional_headers=bearer(), max_size=None) as ws:
        ws.send(json.dumps({"type": "start", "session": "broken", "codec": "pcm", "rate": 16000}))
        receive(ws, "started")
        ws.send(message)
        if says is not None:
            assert says in receive(ws, "error")["error"]
        assert closed_with(ws)[0] == code
    wait_until(lambda: voice_stats(runner)["streams_open"] == 0, 10, what="the utterance ended with the socket")
    assert_socket_works(api)


def test_a_page_from_another_origin_is_refused(api, runner):
    with connect(url(api), origin="https://evil.example") as ws:
        assert "origin 'https://evil.example' is not allowed" in receive(ws, "error")["error"]
        assert closed_with(ws)[0] == 1008
    assert_socket_works(api)


def test_rate_limits_count_connections_not_messages(runner, secret_file):
    with ApiServer(runner, ApiConfig(port=0, secret_file=str(secret_file), rate=0.01, burst=2)) as api:
        with connect(url(api), additional_headers=bearer(subject="limits")) as ws:
            ws.send(json.dumps({"type": "start", "session": "limits", "codec": "pcm", "rate": 16000}))
            receive(ws, "started")
            for f in frames(voice()[:16000], ms=10):  # 100 messages on one connection: all taken
                ws.send(f)
            ws.send(json.dumps({"type": "end"}))
            assert receive(ws, "ended")["samples"] == 16000
        with connect(url(api), additional_headers=bearer(subject="limits")):  # the second connection: the burst's last
            pass
        with pytest.raises(InvalidStatus) as exc:
            connect(url(api), additional_headers=bearer(subject="limits"))
        assert exc.value.response.status_code == 403


def test_no_token_is_needed_on_an_insecure_local_api(runner, rec):
    with ApiServer(runner, ApiConfig(port=0, insecure_local=True)) as api:
        with connect(url(api)) as ws:
            ws.send(json.dumps({"type": "start", "session": "local", "codec": "pcm", "rate": 16000}))
            assert receive(ws, "started")["session"] == "local"
            ws.send(bytes(3200))
            ws.send(json.dumps({"type": "end"}))
            assert receive(ws, "ended")["samples"] == 1600
