#!/usr/bin/env python3
"""End-to-end latency: a Live Link Face UDP packet into ``arkit_source`` -> the frame decoded in a browser page.

    python tools/bench_delivery.py [--viewers 1 10 50] [--seconds 10] [--transports webrtc websocket]

The graph is the live capture path, tuned for latency: ``arkit_source`` (rate 0: a batch as soon
as a packet arrives, pts = its arrival time) -> ``mapper`` (identity) -> ``compressor`` ->
``webrtc_sink``. This script sends the real iPhone capture (tests/data/livelink) as Live Link
Face v6 UDP at 60 Hz on 127.0.0.1, and opens N pages in Debian's Chromium (Playwright). Every
page echoes each frame it decodes back to the sink (on the same connection), and the sink
measures arrival -> echo on one clock (CLOCK_MONOTONIC): the figure includes the echo's way
back, so it slightly overstates the one-way time. The first page renders the face (WebGL);
the others decode and set the morphs without drawing (``?render=0``), so 50 viewers measure
the delivery, not 50 software renderers fighting over two cores.

Baseline, in the same run: the same graph with one Python WebSocket viewer (``websockets``,
decoding with ``nodes.wire``) that echoes the same way: what the browser adds.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nodes.livelink import SAMPLE_CAPTURE, read_container  # noqa: E402
from runtime import Runner, parse_graph  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--use-gl=swiftshader", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--allow-loopback-in-peer-connection", "--disable-features=WebRtcHideLocalIpsWithMdns"]

GRAPH = """
name: bench-delivery
link_defaults: {policy: leaky, size: 4}
nodes:
  capture: {type: arkit_source, params: {host: 127.0.0.1, port: 0, rate: 0}}
  retarget: {type: mapper, params: {profile: identity}}
  encode: {type: compressor, params: {bits: 8, keyframe_interval: 120}}
  web: {type: webrtc_sink, params: {host: 127.0.0.1, port: 0, ice_addresses: [127.0.0.1], queue_size: 8}}
links:
  - capture -> retarget -> encode -> web
  - {from: web.requests, to: encode.requests, feedback: true}
