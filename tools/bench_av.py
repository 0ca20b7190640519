#!/usr/bin/env python3
"""The voice and the face in the browser: A/V sync, time to first sound, mouth latency from a live
microphone, and what the voice costs.

    python tools/bench_av.py [--viewers 1 10] [--transports webrtc websocket] [--trials 10] [--no-mic]

Everything runs on this machine's loopback: the graphs in this process's Runner, Debian's
Chromium driven by Playwright. The first page of a case renders the face (software WebGL); the
others decode, play the voice and schedule the face without drawing (``?render=0``). Pages may
play sound without a click (``--autoplay-policy``).

1. **A/V sync.** ``graphs/say.yaml``'s chain (text_phoneme -> viseme -> blender -> lod ->
   compressor -> webrtc_sink, the voice to the sink's audio pad) says a paragraph (POST /say).
   Every page reports, for each face frame it showed on the voice's clock, that clock minus the
   frame's pts (``window.avatar.sync.offsets``): how far the mouth shape shown was from the sound
   being heard. Pooled over the pages: median and p95 of |offset|. As a check that the clock is the
   sound, the first page also records the level it hears and the jaw it shows; the lag that best
   lines the two up (cross-correlation) is compared with the same lag computed from the graph's own
   voice and face (recorded before the sink, the face shifted by the sink's hold): their
   difference is the delivery's own offset, the phonetics left out.
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
import os
import sys
import time
import wave
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from runtime import Runner, parse_graph  # noqa: E402
from runtime.api import ApiConfig, ApiServer  # noqa: E402
from runtime.recording import read_recording  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--use-gl=swiftshader", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--allow-loopback-in-peer-connection", "--disable-features=WebRtcHideLocalIpsWithMdns",
        "--autoplay-policy=no-user-gesture-required", "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream"]
LOUD = 0.02
PARAGRAPH = ("The birch canoe slid on the smooth planks. Glue the sheet to the dark blue background. "
             "It's easy to tell the depth of a well. Kick the ball straight and follow through.")
JAW = 17  # jawOpen in the ARKit order

SAY = """
name: bench-av-say
args: {dir: ""}
link_defaults: {policy: leaky, size: 4}
nodes:
  tts: {type: text_phoneme}
  mouth: {type: viseme, params: {rate: 60}}
  face: {type: blender, params: {rate: 60, sessions: [default], micro_per_min: 0}}
  detail: {type: lod}
  encode: {type: compressor, params: {bits: 8, keyframe_interval: 120, ref_interval: 1}}
  web: {type: webrtc_sink, params: {host: 127.0.0.1, port: 0, ice_addresses: [127.0.0.1]}}
  rec_voice: {type: recorder, params: {path: "${dir}/voice.msgpack", flush_every: 10}}
  rec_face: {type: recorder, params: {path: "${dir}/face.msgpack", flush_every: 60}}
links:
  - {from: tts.phonemes, to: mouth, policy: block, size: 16}
  - {from: tts.audio, to: web.audio, policy: block, size: 64}
  - {from: tts.audio, to: rec_voice, policy: block, size: 64}
  - {from: mouth, to: face.visemes, size: 2}
  - face -> detail -> encode.in
  - {from: face, to: rec_face, policy: block, size: 256}
  - encode -> web.in
  - {from: web.requests, to: encode.requests, feedback: true}
  - {from: web.requests, to: detail.requests, feedback: true}
"""

TALK = """
name: bench-av-talk
link_defaults: {policy: leaky, size: 4}
nodes:
  voice: {type: voice_in}
  phones: {type: audio_phoneme}
  mouth: {type: viseme, params: {rate: 60}}
  face: {type: blender, params: {rate: 60, sessions: [default], micro_per_min: 0}}
  detail: {type: lod}
  encode: {type: compressor, params: {bits: 8, keyframe_interval: 120, ref_interval: 1}}
  web: {type: webrtc_sink, params: {host: 127.0.0.1, port: 0, ice_addresses: [127.0.0.1]}}
