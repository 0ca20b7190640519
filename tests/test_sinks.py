"""websocket_sink and webrtc_sink: real graphs (one process per node), real sockets on 127.0.0.1,
real clients (the ``websockets`` library, an aiortc peer, httpx); plus the viewer registry alone."""
from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import socket
import struct
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import msgpack
import numpy as np
import pytest
import websockets

from nodes import wire as wf
from nodes.delivery import Viewers, restrict_host_addresses
from nodes.wire import is_keyframe, packet_facts, packet_seq, packet_sid
from runtime import ParamRefused
from runtime.recording import read_records
from runtime.testing import start_graph
from tests.helpers import ROOT, wait_gone, wait_until

TAKE = ROOT / "tests" / "data" / "llf_dao_take.csv"


# --- graphs -----------------------------------------------------------------------------------
def sink_graph(sink: str = "websocket_sink", speed: float = 2.0, feedback: bool = True, record: Path | None = None,
               **params: Any) -> str:
    """arkit_replay (the take, looped, session s1) -> compressor -> the sink on a free port."""
    nodes = {
        "take": {"type": "arkit_replay", "params": {"path": str(TAKE), "loop": True, "speed": speed, "session": "s1"}},
        "encode": {"type": "compressor", "params": {"keyframe_interval": 60}},
        "sink": {"type": sink, "params": {"port": 0, **params}},
    }
    links: list[Any] = ["take -> encode.in", {"from": "encode", "to": "sink", "policy": "block", "size": 64}]
    if feedback:
        links.append({"from": "sink.requests", "to": "encode.requests", "feedback": True})
    if record is not None:
        nodes["rec"] = {"type": "recorder", "params": {"path": str(record), "flush_every": 1}}
        links.append({"from": "sink.requests", "to": "rec.in", "policy": "block", "size": 64})
    return json.dumps({"name": f"sinks_{sink}", "nodes": nodes, "links": links})


@pytest.fixture
def graph() -> Iterator[Callable[..., tuple[Any, int]]]:
    """Starts a sink graph; returns (runner, the sink's port). Stops it after the test and checks
    that every node process is gone."""
    started = []

    def start(**kw: Any) -> tuple[Any, int]:
        runner = start_graph(sink_graph(**kw))
        started.append(runner)
        return runner, sink_stats(runner)["port"]

    yield start
    for runner in started:
        pids = list(runner.pids().values())
        runner.stop(drain=False)
        assert wait_gone(pids) == [], "a node process outlived the graph"


def sink_stats(runner: Any) -> dict:
    return runner.stats()["nodes"]["sink"]["node"]


def wait_stats(runner: Any, pred: Callable[[dict], bool], timeout: float = 5.0) -> dict:
    """The sink's stats once ``pred`` holds, or the last ones after ``timeout`` for the caller to assert."""
    try:
        return wait_until(lambda: st if pred(st := sink_stats(runner)) else None, timeout, 0.05)
    except AssertionError:
        return sink_stats(runner)


async def receive_packets(ws: Any, n: int, echo: bool = False, timeout: float = 10.0) -> tuple[list, list[dict]]:
    """The first ``n`` binary messages (decoded with the reference decoder) and the JSON ones between."""
    dec = wf.Decoder()
    frames, texts = [], []
    async with asyncio.timeout(timeout):
        while len(frames) < n:
            m = await ws.recv()
            if isinstance(m, str):
                texts.append(json.loads(m))
                continue
            if not frames:
                assert is_keyframe(m), "the first packet a viewer gets must be a keyframe"
            frame = dec.decode(m)
            assert frame is not None, f"packet {len(frames)} refused: {dec.status}"
            frames.append(frame)
            if echo:
                await ws.send(json.dumps({"type": "echo", "session": frame.session, "seq": frame.seq}))
    assert dec.counts["lost"] == dec.counts["refused"] == dec.counts["malformed"] == 0, dec.counts
    return frames, texts


def check_frames(frames: list) -> None:
    assert frames[0].keyframe
    assert {f.session for f in frames} == {"s1"}
    assert all(f.names == wf.TABLE_ARKIT52 and f.weights.shape == (52,) for f in frames)
    seqs = np.array([f.seq for f in frames])
    assert np.all(np.diff(seqs) % wf.SEQ_MOD == 1), "gaps in the packet seq"


