#!/usr/bin/env python3
"""Many avatars through one graph: the full capture pipeline under S simulated Live Link Face devices.

    .venv/bin/python tools/bench_sessions.py [--sizes 1000 2000 5000 8000] [--seconds 10] [--viewers 3]
        [--gather-rate 240] [--batch fresh] [--timer-blender] [--baseline-sessions N] [--bin none|middle|all|split|tail]

For each S, the graph of ``graphs/capture.yaml`` runs with the runtime's Python API (every node
its own process)::

    arkit_source (UDP 127.0.0.1, rate 240, batch fresh) -> mapper (identity)
      -> blender (rate 60, tick_on_capture) -> lod -> compressor -> websocket_sink (port 0)
      -> a few WebSocket viewers in this process

``--bin middle`` runs mapper, blender, lod and compressor in one process (a ``bin`` node, as
``graphs/capture-bin.yaml``), ``--bin all`` the whole pipeline from source to sink, ``--bin split``
and ``--bin tail`` in two processes (source to blender and lod to sink; the source alone and
mapper to sink); the nodes and their params are the same.

``--gather-rate 60 --batch all`` gives the other way to batch: every session in one batch per
60 Hz tick (then a packet waits up to a whole frame for its tick).

fed by a load generator: ``--senders`` processes (default one per 2,000 devices) sending real v6
Live Link Face packets (``nodes.livelink.build_packets``, built before the run) for S devices
with distinct ids, each device at 60 Hz on its own phase (spread evenly over the frame period,
as independent phones are; ``--phases burst`` sends every device of a frame back to back).
Each wake-up of a sender sends its due packets with UDP GSO (``--send gso``, the default: one
system call per 64 equal-size datagrams, which the kernel splits, so the source still reads
every packet as its own datagram, as from separate phones), or with one ``sendmmsg``
(``--send mmsg``; ``nodes.livelink._udp``; a ``send`` per packet where the extension is not
built). On loopback the sender's system time also pays for delivering into the receiver's
socket; GSO spares it the per-datagram send path (about 0.5 against 2.3 µs per packet here), so
that generating 300,000 packets a second leaves the two cores to the pipeline.

First, a baseline: the bare cost of receiving the same packets (the generator for
``--baseline-sessions`` devices, default the smallest size) in one process that only reads
them, with ``recvmmsg`` and kernel timestamps as ``arkit_source`` does, and drops them: CPU
microseconds per packet (``time.process_time`` of that process over the window). It reads as
the source does, waking when packets wait and then leaving the socket alone for
``--baseline-pause-ms`` (default 4, the source's pause after a read; 0 = a tight loop that reads
on every wake-up). Each size's CPU per session-frame is also shown as a multiple of it, a figure
that carries across machines of different speeds better than microseconds do.
The viewers subscribe to different sessions, decode with ``nodes.wire.Decoder`` and
count frames and gaps.

Measured over ``--seconds`` after the sessions have joined and a warm-up:

- batch/s and fps: batches per second out of the compressor (with ``--bin all``, ``split`` or
  ``tail``, where it is not the last node of its process, out of the source), and frames per
  second per session
  (packets out of the compressor / S);
- latency p50/p99 from UDP arrival to sink output: ``arkit_source`` stamps each row's packet
  arrival (``arrival_ns``), the blender carries it for the rows that show a capture packet for
  the first time, and the sink takes ``now - arrival`` per row when it splits the batch for its
  viewers (``pipeline_latency_hist`` in its stats). It includes the wait for the source's tick
  (up to one gather period: a batch per tick is the point; "tick wait" shows it alone);
- CPU per session: user + system CPU time of the node processes (``/proc/PID/stat``) over the
  window, in microseconds per session-frame and in cores; the generator's own CPU apart;
- drops: UDP packets sent but never read by the source (kernel ``Udp: RcvbufErrors`` delta
  too), bad packets, link drops and gaps, sink overruns and viewer gaps (lost wire seqs).

The summary line names the largest S that holds, strict and pipeline. The graph's links inside
the host are Unix sockets; ``AVATAR_LOCAL_LINKS=zmq`` in the environment runs it over ZeroMQ
``ipc://`` links instead, to compare.

A size holds the budget when every session gets its 60 frames/s (2%), p99 < 16.7 ms and nothing
is dropped in the window (UDP packets lost while all S devices join at once are reported
apart, as ``run_*``); if the generator cannot send at the target rate the row says so (the
pipeline is then not judged at that size). Two verdicts: *strict*, on the arrival -> sink p99
above, and *pipeline*, on the viewers' p99 from the batch's pts (when the blender made the
frame) to a decoded frame, i.e. without the wait for the source's tick: with devices on
independent phases that wait alone is uniform over a gather period (p99 about 16.5 ms with
60 Hz batches, about 4 ms at 240 Hz).
"""
from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

