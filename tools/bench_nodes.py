#!/usr/bin/env python3
"""Node benchmark: per-node CPU cost, wire bytes per LOD level, codec error, phoneme timing.

    .venv/bin/python tools/bench_nodes.py [--sessions 1 100 1000] [--repeat 3] [--sentences 20] [--paths compiled reference] [--nodes TYPE ...]

(a) every node type's processing cost, measured in this process on realistic input: each node
    is hosted by ``runtime.testing.NodeHarness`` (its emits kept as Python objects, so the wire
    encoding is left out and reported on its own row), and its ``process`` / timer callback is
    timed directly. ARKit input is the real Live Link Face capture
    (``shared/data/livelink/llv_dao_packets.bin``, parsed by ``nodes.livelink``); S sessions
    replay it at different offsets. Speech is espeak-ng's. Each figure is the best of
    ``--repeat`` runs (a fresh node each) of the mean over many frames, so periodic work
    (keyframes, expiry) is included, amortized.
(b) ``avatar/packet`` bytes per frame at each LOD level, real capture -> lod -> compressor,
    against raw float32 and JSON of the same frames.
(c) the largest reconstruction error after compressor -> decompressor, against half a step.
(d) audio_phoneme's real-time factor and phoneme boundary error against espeak-ng's exact phoneme
    times, without and with the transcript (``tools/phoneme_eval.py``'s functions).

Section (a) runs twice, each in a child process: with the compiled hot paths (``nodes.compiled``)
and with the pure-Python reference code (``AVATAR_PURE_PYTHON=1``), printed side by side with
the ratio (``--paths`` picks one). Single-threaded BLAS (OPENBLAS_NUM_THREADS=1), as in node
processes.
"""
from __future__ import annotations

import os

os.environ["OPENBLAS_NUM_THREADS"] = "1"  # before numpy loads: node processes run single-threaded BLAS
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
import wave  # noqa: E402
from fnmatch import fnmatchcase  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from phoneme_eval import SENTENCES, evaluate  # noqa: E402

from nodes import wire as wf  # noqa: E402
from nodes.face import arkit_names, arkit_pose_names, load_lod_table  # noqa: E402
from nodes.livelink import SAMPLE_CAPTURE, build_packets, parse_packet, read_container  # noqa: E402
from nodes.speech import speak  # noqa: E402
from runtime import Message  # noqa: E402
from runtime.message import decode, encode  # noqa: E402
from runtime.recording import RecordingWriter  # noqa: E402
from runtime.testing import NodeHarness  # noqa: E402

CAPTURE = SAMPLE_CAPTURE
TAKE = ROOT / "tests" / "data" / "llf_dao_take.csv"
FRAME_NS = 1_000_000_000 // 60
PTS0 = 10**12
ARKIT = "arkit/blendshapes"


# --- harness and timing -------------------------------------------------------------------------
class Host(NodeHarness):
    """NodeHarness whose emits are kept as they are: the node's own cost, without the wire encoding."""

    def emit(self, pad: str, msg: Message) -> None:
        self.outputs.append((pad, msg))


Step = Callable[[int], int]  # step(i) does frame i and returns the nanoseconds of its timed part


def measure(make: Callable[[], Step], n: int, repeat: int, warmup: int = 5) -> float:
    """Best over ``repeat`` fresh instances of the mean µs of ``step(i)`` for i in warmup..warmup+n-1."""
    best = math.inf
    for _ in range(repeat):
        step = make()
        for i in range(warmup):
            step(i)
        total = 0
        for i in range(warmup, warmup + n):
            total += step(i)
        best = min(best, total / n)
    return best / 1000.0


def timed(fn: Callable[[], Any]) -> int:
    t0 = time.perf_counter_ns()
    fn()
    return time.perf_counter_ns() - t0


def wire(msg: Message) -> Message:
    """The message as a downstream process receives it (read-only array views)."""
    return decode(encode(msg, 0))


