#!/usr/bin/env python3
"""The voice and the face in the browser: A/V sync, time to first sound, mouth latency from a live
microphone, and what the voice costs.

    python tools/bench_av.py [--viewers 1 10] [--transports webrtc websocket] [--trials 10] [--no-mic]

Everything runs on this machine's loopback: the graphs in this process's Runner, Debian's
Chromium driven by Playwright. A single viewer's page renders the face (software WebGL); with
ten, every page decodes, plays the voice and schedules the face without drawing (``?render=0``):
one software renderer takes half of one of the two cores the graph runs on, and a viewer's
pixels are drawn on its own machine. Pages may
play sound without a click (``--autoplay-policy``), and send no echoes (``?echo=0``): the
measures are the pages' own, and ten pages echoing every frame (600 messages a second into the
sink's Python SCTP) starved the two cores: the sink sent the voice late and the pages showed
the face late (p95 171-316 ms at 10 WebRTC viewers, against 8 ms without echoes).

1. **A/V sync.** ``graphs/say.yaml``'s chain (text_phoneme -> viseme -> blender -> lod ->
   compressor -> webrtc_sink, the voice to the sink's audio pad) says a paragraph (POST /say).
   Every page reports, for each face frame it showed on the voice's clock, that clock minus the
   frame's pts (``window.avatar.sync.offsets``): how far the mouth shape shown was from the sound
   being heard, by the page's own clocks. Pooled over the pages: median and p95 of |offset|.
1b. **The probe**, a check of those clocks against what is heard: 1 kHz tone bursts into
   ``tools/av_probe.py``'s face, whose jaw is open exactly while the voice is loud, 150 ms behind
   it (declared, so the sink holds the voice that long). The rendering page and one decode-only
   page each record the level they hear (a WebAudio analyser; over WebRTC, a tap of the audio
   track) and the jaw they show; each burst heard -> the jaw shown opening for it.
2. **Time to first sound**: POST /say of a short sentence -> the first audible sample the page
   hears (its analyser, mapped to when it is heard); p50, p95.
3. **Mouth latency, live microphone**: ``graphs/talk.yaml``'s chain (voice_in -> audio_phoneme ->
   viseme -> ...); a presenter page streams a fake microphone (Chromium's
   ``--use-file-for-fake-audio-capture``: espeak-ng sentences with pauses) to the API's /speak
   WebSocket; a second page watches. Each onset of speech in the presenter's microphone (when its
   AudioWorklet had it) -> the viewer's jaw first opening after it.
4. **Cost**: voice bytes per viewer per second (Opus payload, and for WebRTC the page's own count
   of RTP bytes with headers), the sink's encoder CPU per second of voice, and the sink process's
   CPU per second while speaking.

Targets (issue 12): A/V median |offset| <= 20 ms and p95 <= 40 ms over WebRTC and WebSocket with 1
and 10 viewers; time to first sound p50 <= 400 ms.
"""
from __future__ import annotations

import argparse
import functools
import os
import sys
import time
import wave
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from polling import wait as _wait  # noqa: E402

from runtime import Runner, parse_graph  # noqa: E402
from runtime.api import ApiConfig, ApiServer  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--use-gl=swiftshader", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--allow-loopback-in-peer-connection", "--disable-features=WebRtcHideLocalIpsWithMdns",
        "--autoplay-policy=no-user-gesture-required", "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream"]
LOUD = 0.02
PARAGRAPH = ("The birch canoe slid on the smooth planks. Glue the sheet to the dark blue background. "
             "It's easy to tell the depth of a well. Kick the ball straight and follow through.")

def shipped(name: str) -> str:
    return (ROOT / "graphs" / f"{name}.yaml").read_text()


# the shipped graphs, as a user runs them, on free ports with WebRTC candidates on loopback
SAY, SAY_ARGS = shipped("say"), {"text": "", "repeat_s": "0", "port": "0", "ice": "[127.0.0.1]"}
TALK, TALK_ARGS = shipped("talk"), {"port": "0", "ice": "[127.0.0.1]"}