"""


class Phone(threading.Thread):
    """Sends the recorded capture, looped, as one device at 60 Hz."""

    def __init__(self, port: int):
        super().__init__(daemon=True)
        import socket

        self.packets = read_container(SAMPLE_CAPTURE)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.port, self.sent, self.stop = port, 0, threading.Event()

    def run(self) -> None:
        due = time.monotonic()
        while not self.stop.is_set():
            self.sock.sendto(self.packets[self.sent % len(self.packets)], ("127.0.0.1", self.port))
            self.sent += 1
            due += 1 / 60
            time.sleep(max(0.0, due - time.monotonic()))


def start_graph() -> tuple[Runner, Phone, str]:
    runner = Runner(parse_graph(GRAPH, "<bench>"), stop_on_eos=False).start()
    nodes = runner.stats()["nodes"]
    phone = Phone(nodes["capture"]["node"]["port"])
    phone.start()
    return runner, phone, nodes["web"]["node"]["url"]


def sink_stats(runner: Runner) -> dict:
    return runner.stats()["nodes"]["web"]["node"]


def wait_echoes(runner: Runner, at_least: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while sink_stats(runner).get("echoes", 0) < at_least:
        if time.monotonic() > deadline:
            raise TimeoutError(f"fewer than {at_least} echoes after {timeout}s: {sink_stats(runner)}")
        time.sleep(0.2)


def measure(runner: Runner, seconds: float) -> dict:
    """Echo latency over the measured window (the sink keeps the newest 1024 echoes)."""
    before = sink_stats(runner)["echoes"]
    time.sleep(seconds)
    s = sink_stats(runner)
    return {"p50_ms": s["echo_latency_us_p50"] / 1000, "p99_ms": s["echo_latency_us_p99"] / 1000,
            "echoes": s["echoes"] - before, "drops": s.get("dropped", s.get("drops", 0))}


def run_browser(n: int, transport: str, seconds: float, browser) -> dict:
    runner, phone, url = start_graph()
    ctxs = []
    try:
        for i in range(n):
            ctx = browser.new_context(viewport={"width": 480, "height": 360})
            page = ctx.new_page()
            page.goto(f"{url}?transport={transport}" + ("" if i == 0 else "&render=0"))
            ctxs.append((ctx, page))
        deadline = time.monotonic() + 60
        for _, page in ctxs:
            while not page.evaluate("() => !!window.avatar && window.avatar.framesDecoded > 30"):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"a page did not start: {page.evaluate('() => document.body.dataset.state')}")
                time.sleep(0.1)
        time.sleep(2.0)  # past the connection's first frames
        result = measure(runner, seconds)
        result["transports"] = sorted({p.evaluate("() => window.avatar.transport") for _, p in ctxs})
        result["sent"] = phone.sent
        return result
    finally:
        phone.stop.set()
        for ctx, _ in ctxs:
            ctx.close()
        runner.stop(drain=False)


def run_python_viewer(seconds: float) -> dict:
    import websockets

    from nodes.wire import Decoder

    runner, phone, url = start_graph()
    stop = threading.Event()

    async def view() -> None:
        dec = Decoder()
        async with websockets.connect(url.replace("http://", "ws://") + "ws") as ws:
            await ws.send(json.dumps({"type": "subscribe", "session": None, "lod": None}))
            while not stop.is_set():
                try:
                    msg = await asyncio.wait_for(ws.recv(), 0.5)
                except asyncio.TimeoutError:
                    continue
                if isinstance(msg, bytes):
                    f = dec.decode(msg)
                    if f is not None:
                        await ws.send(json.dumps({"type": "echo", "session": f.session, "seq": f.seq}))

    t = threading.Thread(target=lambda: asyncio.run(view()), daemon=True)
    t.start()
    try:
        wait_echoes(runner, 30)
        time.sleep(2.0)
        return measure(runner, seconds)
    finally:
        stop.set()
        t.join(5)
        phone.stop.set()
        runner.stop(drain=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--viewers", type=int, nargs="+", default=[1, 10, 50])
    ap.add_argument("--transports", nargs="+", default=["webrtc", "websocket"], choices=["webrtc", "websocket"])
    ap.add_argument("--seconds", type=float, default=10.0, help="measured window per case (default 10)")
    a = ap.parse_args()
    from playwright.sync_api import sync_playwright

    print(f"delivery benchmark on {os.cpu_count()} cores: UDP packet into arkit_source -> decoded in the page "
          f"(echoed back to the sink), 60 Hz, {a.seconds:.0f} s per case\n")
    base = run_python_viewer(a.seconds)
    print(f"baseline: one Python WebSocket viewer: p50 {base['p50_ms']:.2f} ms, p99 {base['p99_ms']:.2f} ms "
          f"({base['echoes']} echoes)\n")
    hdr = f"{'transport':>9} | {'viewers':>7} | {'p50 ms':>7} | {'p99 ms':>7} | {'echoes':>7} | {'p50 vs base':>11} | pages on"
    print(hdr)
    print("-" * len(hdr))
    rows = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            for transport in a.transports:
                for n in a.viewers:
                    r = run_browser(n, transport, a.seconds, browser)
                    rows.append((transport, n, r))
                    print(f"{transport:>9} | {n:>7} | {r['p50_ms']:>7.2f} | {r['p99_ms']:>7.2f} | {r['echoes']:>7} | "
                          f"{r['p50_ms'] / max(1e-9, base['p50_ms']):>10.1f}x | {','.join(r['transports'])}", flush=True)
        finally:
            browser.close()
    print("\ntargets (one viewer on loopback): median < 5 ms, p99 < 16.7 ms")
    for transport, n, r in rows:
        if n == 1:
            ok = r["p50_ms"] < 5 and r["p99_ms"] < 16.7
            print(f"  {transport}: {'ok' if ok else 'MISSED'} (p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms)")


if __name__ == "__main__":
    main()
