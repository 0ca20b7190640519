#!/usr/bin/env python3
"""Lip-sync latency through real processes: an audio sample in -> the mouth frame for it out.

A real graph, ``audio_source udp_port=P ! audio_phoneme mode=M ! viseme ! recorder``, is fed
espeak-ng speech (Harvard sentences with pauses) as 20 ms UDP datagrams paced at real time, as a
microphone or a voice stream would come. ``audio_source`` stamps each datagram's samples with the
clock at which they were captured (the datagram's arrival minus its duration), so for every mouth
frame the recorder gets, ``arrival - pts`` is the time from that audio sample entering the graph
to the mouth frame for it leaving the viseme (the recorder is the next hop). Reported per mode:
p50 / p95 / max over the frames of the speech, with the latency the graph declares beside it, and
the real-time factor of the audio -> mouth path: the CPU time of the ``audio_phoneme`` and
``viseme`` processes per second of audio (on this machine, with everything else it runs).

    python tools/lipsync_latency.py [--modes live balanced file] [--seconds 20]

Target (issue 13): live mode p95 <= 100 ms; real-time factor < 0.2 on one core.
"""
from __future__ import annotations

import argparse
import json
import socket
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_sessions import cpu_seconds  # noqa: E402
from phoneme_eval import SENTENCES  # noqa: E402

from nodes.speech import speak  # noqa: E402
from runtime.graph import parse_graph  # noqa: E402
from runtime.recording import read_records  # noqa: E402
from runtime.runner import Runner  # noqa: E402

CHUNK = 320  # 20 ms at 16 kHz


def speech(seconds: float) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Sentences with 0.6 s pauses until ``seconds``; the spans of speech (s)."""
    parts, spans, t = [], [], 0.6
    parts.append(np.zeros(int(0.6 * 16000), np.int16))
    for s in SENTENCES * 10:
        pcm, _ = speak(s)
        parts += [pcm, np.zeros(int(0.6 * 16000), np.int16)]
        spans.append((t, t + len(pcm) / 16000))
        t += len(pcm) / 16000 + 0.6
        if t >= seconds:
            break
    return np.concatenate(parts), spans


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(mode: str, pcm: np.ndarray, spans: list[tuple[float, float]], folder: Path) -> dict:
    port, out = free_port(), folder / f"{mode}.msgpack"
    graph = parse_graph(f"""
name: lipsync_latency
nodes:
  mic: {{type: audio_source, params: {{udp_port: {port}, chunk_ms: 20}}}}
  phones: {{type: audio_phoneme, params: {{mode: {mode}}}}}
  lips: {{type: viseme, params: {{rate: 60}}}}
  rec: {{type: recorder, params: {{path: "{out}", flush_every: 1}}}}
links:
  - {{from: mic, to: phones, policy: block, size: 64}}
  - {{from: phones, to: lips, policy: block, size: 64}}
  - {{from: lips, to: rec, policy: block, size: 64}}
""", "<lipsync_latency>", {})
    runner = Runner(graph).start()
    try:
        declared = runner.bus.wait_for("LATENCY", node="rec", timeout=10)["latency_ns"] / 1e6
        pids = runner.pids()
        cpu0 = {n: cpu_seconds(pids[n]) for n in ("phones", "lips")}
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        t0 = time.monotonic()
        first_ns = time.monotonic_ns()
        for k, i in enumerate(range(0, len(pcm), CHUNK)):
            delay = t0 + (k + 1) * CHUNK / 16000 - time.monotonic()  # a datagram once its 20 ms are captured
            if delay > 0:
                time.sleep(delay)
            sock.sendto(pcm[i:i + CHUNK].astype("<i2").tobytes(), ("127.0.0.1", port))
        sock.close()
        time.sleep(declared / 1000 + 1.0)  # the frames the graph still holds back
        cpu_each = {n: cpu_seconds(pids[n]) - cpu0[n] for n in ("phones", "lips")}
        cpu = sum(cpu_each.values())
        lips = runner.stats()["nodes"]["lips"]["node"]
    finally:
        runner.stop(drain=False)
    lat, t_audio = [], []
    for rec in read_records(out):
        t_audio.append((rec["pts_ns"] - first_ns) / 1e9)
        lat.append((rec["t_ns"] - rec["pts_ns"]) / 1e6)
    t, ms = np.array(t_audio), np.array(lat)
    speaking = np.zeros(len(t), bool)
    for a, b in spans:
        speaking |= (t >= a) & (t <= b)
    ms = ms[speaking]
    audio_s = len(pcm) / 16000
    return {"mode": mode, "declared_ms": declared, "frames": int(len(ms)),
            "p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "max_ms": float(ms.max()), "rtf": cpu / audio_s, "audio_s": audio_s,
            "rtf_phones": cpu_each["phones"] / audio_s, "rtf_viseme": cpu_each["lips"] / audio_s,
            "drawn_early": lips.get("articulation_early", 0)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modes", nargs="+", default=["live", "balanced", "file"], choices=["live", "balanced", "file"])
    ap.add_argument("--seconds", type=float, default=20.0, help="speech sent per mode")
    ap.add_argument("--json", action="store_true", help="print the results as JSON too")
    args = ap.parse_args()
    pcm, spans = speech(args.seconds)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for mode in args.modes:
            rows.append(run(mode, pcm, spans, Path(d)))
    print(f"audio sample in -> mouth frame out, {rows[0]['audio_s']:.1f} s of espeak-ng speech as 20 ms UDP datagrams")
    print(f"{'mode':<9} {'declared':>9} {'p50 ms':>7} {'p95 ms':>7} {'max ms':>7} {'frames':>7} {'early':>6} "
          f"{'RTF':>6} {'(phones':>8} {'viseme)':>8}")
    for r in rows:
        print(f"{r['mode']:<9} {r['declared_ms']:9.0f} {r['p50_ms']:7.1f} {r['p95_ms']:7.1f} {r['max_ms']:7.1f} "
              f"{r['frames']:7d} {r['drawn_early']:6d} {r['rtf']:6.3f} {r['rtf_phones']:8.3f} {r['rtf_viseme']:8.3f}")
    print("early: frames drawn before the articulation for their pts had come (the declared latency too short)")
    live = [r for r in rows if r["mode"] == "live"]
    if live:
        print("target (live p95 <= 100 ms, RTF < 0.2):", "met" if live[0]["p95_ms"] <= 100 and live[0]["rtf"] < 0.2
              else "NOT met")
    if args.json:
        print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
