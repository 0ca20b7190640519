"""The face in a real browser: Debian's Chromium, driven by Playwright, fed by a real graph.

Each test runs ``avatar run`` and Chromium inside a private network namespace (only its own
loopback; see tests/netns.py), so every packet, WebRTC's included, stays local. Where namespaces
cannot be made, both run on the host's loopback instead.
"""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np

from nodes.wire import Decoder
from runtime.recording import read_recording
from tests.browser import more, needs_chromium, until
from tests.helpers import ROOT, paced, wait_until

pytestmark = needs_chromium
TAKE = ROOT / "tests" / "data" / "llf_dao_take.csv"
STEP = 1 / 255  # 8-bit weights

# A recorded take through the capture pipeline to a WebRTC sink, the compressor's input and
# output recorded so the page's morphs can be checked against what the graph made.
REPLAY = """
name: browser-replay
args: {take: "", dir: "", port: 8080, api: ""}
link_defaults: {policy: leaky, size: 4}
nodes:
  take: {type: arkit_replay, params: {path: "${take}", loop: true, session: replay}}
  retarget: {type: mapper, params: {profile: identity}}
  face: {type: blender, params: {rate: 60}}
  detail: {type: lod}
  encode: {type: compressor, params: {bits: 8, keyframe_interval: 120, layers: [{lod: 3, bits: 5}]}}
  web: {type: webrtc_sink, params: {host: 127.0.0.1, port: "${port}", api: "${api}", ice_addresses: [127.0.0.1]}}
  rec_in: {type: recorder, params: {path: "${dir}/in.msgpack", flush_every: 1}}
  rec_out: {type: recorder, params: {path: "${dir}/out.msgpack", flush_every: 1}}
links:
  - take -> retarget -> face.capture
  - face -> detail -> encode
  - encode -> web
  - {from: web.requests, to: encode.requests, feedback: true}
  - {from: detail, to: rec_in, policy: block, size: 256}
  - {from: encode, to: rec_out, policy: block, size: 256}
"""

# Live input the test controls: JSON capture packets over UDP, straight to the sink.
LIVE = """
name: browser-live
args: {port: 8080, udp: 11111}
nodes:
  capture: {type: arkit_source, params: {host: 127.0.0.1, port: "${udp}", rate: 60}}
  encode: {type: compressor, params: {bits: 8}}
  web: {type: webrtc_sink, params: {host: 127.0.0.1, port: "${port}", ice_addresses: [127.0.0.1]}}
links:
  - capture -> encode -> web
  - {from: web.requests, to: encode.requests, feedback: true}
"""


SAMPLE = """() => {
  const f = window.avatar.lastFrame;
  return {frame: f, infl: Object.fromEntries(f.names.map(n => [n, window.avatar.influences(n)]))};
}"""