# --- data -----------------------------------------------------------------------------------------
class Capture:
    """The real Live Link Face capture: 52 weights (clamped, as arkit_source does) and 9 pose values."""

    def __init__(self, path: Path):
        frames = [parse_packet(p) for p in read_container(path)]
        self.values = np.array([np.concatenate([f.weights, f.pose]) for f in frames], dtype=np.float32)
        self.weights = np.clip(self.values[:, :52], 0.0, 1.0)
        self.pose = self.values[:, 52:]
        self.n = len(frames)
        self.path = path

    def batch(self, i: int, sessions: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Frame i of S sessions, each playing the capture from its own offset."""
        rows = (i + 37 * np.arange(len(sessions))) % self.n
        return self.weights[rows], self.pose[rows]

    def message(self, i: int, sessions: list[str]) -> Message:
        w, p = self.batch(i, sessions)
        return wire(Message(ARKIT, {"active": [True] * len(sessions)}, {"weights": w, "pose": p},
                            pts_ns=PTS0 + i * FRAME_NS, session=list(sessions)))


def session_ids(n: int) -> list[str]:
    """Device-id-like session ids, as Live Link Face sends them."""
    return [str(uuid.uuid5(uuid.NAMESPACE_URL, f"bench/{i}")).upper() for i in range(n)]


def write_wav(path: Path, pcm16k: np.ndarray, rate: int, channels: int) -> Path:
    """The speech as a WAV at ``rate`` (linear interpolation) with ``channels`` identical channels."""
    n = int(len(pcm16k) * rate / 16000)
    x = np.interp(np.arange(n) * 16000 / rate, np.arange(len(pcm16k)), pcm16k.astype(np.float64))
    x = np.repeat(np.round(x).astype("<i2")[:, None], channels, axis=1)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(x.tobytes())
    return path


# --- (a) per-node cost ------------------------------------------------------------------------------
class Row:
    def __init__(self, node: str, unit: str, per_s: float, batched: bool, note: str = ""):
        self.node, self.unit, self.per_s, self.batched, self.note = node, unit, per_s, batched, note
        self.us: dict[int, float] = {}


def bench_nodes(cap: Capture, sizes: list[int], repeat: int, tmp: Path, speech: list[tuple[str, np.ndarray, list]],
                log: Callable[[str], None], only: set[str] | None = None) -> list[Row]:
    rows: list[Row] = []

    closing: list[Any] = []  # sockets and nodes to close at the end

    def run(row: Row, case: Callable[[int], tuple[Callable[[], Step], int] | float]) -> None:
        if only and row.node not in only:
            return
        log(f"  {row.node} ({row.note}) ...")
        for s in sizes if row.batched else [1]:
            got = case(s)
            row.us[s] = got if isinstance(got, float) else measure(got[0], got[1], repeat)
        rows.append(row)

    # arkit_source: S datagrams from S phones wait in the socket; one wake-up reads them, one tick batches
    def arkit_source(s: int):
        ids = session_ids(s)

        def make() -> Step:
            h = Host("arkit_source", host="127.0.0.1", port=0)
            addr = h.node.sock.getsockname()
            tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            closing.extend((h, tx))

            def step(i: int) -> int:
                w, p = cap.batch(i, ids)
                for pkt in build_packets(ids, np.concatenate([w, p], axis=1), frame=i):
                    tx.sendto(pkt, addr)
                h.outputs.clear()
                return timed(lambda: (h.node._read(), h.node._tick()))
            return step
        return make, 300 if s < 50 else 120

    # every other ARKit batch node: process(frame) (+ tick for timer-driven ones)
    def batch_node(type_: str, params: dict, tick: str | None = None, pad: str = "in"):
        def case(s: int):
            ids = session_ids(s)

            def make() -> Step:
                h = Host(type_, **params)

                def step(i: int) -> int:
                    msg = cap.message(i, ids)
                    h.outputs.clear()
                    if tick is None:
                        return timed(lambda: h.node.process(pad, msg))
                    fn = getattr(h.node, tick)
                    return timed(lambda: (h.node.process(pad, msg), fn()))
                return step
            return make, 600 if s < 50 else 200
        return case

    # the capture graph's batching: arkit_source's 240 Hz batches of the sessions whose packet just
    # came, so a frame of S sessions is 4 batches of S/4, each a different set (graphs/capture.yaml)
    def fresh_node(type_: str, params: dict, pad: str = "in"):
        def case(s: int):
            ids = session_ids(s)
            groups = [g for g in (ids[q::4] for q in range(4)) if g]

            def make() -> Step:
                h = Host(type_, **params)

                def step(i: int) -> int:
                    msgs = [cap.message(i, g) for g in groups]
                    h.outputs.clear()

                    def frame() -> None:
                        for m in msgs:
                            h.node.process(pad, m)
                            h.advance(1 / 240)  # the node's timers, as its process runs them
                    return timed(frame)
                return step
            return make, 300 if s < 50 else 100
        return case

    def generic(type_: str, params: dict, caps_msg: Callable[[int, list[str]], Message]):
        def case(s: int):
            ids = session_ids(s)

            def make() -> Step:
                h = Host(type_, **params)

                def step(i: int) -> int:
                    msg = caps_msg(i, ids)
                    h.outputs.clear()
                    return timed(lambda: h.node.process("in", msg))
                return step
            return make, 600 if s < 50 else 300
        return case

    def ticking(type_: str, **params: Any):
        """A source timed per call of its timer callback, one message each (speed=0 sources)."""
        def case(s: int):
            def make() -> Step:
                h = Host(type_, **params)

                def step(i: int) -> int:
                    h.outputs.clear()
                    h._timers.clear()
                    return timed(h.node.tick)
                return step
            return make, 600
        return case

    run(Row("arkit_source", "recv S packets + 1 batch", 60, True, "real UDP on loopback"), arkit_source)

    run(Row("arkit_replay", "1 CSV row", 60, False, "speed=0, one row per call"),
        ticking("arkit_replay", path=str(TAKE), loop=True, speed=0.0))

    # audio: a few sentences of espeak speech
    pcm = np.concatenate([a for _, a, _ in speech[:4]]) if speech else np.zeros(16000, np.int16)
    wav48 = write_wav(tmp / "speech48k.wav", pcm, 48000, 2)
    wav16 = write_wav(tmp / "speech16k.wav", pcm, 16000, 1)
    chunks = len(pcm) // 320

    def audio_source(path: Path):
        def case(s: int):
            def make() -> Step:
                h = Host("audio_source", path=str(path), realtime=False)

                def step(i: int) -> int:
                    h.outputs.clear()
                    return timed(h.node._tick)
                return step
            return make, chunks - 10
        return case
    run(Row("audio_source", "20 ms chunk", 50, False, "48 kHz stereo WAV, resampled"), audio_source(wav48))
    run(Row("audio_source", "20 ms chunk", 50, False, "16 kHz mono WAV"), audio_source(wav16))

    def audio_phoneme(transcript: bool):
        text = " ".join(t for t, _, _ in speech[:4])

        def case(s: int):
            def make() -> Step:
                h = Host("audio_phoneme", transcript=text if transcript else "")

                def step(i: int) -> int:
                    msg = wire(Message("audio/pcm", {"rate": 16000}, {"pcm": pcm[i * 320:(i + 1) * 320]},
                                       pts_ns=PTS0 + i * 20_000_000, session=["a"]))
                    h.outputs.clear()
                    return timed(lambda: h.node.process("in", msg))
                return step
            return make, chunks - 1
        return case
    run(Row("audio_phoneme", "20 ms chunk", 50, False, "free recognition; one decoder per session"),
        audio_phoneme(False))
    run(Row("audio_phoneme", "20 ms chunk", 50, False, "with transcript (forced alignment)"), audio_phoneme(True))

    def text_phoneme(s: int):
        texts = [t for t, _, _ in speech]
        audio_chunks = sum(math.ceil(len(a) / 320) for _, a, _ in speech)

        def make() -> Step:
            h = Host("text_phoneme", realtime=False)

            def step(i: int) -> int:
                msg = wire(Message("text/plain", {"text": [texts[i % len(texts)]]}, session=["a"]))
                h.outputs.clear()
                return timed(lambda: h.node.process("text", msg))
            return step
        # timed per utterance, reported per 20 ms chunk of speech produced
        return measure(make, len(texts), repeat, warmup=1) * len(texts) / audio_chunks
    run(Row("text_phoneme", "20 ms of speech", 50, False, "espeak-ng synthesis + phonemes, per chunk made"),
        text_phoneme)

    # viseme: every session speaks (its phoneme timeline arrives up front); one tick = one frame of all
    def viseme(s: int):
        ids = session_ids(s)
        timeline = []
        t = 0.0
        for _, a, phones in speech[:4]:
            timeline += [(p, t + a0, t + b0) for p, a0, b0 in phones]
            t += len(a) / 16000
        n = min(int(t * 60) - 30, 600 if s < 50 else 300)

        def make() -> Step:
            h = Host("viseme", max_lag_ms=0)
            base = h.node.clock_ns
            rows = [[r, p, base + int((a + 0.05 * r) * 1e9), base + int((b + 0.05 * r) * 1e9)]
                    for r in range(s) for p, a, b in timeline]
            h.node.process("in", wire(Message("phonemes/arpabet", {"phonemes": rows}, pts_ns=base, session=ids)))

            def step(i: int) -> int:
                h.outputs.clear()
                return timed(h.node.tick)
            return step
        return make, n
    run(Row("viseme", "1 tick (all sessions)", 60, True, "every session speaking"), viseme)

    run(Row("mapper", "1 batch", 60, True, "profile standard (ARKit -> CC4)"), batch_node("mapper", {"profile": "standard"}))
    run(Row("mapper", "1 batch", 60, True, "profile identity (capture graphs)"), batch_node("mapper", {"profile": "identity"}))
    run(Row("rate", "1 batch in + 1 tick", 60, True, "interpolate"), batch_node("rate", {"rate": 60}, tick="tick"))
    run(Row("blender", "capture batch + 1 tick", 60, True, "capture + idle + emotion + One Euro"),
        batch_node("blender", {"rate": 60}, tick="tick", pad="capture"))
    run(Row("lod", "1 batch", 60, True, "level 1 (mask + pass-through)"), batch_node("lod", {"level": 1}))
    run(Row("compressor", "1 batch", 60, True, "8-bit weights, 12-bit pose, ref_interval 1"),
        batch_node("compressor", {"bits": 8, "ref_interval": 1}))
    run(Row("blender", "4 batches of S/4 (fresh)", 60, True, "tick_on_capture, as graphs/capture.yaml"),
        fresh_node("blender", {"rate": 60, "tick_on_capture": True}, pad="capture"))
    run(Row("compressor", "4 batches of S/4 (fresh)", 60, True, "a different set of sessions every batch"),
        fresh_node("compressor", {"bits": 8, "ref_interval": 1}))

    def decompressor(s: int):
        ids = session_ids(s)
        n = 600 if s < 50 else 200
        enc = Host("compressor", bits=8, ref_interval=1)
        packets = [wire(enc.node.process("in", cap.message(i, ids))) for i in range(n + 10)]

        def make() -> Step:
            h = Host("decompressor")

            def step(i: int) -> int:
                h.outputs.clear()
                return timed(lambda: h.node.process("in", packets[i]))
            return step
        return make, n
    run(Row("decompressor", "1 batch", 60, True, "8-bit packets of the row above"), decompressor)

    def testsrc(s: int):
        def make() -> Step:
            h = Host("testsrc", rate=0, width=52)

            def step(i: int) -> int:
                h.outputs.clear()
                return timed(h.node.tick)
            return step
        return make, 1000
    run(Row("testsrc", "1 frame", 60, False, "52 floats, sine"), testsrc)
    run(Row("identity", "1 message", 60, True, "ARKit batch"), generic("identity", {}, cap.message))
    run(Row("recorder", "1 message", 60, True, "ARKit batch to a file (tmp)"),
        generic("recorder", {"path": str(tmp / "rec.msgpack")}, cap.message))

    rec_path = tmp / "player.msgpack"
    writer = RecordingWriter(rec_path)
    for i in range(cap.n):
        writer.write(cap.message(i, ["a"]), 0)
    writer.close()

    run(Row("player", "1 message", 60, False, "ARKit S=1 recording, speed=0"),
        ticking("player", path=str(rec_path), speed=0.0, loop=True))
    run(Row("fakesink", "1 message", 60, True, "ARKit batch"), generic("fakesink", {}, cap.message))

    def link(s: int):
        ids = session_ids(s)

        def make() -> Step:
            def step(i: int) -> int:
                w, p = cap.batch(i, ids)
                msg = Message(ARKIT, {"active": [True] * s}, {"weights": w, "pose": p}, PTS0, ids)
                return timed(lambda: decode(encode(msg, i)))
            return step
        return make, 1000
    run(Row("(a link)", "encode + decode 1 msg", 60, True, "runtime wire cost per hop, for scale"), link)
    for c in closing:
        c.close()
    return rows


PATHS = {"compiled": {}, "reference": {"AVATAR_PURE_PYTHON": "1"}}  # the environment of each path's child


def nodes_in_child(path: str, argv: list[str], log: Callable[[str], None]) -> list[Row]:
    """Section (a) in a child process on one path (compiled or reference), its rows back as JSON."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        env = {**os.environ, **PATHS[path]}
        if path == "compiled":
            env.pop("AVATAR_PURE_PYTHON", None)
        log(f"(a) per-node cost, {path} path")
        subprocess.run([sys.executable, __file__, *argv, "--rows-json", out.name], env=env, check=True,
                       stdout=subprocess.DEVNULL)
        rows = []
        for d in json.loads(Path(out.name).read_text()):
            r = Row(d["node"], d["unit"], d["per_s"], d["batched"], d["note"])
            r.us = {int(k): v for k, v in d["us"].items()}
            rows.append(r)
        return rows


def print_nodes(by_path: dict[str, list[Row]], sizes: list[int]) -> None:
    """One line per node and path; the reference line ends with how many times slower it is."""
    big = max(sizes)
    head = (f"{'node':<14} {'one frame is':<25} {'path':<9} " + " ".join(f"{'S=' + str(s) + ' µs':>11}" for s in sizes)
            + f" {'µs/session':>11} {'core % @rt':>10}  notes")
    print(head)
    print("-" * len(head))
    paths = list(by_path)
    first = by_path[paths[0]]
    for i, r0 in enumerate(first):
        for j, path in enumerate(paths):
            r = by_path[path][i]
            cells = " ".join(f"{r.us[s]:11.1f}" if s in r.us else f"{'-':>11}" for s in sizes)
            per_session = f"{r.us[big] / big:11.2f}" if big in r.us and big > 1 else f"{'-':>11}"
            s_used = big if big in r.us else 1
            load = r.us[s_used] * r.per_s / 1e4
            note = r.note if j == 0 else ""
            if j and paths[0] == "compiled":
                ratios = [r.us[s] / r0.us[s] for s in sizes if s in r.us and s in r0.us and r0.us[s] > 0]
                note = "reference / compiled: " + ", ".join(f"{x:.1f}x" for x in ratios)
            print(f"{r.node if j == 0 else '':<14} {r.unit if j == 0 else '':<25} {path:<9} {cells} {per_session} "
                  f"{load:9.2f}%  {note}")
    print(f"core % @rt: share of one core the node needs in real time (60 frames/s for animation, 50 chunks/s "
          f"for audio),\nat S={big} for batched nodes, S=1 for the others (one session per node or per message).\n"
          f"compiled: the C extensions of nodes/**/*.pyx where a node has one (nodes.compiled); reference: "
          f"AVATAR_PURE_PYTHON=1.")


# --- (b) wire size per LOD level ----------------------------------------------------------------
def kept_columns(patterns: list[str] | None, names: list[str]) -> list[int]:
    if patterns is None:
        return list(range(len(names)))
    return [i for i, n in enumerate(names) if any(fnmatchcase(n, p) for p in patterns)]


def wire_sizes(cap: Capture, bits: int) -> list[dict[str, float]]:
    names, pose_names = arkit_names(), arkit_pose_names()
    every, patterns = load_lod_table("mappings/lod.yaml")
    out = []
    for level in range(len(every)):
        keep = kept_columns(patterns[level], names)
        res: dict[str, float] = {"level": level, "kept": len(keep), "every": int(every[level])}
        for key, with_pose, ref in (("w", False, 1), ("wp", True, 1), ("wp_key", True, 0)):
            lod = Host("lod", level=level)
            comp = Host("compressor", bits=bits, ref_interval=ref)
            sizes = []
            for i in range(cap.n):
                arrays = {"weights": cap.weights[i:i + 1]}
                if with_pose:
                    arrays["pose"] = cap.pose[i:i + 1]
                msg = Message(ARKIT, {"active": [True]}, arrays, pts_ns=PTS0 + i * FRAME_NS, session=["s"])
                lodded = lod.node.process("in", wire(msg))
                if lodded is None:
                    continue
                packet = comp.node.process("in", wire(lodded))
                sizes += [len(p) for p in packet.data["packets"]]
            res[key] = float(np.mean(sizes))
            res[key + "_src"] = float(np.sum(sizes)) / cap.n
            res["packets"] = len(sizes)
        sent = np.arange(0, cap.n, every[level])
        res["f32_w"] = 4 * len(keep)
        res["f32_wp"] = 4 * (len(keep) + 9)
        res["json_w"] = float(np.mean([len(json.dumps({names[c]: round(float(cap.weights[i, c]), 6) for c in keep},
                                                      separators=(",", ":"))) for i in sent]))
        res["json_wp"] = float(np.mean([len(json.dumps(
            {**{names[c]: round(float(cap.weights[i, c]), 6) for c in keep},
             **{n: round(float(v), 6) for n, v in zip(pose_names, cap.pose[i])}}, separators=(",", ":")))
            for i in sent]))
        out.append(res)
    return out


def print_wire(sizes: list[dict[str, float]], bits: int, n: int) -> bool:
    print(f"avatar/packet bytes per frame, real capture ({n} frames) -> lod -> compressor, {bits}-bit weights, "
          "12-bit pose,\nkeyframe every 60 frames, every frame a reference (ref_interval=1, the graphs' setting) "
          "unless noted.\n'per src frame' = bytes over all frames the capture had (decimated levels send fewer).")
    head = (f"{'level':<5} {'kept':>4} {'every':>5} | {'weights':>8} {'f32':>5} {'JSON':>6} | "
            f"{'w+pose':>7} {'f32':>5} {'JSON':>6} {'vs f32':>7} {'vs JSON':>8} | {'per src':>8} {'key-ref':>8}")
    print(head)
    print(f"{'':<17} | {'B/packet':>8} {'':>5} {'':>6} | {'B/packet':>7} {'':>5} {'':>6} {'':>7} {'':>8} | "
          f"{'frame':>8} {'w+pose':>8}")
    print("-" * len(head))
    for r in sizes:
        print(f"L{r['level']:<4} {r['kept']:>4} {r['every']:>5} | {r['w']:8.1f} {r['f32_w']:5.0f} {r['json_w']:6.0f} | "
              f"{r['wp']:7.1f} {r['f32_wp']:5.0f} {r['json_wp']:6.0f} {r['f32_wp'] / r['wp']:6.1f}x "
              f"{r['json_wp'] / r['wp']:7.1f}x | {r['wp_src']:8.1f} {r['wp_key']:8.1f}")
    print("  f32 / JSON: the same frames' kept weights (and pose) as raw float32 / as JSON {name: value};\n"
          "  key-ref: every delta from the last keyframe (compressor ref_interval=0: a lost packet harms no\n"
          "  other), B/packet with pose.")
    l0 = sizes[0]
    ok = l0["w"] <= 20
    print(f"target L0 {bits}-bit <= 20 B/frame (weights): {l0['w']:.1f} B -> {'met' if ok else 'NOT met'} "
          f"(with pose {l0['wp']:.1f} B; key-ref with pose {l0['wp_key']:.1f} B)")
    return ok


# --- (c) reconstruction error ---------------------------------------------------------------------
def codec_errors(cap: Capture, settings: list[tuple[int, int]], pose_bits: int = 12) -> list[dict[str, float]]:
    """For each (bits, ref_interval): the largest weight and pose errors over the capture."""
    out = []
    for bits, ref in settings:
        comp = Host("compressor", bits=bits, pose_bits=pose_bits, ref_interval=ref)
        dec = Host("decompressor")
        err_w = err_p = 0.0
        decoded = 0
        for i in range(cap.n):
            msg = Message(ARKIT, None, {"weights": cap.weights[i:i + 1], "pose": cap.pose[i:i + 1]},
                          pts_ns=PTS0 + i * FRAME_NS, session=["s"])
            packets = comp.node.process("in", wire(msg))
            dec.outputs.clear()
            dec.node.process("in", wire(packets))
            for _, m in dec.outputs:
                decoded += 1
                err_w = max(err_w, float(np.abs(m.arrays["weights"].astype(np.float64) - cap.weights[i]).max()))
                err_p = max(err_p, float(np.abs(m.arrays["pose"].astype(np.float64) - cap.pose[i]).max()))
        half_w = wf.step(bits, *wf.WEIGHT_RANGE) / 2
        half_p = wf.step(pose_bits, *wf.POSE_RANGE) / 2
        out.append({"bits": bits, "ref": ref, "decoded": decoded, "err_w": err_w, "half_w": half_w, "err_p": err_p,
                    "half_p": half_p})
    return out


def print_errors(errs: list[dict[str, float]], n: int) -> bool:
    print(f"largest |decoded - input| over the real capture ({n} frames), compressor -> decompressor; "
          "pose at 12 bits over -pi..pi")
    head = f"{'bits':>4} {'ref':>3} {'decoded':>7} | {'weights err':>11} {'half step':>10} {'ratio':>6} | " \
           f"{'pose err':>9} {'half step':>10} {'ratio':>6} | ok"
    print(head)
    print("-" * len(head))
    all_ok = True
    for e in errs:
        ok = e["err_w"] <= e["half_w"] * (1 + 1e-6) + 1e-9 and e["err_p"] <= e["half_p"] * (1 + 1e-6) + 1e-9 \
            and e["decoded"] == n
        all_ok &= ok
        print(f"{e['bits']:>4} {e['ref']:>3} {e['decoded']:>7} | {e['err_w']:11.3e} {e['half_w']:10.3e} {e['err_w'] / e['half_w']:6.3f} | "
              f"{e['err_p']:9.3e} {e['half_p']:10.3e} {e['err_p'] / e['half_p']:6.3f} | {'yes' if ok else 'NO'}")
    print("  ref: compressor ref_interval (1: previous-frame references, 0: keyframe references)")
    print(f"target: error <= half a step at every precision -> {'met' if all_ok else 'NOT met'}")
    return all_ok


# --- (d) phonemes -----------------------------------------------------------------------------------
def print_phonemes(sentences: int) -> bool:
    res = evaluate(SENTENCES[:sentences])
    a = res.pop("audio_s")
    print(f"audio_phoneme on {a['sentences']:.0f} Harvard sentences ({a['seconds']:.1f} s of espeak-ng speech, "
          "175 wpm) streamed in 20 ms chunks;\nboundary error = |espeak's phone start - recognized start| of "
          "label-matched phones (tools/phoneme_eval.py)")
    head = (f"{'mode':<11} {'RTF cpu':>8} {'RTF wall':>9} {'median ms':>10} {'p90 ms':>8} {'matched':>8} "
            f"{'PER':>5} {'n':>5} {'failed':>6}")
    print(head)
    print("-" * len(head))
    for mode, r in res.items():
        print(f"{mode:<11} {r['rtf_cpu']:8.3f} {r['rtf_wall']:9.3f} {r['median_ms']:10.1f} {r['p90_ms']:8.1f} "
              f"{r['matched']:8.1%} {r['per']:5.2f} {r['boundaries']:5.0f} {r['failed']:6.0f}")
    rtf_ok = all(r["rtf_cpu"] < 0.2 for r in res.values())
    med_ok = res["transcript"]["median_ms"] < 30
    print(f"target RTF < 0.2 (both modes): {'met' if rtf_ok else 'NOT met'}; "
          f"median boundary error < 30 ms with transcript: {res['transcript']['median_ms']:.1f} ms -> "
          f"{'met' if med_ok else 'NOT met'}")
    return rtf_ok and med_ok


# --- main -------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 epilog="\n".join(__doc__.splitlines()[2:]),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sessions", type=int, nargs="+", default=[1, 100, 1000], metavar="S",
                    help="batch sizes for the batched nodes (default 1 100 1000)")
    ap.add_argument("--repeat", type=int, default=3, help="fresh runs per figure; the best is kept (default 3)")
    ap.add_argument("--sentences", type=int, default=len(SENTENCES),
                    help=f"sentences for the phoneme benchmark (default {len(SENTENCES)})")
    ap.add_argument("--bits", type=int, default=8, help="weight precision of the wire-size table (default 8)")
    ap.add_argument("--capture", type=Path, default=CAPTURE, help="Live Link Face packet container")
    ap.add_argument("--skip", nargs="*", default=[], choices=("nodes", "wire", "error", "phonemes"),
                    help="sections to leave out")
    ap.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    ap.add_argument("--paths", nargs="+", default=list(PATHS), choices=list(PATHS),
                    help="section (a) on the compiled hot paths, the pure-Python reference, or both (default)")
    ap.add_argument("--nodes", nargs="+", metavar="TYPE", help="section (a) for these node rows only")
    ap.add_argument("--rows-json", help=argparse.SUPPRESS)  # child: run section (a) here, rows to this file
    a = ap.parse_args(argv)
    sizes = sorted(set(a.sessions))
    sys.stdout.reconfigure(line_buffering=True)

    def log(text: str) -> None:
        if not a.quiet:
            print(text, file=sys.stderr, flush=True)

    t0 = time.monotonic()
    cap = Capture(a.capture)
    print(f"$ {' '.join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])])}")
    print(f"bench_nodes: {os.cpu_count()} cores, OPENBLAS_NUM_THREADS={os.environ['OPENBLAS_NUM_THREADS']}, "
          f"numpy {np.__version__}, capture {cap.path.name} ({cap.n} frames)\n")
    results: dict[str, bool] = {}
    if a.rows_json:  # a child: section (a) on this process's path
        speaking = not a.nodes or bool({"audio_source", "audio_phoneme", "text_phoneme", "viseme"} & set(a.nodes))
        speech = [(s, *speak(s)) for s in SENTENCES[:6]] if speaking else []
        with tempfile.TemporaryDirectory() as tmp:
            rows = bench_nodes(cap, sizes, a.repeat, Path(tmp), speech, log, set(a.nodes or ()))
        Path(a.rows_json).write_text(json.dumps([vars(r) for r in rows]))
        return 0
    if "nodes" not in a.skip:
        child_argv = ["--sessions", *map(str, sizes), "--repeat", str(a.repeat), "--capture", str(a.capture)]
        child_argv += (["--nodes", *a.nodes] if a.nodes else []) + (["--quiet"] if a.quiet else [])
        by_path = {path: nodes_in_child(path, child_argv, log) for path in a.paths}
        print(f"(a) per-node processing cost, µs per frame (best of {a.repeat} runs of the mean; "
              "node code only, the wire encoding is the last row)")
        print_nodes(by_path, sizes)
        print()
    if "wire" not in a.skip:
        log("(b) wire size")
        print("(b) " , end="")
        results["wire"] = print_wire(wire_sizes(cap, a.bits), a.bits, cap.n)
        print()
    if "error" not in a.skip:
        log("(c) reconstruction error")
        print("(c) ", end="")
        results["error"] = print_errors(codec_errors(cap, [(b, 1) for b in (4, 6, 8, 10, 12, 16)] + [(8, 0)]), cap.n)
        print()
    if "phonemes" not in a.skip:
        log("(d) phonemes")
        print("(d) ", end="")
        results["phonemes"] = print_phonemes(a.sentences)
        print()
    print("summary: " + ", ".join(f"{k} {'met' if v else 'NOT met'}" for k, v in results.items())
          + f"  ({time.monotonic() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