PROBE = """
name: bench-av-probe
args: {wav: ""}
link_defaults: {policy: leaky, size: 4}
nodes:
  tone: {type: audio_source, params: {path: "${wav}", loop: true, loop_gap_s: 0.0}}
  probe: {type: "tools.av_probe:ProbeFace", params: {latency_ms: 150}}
  encode: {type: compressor, params: {bits: 8, keyframe_interval: 120, ref_interval: 1}}
  web: {type: webrtc_sink, params: {host: 127.0.0.1, port: 0, ice_addresses: [127.0.0.1]}}
links:
  - {from: tone, to: probe, policy: block, size: 64}
  - {from: tone, to: web.audio, policy: block, size: 64}
  - probe -> encode.in
  - encode -> web.in
  - {from: web.requests, to: encode.requests, feedback: true}
"""
BURST_S, PERIOD_S = 0.15, 0.7


# --- plumbing -------------------------------------------------------------------------------------
wait = functools.partial(_wait, interval=0.1)  # each look asks a page: not too often


class Graph:
    """A graph with its control API (unauthenticated, loopback), in this process."""

    def __init__(self, yaml_text: str, /, **args: str):
        self.runner = Runner(parse_graph(yaml_text, "<bench>", args), stop_on_eos=False).start()
        self.url = self.sink()["url"]
        self.api = ApiServer(self.runner, ApiConfig(host="127.0.0.1", port=0, insecure_local=True, rate=1000, burst=1000,
                                                    cors_origins=[self.url.rstrip("/")]), announce=False).start()
        self.runner.set_params("web", api=self.api.url)  # the pages' text box and microphone call it

    def sink(self) -> dict:
        return self.runner.stats()["nodes"]["web"]["node"]

    def say(self, text: str) -> float:
        """POST /say; the epoch ms just before it was sent."""
        import httpx

        t0 = time.time() * 1000
        r = httpx.post(f"{self.api.url}/say", json={"text": text, "session": "default"}, timeout=30)
        r.raise_for_status()
        return t0

    def sink_pid(self) -> int:
        return self.runner.pids()["web"]

    def close(self) -> None:
        self.api.stop()
        self.runner.stop(drain=False)


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def open_pages(browser, url: str, n: int, transport: str, extra: str = "") -> list:
    """``n`` viewers: one renders the face; of several, none does (each would on its own machine;
    here software WebGL for one page takes half of one of the two cores the graph runs on)."""
    pages = []
    for _ in range(n):
        ctx = browser.new_context(viewport={"width": 480, "height": 360})
        page = ctx.new_page()
        page.goto(f"{url}?transport={transport}&echo=0{'' if n == 1 else '&render=0'}{extra}")
        pages.append(page)
    for page in pages:
        wait(lambda p=page: p.evaluate("() => !!window.avatar && window.avatar.framesDecoded > 30"), 60, "a page to start")
    return pages


def spoken(page, timeout: float = 60.0) -> None:
    """Until the page (recording) has heard voice and then a second of quiet."""
    wait(lambda: page.evaluate(f"() => window.avatar.recordingSummary({LOUD}).voiced >= 40"), timeout, "the voice")
    wait(lambda: page.evaluate(f"() => window.avatar.recordingSummary({LOUD}, 0.003).quietMs >= 1000"), timeout,
         "quiet after the voice")