links:
  - {from: voice.audio, to: phones.in, policy: block, size: 64}
  - {from: voice.text, to: phones.text, policy: block, size: 16}
  - {from: voice.audio, to: web.audio, policy: block, size: 64}
  - {from: phones, to: mouth, policy: block, size: 64}
  - {from: mouth, to: face.visemes, size: 2}
  - face -> detail -> encode.in
  - encode -> web.in
  - {from: web.requests, to: encode.requests, feedback: true}
"""


# --- plumbing -------------------------------------------------------------------------------------
def wait(pred, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


class Graph:
    """A graph with its control API (unauthenticated, loopback), in this process."""

    def __init__(self, text: str, **args: str):
        self.runner = Runner(parse_graph(text, "<bench>", args), stop_on_eos=False).start()
        self.api = ApiServer(self.runner, ApiConfig(host="127.0.0.1", port=0, insecure_local=True,
                                                    rate=1000, burst=1000), announce=False).start()
        self.runner.set_params("web", api=self.api.url)  # the pages' text box and microphone call it
        self.url = self.sink()["url"]

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
    pages = []
    for i in range(n):
        ctx = browser.new_context(viewport={"width": 480, "height": 360})
        page = ctx.new_page()
        page.goto(f"{url}?transport={transport}{'' if i == 0 else '&render=0'}{extra}")
        pages.append(page)
    for page in pages:
        wait(lambda p=page: p.evaluate("() => !!window.avatar && window.avatar.framesDecoded > 30"), 60, "a page to start")
    return pages


def spoken(page, timeout: float = 60.0) -> None:
    """Until the page (recording) has heard voice and then a second of quiet."""
    wait(lambda: page.evaluate(f"() => window.avatar.recordingSummary({LOUD}).voiced >= 40"), timeout, "the voice")
    wait(lambda: page.evaluate(f"() => window.avatar.recordingSummary({LOUD}, 0.003).quietMs >= 1000"), timeout,
         "quiet after the voice")


# --- content: the lag that lines up the level heard with the jaw shown -------------------------------
def best_lag(t: np.ndarray, level: np.ndarray, jaw: np.ndarray, step_ms: float = 5.0, span_ms: float = 200.0) -> float:
    """The lag (ms) by which the jaw follows the sound, at the peak of their cross-correlation."""
    grid = np.arange(t[0], t[-1], step_ms)
    a = np.interp(grid, t, jaw)
    b = np.interp(grid, t, level)
    a, b = a - a.mean(), b - b.mean()
    a, b = a / (np.linalg.norm(a) + 1e-12), b / (np.linalg.norm(b) + 1e-12)
    lags = np.arange(-int(span_ms / step_ms), int(span_ms / step_ms) + 1)
    cc = [np.dot(a[max(0, k):len(a) + min(0, k)], b[max(0, -k):len(b) - max(0, k)]) for k in lags]
    return float(lags[int(np.argmax(cc))] * step_ms)


def page_lag(rec: dict) -> float:
    face = np.array([(t, jaw) for t, _p, _c, jaw in rec["face"] if jaw is not None], dtype=np.float64)
    level = np.array([(t, rms) for t, rms, _c in rec["level"]], dtype=np.float64)
    i = np.searchsorted(face[:, 0], level[:, 0], side="right") - 1
    jaw = np.where(i >= 0, face[np.clip(i, 0, None), 1], 0.0)
    return best_lag(level[:, 0], level[:, 1], jaw)


def graph_lag(folder: Path, hold_ms: float, window_ms: float = 512 / 48) -> float:
    """The same lag from the graph's own voice (its level over the page analyser's window) and face
    (the blender's frames, shifted back by the sink's hold onto the voice's clock)."""
    voice = read_recording(folder / "voice.msgpack")
    pcm = np.concatenate([m.arrays["pcm"] for m in voice]).astype(np.float64) / 32768
    t0, rate = voice[0].pts_ns, int(voice[0].data["rate"])
    # chunks of one utterance follow on; a new one starts at its own pts: place every sample
    times = np.concatenate([(m.pts_ns - t0) / 1e6 + np.arange(len(m.arrays["pcm"])) * 1000 / rate for m in voice])
    grid = np.arange(times[0], times[-1], 5.0)
    n = max(1, int(window_ms * rate / 1000))
    power = np.convolve(pcm ** 2, np.ones(n) / n, mode="same")
    level = np.sqrt(np.interp(grid, times, power))
    face = read_recording(folder / "face.msgpack")
    ft = np.array([(m.pts_ns - t0) / 1e6 - hold_ms for m in face])
    fj = np.array([float(m.arrays["weights"][0, JAW]) for m in face])
    i = np.searchsorted(ft, grid, side="right") - 1
    jaw = np.where(i >= 0, fj[np.clip(i, 0, None)], 0.0)
    return best_lag(grid, level, jaw)


# --- 1. A/V sync and cost -----------------------------------------------------------------------------
def sync_case(browser, transport: str, n: int, tmp: Path) -> dict:
    folder = tmp / f"{transport}-{n}"
    folder.mkdir(parents=True, exist_ok=True)
    g = Graph(SAY, dir=str(folder))
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
        lag_page = page_lag(rec)
        lag_graph = graph_lag(folder, after["voice_hold_ms"])
        return {
            "frames": len(offsets), "median": float(np.median(np.abs(offsets))),
            "p95": float(np.percentile(np.abs(offsets), 95)), "skew": skew,
            "lag_page": lag_page, "lag_graph": lag_graph, "hold_ms": after["voice_hold_ms"],
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


# --- 2. time to first sound ----------------------------------------------------------------------------
def first_sound(browser, transport: str, trials: int, tmp: Path) -> list[float]:
    g = Graph(SAY, dir=str(tmp / f"ttfs-{transport}"))
    out = []
    try:
        page, = open_pages(browser, g.url, 1, transport)
        origin = page.evaluate("() => performance.timeOrigin")
        for _ in range(trials):
            page.evaluate("() => window.avatar.startRecording()")
            t0 = g.say("Hello there.")
            spoken(page)
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
    g = Graph(TALK)
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
    ap.add_argument("--no-mic", action="store_true")
    a = ap.parse_args()
    import tempfile

    from playwright.sync_api import sync_playwright

    tmp = Path(tempfile.mkdtemp(prefix="bench-av-"))
    print(f"A/V benchmark on {os.cpu_count()} cores; graphs, API and Chromium on loopback\n")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            print("1. A/V sync: |voice clock - pts| of each face frame shown, pooled over the pages; content lag:\n"
                  "   the jaw behind the sound heard in page 1, and the same in the graph itself (ms)\n")
            hdr = (f"{'transport':>9} | {'viewers':>7} | {'frames':>6} | {'median':>6} | {'p95':>6} | {'page lag':>8} | "
                   f"{'graph lag':>9} | {'diff':>5} | {'voice B/s':>9} | {'RTP B/s':>7} | {'enc CPU':>7} | {'sink CPU':>8} | late/rebuf")
            print(hdr)
            print("-" * len(hdr))
            rows = []
            for transport in a.transports:
                for n in a.viewers:
                    r = sync_case(browser, transport, n, tmp)
                    rows.append((transport, n, r))
                    rtp = f"{r['rtp_bytes_s']:>7.0f}" if r["rtp_bytes_s"] else f"{'-':>7}"
                    print(f"{transport:>9} | {n:>7} | {r['frames']:>6} | {r['median']:>6.1f} | {r['p95']:>6.1f} | "
                          f"{r['lag_page']:>8.0f} | {r['lag_graph']:>9.0f} | {r['lag_page'] - r['lag_graph']:>5.0f} | "
                          f"{r['bytes_per_viewer_s']:>9.0f} | {rtp} | {r['encoder_cpu']:>6.1%} | {r['sink_cpu']:>7.1%} | "
                          f"{r['late']}/{r['rebuffers']}", flush=True)
            print("\n2. time to first sound: POST /say 'Hello there.' -> first audible sample heard in the page (ms)")
            ttfs = {}
            for transport in a.transports:
                v = first_sound(browser, transport, a.trials, tmp)
                ttfs[transport] = v
                print(f"   {transport:>9}: p50 {np.median(v):.0f}, p95 {np.percentile(v, 95):.0f}, "
                      f"min {min(v):.0f}, max {max(v):.0f} ({len(v)} trials)", flush=True)
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