def check_frames_match_the_graph(samples: list[dict], rec_dir: Path) -> None:
    """Each sampled frame: page weights = the decoded packet; mesh influences = the graph's weights +- half a step."""
    packets = {}
    dec = Decoder()
    for m in read_recording(rec_dir / "out.msgpack"):
        for pkt in m.data["packets"]:
            f = dec.decode(pkt)
            if f is not None:
                packets[(f.session, f.seq)] = f
    inputs = {}
    for m in read_recording(rec_dir / "in.msgpack"):
        for i, sid in enumerate(m.session):
            inputs[(sid, m.pts_ns // 1_000_000)] = m.arrays["weights"][i]
    assert samples
    for s in samples:
        fr = s["frame"]
        pkt = packets[(fr["session"], fr["seq"])]
        assert np.array_equal(np.float32(fr["weights"]), pkt.weights) or np.allclose(fr["weights"], pkt.weights, atol=1e-6)
        graph_w = inputs[(fr["session"], pkt.pts_ms)]
        infl = np.array([s["infl"][n] for n in fr["names"]], dtype=np.float64)
        assert np.all(np.abs(infl - graph_w) <= STEP / 2 + 1e-6), np.abs(infl - graph_w).max()
    assert any(max(s["frame"]["weights"]) > 0.2 for s in samples)  # the face moved, not a blank stream


def watch_and_sample(page, url: str, n: int = 5) -> list[dict]:
    page.goto(url)
    until(page, "window.avatar && window.avatar.framesDecoded >= 200", 45, "200 decoded frames")
    samples = []
    for _ in range(n):
        samples.append(page.evaluate(SAMPLE))
        more(page, "framesDecoded", 12, "12 more decoded frames between samples")  # 0.2 s of the stream
    return samples


def test_webrtc_viewer_gets_the_graphs_frames_and_on_a_reduced_layer_bundles_and_a_train_probe(
        graph, page, tmp_path, netns):
    proc, url = graph(REPLAY, take=TAKE, dir=tmp_path)
    # decoded and set on the mesh, not drawn: CI's Chromium draws on the CPU (SwiftShader), which on
    # two cores starves the sink, and its lossy channel then drops packets the switch did not lose
    # (the last test here judges the drawing)
    samples = watch_and_sample(page, url + "?render=0")
    assert page.evaluate("() => window.avatar.transport") == "webrtc"
    more(page, "framesDecoded", 30, "the stream to go on after the samples")
    # then the slow-link path of a data channel: the viewer put on the compressor's extra layer gets
    # its packets in bundles (nodes/delivery/bundle.py) and is probed with a train of pads, which
    # the page times and reports (nodes/delivery/netstats.py)
    prefix = netns.prefix if netns else ()

    def sink() -> dict:
        r = subprocess.run([*prefix, sys.executable, "-m", "runtime.cli", "stats", "-g", "browser-replay"],
                           capture_output=True, text=True, timeout=30)
        return json.loads(r.stdout)["nodes"]["web"]["node"] if r.returncode == 0 else {}

    vid = wait_until(lambda: next(iter(sink().get("viewer_net") or {}), None), timeout=30)  # it reports
    r = subprocess.run([*prefix, sys.executable, "-m", "runtime.cli", "set", "-g", "browser-replay", "web",
                        f'viewer_layers={{"{vid}": 1}}'], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    lost = page.evaluate("() => window.avatar.report")["lost"]
    st = wait_until(lambda: (lambda n: n if n.get("bundles", 0) >= 20 and (n["viewer_net"][vid]["net"].get("probe")
                                                                            or {}).get("kind") == "train" else None)(sink()),
                    timeout=30, what="bundles sent and a train probe judged")
    probe = st["viewer_net"][vid]["net"]["probe"]
    assert st["viewer_net"][vid]["layer"] == 1
    assert probe["ok"] and probe["got"] == 12 and probe["recv_share"] > 0.8, probe  # the page timed every pad
    more(page, "framesDecoded", 26, "the reduced layer's frames (a quarter of 60 Hz), from bundles")
    assert page.evaluate("() => window.avatar.counts")["malformed"] == 0
    assert page.evaluate("() => window.avatar.report")["lost"] == lost  # a layer switch loses nothing
    proc.proc.send_signal(signal.SIGINT)
    assert proc.finish(30) == 0
    check_frames_match_the_graph(samples, tmp_path)
    stats_echo = [m for m in proc.bus if m.get("type") == "ERROR"]
    assert not stats_echo, stats_echo
    assert not page.errors, page.errors


def test_without_webrtc_the_page_falls_back_to_websocket(graph, page, tmp_path, netns):
    proc, url = graph(REPLAY, take=TAKE, dir=tmp_path)
    page.add_init_script("delete window.RTCPeerConnection; delete window.webkitRTCPeerConnection;")
    samples = watch_and_sample(page, url + "?render=0")  # not drawn, as in the test above
    assert page.evaluate("() => window.avatar.transport") == "websocket"
    more(page, "framesDecoded", 30, "the stream to go on after the samples")
    # the page's receiver reports and its answers to pings reach the sink (the network agent's input)
    report = page.evaluate("() => window.avatar.report")
    assert report["received"] >= 200 and report["lost"] == 0 and report["bytes"] > 0, report
    def sink() -> dict:
        r = subprocess.run([*(netns.prefix if netns else ()), sys.executable, "-m", "runtime.cli", "stats", "-g",
                            "browser-replay"], capture_output=True, text=True, timeout=30)
        return json.loads(r.stdout)["nodes"]["web"]["node"] if r.returncode == 0 else {"viewer_net": {}}
    def reported() -> tuple[dict, dict] | None:
        node = sink()
        net = next((v["net"] for v in node["viewer_net"].values() if v["net"].get("rtt_ms") is not None), None)
        return (net, node) if net else None
    net, node = wait_until(reported, timeout=30)
    # TCP loses nothing: a loss the page reports is a packet the sink itself dropped for it (its
    # queue full while the page, on two loaded cores, fell behind), which the sink counts
    assert net["recv_bps"] > 0 and (net["loss"] == 0.0 or node["drops"] > 0), (net, node)
    proc.proc.send_signal(signal.SIGINT)
    assert proc.finish(30) == 0
    check_frames_match_the_graph(samples, tmp_path)


def test_the_page_reconnects_after_the_sink_is_killed_and_restarted(graph, page, tmp_path):
    proc, url = graph(REPLAY, take=TAKE, dir=tmp_path)
    page.goto(url)
    until(page, "window.avatar && window.avatar.framesDecoded >= 60", 45, "first frames")
    ready = proc.wait_for(lambda m: m.get("type") == "STATE_CHANGED" and m.get("new") == "READY" and m.get("pids"))
    os.kill(ready["pids"]["web"], signal.SIGKILL)
    proc.wait_for(lambda m: m.get("type") == "NODE_RESTARTED" and m.get("node") == "web", 30)
    until(page, "document.body.dataset.state !== 'live'", 15, "the page noticing the loss")
    before = page.evaluate("() => window.avatar.framesDecoded")
    until(page, f"document.body.dataset.state === 'live' && window.avatar.framesDecoded >= {before} + 120", 45,
          "frames flowing again after the restart")
    assert page.evaluate("() => window.avatar.transport") == "webrtc"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_emotion_buttons_call_the_control_api_with_the_token(graph, page, tmp_path, netns, monkeypatch):
    from runtime.api.auth import make_token

    secret = "s" * 40
    monkeypatch.setenv("AVATAR_API_SECRET", secret)  # the runner's API takes its secret from here
    web, api = (8080, 8081) if netns else (free_port(), free_port())
    proc, url = graph(REPLAY, "--api", f"127.0.0.1:{api}", "--api-cors", f"http://127.0.0.1:{web}", port=web,
                      take=TAKE, dir=tmp_path, api=f"http://127.0.0.1:{api}")
    page.goto(url + "#token=" + make_token(secret, "operator", 300))
    until(page, "window.avatar && window.avatar.framesDecoded >= 30", 45, "first frames")
    page.click("[data-emotion=happy]")
    until(page, "document.querySelector('[data-emotion=happy]').classList.contains('active')", 10, "the API's answer")
    stats = page.evaluate(f"""async () => (await (await fetch('http://127.0.0.1:{api}/stats',
        {{headers: {{Authorization: 'Bearer {make_token(secret, "viewer", 300)}'}}}})).json())""")
    assert stats["nodes"]["face"]["params"]["emotion"] == "happy"  # the blender changed, live
    assert not page.errors, page.errors


def _png(data: bytes) -> np.ndarray:
    from PIL import Image
    return np.asarray(Image.open(io.BytesIO(data)).convert("L"), dtype=np.int16)


def test_an_open_jaw_changes_the_mouth_region_of_the_picture(graph, page, netns, tmp_path):
    proc, url = graph(LIVE)
    udp = netns.socket() if netns else __import__("socket").socket(2, 2)
    port = 11111
    jaw = {"v": 0.0}
    stop = threading.Event()

    def feed():  # a phone sending JSON frames at 60 Hz
        for _ in paced(60, stop.is_set):
            udp.sendto(json.dumps({"session": "probe", "blendshapes": {"jawOpen": jaw["v"]}}).encode(), ("127.0.0.1", port))

    t = threading.Thread(target=feed, daemon=True)
    t.start()
    try:
        page.goto(url)
        until(page, "window.avatar && window.avatar.modelReady && window.avatar.framesDecoded >= 30", 45)
        until(page, "window.avatar.influences('jawOpen') === 0", 10)
        page.evaluate("() => { for (const id of ['overlay', 'controls']) document.getElementById(id).hidden = true; }")
        more(page, "renders", 5, "renders without the overlay")
        neutral = _png(page.screenshot(path=tmp_path / "neutral.png"))
        jaw["v"] = 1.0
        until(page, "window.avatar.influences('jawOpen') === 1", 10)
        more(page, "renders", 5, "renders of the open jaw")
        open_jaw = _png(page.screenshot(path=tmp_path / "jaw_open.png"))  # kept for a look when it fails
    finally:
        stop.set()
        t.join()
        udp.close()
    diff = np.abs(open_jaw - neutral) > 16
    ys, xs = np.nonzero(diff)
    assert len(ys) > 500, f"only {len(ys)} pixels changed"
    face = np.nonzero(neutral != neutral[0, 0])  # the face: pixels unlike the background corner
    top, bottom = face[0].min(), face[0].max()
    # the change sits in the lower part of the face (mouth and chin), not at the eyes or brows
    assert np.median(ys) > top + 0.55 * (bottom - top), (np.median(ys), top, bottom)
    assert (ys < top + 0.4 * (bottom - top)).mean() < 0.05