# --- 1. A/V sync and cost -----------------------------------------------------------------------------
def sync_case(browser, transport: str, n: int) -> dict:
    g = Graph(SAY, **SAY_ARGS)
    try:
        pages = open_pages(browser, g.url, n, transport)
        pages[0].evaluate("() => window.avatar.startRecording()")
        before, cpu0, t0 = g.sink(), cpu_s(g.sink_pid()), time.monotonic()
        g.say(PARAGRAPH)
        spoken(pages[0])
        cpu1, t1, after = cpu_s(g.sink_pid()), time.monotonic(), g.sink()
        rec = pages[0].evaluate("() => window.avatar.stopRecording()")
        offsets = np.concatenate([np.array(p.evaluate("() => window.avatar.sync.offsets"), dtype=np.float64)
                                  for p in pages])
        skew = sum(p.evaluate("() => window.avatar.sync.skew") for p in pages)
        rtp = pages[0].evaluate("""async () => {
            const pc = window.avatar.connection.conn && window.avatar.connection.conn.sink;
            if (!pc || !pc.getStats) return null;
            let b = 0;
            (await pc.getStats()).forEach((s) => { if (s.type === 'inbound-rtp' && s.kind === 'audio') b += s.bytesReceived + (s.headerBytesReceived || 0); });
            return b; }""") if transport == "webrtc" else None
        voice_s = after["voice_s"] - before["voice_s"]
        del rec
        return {
            "frames": len(offsets), "median": float(np.median(np.abs(offsets))),
            "p95": float(np.percentile(np.abs(offsets), 95)), "skew": skew,
            "hold_ms": after["voice_hold_ms"],
            "voice_s": voice_s,
            "bytes_per_viewer_s": (after["voice_bytes"] - before["voice_bytes"]) / n / max(voice_s, 1e-9),
            "rtp_bytes_s": rtp / max(voice_s, 1e-9) if rtp else None,
            "encoder_cpu": (after["voice_cpu_s"] - before["voice_cpu_s"]) / max(voice_s, 1e-9),
            "sink_cpu": (cpu1 - cpu0) / (t1 - t0),
            "late": after["voice_late"] - before["voice_late"],
            "rebuffers": sum(p.evaluate("() => window.avatar.voice.counts.rebuffers") for p in pages),
        }
    finally:
        for p in browser.contexts:
            p.close()
        g.close()


# --- 1b. the probe: tone bursts heard against the jaw steps shown ----------------------------------------
def burst_wav(path: Path, bursts: int = 10) -> None:
    """1 kHz bursts of BURST_S every PERIOD_S (looped by the graph), 16 kHz."""
    t = np.arange(int(bursts * PERIOD_S * 16000)) / 16000
    x = np.where((t % PERIOD_S >= 0.3) & (t % PERIOD_S < 0.3 + BURST_S), 0.5 * np.sin(2 * np.pi * 1000 * t), 0.0)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes((x * 32767).astype("<i2").tobytes())


def rises(t: np.ndarray, x: np.ndarray, above: float, quiet_ms: float = 200.0) -> np.ndarray:
    """Times where ``x`` goes above ``above`` after at least ``quiet_ms`` below it."""
    out, last_high = [], -np.inf
    for ti, xi in zip(t, x):
        if xi > above:
            if ti - last_high > quiet_ms:
                out.append(ti)
            last_high = ti
    return np.array(out)


def probe_offsets(rec: dict) -> np.ndarray:
    """Each burst heard -> the jaw shown opening for it (ms; positive: the mouth after the sound)."""
    level = np.array([(t, rms) for t, rms, _c in rec["level"]], dtype=np.float64)
    face = np.array([(t, jaw) for t, _p, _c, jaw in rec["face"] if jaw is not None], dtype=np.float64)
    heard, shown = rises(level[:, 0], level[:, 1], 0.05), rises(face[:, 0], face[:, 1], 0.5)
    out = []
    for h in heard:
        near = shown[np.abs(shown - h) < PERIOD_S * 500]
        if len(near):
            out.append(float(near[np.argmin(np.abs(near - h))] - h))
    return np.array(out)


def probe_case(browser, transport: str, n: int, tmp: Path, seconds: float) -> np.ndarray:
    wav = tmp / "bursts.wav"
    burst_wav(wav)
    g = Graph(PROBE, wav=str(wav))
    try:
        pages = open_pages(browser, g.url, n, transport)
        listeners = pages[:2]  # the rendering page and a decode-only one
        for p in listeners:
            p.evaluate("() => window.avatar.startRecording()")
        time.sleep(seconds)  # the measured window: the bursts repeat
        return np.concatenate([probe_offsets(p.evaluate("() => window.avatar.stopRecording()")) for p in listeners])
    finally:
        for p in browser.contexts:
            p.close()
        g.close()