# --- 1. WebSocket -------------------------------------------------------------------------------
def test_websocket_viewer_decodes_every_packet_from_a_keyframe_and_echoes_give_latency(graph) -> None:
    runner, port = graph()

    async def view() -> tuple[dict, list, list[dict]]:
        async with websockets.connect(f"ws://127.0.0.1:{port}/ws") as ws:
            hello = json.loads(await ws.recv())
            await ws.send(json.dumps({"type": "subscribe", "session": "s1"}))
            frames, texts = await receive_packets(ws, 100, echo=True)
            return hello, frames, texts

    hello, frames, texts = asyncio.run(view())
    assert hello["type"] == "hello" and hello["transport"] == "websocket"
    assert hello["session"] is None and isinstance(hello["sessions"], list)
    assert {"type": "subscribed", "session": "s1", "lod": None} in texts
    check_frames(frames)

    st = wait_stats(runner, lambda s: s["echoes"] >= 90 and s["sent"] >= 100)
    assert st["echoes"] >= 90
    assert 0 < st["echo_latency_us_p50"] <= st["echo_latency_us_p99"]
    assert st["sent"] >= 100 and st["keyframe_requests"] >= 1
    # the feedback link took the subscription's keyframe request to the compressor
    assert runner.stats()["nodes"]["encode"]["node"]["keyframe_requests"] >= 1
    config = httpx.get(f"http://127.0.0.1:{port}/config.json").json()
    assert config == {"transports": ["websocket"], "ice_servers": [], "api": None, "sink": "sink", "audio": False}
    assert not runner.bus.messages("ERROR")


# --- 2. slow and dead viewers -----------------------------------------------------------------
def _raw_websocket(port: int, path: str) -> socket.socket:
    """A WebSocket handshake by hand, so the test controls the socket (and can reset it)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    key = base64.b64encode(b"0123456789abcdef").decode()
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return s


def test_a_slow_viewer_drops_its_oldest_packets_and_holds_up_nobody_a_dead_one_goes(graph) -> None:
    runner, port = graph(speed=10.0)  # 600 packets/s: the slow viewer's buffers fill within a second

    async def view() -> list:
        # slow: a tiny receive buffer, and the client library stops reading after one message
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
        raw.connect(("127.0.0.1", port))
        slow = await websockets.connect(  # noqa: F841 - held open (never read): the slow viewer
            f"ws://127.0.0.1:{port}/ws?session=s1", sock=raw, max_queue=1)
        dead = _raw_websocket(port, "/ws?session=s1")
        dead.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        dead.close()  # a reset, no close handshake
        try:
            async with websockets.connect(f"ws://127.0.0.1:{port}/ws?session=s1") as fast:
                frames, _ = await receive_packets(fast, 1200)
                st = await asyncio.to_thread(wait_stats, runner, lambda s: s["drops"] > 0 and s["viewers"] == 2)
                return frames, st
        finally:
            raw.close()

    frames, st = asyncio.run(view())
    check_frames(frames)  # the fast viewer: every packet, in order, decodable
    assert st["viewers"] == 2 and st["disconnected"] >= 1, st  # the reset one is gone
    by_sent = sorted(st["viewer_list"], key=lambda v: v["sent"])
    slow, fast = by_sent[0], by_sent[-1]
    assert slow["drops"] > 0 and fast["drops"] == 0, st["viewer_list"]
    assert st["drops"] >= slow["drops"]
    # nor the pipeline: the fast viewer got 1200 consecutive packets while the slow one was stuck
    assert slow["sent"] < fast["sent"] / 2
    assert st["overruns"] == 0 and st["rejected"] == 0


# --- 3. WebRTC --------------------------------------------------------------------------------
def test_webrtc_viewer_gets_every_packet_on_its_data_channel(graph) -> None:
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    runner, port = graph(sink="webrtc_sink", ice_addresses=["127.0.0.1"])
    restrict_host_addresses(["127.0.0.1"])  # this process's peer too: loopback only

    async def view() -> tuple[list, list[dict]]:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        avatar = pc.createDataChannel("avatar", ordered=False, maxRetransmits=0)
        control = pc.createDataChannel("control")
        packets: asyncio.Queue = asyncio.Queue()
        texts: list[dict] = []
        avatar.on("message", packets.put_nowait)
        control.on("message", lambda m: texts.append(json.loads(m)))
        try:
            await pc.setLocalDescription(await pc.createOffer())
            async with httpx.AsyncClient() as http:
                r = await http.post(f"http://127.0.0.1:{port}/rtc/offer",
                                    json={"sdp": pc.localDescription.sdp, "type": "offer", "session": "s1"})
            assert r.status_code == 200, r.text
            await pc.setRemoteDescription(RTCSessionDescription(**r.json()))
            dec, frames = wf.Decoder(), []
            async with asyncio.timeout(10):
                while len(frames) < 100:
                    m = await packets.get()
                    if not frames:
                        assert is_keyframe(m)
                    frame = dec.decode(m)
                    assert frame is not None, dec.status
                    frames.append(frame)
                    control.send(json.dumps({"type": "echo", "session": frame.session, "seq": frame.seq}))
            return frames, texts
        finally:
            await pc.close()

    try:
        frames, texts = asyncio.run(view())
    finally:
        restrict_host_addresses([])  # aioice's own again
    check_frames(frames)
    assert texts[0]["type"] == "hello" and texts[0]["transport"] == "webrtc" and texts[0]["session"] == "s1"
    st = wait_stats(runner, lambda s: s["echoes"] >= 50 and s["peers"] == s["viewers"] == 0)
    assert st["offers"] == 1 and st["echoes"] >= 50 and st["echo_latency_us_p50"] > 0
    assert st["peers"] == 0 and st["viewers"] == 0  # the closed peer connection took its viewer


# --- 4. HTTP: the page, its headers, /config.json, bad offers ---------------------------------
IMPORTMAP = '\n  {"imports": {"three": "./node_modules/three/build/three.module.js"}}\n  '
PAGE = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>t</title>
<script type="importmap">{IMPORTMAP}</script>
<script type="module" src="js/main.js"></script>
</head><body>avatar test page</body></html>
"""


