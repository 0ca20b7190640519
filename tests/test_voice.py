"""The voice in the sinks: audio/pcm in, Opus (or PCM) out to each viewer of the session, held by
the latency the face's path declares beyond the voice's, on real graphs with real clients (the
``websockets`` library, an aiortc peer); plus the encoder and the scheduler alone."""
from __future__ import annotations

import asyncio
import json
import socket
import time
import wave
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import msgpack
import numpy as np
import pytest
import websockets

from nodes.delivery import restrict_host_addresses
from nodes.delivery.voice import OPUS_RATE, PCM_RATE, VoiceEncoder, VoicePacket, VoiceSchedule
from runtime import Message
from runtime.recording import RecordingWriter, read_recording
from runtime.testing import start_graph
from tests.helpers import ROOT, free_udp_port, paced, wait_gone, wait_until

TAKE = ROOT / "tests" / "data" / "llf_dao_take.csv"
RATE = 16000
BURSTS = [(0.3, 0.2), (1.0, 0.2), (1.5, 0.1)]  # (start, length) s of 880 Hz tone bursts
LENGTH_S = 1.9
HOLD_MS = 150.0


def bursts() -> np.ndarray:
    t = np.arange(int(LENGTH_S * RATE)) / RATE
    x = np.zeros_like(t)
    for start, length in BURSTS:
        on = (t >= start) & (t < start + length)
        x[on] = 0.5 * np.sin(2 * np.pi * 880 * t[on])
    return (x * 32767).astype(np.int16)


def burst_wav(path: Path) -> np.ndarray:
    pcm = bursts()
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(pcm.tobytes())
    return pcm


def voice_graph(tmp: Path, sink: str = "websocket_sink", hold_ms: float = HOLD_MS, udp_port: int = 0,
                **params: Any) -> str:
    """The take (session s1) through a node that declares ``hold_ms`` of latency to the sink's
    face; a WAV of tone bursts (session s1) to its voice, recorded on the way. With ``udp_port``
    the voice is what arrives there (``send_bursts``), so a test starts it when its viewer is in."""
    wav = tmp / "bursts.wav"
    burst_wav(wav)
    speech = {"udp_port": udp_port} if udp_port else {"path": str(wav)}
    nodes = {
        "take": {"type": "arkit_replay", "params": {"path": str(TAKE), "loop": True, "session": "s1"}},
        "hold": {"type": "tests.latency_node:Holder", "params": {"hold_ms": hold_ms}},
        "encode": {"type": "compressor", "params": {"keyframe_interval": 30}},
        "speech": {"type": "audio_source", "params": {**speech, "session": "s1"}},
        "rec": {"type": "recorder", "params": {"path": str(tmp / "voice.msgpack"), "flush_every": 1}},
        "sink": {"type": sink, "params": {"port": 0, **params}},
    }
    links = ["take -> hold -> encode.in", {"from": "encode", "to": "sink.in", "policy": "block", "size": 64},
             {"from": "speech", "to": "sink.audio", "policy": "block", "size": 64},
             {"from": "speech", "to": "rec", "policy": "block", "size": 64},
             {"from": "sink.requests", "to": "encode.requests", "feedback": True}]
    return json.dumps({"name": f"voice_{sink}", "nodes": nodes, "links": links})


@pytest.fixture
def graph() -> Iterator[Callable[..., tuple[Any, int]]]:
    started = []

    def start(text: str) -> tuple[Any, int]:
        runner = start_graph(text)
        started.append(runner)
        # the port from the sink's INFO (at once), not a stats round trip: a pcm viewer must subscribe
        # before the first chunk of the voice reaches the sink, or that chunk is made for nobody
        return runner, runner.bus.wait_for("INFO", node="sink", timeout=30)["port"]

    yield start
    for runner in started:
        pids = list(runner.pids().values())
        runner.stop(drain=False)
        assert wait_gone(pids) == [], "a node process outlived the graph"


def source_onsets(rec: Path) -> list[int]:
    """pts (ns) of each burst's start in the chunks the source sent (found as in what a viewer
    heard: a source fed over UDP stamps its chunks as they come, not by a file's sample count)."""
    chunks = [(m.pts_ns, m.arrays["pcm"].astype(np.float64) / 32768) for m in read_recording(rec)]
    return onsets(*timeline(chunks, RATE), RATE)