# --- 2. time to first sound ----------------------------------------------------------------------------
def first_sound(browser, transport: str, trials: int) -> list[float]:
    g = Graph(SAY, **SAY_ARGS)
    out = []
    try:
        page, = open_pages(browser, g.url, 1, transport)
        origin = page.evaluate("() => performance.timeOrigin")
        for _ in range(trials):
            page.evaluate("() => window.avatar.startRecording()")
            t0 = g.say("Hello there.")
            try:
                spoken(page, 20)
            except TimeoutError:  # said, never heard: a failure the report shows
                state = page.evaluate("() => [window.avatar.voice.counts, window.avatar.recordingSummary(0.02)]")
                print(f"   ({transport}: a trial was not heard within 20 s: {state})", flush=True)
                page.evaluate("() => window.avatar.stopRecording()")
                out.append(float("inf"))
                continue
            rec = page.evaluate("() => window.avatar.stopRecording()")
            heard = [t for t, rms, _c in rec["level"] if rms > LOUD]
            out.append(origin + heard[0] - t0)
    finally:
        for p in browser.contexts:
            p.close()
        g.close()
    return out


# --- 3. mouth latency from a live microphone -------------------------------------------------------------
def mic_wav(path: Path) -> None:
    """espeak-ng sentences with 1.5 s pauses, 48 kHz (what Chromium's fake microphone plays, looped)."""
    from nodes.speech import Resampler, speak

    parts = []
    for text in ("Hello there.", "Look at my mouth.", "Peter picked a pepper.", "Good morning to you."):
        audio, _ = speak(text)
        parts += [np.zeros(int(1.5 * 16000), np.int16), audio]
    x = np.concatenate(parts).astype(np.float32)
    rs = Resampler(16000, 48000)
    y = np.clip(np.concatenate([rs.process(x), rs.flush()]), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(48000)
        w.writeframes(y.tobytes())


def mic_latency(playwright, seconds: float, tmp: Path) -> list[float]:
    wav = tmp / "mic.wav"
    mic_wav(wav)
    browser = playwright.chromium.launch(executable_path=CHROMIUM,
                                         args=[*ARGS, f"--use-file-for-fake-audio-capture={wav}"])
    g = Graph(TALK, **TALK_ARGS)
    try:
        presenter = open_pages(browser, g.url, 1, "webrtc", "&render=0")[0]
        viewer = open_pages(browser, g.url, 1, "webrtc")[0]
        viewer.evaluate("() => window.avatar.startRecording()")
        if not presenter.evaluate("() => window.avatar.microphone.start()"):
            raise RuntimeError(f"the microphone did not start: {presenter.inner_text('#speak-status')}")
        time.sleep(seconds)  # the measured window: the fake microphone says its sentences, looped
        caps = presenter.evaluate("() => window.avatar.microphone.captures")
        presenter.evaluate("() => window.avatar.microphone.stop()")
        rec = viewer.evaluate("() => window.avatar.stopRecording()")
        origin = viewer.evaluate("() => performance.timeOrigin")
    finally:
        browser.close()
        g.close()
    cap = np.array([(t, rms) for t, _n, rms in caps], dtype=np.float64)
    loud = cap[:, 1] > LOUD
    onsets = [cap[i, 0] for i in range(25, len(cap)) if loud[i] and not loud[i - 25:i].any()]  # after 0.5 s quiet
    face = np.array([(origin + t, jaw) for t, _p, _c, jaw in rec["face"] if jaw is not None], dtype=np.float64)
    out = []
    for t in onsets:
        later = face[(face[:, 0] > t) & (face[:, 1] > 0.1)]
        if len(later) and later[0, 0] - t < 3000:
            out.append(float(later[0, 0] - t))
    return out


# --- the report -----------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--viewers", type=int, nargs="+", default=[1, 10])
    ap.add_argument("--transports", nargs="+", default=["webrtc", "websocket"], choices=["webrtc", "websocket"])
    ap.add_argument("--trials", type=int, default=10, help="time-to-first-sound trials per transport")
    ap.add_argument("--mic-seconds", type=float, default=40.0)
    ap.add_argument("--probe-seconds", type=float, default=15.0)
    ap.add_argument("--probe-viewers", type=int, nargs="+", default=[1],
                    help="viewers in the probe's cases (default 1: with ten pages on these two cores the probe's own "
                         "graph is starved, and its figures change from run to run by hundreds of ms)")
    ap.add_argument("--no-mic", action="store_true")
    a = ap.parse_args()
    import tempfile

    from playwright.sync_api import sync_playwright

    tmp = Path(tempfile.mkdtemp(prefix="bench-av-"))
    print(f"A/V benchmark on {os.cpu_count()} cores; graphs, API and Chromium on loopback\n")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            print("1. A/V sync: |voice clock - pts| of each face frame shown (ms), pooled over the pages; the voice's\n"
                  "   bytes per viewer per second (Opus payload; RTP with headers, page 1); the sink's encoder CPU per\n"
                  "   second of voice and the sink process's CPU while speaking (of one core); voice packets the sink\n"
                  "   sent late, and the pages' rebuffers\n")
            hdr = (f"{'transport':>9} | {'viewers':>7} | {'frames':>6} | {'median':>6} | {'p95':>6} | "
                   f"{'voice B/s':>9} | {'RTP B/s':>7} | {'enc CPU':>7} | {'sink CPU':>8} | late/rebuf")
            print(hdr)
            print("-" * len(hdr))
            rows, probes = [], []
            for transport in a.transports:
                for n in a.viewers:
                    r = sync_case(browser, transport, n)
                    rows.append((transport, n, r))
                    rtp = f"{r['rtp_bytes_s']:>7.0f}" if r["rtp_bytes_s"] else f"{'-':>7}"
                    print(f"{transport:>9} | {n:>7} | {r['frames']:>6} | {r['median']:>6.1f} | {r['p95']:>6.1f} | "
                          f"{r['bytes_per_viewer_s']:>9.0f} | {rtp} | {r['encoder_cpu']:>6.1%} | {r['sink_cpu']:>7.1%} | "
                          f"{r['late']}/{r['rebuffers']}", flush=True)
            print("\n1b. probe: 1 kHz bursts into tools/av_probe.py's face (its jaw open exactly while the voice is loud,\n"
                  "    150 ms behind it); each burst heard in a page -> the jaw shown opening for it (ms, + = mouth late).\n"
                  "    The probe's face ticks at 60 Hz: its jaw opens up to a frame after the burst (8 ms on average).\n"
                  "    Over WebRTC the page hears through a WebAudio tap of the track, which adds a lag of its own.\n")
            for transport in a.transports:
                for n in a.probe_viewers:
                    o = probe_case(browser, transport, n, tmp, a.probe_seconds)
                    probes.append((transport, n, o))
                    print(f"   {transport:>9} x{n:<2}: median {np.median(o):+.1f}, median |.| {np.median(np.abs(o)):.1f}, "
                          f"p95 |.| {np.percentile(np.abs(o), 95):.1f} ({len(o)} bursts)", flush=True)
            print("\n2. time to first sound: POST /say 'Hello there.' -> first audible sample heard in the page (ms)")
            ttfs = {}
            for transport in a.transports:
                v = first_sound(browser, transport, a.trials)
                ttfs[transport] = v
                heard = [x for x in v if np.isfinite(x)]
                print(f"   {transport:>9}: p50 {np.median(v):.0f}, p95 {np.percentile(v, 95):.0f}, "
                      f"min {min(heard, default=np.inf):.0f}, max {max(heard, default=np.inf):.0f} "
                      f"({len(v)} trials, {len(v) - len(heard)} not heard)", flush=True)
        finally:
            browser.close()
        if not a.no_mic:
            print("\n3. live microphone -> mouth shown in another page (ms), over WebRTC")
            m = mic_latency(p, a.mic_seconds, tmp)
            if m:
                print(f"   p50 {np.median(m):.0f}, p95 {np.percentile(m, 95):.0f} ({len(m)} onsets)")
            else:
                print("   no onset matched")
    print("\ntargets: A/V median |offset| <= 20 ms, p95 <= 40 ms; time to first sound p50 <= 400 ms")
    for transport, n, r in rows:
        ok = r["median"] <= 20 and r["p95"] <= 40
        print(f"  A/V {transport} x{n}: {'ok' if ok else 'MISSED'} (median {r['median']:.1f}, p95 {r['p95']:.1f})")
    for transport, v in ttfs.items():
        print(f"  first sound {transport}: {'ok' if np.median(v) <= 400 else 'MISSED'} (p50 {np.median(v):.0f} ms)")
    print(f"\n(recordings in {tmp})")


if __name__ == "__main__":
    main()