def test_http_serves_the_page_with_a_csp_hashing_its_import_map_and_refuses_bad_offers(graph, tmp_path) -> None:
    (tmp_path / "js").mkdir()
    (tmp_path / "index.html").write_text(PAGE)
    (tmp_path / "js" / "main.js").write_text("export const x = 1;\n")
    stun = [{"urls": "stun:stun.example.org:3478"}]
    runner, port = graph(sink="webrtc_sink", web_root=str(tmp_path), api="http://127.0.0.1:9999/api",
                         ice_servers=stun, feedback=False)
    base = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=base) as http:
        page = http.get("/")
        assert page.status_code == 200 and "avatar test page" in page.text
        csp = dict(d.strip().split(" ", 1) for d in page.headers["content-security-policy"].split(";"))
        digest = base64.b64encode(hashlib.sha256(IMPORTMAP.encode()).digest()).decode()
        assert csp["script-src"].split() == ["'self'", f"'sha256-{digest}'"]
        assert "http://127.0.0.1:9999" in csp["connect-src"].split() and "'self'" in csp["connect-src"]
        assert "ws://127.0.0.1:9999" in csp["connect-src"].split()  # the API's WebSocket (a microphone)
        assert csp["object-src"] == "'none'" and csp["frame-ancestors"] == "'none'"
        for r in (page, http.get("/js/main.js"), http.get("/config.json"), http.get("/nothing-here")):
            assert r.headers["x-content-type-options"] == "nosniff"
            assert r.headers["referrer-policy"] == "no-referrer"
            assert "content-security-policy" in r.headers
        assert http.get("/js/main.js").headers["content-type"].startswith("text/javascript")
        assert http.get("/nothing-here").status_code == 404
        assert http.get("/config.json").json() == {"transports": ["webrtc", "websocket"], "ice_servers": stun,
                                                   "api": "http://127.0.0.1:9999/api", "sink": "sink", "audio": False}

        def offer(body: Any, raw: bytes | None = None) -> httpx.Response:
            if raw is not None:
                return http.post("/rtc/offer", content=raw, headers={"content-type": "application/json"})
            return http.post("/rtc/offer", json=body)

        r = offer(None, raw=b"{not json")
        assert r.status_code == 400 and "JSON" in r.json()["detail"]
        r = offer({})
        assert r.status_code == 422
        detail = " ".join(r.json()["detail"])
        assert "'sdp'" in detail and "'type'" in detail
        r = offer({"sdp": "v=0\r\n", "type": "offer", "lod": 7, "colour": 1})
        assert r.status_code == 422
        detail = " ".join(r.json()["detail"])
        assert "no data channel" in detail and "'lod'" in detail and "colour" in detail
        r = offer({"sdp": "v=0\r\nm=application nonsense\r\n", "type": "offer"})
        assert r.status_code == 400 and r.json()["detail"].startswith("bad offer")
        assert r.headers["content-type"] == "application/json"
    st = sink_stats(runner)
    assert st["offers"] == 4 and st["offers_refused"] == 4 and st["peers"] == 0
    assert st["csp_script_hashes"] == 1
    # live params: a bad URL is refused with the reason (the old one stays), a good one shows at once
    with pytest.raises(ParamRefused, match=r"param 'api': must be an http\(s\) URL"):
        runner.set_params("sink", api="ftp://nowhere")
    assert runner.stats()["nodes"]["sink"]["params"]["api"] == "http://127.0.0.1:9999/api"
    assert runner.graph.nodes["sink"].params["api"] == "http://127.0.0.1:9999/api"
    runner.set_params("sink", api="https://control.example:8443")
    assert httpx.get(f"{base}/config.json").json()["api"] == "https://control.example:8443"