import numpy as np  # noqa: E402
from capture_pipeline import capture_pipeline  # noqa: E402
from llf_send import device_ids, synthetic_values  # noqa: E402

from nodes.compiled import load  # noqa: E402
from nodes.livelink import build_packets  # noqa: E402

_udp = load("nodes.livelink._udp")  # sendmmsg / recvmmsg; None: plain sockets

PERIOD_BUDGET_MS = 1000.0 / 60.0
_CLK_TCK = os.sysconf("SC_CLK_TCK")



# --- load generator (runs as its own process) -----------------------------------------------------
def sender_main(a: argparse.Namespace) -> None:
    """Send this sender's share of the devices at ``rate`` until ``until`` (monotonic), then report."""
    ids = device_ids(a.total)
    mine = list(range(a.index, a.total, a.senders))
    mine_ids = [ids[i] for i in mine]
    period = 1.0 / a.rate
    offsets = (np.array(mine, dtype=np.float64) / a.total * period) if a.phases == "spread" else np.zeros(len(mine))
    # every frame template: one packet per device; values move smoothly, each device its own phase
    frames = []
    for f in range(a.templates):
        values = synthetic_values(f / a.rate, a.total)[mine]
        frames.append(build_packets(mine_ids, values, subject="bench", frame=f, fps=(int(a.rate), 1)))
    chunk = max(1, math.ceil(len(mine) / 48))  # at most 48 wake-ups per period
    chunks = [(float(offsets[i]), i, min(len(mine), i + chunk)) for i in range(0, len(mine), chunk)]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect(("127.0.0.1", a.port))
    send = sock.send
    fd = sock.fileno()
    gso = gso_chunks(sock, frames, chunks) if a.send == "gso" else None
    print("ready", flush=True)
    sent = errors = late_chunks = frames_sent = 0
    max_lag = 0.0
    cpu0 = time.process_time()
    start = a.start
    f = 0
    while True:
        base = start + f * period
        if base >= a.until:
            break
        packets = frames[f % len(frames)]
        for off, lo, hi in chunks:
            due = base + off
            now = time.monotonic()
            if due > now:
                time.sleep(due - now)
            else:
                lag = now - due
                if lag > max_lag:
                    max_lag = lag
                if lag > period:
                    late_chunks += 1
            if gso is not None:  # one system call per 64 datagrams, each arriving as its own
                for buf in gso[f % len(frames)][lo]:
                    try:
                        send(buf)
                    except OSError:
                        errors += len(buf) // len(packets[lo])
            elif _udp is not None:  # one system call for the chunk
                ok, _ = _udp.send_batch(fd, packets, lo, hi)
                errors += hi - lo - ok
            else:
                for p in packets[lo:hi]:
                    try:
                        send(p)
                    except OSError:
                        errors += 1
            sent += hi - lo
        frames_sent += 1
        f += 1
    took = time.monotonic() - start
    sock.close()
    print(json.dumps({"sent": sent, "errors": errors, "frames": frames_sent, "seconds": took,
                      "max_lag_ms": max_lag * 1000, "late_chunks": late_chunks,
                      "cpu_s": time.process_time() - cpu0, "devices": len(mine),
                      "sendmmsg": _udp is not None, "gso": gso is not None}), flush=True)


_UDP_SEGMENT = 103  # linux/udp.h: the segment size of a GSO send
_GSO_SEGMENTS = 64  # datagrams per GSO send (the kernel's limit on older kernels)