def send_bursts(port: int) -> None:
    """The bursts' WAV as 20 ms datagrams of 16-bit PCM to an ``audio_source`` on ``port``, at
    real time (the source stamps them as they arrive)."""
    pcm = bursts()
    chunk = RATE // 50
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for i in paced(50, lambda: False):
            if i * chunk >= len(pcm):
                return
            s.sendto(pcm[i * chunk:(i + 1) * chunk].astype("<i2").tobytes(), ("127.0.0.1", port))


def onsets(times_ns: np.ndarray, x: np.ndarray, rate: int) -> list[int]:
    """Start of each tone burst in a decoded stream: where the envelope first passes half the peak."""
    env = np.convolve(np.abs(x), np.ones(rate // 1000) / (rate // 1000), mode="same")
    on = env > 0.5 * env.max()
    edges = np.flatnonzero(on[1:] & ~on[:-1]) + 1
    return [int(times_ns[i]) for i in edges]


def timeline(frames: list[tuple[int, np.ndarray]], rate: int) -> tuple[np.ndarray, np.ndarray]:
    """Samples and the pts (ns) of each, from (pts of a packet's first sample, its samples) pairs."""
    times = np.concatenate([pts + np.arange(len(x)) * 1_000_000_000 // rate for pts, x in frames])
    return times, np.concatenate([x for _, x in frames])


async def collect_voice(port: int, audio: str | None, seconds: float) -> tuple[list[dict], list[int], list[dict]]:
    """A WebSocket viewer of s1 for ``seconds``: its voice frames, their arrival (ns), its JSON messages."""
    query = f"?session=s1{f'&audio={audio}' if audio else ''}"
    voice, arrival, texts = [], [], []
    async with websockets.connect(f"ws://127.0.0.1:{port}/ws{query}") as ws:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                m = await asyncio.wait_for(ws.recv(), max(0.01, end - time.monotonic()))
            except asyncio.TimeoutError:
                break
            if isinstance(m, str):
                texts.append(json.loads(m))
            elif m[0] & 0xF0 == 0x80:  # a msgpack map: a voice frame (face packets are arrays or bins)
                arrival.append(time.monotonic_ns())
                voice.append(msgpack.unpackb(m))
    return voice, arrival, texts


def decode_opus(frames: list[dict]) -> list[tuple[int, np.ndarray]]:
    import av

    dec = av.CodecContext.create("libopus", "r")
    dec.sample_rate, dec.layout = OPUS_RATE, "mono"
    out = []
    for f in frames:
        for fr in dec.decode(av.Packet(f["d"])):
            out.append((f["p"] * 1000, fr.to_ndarray().reshape(-1).astype(np.float64) / 32768))
    return out


# --- over a WebSocket ---------------------------------------------------------------------------
def test_a_websocket_viewer_hears_the_voice_held_by_the_face_paths_latency(graph, tmp_path) -> None:
    runner, port = graph(voice_graph(tmp_path))
    voice, arrival, texts = asyncio.run(collect_voice(port, "opus", LENGTH_S + 1.0))
    assert voice and {f["t"] for f in voice} == {"opus"} and {f["s"] for f in voice} == {"s1"}
    assert any(t.get("type") == "subscribed" and t.get("audio") == "opus" for t in texts)
    times, x = timeline(decode_opus(voice), OPUS_RATE)
    got, want = onsets(times, x, OPUS_RATE), source_onsets(tmp_path / "voice.msgpack")
    assert len(got) == len(want), (got, want)
    for g, w in zip(got, want):  # every burst is heard the declared latency after it was made
        assert abs((g - w) / 1e6 - HOLD_MS) < 2.0, f"burst heard {(g - w) / 1e6:.1f} ms after it was made"
    early = [(p["p"] * 1000 - a) / 1e6 for p, a in zip(voice, arrival)]
    assert max(early) < 3.0, f"a packet came {max(early):.1f} ms before it was due: the sink did not hold it"
    st = runner.stats()["nodes"]["sink"]["node"]
    assert st["voice_hold_ms"] == HOLD_MS and st["voice_rejected"] == 0 and st["voice_talkspurts"] >= 1
    assert st["voice_sent"] >= len(voice) and st["voice_bytes"] >= sum(len(f["d"]) for f in voice)


def test_a_viewer_without_an_opus_decoder_gets_the_very_samples_as_pcm(graph, tmp_path) -> None:
    runner, port = graph(voice_graph(tmp_path, hold_ms=40.0))
    voice, _, _ = asyncio.run(collect_voice(port, "pcm", LENGTH_S + 1.0))
    assert voice and {f["t"] for f in voice} == {"pcm"}
    frames = [(f["p"] * 1000, np.frombuffer(f["d"], "<i2")) for f in voice]
    times, x = timeline(frames, PCM_RATE)
    sent = np.concatenate([m.arrays["pcm"] for m in read_recording(tmp_path / "voice.msgpack")])
    assert np.array_equal(x[:len(sent)], sent), "a 16 kHz voice goes out as the very samples"
    start = read_recording(tmp_path / "voice.msgpack")[0].pts_ns
    assert abs((times[0] - start) / 1e6 - 40.0) < 0.01  # the pcm timeline: the source's, held 40 ms
    assert np.all(np.diff(times) > 0)


def test_a_viewer_that_asks_for_no_voice_gets_none_and_a_graph_without_one_says_so(graph, tmp_path) -> None:
    runner, port = graph(voice_graph(tmp_path))
    voice, _, texts = asyncio.run(collect_voice(port, None, 1.0))
    assert voice == [] and not any("audio" in t for t in texts if t.get("type") == "subscribed")
    assert httpx.get(f"http://127.0.0.1:{port}/config.json").json()["audio"] is True
    quiet, quiet_port = graph(json.dumps({"name": "quiet", "nodes": {
        "take": {"type": "arkit_replay", "params": {"path": str(TAKE), "loop": True, "session": "s1"}},
        "encode": {"type": "compressor"}, "sink": {"type": "websocket_sink", "params": {"port": 0}}},
        "links": ["take -> encode -> sink"]}))
    assert httpx.get(f"http://127.0.0.1:{quiet_port}/config.json").json()["audio"] is False


def test_the_hold_follows_the_latency_query_when_the_face_path_changes(graph, tmp_path) -> None:
    runner, _ = graph(voice_graph(tmp_path))
    hold = lambda: runner.stats()["nodes"]["sink"]["node"]["voice_hold_ms"]  # noqa: E731
    assert hold() == HOLD_MS
    runner.set_params("hold", hold_ms=400.0)
    wait_until(lambda: hold() == 400.0, 5, what="the sink's hold to follow the face path's new latency")


def test_bad_audio_is_dropped_with_a_warning_and_the_voice_goes_on(graph, tmp_path) -> None:
    bad = tmp_path / "bad.msgpack"
    w = RecordingWriter(bad)
    good = (np.sin(np.arange(320) / 3) * 8000).astype(np.int16)
    messages = [
        Message("audio/pcm", {"rate": 16000}, {"pcm": good}, session=["s1"]),
        Message("audio/pcm", {"rate": 12}, {"pcm": good}, session=["s1"]),  # no such rate
        Message("audio/pcm", {}, {"pcm": good}, session=["s1"]),  # no rate at all
        Message("audio/pcm", {"rate": 16000}, {"pcm": good.astype(np.float32)}, session=["s1"]),  # not int16
        Message("audio/pcm", {"rate": 16000}, {"pcm": np.stack([good, good])}, session=["s1"]),  # two channels
        Message("audio/pcm", {"rate": 16000}, {"pcm": good}, session=["s1", "s2"]),  # two sessions
        Message("audio/pcm", {"rate": 16000}, {"pcm": good}, session=["s1"]),
    ]
    for i, m in enumerate(messages):
        w.write(m, i * 20_000_000)
    w.close()
    runner, port = graph(json.dumps({"name": "badvoice", "nodes": {
        "take": {"type": "arkit_replay", "params": {"path": str(TAKE), "loop": True, "session": "s1"}},
        "encode": {"type": "compressor"},
        "bad": {"type": "player", "params": {"path": str(bad), "caps": "audio/pcm"}},
        "sink": {"type": "websocket_sink", "params": {"port": 0}}},
        "links": ["take -> encode -> sink.in", {"from": "bad", "to": "sink.audio", "policy": "block"}]}))
    st = wait_until(lambda: (s := runner.stats()["nodes"]["sink"]["node"])["voice_chunks"] >= 2 and s, 10,
                    what="the two good chunks")
    assert st["voice_rejected"] == 5 and st["voice_chunks"] == 2
    warnings = [m["text"] for m in runner.bus.messages("WARNING") if m.get("node") == "sink"]
    assert any("audio/pcm" in t and "rate" in t for t in warnings), warnings
    assert runner.stats()["nodes"]["sink"]["state"] == "PLAYING"


# --- over WebRTC: an audio track ------------------------------------------------------------------
def test_a_webrtc_viewer_gets_the_voice_as_an_audio_track_and_the_clock_to_place_it(graph, tmp_path, monkeypatch) -> None:
    import aiortc.rtcrtpreceiver
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    # aiortc's receiver counts timestamps from the first packet's; this peer wants them as sent, as a
    # browser's getSynchronizationSources gives them
    monkeypatch.setattr(aiortc.rtcrtpreceiver.TimestampMapper, "map", lambda self, ts: ts)

    # the voice starts when the viewer has its track (a file would start with the graph, and a slow
    # machine's negotiation would miss the start of it)
    udp = free_udp_port()
    runner, port = graph(voice_graph(tmp_path, sink="webrtc_sink", udp_port=udp, ice_addresses=["127.0.0.1"]))
    restrict_host_addresses(["127.0.0.1"])

    async def view() -> tuple[list, list[dict]]:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.createDataChannel("avatar", ordered=False, maxRetransmits=0)
        control = pc.createDataChannel("control")
        pc.addTransceiver("audio", direction="recvonly")
        texts: list[dict] = []
        control.on("message", lambda m: texts.append(json.loads(m)))
        tracks: asyncio.Queue = asyncio.Queue()
        pc.on("track", tracks.put_nowait)
        frames = []
        try:
            await pc.setLocalDescription(await pc.createOffer())
            async with httpx.AsyncClient() as http:
                r = await http.post(f"http://127.0.0.1:{port}/rtc/offer",
                                    json={"sdp": pc.localDescription.sdp, "type": "offer", "session": "s1"})
            assert r.status_code == 200, r.text
            assert "m=audio" in r.json()["sdp"] and "a=sendonly" in r.json()["sdp"]
            await pc.setRemoteDescription(RTCSessionDescription(**r.json()))
            track = await asyncio.wait_for(tracks.get(), 10)
            async with asyncio.timeout(10):  # the track comes with the answer; its packets flow once DTLS is up
                while pc.connectionState != "connected":
                    await asyncio.sleep(0.02)
            sending = asyncio.ensure_future(asyncio.to_thread(send_bursts, udp))
            async with asyncio.timeout(LENGTH_S + 10):
                while sum(f.samples for f in frames) < (LENGTH_S - 0.2) * OPUS_RATE:
                    frames.append(await track.recv())
            await sending
            return frames, texts
        finally:
            await pc.close()

    try:
        frames, texts = asyncio.run(view())
    finally:
        restrict_host_addresses([])
    clock = next(t for t in texts if t.get("type") == "voice_clock")
    # aiortc's receiver stamps each decoded frame with its RTP timestamp: back to pts with the clock
    decoded = [(clock["epoch_us"] * 1000 + ((f.pts - clock["rtp_origin"]) & 0xFFFFFFFF) * 1_000_000_000 // OPUS_RATE,
                f.to_ndarray().reshape(f.samples, -1)[:, 0].astype(np.float64) / 32768) for f in frames]
    times, x = timeline(decoded, OPUS_RATE)
    got, want = onsets(times, x, OPUS_RATE), source_onsets(tmp_path / "voice.msgpack")
    assert len(got) == len(want), (got, want)
    for g, w in zip(got, want):
        assert abs((g - w) / 1e6 - HOLD_MS) < 2.0, f"burst at {(g - w) / 1e6:.1f} ms after it was made"


# --- the encoder and the scheduler ------------------------------------------------------------------
def tone(n: int, rate: int = RATE) -> np.ndarray:
    return (np.sin(2 * np.pi * 300 * np.arange(n) / rate) * 8000).astype(np.int16)


def test_a_gap_starts_a_new_talkspurt_and_an_earlier_start_cuts_what_is_held() -> None:
    enc = VoiceEncoder()
    chunk = 320  # 20 ms at 16 kHz
    packets = []
    for i in range(10):
        packets += enc.feed(i * 20_000_000, RATE, tone(chunk), hold_ns=100_000_000)
    assert enc.talkspurts == 1 and packets and not any(p.cut for p in packets)
    assert packets[0].pts_ns == 100_000_000 - 312 * 1_000_000_000 // OPUS_RATE  # the encoder's delay, in pts
    gap = enc.feed(500_000_000, RATE, tone(chunk), hold_ns=100_000_000)  # after a pause
    assert enc.talkspurts == 2 and gap and not any(p.cut for p in gap)
    tail = [p for p in gap if p.pts_ns < 300_000_000]  # the first talkspurt's end, flushed by the pause
    assert tail and max(p.pts_ns + p.duration_ns for p in tail) <= 300_000_000 + 20_000_000
    assert sum(p.samples for p in packets + tail) >= 10 * chunk * 3 + 312  # every sample, and the encoder's delay
    back = enc.feed(400_000_000, RATE, tone(chunk), hold_ns=100_000_000)  # the timeline went back: an interrupt
    back += enc.feed(420_000_000, RATE, tone(chunk), hold_ns=100_000_000)
    assert enc.cuts == 1 and enc.talkspurts == 3
    cut = [p for p in back if p.cut]
    assert len(cut) == 1 and cut[0].pts_ns == 500_000_000 - 312 * 1_000_000_000 // OPUS_RATE
    replaced = [p for p in gap + back if 590_000_000 <= p.pts_ns]  # the second talkspurt, all of it
    assert replaced and not any(p.cut for p in replaced)

    sched = VoiceSchedule(lambda s, p: None, clock=lambda: 0)
    sched.add("s", gap)
    sched.add("s", back)  # the cut drops what is held from its pts on: the second talkspurt
    assert sched.counts["voice_cut"] == len(replaced)
    held = list(sched.held[("s", "opus")])
    assert [p for p in held if p.pts_ns >= cut[0].pts_ns] == [p for p in back if p.pts_ns < 590_000_000]
    assert [p.pts_ns for p in held] == sorted(p.pts_ns for p in held)


def test_the_schedule_sends_each_packet_when_it_is_due_and_no_sooner() -> None:
    async def run() -> list[tuple[int, VoicePacket]]:
        t0 = time.monotonic_ns()
        sent: list[tuple[int, VoicePacket]] = []
        sched = VoiceSchedule(lambda s, p: sent.append((time.monotonic_ns(), p)), clock=time.monotonic_ns)
        task = asyncio.ensure_future(sched.run())
        sched.add("a", [VoicePacket("opus", t0 + k * 20_000_000, b"x", 960) for k in range(1, 6)])
        sched.add("b", [VoicePacket("pcm", t0 + 30_000_000, b"yy", 320)])
        try:
            async with asyncio.timeout(5):
                while len(sent) < 6:
                    await asyncio.sleep(0.01)
        finally:
            task.cancel()
        return sent

    sent = asyncio.run(run())
    assert [p.kind for _, p in sent].count("opus") == 5
    assert all(at >= p.pts_ns for at, p in sent), "a packet went out before it was due"
    opus = [p.pts_ns for _, p in sent if p.kind == "opus"]
    assert opus == sorted(opus)


def test_the_pcm_fallback_starts_mid_talkspurt_on_the_same_timeline() -> None:
    enc = VoiceEncoder()
    for i in range(5):
        enc.feed(i * 20_000_000, RATE, tone(320), hold_ns=0)
    enc.pcm = True
    out = enc.feed(100_000_000, RATE, tone(320), hold_ns=0)
    pcm = [p for p in out if p.kind == "pcm"]
    assert enc.talkspurts == 1 and pcm and pcm[0].pts_ns == 100_000_000 and pcm[0].samples == 320
    assert np.array_equal(np.frombuffer(pcm[0].data, "<i2"), tone(320))