# --- 5. the requests pad ----------------------------------------------------------------------
def test_subscriptions_ask_upstream_for_keyframes_and_levels_on_the_requests_pad(graph, tmp_path) -> None:
    out = tmp_path / "requests.msgpack"
    runner, port = graph(record=out, feedback=False, keyframe_min_interval_ms=0.0)  # no rate limit: every ask goes

    async def view() -> list[dict]:
        async with websockets.connect(f"ws://127.0.0.1:{port}/ws?session=s1&lod=2") as ws:
            _, texts = await receive_packets(ws, 5)  # a keyframe came: the periodic one at the latest
            await ws.send(json.dumps({"type": "keyframe"}))
            await ws.send(json.dumps({"type": "subscribe", "session": "s1", "lod": 9}))
            async with asyncio.timeout(5):
                while not any(t["type"] == "error" for t in texts):
                    m = await ws.recv()
                    if isinstance(m, str):
                        texts.append(json.loads(m))
            return texts

    texts = asyncio.run(view())
    assert {"type": "subscribed", "session": "s1", "lod": 2} in texts
    error = next(t for t in texts if t["type"] == "error")
    assert "'lod'" in error["error"]
    wait_stats(runner, lambda s: s["viewers"] == 0 and s["keyframe_requests"] >= 2)

    def level_back_recorded() -> bool:  # the last request (the default level again) reached the recorder
        try:
            return any(r["data"].get("lod") == {"s1": None} for r in read_records(out))
        except (OSError, ValueError):
            return False  # not written yet, or a record half-flushed

    wait_until(level_back_recorded, 10, what="the request for the default level at the recorder")
    runner.stop(drain=False)
    recs = list(read_records(out))
    assert recs and all(r["caps"] == "avatar/request" for r in recs)
    keyframes = [s for r in recs for s in r["data"]["keyframe"]]
    levels = [r["data"]["lod"] for r in recs if "lod" in r["data"]]
    assert keyframes.count("s1") >= 2  # the subscription, then the viewer's own request
    assert levels == [{"s1": 2}, {"s1": None}]  # its level while it watched, back to the default after


