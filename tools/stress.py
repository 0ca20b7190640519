#!/usr/bin/env python3
"""Stress: ramp sessions and viewers until pipeline latency breaks its budget, and say where.

    python tools/stress.py                                   # 100, 200, 400, ... sessions
    python tools/stress.py --sessions 250 500 1000 2000 --viewers 2 4 8 16 --budget-ms 16.7
    python tools/stress.py --graph graphs/capture.yaml out=/tmp/c.msgpack --seconds 5 --json stress.json

One graph (the built-in capture pipeline of ``tools/soak.py``: ``arkit_source -> mapper -> blender
-> lod -> compressor -> websocket_sink``; or ``--graph``) runs for the whole ramp. Each step adds
devices to the load generator (synthetic Live Link Face v6 packets at 60 Hz, every device on its own
phase, ``tools/soak.py``'s sender processes) and WebSocket viewers (``tools/simulator.py``'s, each
on another session), waits until the sink sees every session and ``--settle`` seconds more, then
measures for ``--seconds``:

- p50/p99 pipeline latency: capture packet arrival at ``arkit_source`` -> the sink splitting the
  batch for its viewers, from the sink's ``pipeline_latency_hist`` over the window (its
  ``pipeline_latency_us_p99`` if the histogram is missing; the viewers' echo latency if neither);
- the blender's frames per second per session, link drops and gaps, sink drops and overruns, viewers' lost packets
  and slowest viewer's frame rate;
- CPU per node (cores, from ``/proc/PID/stat``) and the busiest node.

It stops at the first step whose p99 exceeds ``--budget-ms`` (default one frame at 60 Hz, 16.7 ms)
or whose frames per session fall 5% short of 60 a second, and prints that step and the node with the highest CPU there.
Steps: ``--sessions`` (default doubling from 100 up to ``--max-sessions``), ``--viewers`` paired
with them by position (the last one repeats; default: 2 per 100 sessions, at most 64).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

import numpy as np  # noqa: E402
from jsonable import jsonable  # noqa: E402
from simulator import wait_live_sessions  # noqa: E402
from soak import LoadGenerator, ViewerPool, cpu_seconds, link_totals, start_pipeline  # noqa: E402


def hist_percentiles(before: dict | None, after: dict | None, qs: tuple[float, ...]) -> tuple[list[float], int]:
    """Percentiles (µs, upper bin edges) of the rows binned between two snapshots of a sink histogram."""
    def dense(h: dict | None) -> np.ndarray:
        out = np.zeros(1 << 16, np.int64)
        if h and h.get("bins"):
            out[np.asarray(h["bins"], dtype=np.intp)] = h["counts"]
        return out

    step = (after or before or {}).get("step_us", 100)
    counts = dense(after) - dense(before)
    n = int(counts.sum())
    if n <= 0:
        return [math.nan] * len(qs), 0
    cum = np.cumsum(counts)
    return [float((np.searchsorted(cum, q / 100.0 * n) + 1) * step) for q in qs], n


def snapshot(runner: Any) -> dict[str, Any]:
    pids = runner.pids()
    return {"t": time.monotonic(), "t_ns": time.monotonic_ns(), "stats": runner.stats(),
            "cpu": {n: cpu_seconds(p) for n, p in pids.items()}, "pids": pids}


def measure(runner: Any, sink: str, pool: ViewerPool | None, seconds: float, blender: str | None) -> dict[str, Any]:
    s0 = snapshot(runner)
    time.sleep(seconds)
    s1 = snapshot(runner)
    dt = s1["t"] - s0["t"]
    w0, w1 = s0["stats"]["nodes"][sink]["node"], s1["stats"]["nodes"][sink]["node"]
    (p50, p99), rows = hist_percentiles(w0.get("pipeline_latency_hist"), w1.get("pipeline_latency_hist"), (50, 99))
    source = "pipeline_latency_hist"
    if not rows and w1.get("pipeline_latency_us_p99"):
        p50, p99, source = w1.get("pipeline_latency_us_p50", math.nan), w1["pipeline_latency_us_p99"], "pipeline_latency_us_p99"
    if (not rows or math.isnan(p99)) and w1.get("echo_latency_us_p99"):
        p50, p99, source = w1.get("echo_latency_us_p50", math.nan), w1["echo_latency_us_p99"], "echo_latency_us_p99"
    # a restarted node's CPU counter starts again: count only nodes with the same pid at both ends
    cpu = {n: (s1["cpu"][n] - s0["cpu"][n]) / dt for n in s1["cpu"]
           if n in s0["cpu"] and s0["pids"].get(n) == s1["pids"].get(n)}
    fps = math.nan  # frames per second per session, out of the blender (a batch may hold some sessions only)
    if blender:
        f0, f1 = s0["stats"]["nodes"][blender]["node"], s1["stats"]["nodes"][blender]["node"]
        if f1.get("sessions"):
            fps = (f1.get("rows", 0) - f0.get("rows", 0)) / dt / f1["sessions"]
    l0, l1 = link_totals(s0["stats"]), link_totals(s1["stats"])
    views = pool.totals(s0["t_ns"], s1["t_ns"]) if pool else {}
    busiest = max(cpu, key=cpu.get) if cpu else None
    return {"p50_ms": p50 / 1000, "p99_ms": p99 / 1000, "latency_from": source, "latency_rows": rows,
            "fps": fps, "cpu": {n: round(c, 3) for n, c in cpu.items()}, "busiest": busiest,
            "busiest_cores": cpu.get(busiest, math.nan) if busiest else math.nan,
            "cpu_total": sum(cpu.values()),
            "link_drops": l1["drops"] - l0["drops"], "link_gaps": l1["gaps"] - l0["gaps"],
            "sink_drops": w1.get("drops", 0) - w0.get("drops", 0), "overruns": w1.get("overruns", 0) - w0.get("overruns", 0),
            "sessions_seen": w1.get("sessions", 0), "viewer_lost": views.get("lost", 0),
            "viewer_min_fps": views.get("min_fps"), "viewer_latency_ms_p99": views.get("latency_ms_p99")}


def steps(a: argparse.Namespace) -> list[tuple[int, int]]:
    sessions = a.sessions or []
    if not sessions:
        s = 100
        while s <= a.max_sessions:
            sessions.append(s)
            s *= 2
    viewers = a.viewers or [max(1, min(64, round(2 * s / 100))) for s in sessions]
    return [(s, viewers[min(i, len(viewers) - 1)]) for i, s in enumerate(sessions)]


def stress(a: argparse.Namespace) -> dict[str, Any]:
    from llf_send import device_ids

    plan = steps(a)
    total = max(s for s, _ in plan)
    overrides = dict(kv.split("=", 1) for kv in a.args)
    runner, source, sink, url, tmp = start_pipeline(a.graph, overrides, total, "stress")
    blender = next((n for n, s in runner.graph.nodes.items() if s.type == "blender"), None)
    ids = device_ids(total)
    gen = LoadGenerator(runner.stats()["nodes"][source]["node"]["port"], total)
    pool = ViewerPool(url)
    results, broke = [], None
    print(f"budget: p99 <= {a.budget_ms:g} ms, frames >= 95% of 60 per session a second; {a.seconds:g} s per step\n", flush=True)
    hdr = (f"{'sessions':>8} {'viewers':>7} | {'p50 ms':>7} {'p99 ms':>7} {'fps':>7} | {'drops':>6} {'gaps':>5} "
           f"{'v.lost':>6} {'v.fps':>5} | {'cpu':>5} busiest node")
    print(hdr + "\n" + "-" * len(hdr), flush=True)
    try:
        for s, v in plan:
            gen.grow(s)
            if v > len(pool.viewers):  # new viewers, each on another session, spread over those live
                chosen = np.linspace(0, s - 1, v).round().astype(int)
                pool.add([ids[i] for i in chosen[len(pool.viewers):]])
            joined = wait_live_sessions(runner, sink, s, 30 + s / 100)
            time.sleep(a.settle)
            r = {"sessions": s, "viewers": v, "joined": joined, **measure(runner, sink, pool, a.seconds, blender)}
            results.append(r)
            print(f"{s:>8} {v:>7} | {r['p50_ms']:>7.2f} {r['p99_ms']:>7.2f} {r['fps']:>7.2f} | "
                  f"{r['link_drops'] + r['sink_drops'] + r['overruns']:>6} {r['link_gaps']:>5} {r['viewer_lost']:>6} "
                  f"{(r['viewer_min_fps'] or math.nan):>5.1f} | {r['cpu_total']:>5.2f} {r['busiest']} "
                  f"({r['busiest_cores']:.2f} cores)" + ("" if joined >= s else f"  (only {joined} sessions live)"),
                  flush=True)
            why = []
            if not r["p99_ms"] <= a.budget_ms:
                why.append(f"p99 {r['p99_ms']:.2f} ms > {a.budget_ms:g} ms")
            if blender and not r["fps"] >= 0.95 * 60:
                why.append(f"{r['fps']:.1f} frames/s per session < 57")
            if why:
                broke = {**r, "why": "; ".join(why)}
                break
            if runner.wait(0):
                broke = {**r, "why": "the graph stopped"}
                break
    finally:
        pool.close()
        gen.stop()
        runner.stop(drain=False)
        tmp.cleanup()
    return {"budget_ms": a.budget_ms, "steps": results, "broke": broke}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog="\n".join(__doc__.splitlines()[2:]),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("args", nargs="*", metavar="k=v", help="graph args (with --graph)")
    ap.add_argument("--graph", help="a graph with an arkit_source and a web sink (default: the built-in pipeline)")
    ap.add_argument("--sessions", type=int, nargs="+", help="session counts of the steps (default 100, 200, 400, ...)")
    ap.add_argument("--max-sessions", type=int, default=6400, help="last default step (default 6400)")
    ap.add_argument("--viewers", type=int, nargs="+", help="viewers at each step (default 2 per 100 sessions)")
    ap.add_argument("--budget-ms", type=float, default=1000 / 60, help="p99 pipeline latency budget (default 16.7)")
    ap.add_argument("--seconds", type=float, default=5.0, help="measured window per step (default 5)")
    ap.add_argument("--settle", type=float, default=2.0, help="seconds after the sessions joined (default 2)")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    a = ap.parse_args(argv)
    r = stress(a)
    b = r["broke"]
    if b:
        print(f"\nbudget broken at {b['sessions']} sessions, {b['viewers']} viewers: {b['why']}; the busiest node there: "
              f"{b['busiest']} ({b['busiest_cores']:.2f} cores; all: {b['cpu']})")
    else:
        last = r["steps"][-1] if r["steps"] else None
        print(f"\nthe budget held up to the last step ({last['sessions']} sessions, {last['viewers']} viewers; "
              f"busiest node {last['busiest']} at {last['busiest_cores']:.2f} cores)" if last else "\nno step ran")
    if a.json:
        Path(a.json).write_text(json.dumps(jsonable(r), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
