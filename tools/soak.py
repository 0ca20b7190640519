#!/usr/bin/env python3
"""Soak: the full capture pipeline with many sessions for a long time: memory growth, drops, gaps, restarts.

    python tools/soak.py --sessions 200 --minutes 10
    python tools/soak.py --sessions 1000 --minutes 60 --viewers 8 --interval 10 --json soak.json
    python tools/soak.py --graph graphs/capture.yaml out=/tmp/c.msgpack --sessions 50 --minutes 5

The graph (default: the built-in ``arkit_source -> mapper -> blender -> lod -> compressor ->
websocket_sink`` of graphs/capture.yaml, with feedback links; ``--graph`` for another one with an
``arkit_source`` and a web sink) runs with the runtime's Python API, every node its own process.
A load generator (``--sessions`` devices, synthetic faces at 60 Hz, sent from sender processes of
at most 1,000 devices each, every device on its own phase) feeds it real Live Link Face v6 packets
over UDP; ``--viewers`` WebSocket viewers (``tools/simulator.py``'s, each on another session)
decode and echo what they get.

Every ``--interval`` seconds it samples each node process's resident memory (``VmRSS`` of
``/proc/PID/status``) and CPU, and the runtime's stats: link drops and gaps, restarts, sessions,
the source's bad packets, the sink's drops and overruns, the viewers' lost packets. It prints the
time series, then per node the memory growth (a least-squares line over the samples after
``--warmup``, in MB per minute), and totals. ``--max-growth MB_PER_MIN`` makes the exit code 1 when
a node grows faster than that (or a node restarted).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

import numpy as np  # noqa: E402
from capture_pipeline import capture_pipeline  # noqa: E402
from jsonable import jsonable  # noqa: E402
from simulator import Viewer, prepare_graph, run_websocket, wait_live_sessions  # noqa: E402

PER_SENDER = 1000
_CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- load generator ----------------------------------------------------------------------------------
def sender_main(a: argparse.Namespace) -> None:
    """One sender process: devices [first, first + count) of ``total``, at ``rate``, until SIGTERM."""
    from llf_send import device_ids, synthetic_values

    from nodes.livelink import build_packets

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    mine = list(range(a.first, a.first + a.count))
    ids = device_ids(a.total)
    ids = [ids[i] for i in mine]
    period = 1.0 / a.rate
    templates = [build_packets(ids, synthetic_values(f / a.rate, a.total)[mine], subject="soak", frame=f,
                               fps=(int(a.rate), 1)) for f in range(30)]
    offsets = np.array(mine, np.float64) / max(1, a.total) * period  # each device its own phase
    chunk = max(1, math.ceil(len(mine) / 32))
    chunks = [(float(offsets[i]), i, min(len(mine), i + chunk)) for i in range(0, len(mine), chunk)]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect(("127.0.0.1", a.port))
    print("ready", flush=True)
    sent = errors = late = 0
    start, f = time.monotonic(), 0
    while not stop.is_set():
        base = start + f * period
        packets = templates[f % len(templates)]
        for off, lo, hi in chunks:
            delay = base + off - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            elif delay < -period:
                late += 1
            for p in packets[lo:hi]:
                try:
                    sock.send(p)
                except OSError:
                    errors += 1
            sent += hi - lo
        f += 1
    print(json.dumps({"sent": sent, "errors": errors, "late_chunks": late, "frames": f,
                      "seconds": time.monotonic() - start}), flush=True)


class LoadGenerator:
    """Sender processes for device ranges; ``grow(n)`` adds devices up to ``n`` (ids of ``total``)."""

    def __init__(self, port: int, total: int, rate: float = 60.0):
        self.port, self.total, self.rate = port, total, rate
        self.procs: list[subprocess.Popen] = []
        self.devices = 0
        self.reports: list[dict] = []

    def grow(self, n: int) -> None:
        while self.devices < n:
            count = min(PER_SENDER, n - self.devices)
            p = subprocess.Popen([sys.executable, __file__, "--sender", "--first", str(self.devices), "--count", str(count),
                                  "--total", str(self.total), "--port", str(self.port), "--rate", str(self.rate)],
                                 stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
            if p.stdout.readline().strip() != "ready":
                raise RuntimeError("a sender process failed to start")
            self.procs.append(p)
            self.devices += count

    def stop(self) -> dict[str, int]:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                out, _ = p.communicate(timeout=10)
                self.reports.append(json.loads(out.strip().splitlines()[-1]))
            except (subprocess.TimeoutExpired, ValueError, IndexError):
                p.kill()
                p.wait()
        return {"sent": sum(r["sent"] for r in self.reports), "errors": sum(r["errors"] for r in self.reports),
                "late_chunks": sum(r["late_chunks"] for r in self.reports)}


# --- viewers on a loop of their own ------------------------------------------------------------------
class ViewerPool:
    """WebSocket viewers (tools/simulator.py) on an asyncio loop in a thread; ``add`` any time."""

    def __init__(self, url: str):
        self.url = url
        self.viewers: list[Any] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.stop_event = asyncio.run_coroutine_threadsafe(self._event(), self.loop).result()
        self.futures: list[Any] = []

    @staticmethod
    async def _event() -> asyncio.Event:
        return asyncio.Event()

    def add(self, sessions: list[str]) -> None:
        for s in sessions:
            v = Viewer(len(self.viewers), "websocket", s, None, keep=False)
            self.viewers.append(v)

            async def go(v=v) -> None:
                try:
                    await run_websocket(v, self.url, self.stop_event)
                except Exception as exc:  # noqa: BLE001 - reported per viewer
                    v.closed = f"{type(exc).__name__}: {exc}"

            self.futures.append(asyncio.run_coroutine_threadsafe(go(), self.loop))

    def totals(self, t0: int = 0, t1: int | None = None) -> dict[str, Any]:
        t1 = t1 or time.monotonic_ns()
        frames = [sum(1 for f in list(v.frames) if t0 <= f[0] <= t1) for v in self.viewers]
        lat = [f[0] / 1e6 - f[2] for v in self.viewers for f in list(v.frames) if t0 <= f[0] <= t1]
        return {"viewers": len(self.viewers), "frames": sum(frames), "min_fps": (min(frames) / ((t1 - t0) / 1e9)
                if frames and t0 else None), "lost": sum(v.decoder.counts["lost"] for v in self.viewers),
                "refused": sum(v.decoder.counts["refused"] for v in self.viewers),
                "malformed": sum(v.decoder.counts["malformed"] for v in self.viewers),
                "closed": sum(bool(v.closed) for v in self.viewers),
                "latency_ms_p99": float(np.percentile(lat, 99)) if lat else math.nan}

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.stop_event.set)
        for f in self.futures:
            try:
                f.result(10)
            except Exception:  # noqa: BLE001
                pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


# --- process sampling ----------------------------------------------------------------------------------
def rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return math.nan


def cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return math.nan
    return (int(rest[11]) + int(rest[12])) / _CLK_TCK


def link_totals(stats: dict) -> dict[str, int]:
    links = stats["links"].values()
    return {"drops": sum(l.get("drops") or 0 for l in links), "gaps": sum(l.get("gaps") or 0 for l in links)}


def start_pipeline(graph_path: str | None, overrides: dict[str, str], max_sessions: int, name: str):
    """The pipeline (built in, or ``graph_path``) with free ports; returns (runner, source, sink, url, tmpdir)."""
    from runtime import Runner

    tmp = tempfile.TemporaryDirectory(prefix=f"avatar-{name}-")
    if graph_path is None:
        graph_path = str(Path(tmp.name) / "pipeline.yaml")
        Path(graph_path).write_text(capture_pipeline(name, max_sessions=max(4096, max_sessions), session_timeout=3.0))
    graph, sink = prepare_graph(graph_path, overrides, None)
    for n, s in graph.nodes.items():
        if s.type == "recorder":
            s.params["path"] = str(Path(tmp.name) / f"{n}.msgpack")
        if s.type == "arkit_source":
            s.params["max_sessions"] = max(s.params.get("max_sessions", 4096), max_sessions)
    sources = [n for n, s in graph.nodes.items() if s.type == "arkit_source"]
    if not sources:
        raise SystemExit(f"{graph_path}: no arkit_source node to feed")
    runner = Runner(graph, stop_on_eos=False).start()
    nodes = runner.stats()["nodes"]
    return runner, sources[0], sink, nodes[sink]["node"]["url"], tmp


def growth_mb_per_min(t_s: list[float], mb: list[float]) -> float:
    t, y = np.array(t_s) / 60.0, np.array(mb)
    ok = np.isfinite(y)
    if ok.sum() < 2 or np.ptp(t[ok]) == 0:
        return math.nan
    return float(np.polyfit(t[ok], y[ok], 1)[0])


# --- main --------------------------------------------------------------------------------------------------
def soak(a: argparse.Namespace) -> dict[str, Any]:
    from llf_send import device_ids

    overrides = dict(kv.split("=", 1) for kv in a.args)
    runner, source, sink, url, tmp = start_pipeline(a.graph, overrides, a.sessions, "soak")
    gen = pool = None
    samples: list[dict[str, Any]] = []
    try:
        gen = LoadGenerator(runner.stats()["nodes"][source]["node"]["port"], a.sessions)
        gen.grow(a.sessions)
        joined = wait_live_sessions(runner, sink, a.sessions, 30 + a.sessions / 100)
        if a.viewers:
            ids = device_ids(a.sessions)
            pool = ViewerPool(url)
            pool.add([ids[int(i)] for i in np.linspace(0, a.sessions - 1, a.viewers).round()])
        t_start = time.monotonic()
        end = t_start + a.minutes * 60
        header = None
        while True:
            now = time.monotonic()
            stats = runner.stats()
            pids = runner.pids()
            sample = {"t": now - t_start, "rss": {n: rss_mb(p) for n, p in pids.items()},
                      "cpu": {n: cpu_seconds(p) for n, p in pids.items()},
                      "restarts": {n: st.get("restarts", 0) for n, st in stats["nodes"].items()},
                      **link_totals(stats),
                      "received": stats["nodes"][source]["node"].get("received", 0),
                      "bad": stats["nodes"][source]["node"].get("bad", 0),
                      "sessions": stats["nodes"][sink]["node"].get("sessions", 0),
                      "sink_drops": stats["nodes"][sink]["node"].get("drops", 0),
                      "overruns": stats["nodes"][sink]["node"].get("overruns", 0),
                      "viewer_lost": pool.totals()["lost"] if pool else 0}
            samples.append(sample)
            if not a.json_only:
                if header is None:
                    header = "  t(s) " + " ".join(f"{n[:9]:>9}" for n in sample["rss"]) + \
                             "  sessions  drops   gaps restarts viewer_lost"
                    print(f"RSS in MB per node, every {a.interval:g} s:\n" + header, flush=True)
                print(f"{sample['t']:>6.0f} " + " ".join(f"{v:>9.1f}" for v in sample["rss"].values())
                      + f"  {sample['sessions']:>8} {sample['drops']:>6} {sample['gaps']:>6} "
                        f"{sum(sample['restarts'].values()):>8} {sample['viewer_lost']:>11}", flush=True)
            if now >= end or runner.wait(0):
                break
            time.sleep(min(a.interval, max(0.0, end - time.monotonic())))
        viewers = pool.totals() if pool else None
    finally:
        if pool is not None:
            pool.close()
        sent = gen.stop() if gen is not None else {"sent": 0}
        time.sleep(0.3)
        final = runner.stats() if not runner.wait(0) else None
        runner.stop(drain=False)
        tmp.cleanup()
    after = [s for s in samples if s["t"] >= a.warmup] or samples
    nodes = list(samples[0]["rss"]) if samples else []
    growth = {n: growth_mb_per_min([s["t"] for s in after], [s["rss"].get(n, math.nan) for s in after]) for n in nodes}
    first, last = samples[0], samples[-1]
    span = max(1e-9, last["t"] - first["t"])
    received = final["nodes"][source]["node"].get("received", last["received"]) if final else last["received"]
    return {
        "sessions": a.sessions, "joined": joined, "minutes": a.minutes, "samples": samples,
        "growth_mb_per_min": growth,
        "rss_mb": {n: {"first": first["rss"].get(n), "last": last["rss"].get(n),
                       "max": max(s["rss"].get(n, 0) for s in samples)} for n in nodes},
        "cpu_cores": {n: (last["cpu"].get(n, math.nan) - first["cpu"].get(n, math.nan)) / span for n in nodes},
        "restarts": last["restarts"], "link_drops": last["drops"], "link_gaps": last["gaps"],
        "bad_packets": last["bad"], "sink_drops": last["sink_drops"], "overruns": last["overruns"],
        "udp_sent": sent.get("sent", 0), "udp_received": received, "udp_lost": sent.get("sent", 0) - received,
        "viewers": viewers,
    }


def print_summary(r: dict[str, Any]) -> None:
    print(f"\n{r['sessions']} sessions ({r['joined']} joined) for {r['minutes']:g} min")
    print(f"{'node':>12} {'RSS first':>10} {'last':>8} {'max':>8} {'MB/min':>8} {'cores':>6} {'restarts':>8}")
    for n, g in r["growth_mb_per_min"].items():
        m = r["rss_mb"][n]
        print(f"{n:>12} {m['first']:>10.1f} {m['last']:>8.1f} {m['max']:>8.1f} {g:>+8.3f} {r['cpu_cores'][n]:>6.2f} "
              f"{r['restarts'].get(n, 0):>8}")
    v = r["viewers"] or {}
    print(f"drops: links {r['link_drops']}, sink {r['sink_drops']}, overruns {r['overruns']}; gaps {r['link_gaps']}; "
          f"bad packets {r['bad_packets']}; UDP sent {r['udp_sent']}, received {r['udp_received']} "
          f"(lost {r['udp_lost']}); viewers: {v.get('viewers', 0)}, lost {v.get('lost', 0)}, closed {v.get('closed', 0)}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog="\n".join(__doc__.splitlines()[2:]),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("args", nargs="*", metavar="k=v", help="graph args (with --graph)")
    ap.add_argument("--graph", help="a graph with an arkit_source and a web sink (default: the built-in pipeline)")
    ap.add_argument("--sessions", type=int, default=100, help="simulated devices (default 100)")
    ap.add_argument("--minutes", type=float, default=5.0, help="how long (default 5)")
    ap.add_argument("--interval", type=float, default=5.0, help="seconds between samples (default 5)")
    ap.add_argument("--warmup", type=float, default=30.0, help="seconds left out of the growth fit (default 30)")
    ap.add_argument("--viewers", type=int, default=2, help="WebSocket viewers (default 2)")
    ap.add_argument("--max-growth", type=float, default=None, metavar="MB_PER_MIN",
                    help="exit 1 if a node grows faster than this, or restarted")
    ap.add_argument("--json", metavar="PATH", help="also write the results (with every sample) as JSON")
    ap.add_argument("--json-only", action="store_true", help=argparse.SUPPRESS)
    # sender role
    ap.add_argument("--sender", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--count", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--total", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--rate", type=float, default=60.0, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.sender:
        sender_main(a)
        return 0
    if a.sessions < 1 or a.minutes <= 0 or a.interval <= 0:
        ap.error("--sessions >= 1, --minutes and --interval > 0")
    r = soak(a)
    print_summary(r)
    if a.json:
        Path(a.json).write_text(json.dumps(jsonable(r, 4), indent=1))
    bad = a.max_growth is not None and (any(g > a.max_growth for g in r["growth_mb_per_min"].values() if not math.isnan(g))
                                        or any(r["restarts"].values()))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