def gso_chunks(sock: socket.socket, frames: list[list[bytes]], chunks: list[tuple[float, int, int]]) -> dict | None:
    """Each frame's chunks as UDP GSO sends (``UDP_SEGMENT`` set on the socket): one buffer of
    equal-size datagrams per system call, which the kernel splits so that the receiver reads each
    as its own datagram, as from separate phones. On loopback the sender pays the receiving side's
    per-datagram work too; GSO spares it the per-datagram send path, so that generating 300,000
    packets/s leaves the two cores to the graph. None (sendmmsg then) if the sizes differ or the
    kernel has no UDP GSO (before Linux 4.18)."""
    sizes = {len(p) for packets in frames for p in packets}
    if len(sizes) != 1 or _GSO_SEGMENTS * min(sizes) > 65000:
        return None
    try:
        sock.setsockopt(socket.SOL_UDP, _UDP_SEGMENT, sizes.pop())
    except OSError:
        return None
    return {f: {lo: [b"".join(packets[i:min(hi, i + _GSO_SEGMENTS)]) for i in range(lo, hi, _GSO_SEGMENTS)]
                for _, lo, hi in chunks} for f, packets in enumerate(frames)}


def start_senders(a: argparse.Namespace, s: int, n: int, port: int, start: float, until: float) -> list[subprocess.Popen]:
    """``n`` generator processes sharing S devices' packets to ``port`` from ``start`` to ``until`` (monotonic)."""
    return [subprocess.Popen(
        [sys.executable, __file__, "--sender", "--index", str(i), "--senders", str(n), "--total", str(s),
         "--port", str(port), "--rate", str(a.rate), "--phases", a.phases, "--send", a.send,
         "--start", repr(start), "--until", repr(until), "--templates", str(a.templates)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True) for i in range(n)]


# --- the baseline: receiving the same packets and nothing else (its own process) --------------------
def baseline_receiver_main(a: argparse.Namespace) -> None:
    """Bind, say the port, read and drop datagrams until ``until``; report CPU and packets between
    ``start + 1 s`` and ``until - 0.5 s`` (monotonic)."""
    import select

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)  # as arkit_source
    sock.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_TIMESTAMPNS", 35), 1)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    fd = sock.fileno()
    rx = _udp.Receiver(4096) if _udp is not None else None
    print(sock.getsockname()[1], flush=True)
    start, until = float(input()), float(input())
    pause = a.pause_ms / 1000.0
    m0, m1 = start + 1.0, until - 0.5
    n = wakeups = 0
    marks: dict[str, tuple[float, int, float, int]] = {}
    while True:
        now = time.monotonic()
        if now >= until:
            break
        for key, at in (("a", m0), ("b", m1)):
            if key not in marks and now >= at:
                marks[key] = (time.process_time(), n, now, wakeups)
        ready, _, _ = select.select([sock], [], [], 0.05)
        if not ready:
            continue
        wakeups += 1
        if rx is not None:
            n += rx.discard(fd)[0]
        else:
            for _ in range(4096):
                try:
                    sock.recvmsg(65536, 64)
                except (BlockingIOError, InterruptedError):
                    break
                n += 1
        if pause:
            time.sleep(pause)
    (c0, n0, t0, w0), (c1, n1, t1, w1) = marks.get("a", (0, 0, 0, 0)), marks.get("b", (0, 0, 0, 0))
    print(json.dumps({"packets": n1 - n0, "cpu_s": c1 - c0, "seconds": t1 - t0, "wakeups": w1 - w0,
                      "recvmmsg": rx is not None}), flush=True)