# --- the viewer registry alone ----------------------------------------------------------------
def _packets(frames: int, sessions: list[str], keyframe_interval: int = 60) -> list[list[bytes]]:
    enc = wf.Encoder(keyframe_interval=keyframe_interval)
    rng = np.random.default_rng(1)
    w = rng.uniform(0, 1, (len(sessions), 52)).astype(np.float32)
    out = []
    for i in range(frames):
        w = np.clip(w + rng.normal(0, 0.01, w.shape), 0, 1).astype(np.float32)
        out.append(enc.encode(sessions, w, i * 16_666_667, wf.TABLE_ARKIT52))
    return out


def test_packet_seq_and_keyframe_peeks_agree_with_the_parser() -> None:
    for batch in _packets(300, ["a", "b", "c"], keyframe_interval=50):
        for p in batch:
            parsed = wf.parse_packet(p)
            assert (is_keyframe(p), packet_seq(p), packet_sid(p)) == (parsed.keyframe, parsed.seq, parsed.sid)
    # large sids and seqs: a hand-made delta header (eg(0) sid, u(16) seq) and keyframe
    for sid, seq in ((0, 0), (1, 65535), (300, 40000), (65535, 12345)):
        x = sid + 1
        bits = "0" * (x.bit_length() - 1) + format(x, "b") + format(seq, "016b") + "1"
        bits += "0" * (-len(bits) % 8)
        delta = msgpack.packb(int(bits, 2).to_bytes(len(bits) // 8, "big"), use_bin_type=True)
        key = msgpack.packb([2, sid, seq, 1000, "s", 1, 8, 0, b"\0" * 52], use_bin_type=True)
        assert (is_keyframe(delta), packet_seq(delta), packet_sid(delta)) == (False, seq, sid)
        assert (is_keyframe(key), packet_seq(key), packet_sid(key)) == (True, seq, sid)
    assert packet_seq(b"") == packet_seq(b"\xc0") == packet_sid(b"") == packet_sid(b"\xc0") == -1


def test_the_encoder_states_each_rows_keyframe_flag_and_seq() -> None:
    enc = wf.Encoder(keyframe_interval=7)
    w = np.random.default_rng(2).uniform(0, 1, (3, 52)).astype(np.float32)
    for i in range(30):
        if i == 11:
            enc.request_keyframe(["b"])
        out = enc.encode_batch(["a", "b", "c"], w, i * 16_666_667, wf.TABLE_ARKIT52)
        parsed = [wf.parse_packet(p) for p in out.packets]
        assert out.keyframe.tolist() == [p.keyframe for p in parsed]
        assert out.seq.tolist() == [p.seq for p in parsed]


class _FakeTransport:
    kind = "fake"
    framing_bytes = 60
    bundle_s = 0.0
    probe_train = False

    def __init__(self) -> None:
        self.packets: list[bytes] = []
        self.texts: list[dict] = []
        self.open = asyncio.Event()
        self.open.set()

    async def send_bytes(self, data: bytes) -> None:
        await self.open.wait()
        self.packets.append(data)

    async def send_text(self, text: str) -> None:
        self.texts.append(json.loads(text))

    send_lossy = send_text

    async def close(self) -> None:
        pass


def test_viewers_split_batches_wait_for_keyframes_and_drop_the_oldest_when_slow() -> None:
    batches = _packets(130, ["a", "b"])
    clock = [0]
    requests: list[dict] = []

    async def run() -> None:
        reg = Viewers(queue_size=4, keyframe_min_interval_ns=100_000_000, session_timeout_ns=3_000_000_000,
                      request=requests.append, clock=lambda: clock[0])
        fast, slow, other = _FakeTransport(), _FakeTransport(), _FakeTransport()
        vf, vs = reg.add(fast, "a", None, subscribe=True), reg.add(slow, "a", 1, subscribe=True)
        vo = reg.add(other)  # connected, not subscribed: gets nothing
        slow.open.clear()  # the slow viewer takes nothing for now
        assert requests == [{"keyframe": ["a"]}, {"lod": {"a": 1}}]  # the second keyframe ask is rate-limited
        for i, batch in enumerate(batches[1:60], start=1):  # starts mid-stream: no keyframe until frame 60
            clock[0] = i * 16_666_667
            reg.dispatch(["a", "b"], batch, clock[0], *packet_facts(batch))
            await asyncio.sleep(0)
        assert fast.packets == [] and vf.skipped == 59  # never a delta before a keyframe
        for i, batch in enumerate(batches[60:], start=60):
            clock[0] = i * 16_666_667
            reg.dispatch(["a", "b"], batch, clock[0], *packet_facts(batch))
            await asyncio.sleep(0)
        dec = wf.Decoder()
        assert [dec.decode(p) is not None for p in fast.packets] == [True] * 70
        assert dec.counts["lost"] == 0 and wf.parse_packet(fast.packets[0]).keyframe
        assert {wf.parse_packet(p).sid for p in fast.packets} == {wf.parse_packet(batches[60][0]).sid}
        assert vs.drops > 0 and vs.waiting and len(vs.queue) <= 4  # slow: dropped, now waits for a keyframe
        assert vo.sent == 0 and other.packets == []
        assert requests[-1] == {"lod": {"a": 1}}  # stuck: it asks for no keyframe it could not take
        slow.open.set()  # the packet it was taking (a keyframe) goes; then it asks for a keyframe
        await asyncio.sleep(0.01)
        assert slow.packets == [batches[60][0]] and wf.parse_packet(slow.packets[0]).keyframe
        assert requests[-1] == {"keyframe": ["a"], "seen": {"a": wf.parse_packet(batches[-1][0]).seq}}
        reg.echo("a", wf.parse_packet(fast.packets[-1]).seq)
        assert reg.counts["echoes"] == 1
        reg.sweep()
        await asyncio.sleep(0)
        assert {"type": "sessions", "sessions": ["a", "b"]} in other.texts
        reg.remove(vs)
        assert requests[-1] == {"lod": {"a": None}}
        st = reg.stats()
        assert st["viewers"] == 2 and st["watched"] == 1 and st["drops"] == vs.drops
        await reg.close_all()

    asyncio.run(run())


def test_any_bad_text_gets_one_error_and_the_viewer_stays() -> None:
    """Deeply nested JSON used to raise RecursionError out of the handler (the viewer was dropped
    without a word); over-long texts (WebRTC's channel has no 64 KiB cap of its own) are refused too."""
    deep = "[" * 30000 + "]" * 30000
    texts = {
        deep: "nested too deeply",
        '{"type": "subscribe", "session": ' + "[" * 900 + "]" * 900 + "}": "'session' must be a session id",
        '{"type": ' + "[" * 900 + "]" * 900 + "}": "unknown message type",
        '{"type": "echo", "session": "a", "seq": ' + "{" * 1 + '"x": ' + "[" * 900 + "]" * 900 + "}}": "'seq' must be",
        " " * (64 * 1024 + 1): "longer than 65536",
        "x" * 100: "not JSON",
    }

    async def run() -> None:
        reg = Viewers(queue_size=4, keyframe_min_interval_ns=0, session_timeout_ns=10**9, request=lambda r: None, clock=time.monotonic_ns)
        t = _FakeTransport()
        v = reg.add(t)
        await asyncio.sleep(0)
        assert [a["type"] for a in t.texts] == ["hello"]
        for text, says in texts.items():
            before = len(t.texts)
            reg.handle_text(v, text)
            await asyncio.sleep(0)
            answers = t.texts[before:]
            assert [a["type"] for a in answers] == ["error"] and says in answers[0]["error"], answers
            assert len(answers[0]["error"]) < 400  # a short quote of the value, never all of it
        reg.handle_text(v, json.dumps({"type": "subscribe", "session": "a"}))
        await asyncio.sleep(0)
        assert t.texts[-1] == {"type": "subscribed", "session": "a", "lod": None}
        assert reg.stats()["viewers"] == 1 and reg.counts["protocol_errors"] == len(texts)
        await reg.close_all()

    asyncio.run(run())


def test_websocket_viewer_sending_deep_or_huge_text(graph) -> None:
    """On a real /ws: deep JSON gets an error and the viewer stays; over 64 KiB closes with 1009."""
    runner, port = graph()

    async def view() -> tuple[dict, dict, int | None]:
        async with websockets.connect(f"ws://127.0.0.1:{port}/ws", max_size=None) as ws:
            assert json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "hello"
            await ws.send("[" * 30000 + "]" * 30000)
            error = json.loads(await asyncio.wait_for(ws.recv(), 5))
            await ws.send(json.dumps({"type": "subscribe", "session": "s1"}))
            async with asyncio.timeout(5):
                while isinstance(m := await ws.recv(), bytes) or json.loads(m)["type"] != "subscribed":
                    pass
            subscribed = json.loads(m)
            await ws.send("x" * (64 * 1024 + 1))
            with pytest.raises(websockets.ConnectionClosed) as closed:
                async with asyncio.timeout(5):
                    while True:
                        await ws.recv()
            return error, subscribed, closed.value.rcvd.code if closed.value.rcvd else None

    error, subscribed, code = asyncio.run(view())
    assert error["type"] == "error" and "nested too deeply" in error["error"]
    assert subscribed["session"] == "s1"
    assert code == 1009
    assert runner.stats()["nodes"]["sink"]["restarts"] == 0 and not runner.bus.messages("ERROR")


# --- hot-swap on a fixed port -------------------------------------------------------------------
def test_a_sink_on_a_fixed_port_hot_swaps_and_serves_on(graph) -> None:
    from nodes.delivery import bind

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        fixed = s.getsockname()[1]
    runner, port = graph(port=fixed)
    assert port == fixed
    with pytest.raises(RuntimeError, match=f"cannot serve HTTP on 127.0.0.1:{fixed}"):
        bind("127.0.0.1", fixed)  # a second graph on the port is refused...
    bind("127.0.0.1", fixed, replacing=True).close()  # ...a node's replacement may share it

    old = runner.pids()["sink"]
    new = runner.swap("sink", params={"queue_size": 16})  # starts while the old one still listens
    assert new != old and wait_gone([old]) == []

    async def view() -> list:
        async with websockets.connect(f"ws://127.0.0.1:{fixed}/ws") as ws:
            await ws.send(json.dumps({"type": "subscribe", "session": "s1"}))
            return (await receive_packets(ws, 60))[0]

    check_frames(asyncio.run(view()))
    assert runner.stats()["nodes"]["sink"]["params"]["queue_size"] == 16
    assert not runner.bus.messages("ERROR")


def test_pipeline_latency_is_also_a_histogram_that_metrics_can_export() -> None:
    from prometheus_client.core import HistogramMetricFamily

    from runtime.api.metrics import _add_histogram

    v = Viewers(queue_size=8, keyframe_min_interval_ns=0, session_timeout_ns=10**9, request=lambda *a: None, clock=time.monotonic_ns)
    v.pipe_hist[[1, 3, 30, 2000]] = [5, 2, 1, 1]  # 100-200 us x5, 300-400 x2, 3.0-3.1 ms, the open last bin
    h = v.stats()["latency_hist"]
    assert h["buckets"][:6] == [0, 5, 7, 7, 7, 8] and h["buckets"][-1] == h["count"] == 9
    fam = HistogramMetricFamily("x", "x", labels=["node"])
    _add_histogram(fam, ["sink"], h)
    assert [s.value for s in fam.samples if s.name == "x_count"] == [9]


def test_session_rate_says_how_evenly_frames_reach_the_sessions() -> None:
    """stats()['session_rate']: frames per second per live session over the last whole second.
    Past capacity the graph drops frames; the spread (min, p1 .. max, Jain's index) says whether
    every session loses alike or a few lose everything."""
    clock = [0]
    reg = Viewers(queue_size=8, keyframe_min_interval_ns=0, session_timeout_ns=10**10, request=lambda *a: None,
                  clock=lambda: clock[0])
    sessions = [f"s{i}" for i in range(10)]
    for tick in range(121):  # two seconds at 60 Hz; s9 is in every other batch only
        clock[0] = 1 + tick * 16_666_667
        batch = sessions if tick % 2 == 0 else sessions[:9]
        reg.dispatch(batch, [b""] * len(batch), clock[0], np.zeros(len(batch), bool), np.full(len(batch), -1))
    rate = reg.stats()["session_rate"]
    assert rate["sessions"] == 10 and rate["window_s"] == 1.0
    assert rate["max"] == rate["p50"] == 60.0 and rate["min"] == 30.0
    assert 0.97 < rate["fairness"] < 1.0