def run_baseline(s: int, a: argparse.Namespace) -> dict[str, Any]:
    """The generator of size ``s`` against the bare receiver: CPU µs per packet received."""
    recv = subprocess.Popen([sys.executable, __file__, "--baseline-receiver", "--pause-ms", str(a.baseline_pause_ms)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    senders: list[subprocess.Popen] = []
    try:
        port = int(recv.stdout.readline())
        n_senders = min(s, a.senders or max(1, math.ceil(s / 2000)))
        start = time.monotonic() + 2.0 + s / 20000
        until = start + 1.5 + a.baseline_seconds
        recv.stdin.write(f"{start!r}\n{until!r}\n")
        recv.stdin.flush()
        senders += start_senders(a, s, n_senders, port, start, until)
        reports = [json.loads(p.communicate(timeout=until - time.monotonic() + 60)[0].strip().splitlines()[-1])
                   for p in senders]
        got = json.loads(recv.communicate(timeout=30)[0].strip().splitlines()[-1])
    finally:
        for p in [recv, *senders]:
            if p.poll() is None:
                p.kill()
    sent = sum(r["sent"] for r in reports)
    gen_seconds = max(r["seconds"] for r in reports)
    return {"S": s, "packets": got["packets"], "seconds": got["seconds"],
            "us_per_packet": got["cpu_s"] * 1e6 / got["packets"] if got["packets"] else math.nan,
            "cores": got["cpu_s"] / got["seconds"] if got["seconds"] else math.nan,
            "wakeups_per_s": got["wakeups"] / got["seconds"] if got["seconds"] else math.nan,
            "recvmmsg": got["recvmmsg"], "gen_rate": sent / gen_seconds if gen_seconds > 0 else 0.0,
            "gen_cpu_cores": sum(r["cpu_s"] for r in reports) / gen_seconds if gen_seconds > 0 else math.nan,
            "gen_us_per_packet": sum(r["cpu_s"] for r in reports) * 1e6 / sent if sent else math.nan,
            "sendmmsg": all(r.get("sendmmsg") for r in reports), "gso": all(r.get("gso") for r in reports),
            "senders": len(reports)}


# --- viewers (asyncio in a thread of this process) -------------------------------------------------
class Viewers:
    """WebSocket clients subscribed to given sessions, decoding every packet and counting gaps."""

    def __init__(self, port: int, sessions: list[str]):
        self.port, self.sessions = port, sessions
        self.stats: list[dict[str, Any]] = [
            {"session": s, "packets": 0, "frames": 0, "keyframes": 0, "lost": 0, "gaps": 0, "refused": 0,
             "lat_ms": []} for s in sessions]
        self.loop = asyncio.new_event_loop()
        self.stop_event: asyncio.Event | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._main())

    async def _main(self) -> None:
        self.stop_event = asyncio.Event()
        tasks = [asyncio.ensure_future(self._viewer(i)) for i in range(len(self.sessions))]
        await self.stop_event.wait()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _viewer(self, i: int) -> None:
        from websockets.asyncio.client import connect

        from nodes.wire import Decoder

        st = self.stats[i]
        dec = Decoder()
        uri = f"ws://127.0.0.1:{self.port}/ws?session={self.sessions[i]}"
        async with connect(uri, max_size=None, ping_interval=None) as ws:
            async for message in ws:
                if isinstance(message, str):
                    continue
                now_ms = time.monotonic_ns() / 1e6
                st["packets"] += 1
                try:
                    frame = dec.decode(message)
                except ValueError:
                    continue
                if frame is not None:
                    st["frames"] += 1
                    st["keyframes"] += frame.keyframe
                    st["lat_ms"].append(now_ms - frame.pts_ms)
                elif dec.status == "refused":
                    await ws.send(json.dumps({"type": "keyframe"}))
                st["lost"], st["gaps"], st["refused"] = dec.counts["lost"], dec.counts["gaps"], dec.counts["refused"]

    def snapshot(self) -> list[dict[str, Any]]:
        return [{k: (len(v) if k == "lat_ms" else v) for k, v in s.items()} for s in self.stats]

    def close(self) -> None:
        if self.stop_event is not None:
            self.loop.call_soon_threadsafe(self.stop_event.set)
        self.thread.join(5)


# --- measurements ---------------------------------------------------------------------------------
def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(rest[11]) + int(rest[12])) / _CLK_TCK


def busy_cores_seconds() -> float:
    """CPU time (all cores, all processes) spent busy since boot, in seconds (/proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / _CLK_TCK  # all but idle and iowait


def udp_rcvbuf_errors() -> int:
    with open("/proc/net/snmp") as f:
        lines = [line.split() for line in f if line.startswith("Udp:")]
    return int(lines[1][lines[0].index("RcvbufErrors")])


def hist_percentiles(before: dict, after: dict, qs: tuple[float, ...]) -> tuple[list[float], int]:
    """Percentiles (µs, upper bin edges) of the rows binned between two sink stats snapshots."""
    def dense(h: dict) -> np.ndarray:
        out = np.zeros(4096, np.int64)
        if h:
            out[np.asarray(h["bins"], dtype=np.intp)] = h["counts"]
        return out
    step = (after or before or {}).get("step_us", 100)
    counts = dense(after) - dense(before)
    n = int(counts.sum())
    if not n:
        return [math.nan] * len(qs), 0
    cum = np.cumsum(counts)
    return [float((np.searchsorted(cum, q / 100.0 * n) + 1) * step) for q in qs], n


def snapshot(runner: Any, pids: dict[str, int]) -> dict[str, Any]:
    return {"t": time.monotonic(), "stats": runner.stats(), "cpu": {n: cpu_seconds(p) for n, p in pids.items()},
            "rcvbuf": udp_rcvbuf_errors(), "self_cpu": time.process_time(), "busy": busy_cores_seconds()}


def node(snap: dict, name: str) -> dict:
    return snap["stats"]["nodes"][name]


def own(snap: dict, name: str) -> dict[str, Any]:
    """A node's own stats (``Node.stats``), whether it runs as its own process or inside a bin."""
    nodes = snap["stats"]["nodes"]
    if name in nodes:
        return nodes[name]["node"]
    return next(n["node"]["nodes"][name] for n in nodes.values() if name in n["node"].get("nodes", {}))


def run_size(s: int, a: argparse.Namespace) -> dict[str, Any]:
    from runtime import Runner
    from runtime.graph import parse_graph

    graph = parse_graph(capture_pipeline("bench_sessions", rate=a.rate, gather_rate=a.gather_rate, batch=a.batch,
                                         max_sessions=max(4096, s), tick_on_capture=not a.timer_blender,
                                         bin=a.bin),
                        "<bench_sessions>")
    runner = Runner(graph).start()
    senders: list[subprocess.Popen] = []
    viewers = None
    try:
        st = {"stats": runner.stats()}
        udp_port = own(st, "capture")["port"]
        web_port = own(st, "web")["port"]
        pids = runner.pids()
        rcv0 = udp_rcvbuf_errors()
        n_senders = min(s, a.senders or max(1, math.ceil(s / 2000)))
        start = time.monotonic() + 2.0 + s / 20000  # time to build the packets
        until = start + a.warmup + a.seconds + 2.0 + s / 2000
        senders += start_senders(a, s, n_senders, udp_port, start, until)
        for p in senders:
            if p.stdout.readline().strip() != "ready":
                raise RuntimeError("a sender failed to start")
        ids = device_ids(s)
        watch = list(dict.fromkeys(ids[i] for i in np.linspace(0, s - 1, a.viewers).round().astype(int)))
        # wait for every session to reach the compressor
        deadline = time.monotonic() + 30 + s / 200
        while time.monotonic() < deadline:
            time.sleep(0.5)
            enc = own({"stats": runner.stats()}, "encode")
            if enc.get("sessions", 0) >= s:
                break
        else:
            print(f"  S={s}: only {enc.get('sessions')} sessions reached the compressor", file=sys.stderr)
        viewers = Viewers(web_port, watch)
        time.sleep(a.warmup)
        v0 = viewers.snapshot()
        s0 = snapshot(runner, pids)
        time.sleep(a.seconds)
        s1 = snapshot(runner, pids)
        v1 = viewers.snapshot()
        lat_ms = [lat for vs in viewers.stats for lat in vs["lat_ms"][v0[viewers.stats.index(vs)]["lat_ms"]:]]
        reports = []
        for p in senders:
            out, _ = p.communicate(timeout=until - time.monotonic() + 30)
            reports.append(json.loads(out.strip().splitlines()[-1]))
        time.sleep(0.3)  # the source reads what is still in its socket
        s2 = snapshot(runner, pids)
        rcv_end = udp_rcvbuf_errors()
    finally:
        if viewers is not None:
            viewers.close()
        for p in senders:
            if p.poll() is None:
                p.kill()
        runner.stop(drain=False)

    dt = s1["t"] - s0["t"]
    cap0, cap1, cap2 = own(s0, "capture"), own(s1, "capture"), own(s2, "capture")
    enc0, enc1 = own(s0, "encode"), own(s1, "encode")
    web0, web1 = own(s0, "web"), own(s1, "web")
    if "encode" in s1["stats"]["nodes"]:  # the compressor's process (or the bin it is last in): its batches out
        tick_rate = (node(s1, "encode")["out"] - node(s0, "encode")["out"]) / dt
    else:  # the whole pipeline in one bin: the source's batches
        tick_rate = (cap1["batches"] - cap0["batches"]) / dt
    session_fps = (enc1["packets"] - enc0["packets"]) / dt / s  # frames per session per second
    face_rate = (own(s1, "face")["frames"] - own(s0, "face")["frames"]) / dt
    (p50, p99), rows = hist_percentiles(web0.get("pipeline_latency_hist"), web1.get("pipeline_latency_hist"), (50, 99))
    (w50, w99), _ = hist_percentiles(cap0.get("gather_wait_hist"), cap1.get("gather_wait_hist"), (50, 99))
    cpu = {n: s1["cpu"][n] - s0["cpu"][n] for n in s0["cpu"]}
    cpu_total = sum(cpu.values())
    sent = sum(r["sent"] for r in reports)
    gen_seconds = max(r["seconds"] for r in reports)
    gen_rate = sent / gen_seconds if gen_seconds > 0 else 0.0
    target_rate = s * a.rate
    gen_ok = gen_rate >= 0.99 * target_rate and all(r["late_chunks"] == 0 for r in reports)
    lost = sent - cap2["received"]
    link_drops = sum((l1["drops"] or 0) - (s0["stats"]["links"][k]["drops"] or 0) for k, l1 in s1["stats"]["links"].items())
    link_gaps = sum((l1["gaps"] or 0) - (s0["stats"]["links"][k]["gaps"] or 0) for k, l1 in s1["stats"]["links"].items())
    viewer_lost = sum(b["lost"] - x["lost"] for x, b in zip(v0, v1))
    viewer_frames = sum(b["frames"] - x["frames"] for x, b in zip(v0, v1))
    sink_drops = (web1.get("drops", 0) - web0.get("drops", 0)) + (web1.get("overruns", 0) - web0.get("overruns", 0))
    # in the window (the verdict) ...
    drops = {"rcvbuf_errors": s1["rcvbuf"] - s0["rcvbuf"], "bad": cap1["bad"] - cap0["bad"], "link_drops": link_drops,
             "link_gaps": link_gaps, "sink_drops": sink_drops, "viewer_lost": viewer_lost}
    no_drops = all(v == 0 for v in drops.values())
    # ... and over the whole run, the join of S devices at once included
    drops.update(run_udp_lost=lost, run_rcvbuf_errors=rcv_end - rcv0, run_bad=cap2["bad"])
    steady = gen_ok and abs(session_fps - a.rate) <= 0.02 * a.rate and no_drops
    holds = steady and rows > 0 and p99 < PERIOD_BUDGET_MS * 1000
    tick_p99 = float(np.percentile(lat_ms, 99)) if lat_ms else math.nan
    holds_pipeline = steady and tick_p99 < PERIOD_BUDGET_MS
    return {
        "S": s, "tick_hz": tick_rate, "session_fps": session_fps, "blender_hz": face_rate, "p50_ms": p50 / 1000, "p99_ms": p99 / 1000,
        "latency_rows": rows, "gather_wait_ms_p50": w50 / 1000, "gather_wait_ms_p99": w99 / 1000, "cpu_cores": cpu_total / dt, "cpu_us_per_session_frame": cpu_total * 1e6 / (s * a.rate * dt),
        "cpu_by_node": {n: round(c / dt, 3) for n, c in cpu.items()},
        "gen_rate": gen_rate, "gen_target": target_rate, "gen_ok": gen_ok, "gen_cpu_cores": sum(r["cpu_s"] for r in reports) / gen_seconds,
        "gen_max_lag_ms": max(r["max_lag_ms"] for r in reports), "senders": len(reports),
        "bench_cpu_cores": (s1["self_cpu"] - s0["self_cpu"]) / dt,
        "machine_busy_cores": (s1["busy"] - s0["busy"]) / dt,
        "received_in_window": cap1["received"] - cap0["received"],
        "drops": drops, "no_drops": no_drops, "holds": holds, "holds_pipeline": holds_pipeline,
        "viewer_frames": viewer_frames, "viewers": len(v1),
        "session_rate": web1.get("session_rate") or {},  # the sink's frames/s per session, last second
        "shed": cap1.get("shed", 0) - cap0.get("shed", 0), "kernel_drops": cap2.get("kernel_drops", 0),
        "viewer_tick_lat_ms_p50": float(np.percentile(lat_ms, 50)) if lat_ms else math.nan,
        "viewer_tick_lat_ms_p99": float(np.percentile(lat_ms, 99)) if lat_ms else math.nan,
        "nodes": {n: {"in_hz": round((node(s1, n)["in"] - node(s0, n)["in"]) / dt, 1),
                      "out_hz": round((node(s1, n)["out"] - node(s0, n)["out"]) / dt, 1),
                      "proc_us_p50": round(node(s1, n)["proc_us_p50"]), "proc_us_p99": round(node(s1, n)["proc_us_p99"]),
                      "drops": node(s1, n)["drops"] - node(s0, n)["drops"], "depth": node(s1, n)["queue_depth"]}
                  for n in s1["stats"]["nodes"]},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 2000, 5000, 8000], help="session counts S")
    ap.add_argument("--seconds", type=float, default=10.0, help="measured window per size (default 10)")
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds after every session joined (default 3)")
    ap.add_argument("--viewers", type=int, default=3, help="WebSocket viewers, each on another session (default 3)")
    ap.add_argument("--rate", type=float, default=60.0, help="device and blender frame rate (default 60)")
    ap.add_argument("--gather-rate", type=float, default=240.0,
                    help="arkit_source's tick rate (default 240, as graphs/capture.yaml)")
    ap.add_argument("--batch", choices=("all", "fresh"), default="fresh",
                    help="arkit_source batches: only the sessions with a new packet (default, as graphs/capture.yaml) "
                         "or every session per tick")
    ap.add_argument("--phases", choices=("spread", "burst"), default="spread",
                    help="device phases: spread over the period (default), or every device at once")
    ap.add_argument("--senders", type=int, default=0, help="generator processes (default: one per 2,000 devices)")
    ap.add_argument("--templates", type=int, default=30, help="frames of packets built per device (default 30)")
    ap.add_argument("--bin", choices=("none", "middle", "all", "split", "tail"), default="none",
                    help="nodes in one process (a bin node): none (default), mapper to compressor (middle, as "
                         "graphs/capture-bin.yaml), source to sink (all), or two processes: source to blender "
                         "and lod to sink (split), or the source and mapper to sink (tail)")
    ap.add_argument("--timer-blender", action="store_true",
                    help="the blender ticks on its timer alone (tick_on_capture: false, the node's default)")
    ap.add_argument("--baseline-sessions", type=int, default=None,
                    help="devices whose packets the bare-receive baseline reads (default: the smallest size; 0: none)")
    ap.add_argument("--baseline-seconds", type=float, default=5.0, help="measured window of the baseline (default 5)")
    ap.add_argument("--baseline-pause-ms", type=float, default=4.0,
                    help="the baseline receiver's pause after each read, as arkit_source's (default 4; 0: a tight loop)")
    ap.add_argument("--send", choices=("gso", "mmsg"), default="gso",
                    help="how the generator sends: UDP GSO, 64 datagrams per system call, each arriving as its own "
                         "(default; sendmmsg where the kernel has no GSO), or sendmmsg (the kernel's per-datagram "
                         "send path, about 4 times the generator's CPU)")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    # sender role
    ap.add_argument("--sender", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--total", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--start", type=float, default=0.0, help=argparse.SUPPRESS)
    ap.add_argument("--until", type=float, default=0.0, help=argparse.SUPPRESS)
    ap.add_argument("--baseline-receiver", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--pause-ms", type=float, default=4.0, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.sender:
        sender_main(a)
        return
    if a.baseline_receiver:
        baseline_receiver_main(a)
        return
    print(f"sessions benchmark on {os.cpu_count()} cores: {a.seconds:g} s per size, devices at {a.rate:g} Hz "
          f"({a.phases} phases), arkit_source at {a.gather_rate or a.rate:g} Hz with '{a.batch}' batches, blender "
          f"{'on its timer' if a.timer_blender else 'following capture'}, {a.viewers} viewers; budget: {a.rate:g} "
          f"frames/s per session, p99 < {PERIOD_BUDGET_MS:.1f} ms, no drops\n", flush=True)
    base = None
    base_s = min(a.sizes) if a.baseline_sessions is None else a.baseline_sessions
    if base_s > 0:
        base = run_baseline(base_s, a)
        how = "recvmmsg" if base["recvmmsg"] else "recvmsg in Python (nodes.livelink._udp not built)"
        pause = f"{a.baseline_pause_ms:g} ms pause after each read" if a.baseline_pause_ms else "no pause"
        print(f"baseline: receiving {base['gen_rate']:.0f} packets/s ({base_s} devices at {a.rate:g} Hz) in one process "
              f"that only reads them ({how}, kernel stamps, {pause}): {base['us_per_packet']:.2f} us CPU per packet "
              f"({base['cores']:.3f} cores, {base['wakeups_per_s']:.0f} wake-ups/s, {base['packets']} packets in "
              f"{base['seconds']:.1f} s); generator {base['gen_cpu_cores']:.2f} cores, {base['gen_us_per_packet']:.2f} us "
              f"per packet ({base['senders']} processes, {'UDP GSO' if base['gso'] else 'sendmmsg' if base['sendmmsg'] else 'send per packet'})\n",
              flush=True)
    base_us = base["us_per_packet"] if base else math.nan
    hdr = (f"{'S':>5} | {'batch/s':>7} {'fps':>5} | {'arrival->sink p50':>17} {'p99':>5} | {'tick wait p99':>13} | "
           f"{'tick->viewer p50':>16} {'p99':>5} | {'CPU us/sess-frame':>17} {'x base':>6} {'cores':>5} | "
           f"{'gen pkt/s':>10} | {'drops udp/link/viewer':>21} | holds")
    print(hdr)
    print("-" * len(hdr), flush=True)
    results = []
    for s in a.sizes:
        r = run_size(s, a)
        r["x_baseline"] = r["cpu_us_per_session_frame"] / base_us  # per session-frame, in bare receives of a packet
        results.append(r)
        d = r["drops"]
        gen = f"{r['gen_rate']:>10.0f}" + ("" if r["gen_ok"] else "!")
        print(f"{s:>5} | {r['tick_hz']:>7.1f} {r['session_fps']:>5.1f} | {r['p50_ms']:>14.1f} ms {r['p99_ms']:>5.1f} | "
              f"{r['gather_wait_ms_p99']:>10.1f} ms | {r['viewer_tick_lat_ms_p50']:>13.1f} ms "
              f"{r['viewer_tick_lat_ms_p99']:>5.1f} | {r['cpu_us_per_session_frame']:>17.1f} {r['x_baseline']:>5.1f}x "
              f"{r['cpu_cores']:>5.2f} | "
              f"{gen:>10} | {d['rcvbuf_errors'] + d['bad']:>7}/"
              f"{d['link_drops'] + d['link_gaps'] + d['sink_drops']:>6}/{d['viewer_lost']:>6} | "
              f"{'yes' if r['holds'] else 'no'}/{'yes' if r['holds_pipeline'] else 'no'}"
              + ("" if r["gen_ok"] else "  (generator below target: pipeline not judged)"), flush=True)
        print(f"        per node (cores): {r['cpu_by_node']}; generator {r['gen_cpu_cores']:.2f} cores "
              f"({r['senders']} processes, max lag {r['gen_max_lag_ms']:.1f} ms); this process "
              f"{r['bench_cpu_cores']:.2f}; whole machine busy {r['machine_busy_cores']:.2f} of {os.cpu_count()} cores "
              f"(others: about {max(0.0, r['machine_busy_cores'] - r['cpu_cores'] - r['gen_cpu_cores'] - r['bench_cpu_cores']):.2f}); "
              f"viewers {r['viewer_frames']} frames; drops {d}", flush=True)
        sr = r["session_rate"]
        if sr:
            print(f"        frames/s per session at the sink (last second, {sr['sessions']} sessions): min {sr['min']:g}, "
                  f"p1 {sr['p1']:g}, median {sr['p50']:g}, max {sr['max']:g}; Jain's fairness {sr['fairness']:.3f}; "
                  f"source shed {r['shed']} frames in the window, kernel drops {r['kernel_drops']} over the run "
                  f"(both posted as QOS)", flush=True)
    print(f"\nholds: strict (arrival->sink p99 < {PERIOD_BUDGET_MS:.1f} ms) / pipeline (tick->viewer p99 < "
          f"{PERIOD_BUDGET_MS:.1f} ms); both also need {a.rate:g} frames/s per session (2%), no drops and a generator "
          f"on target; 'x base': CPU per session-frame as a multiple of the baseline's CPU per packet received")
    largest = {}
    for key in ("holds", "holds_pipeline"):
        held = [r for r in results if r[key]]
        largest[key] = max(held, key=lambda r: r["S"]) if held else None

    def said(r: dict | None) -> str:
        return (f"S = {r['S']} ({r['cpu_us_per_session_frame']:.1f} us CPU per session-frame, "
                f"{r['x_baseline']:.1f}x the bare receive)") if r else "none"
    print(f"largest S that holds (of {' '.join(str(s) for s in a.sizes)}): strict {said(largest['holds'])}; "
          f"pipeline {said(largest['holds_pipeline'])}")
    if a.json:
        Path(a.json).write_text(json.dumps([dict(r, baseline=base) for r in results], indent=1))


if __name__ == "__main__":
    main()
