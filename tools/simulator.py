#!/usr/bin/env python3
"""A headless avatar viewer: N viewers over WebSocket or WebRTC that decode the stream as the page does.

    python tools/simulator.py --url http://127.0.0.1:8080/ --viewers 4 --seconds 10
    python tools/simulator.py --graph graphs/face.yaml --transport webrtc --viewers 3 --seconds 10
    python tools/simulator.py --graph graphs/capture.yaml --devices 20 --viewers 20 --session '*' --json
    python tools/simulator.py --graph graphs/face.yaml --reference tests/data/llf_dao_take.csv

Each viewer connects like ``web/js/main.js``: WebSocket ``/ws`` or WebRTC (``POST /rtc/offer``, an
unordered ``avatar`` DataChannel without retransmits and a reliable ``control`` one), subscribes
(``--session ID``; default: the first live session; ``'*'``: viewer i takes live session i, round
robin), decodes every packet with ``nodes.wire.Decoder``, echoes each decoded frame (so the
sink's echo latency counts it, as for a page) and asks for a keyframe when its decoder waits (at
most every 200 ms, as the page does). It measures, over the window after ``--warmup``:

- fps: decoded frames per second; jitter: the standard deviation of the intervals between them
  (ms), and their p99;
- latency: frame pts -> decoded here (pts is the pipeline's CLOCK_MONOTONIC, so only meaningful
  on the same machine, which ``--graph`` always is); with ``--graph`` also the sink's own figures
  (echo latency: pts -> the echo back; pipeline latency: capture arrival -> the sink);
- loss: packets the decoder found missing, refused deltas, malformed packets (``--loss`` makes each
  viewer's link lose a fraction of them at random, ``--delay`` makes it longer);
- reconstruction error: with ``--graph`` the simulator starts the graph itself (``runtime.Runner``,
  its sink on a free port), records the compressor's input with a recorder on the same output, and
  compares every decoded frame with the recorded row of the same (session, pts): RMSE and max error
  (also in quantization steps: within half a step when the stream is intact). With ``--reference``
  (a Live Link Face CSV export or a packet container ``.bin``) every decoded frame is matched to the
  nearest reference frame instead: the error of a pure replay against its take.

A graph with ``arkit_source`` nodes is fed the recorded iPhone capture (``tests/data/livelink``),
looped at 60 Hz, as ``--devices`` devices (``tools/llf_send.py``). Prints a table, or JSON (``--json``).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from jsonable import jsonable  # noqa: E402

from nodes import wire as wf  # noqa: E402
from orchestrator.viewers import (  # noqa: E402,F401 - the viewers live there; tools import them from here too
    KEEP_LIGHT,
    KEYFRAME_REQUEST_MIN_NS,
    REPORT_S,
    RESUME_NS,
    Viewer,
    run_viewers,
    run_webrtc,
    run_websocket,
    send_reports,
)

REC_NODE = "_sim_rec"


# --- measurements ----------------------------------------------------------------------------------
def viewer_metrics(v: Viewer, t0: int, t1: int, recorded: dict | None = None,
                   reference: np.ndarray | None = None) -> dict[str, Any]:
    """fps, jitter, latency, loss and reconstruction error of one viewer over [t0, t1] (monotonic ns)."""
    rows = [f for f in v.frames if t0 <= f[0] <= t1]
    arrivals = np.array([f[0] for f in rows], np.int64)
    span = (t1 - t0) / 1e9
    gaps_ms = np.diff(arrivals) / 1e6 if len(arrivals) > 1 else np.zeros(0)
    lat_ms = np.array([f[0] / 1e6 - f[2] for f in rows]) if rows else np.zeros(0)
    c = v.decoder.counts
    out: dict[str, Any] = {
        "viewer": v.index, "transport": v.transport, "session": rows[-1][1] if rows else None,
        "frames": len(rows), "fps": len(rows) / span if span > 0 else 0.0,
        "jitter_ms": float(np.std(gaps_ms)) if len(gaps_ms) else math.nan,
        "interval_ms_p99": float(np.percentile(gaps_ms, 99)) if len(gaps_ms) else math.nan,
        "latency_ms_p50": float(np.percentile(lat_ms, 50)) if len(lat_ms) else math.nan,
        "latency_ms_p99": float(np.percentile(lat_ms, 99)) if len(lat_ms) else math.nan,
        "packets": v.packets, "kbytes": round(v.bytes / 1024, 1), "keyframes": sum(f[4] for f in rows),
        "lost": c["lost"], "refused": c["refused"], "malformed": c["malformed"], "late": c["late"],
        "keyframe_requests": v.keyframe_requests, "errors": v.errors[:5], "closed": v.closed,
    }
    if recorded is not None:
        out.update(reconstruction(rows, recorded, v.bits))
    if reference is not None:
        out.update(reference_match(rows, reference))
    return out


def reconstruction(rows: list, recorded: dict[tuple[str, int], np.ndarray], bits: int) -> dict[str, Any]:
    """Decoded frames against the compressor's input with the same (session, pts ms)."""
    errs, matched = [], 0
    for _, session, pts_ms, _, _, w in rows:
        ref = recorded.get((session, pts_ms))
        if ref is None or ref.shape != w.shape:
            continue
        matched += 1
        errs.append(np.abs(w.astype(np.float64) - np.clip(np.nan_to_num(ref.astype(np.float64)), 0.0, 1.0)))
    if not errs:
        return {"matched": 0, "rmse": math.nan, "max_err": math.nan, "max_err_steps": math.nan}
    e = np.stack(errs)
    step = wf.step(bits, *wf.WEIGHT_RANGE) if bits else math.nan
    return {"matched": matched, "rmse": float(np.sqrt(np.mean(e ** 2))), "max_err": float(e.max()),
            "max_err_steps": float(e.max() / step) if step else math.nan}


def reference_match(rows: list, reference: np.ndarray) -> dict[str, Any]:
    """Each decoded frame against its nearest reference frame (a pure replay: the take it plays)."""
    if not rows:
        return {"ref_matched": 0, "ref_rmse": math.nan, "ref_max_err": math.nan, "ref_in_order": math.nan}
    w = np.stack([r[5] for r in rows]).astype(np.float64)
    best, err = [], []
    for chunk in range(0, len(w), 256):
        d = ((w[chunk:chunk + 256, None, :] - reference[None, :, :]) ** 2).mean(axis=2)
        i = d.argmin(axis=1)
        best += i.tolist()
        err.append(np.abs(w[chunk:chunk + 256] - reference[i]))
    e = np.concatenate(err)
    steps = np.diff(best)
    in_order = float(np.mean((steps >= 0) & (steps <= 3))) if len(steps) else 1.0
    return {"ref_matched": len(rows), "ref_rmse": float(np.sqrt(np.mean(e ** 2))), "ref_max_err": float(e.max()),
            "ref_in_order": in_order}


def load_reference(path: str | Path) -> np.ndarray:
    """(N, 52) weights, clipped to 0..1, of a Live Link Face CSV export or a packet container."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        from nodes.livelink import read_take

        return np.clip(read_take(path).weights.astype(np.float64), 0.0, 1.0)
    from nodes.livelink import parse_packet, read_container

    return np.clip(np.stack([parse_packet(p).weights for p in read_container(path)]).astype(np.float64), 0.0, 1.0)


def read_recorded(path: Path, sessions: set[str] | None = None) -> dict[tuple[str, int], np.ndarray]:
    """(session, pts ms) -> weights row of every batch the recorder wrote (only ``sessions``, if given)."""
    from runtime.recording import read_records, record_message

    out: dict[tuple[str, int], np.ndarray] = {}
    try:
        for rec in read_records(path):
            msg = record_message(rec)
            w = msg.arrays.get("weights")
            if w is None:
                continue
            ids = msg.session if isinstance(msg.session, list) else [msg.session]
            pts_ms = int(msg.pts_ns) // 1_000_000
            for i, s in enumerate(map(str, ids)):
                if sessions is None or s in sessions:
                    out[(s, pts_ms)] = np.asarray(w[i])
    except ValueError:  # a recording cut mid-record by the stop: what came before counts
        pass
    return out


def summarize(rows: list[dict]) -> dict[str, Any]:
    def agg(key: str, fn=np.nanmean) -> float:
        vals = [r[key] for r in rows if key in r and r[key] is not None and not (isinstance(r[key], float) and math.isnan(r[key]))]
        return float(fn(vals)) if vals else math.nan

    return {"viewers": len(rows), "frames": sum(r["frames"] for r in rows), "fps_mean": agg("fps"),
            "fps_min": agg("fps", np.nanmin), "jitter_ms_mean": agg("jitter_ms"), "latency_ms_p50_mean": agg("latency_ms_p50"),
            "latency_ms_p99_max": agg("latency_ms_p99", np.nanmax), "lost": sum(r["lost"] for r in rows),
            "refused": sum(r["refused"] for r in rows), "malformed": sum(r["malformed"] for r in rows),
            "rmse_mean": agg("rmse"), "max_err": agg("max_err", np.nanmax), "max_err_steps": agg("max_err_steps", np.nanmax),
            "ref_rmse_mean": agg("ref_rmse")}


# --- a graph of our own ------------------------------------------------------------------------------
class Feeder(threading.Thread):
    """Sends the recorded iPhone capture, looped at its 60 Hz, as ``devices`` devices to a UDP port."""

    def __init__(self, port: int, devices: int, host: str = "127.0.0.1"):
        super().__init__(daemon=True)
        self.port, self.devices, self.host = port, devices, host
        self.stop_event = threading.Event()
        self.sent = 0

    def run(self) -> None:
        from llf_send import DEFAULT_BIN, bin_frames, device_ids, schedule, send

        frames, fps, first = bin_frames(DEFAULT_BIN)

        def until_stopped() -> Iterator:
            for f in schedule(frames, fps, loop=True):
                if self.stop_event.is_set():
                    return
                yield f

        self.sent = send(until_stopped(), self.host, self.port, device_ids(self.devices, first), fps=fps, quiet=True)

    def stop(self) -> None:
        self.stop_event.set()
        self.join(5)


def prepare_graph(path: str, overrides: dict[str, str], record: Path | None, sink_host: str = "127.0.0.1"):
    """The graph with every sink on a free port (loopback ICE for WebRTC), every arkit_source on a
    free UDP port, and (``record``) a recorder on the output that feeds the compressor."""
    from runtime.graph import LinkSpec, NodeSpec, load_graph
    from runtime.validate import validate_graph

    graph = load_graph(path, overrides)
    validate_graph(graph)  # fills in the pad names the recorder link needs
    sinks = [n for n, s in graph.nodes.items() if s.type in ("websocket_sink", "webrtc_sink")]
    if not sinks:
        raise SystemExit(f"{path}: no websocket_sink or webrtc_sink node to view")
    for n in sinks:
        graph.nodes[n].params.update(port=0, host=sink_host)
        if graph.nodes[n].type == "webrtc_sink":
            graph.nodes[n].params["ice_addresses"] = [sink_host]
    for s in graph.nodes.values():
        if s.type == "arkit_source":
            s.params.update(port=0, host="127.0.0.1")
    if record is not None:
        feeding = [l for l in graph.links if graph.nodes[l.dst].type == "compressor" and l.dst_pad == "in"]
        if not feeding:
            raise SystemExit(f"{path}: no compressor to record the input of (use --reference instead)")
        l = feeding[0]
        graph.nodes[REC_NODE] = NodeSpec(REC_NODE, "recorder", {"path": str(record), "flush_every": 1})
        graph.links.append(LinkSpec(l.src, l.src_pad, REC_NODE, "in", "leaky", 256))
    return graph, sinks[0]


def start_graph(path: str, overrides: dict[str, str], record: Path | None, devices: int = 1):
    """Start the prepared graph; returns (runner, sink node name, sink URL, feeders)."""
    from runtime import Runner

    graph, sink = prepare_graph(path, overrides, record)
    runner = Runner(graph, stop_on_eos=False).start()
    nodes = runner.stats()["nodes"]
    feeders = []
    for name, spec in graph.nodes.items():
        if spec.type == "arkit_source":
            f = Feeder(nodes[name]["node"]["port"], devices)
            f.start()
            feeders.append(f)
    return runner, sink, nodes[sink]["node"]["url"], feeders


def wait_live_sessions(runner: Any, sink: str, at_least: int, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    n = 0
    while time.monotonic() < deadline:
        n = runner.stats()["nodes"][sink]["node"].get("sessions", 0)
        if n >= at_least:
            break
        time.sleep(0.2)
    return n


# --- output ------------------------------------------------------------------------------------------
def _f(x: Any, fmt: str = ".2f") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def print_table(rows: list[dict], summary: dict, sink: dict | None, out=sys.stdout) -> None:
    hdr = (f"{'viewer':>6} {'transport':>9} {'session':>14} {'frames':>6} {'fps':>6} {'jitter ms':>9} "
           f"{'p99 gap':>7} {'lat p50':>7} {'lat p99':>7} {'lost':>5} {'refused':>7} {'kf':>4} {'rmse':>8} {'max err':>8} {'steps':>5}")
    print(hdr, file=out)
    print("-" * len(hdr), file=out)
    for r in rows:
        rmse, mx, steps = r.get("rmse", r.get("ref_rmse")), r.get("max_err", r.get("ref_max_err")), r.get("max_err_steps")
        print(f"{r['viewer']:>6} {r['transport']:>9} {str(r['session'])[:14]:>14} {r['frames']:>6} {_f(r['fps'], '.1f'):>6} "
              f"{_f(r['jitter_ms']):>9} {_f(r['interval_ms_p99'], '.1f'):>7} {_f(r['latency_ms_p50']):>7} "
              f"{_f(r['latency_ms_p99']):>7} {r['lost']:>5} {r['refused']:>7} {r['keyframes']:>4} {_f(rmse, '.5f'):>8} "
              f"{_f(mx, '.5f'):>8} {_f(steps, '.2f'):>5}" + (f"  closed: {r['closed']}" if r["closed"] else ""), file=out)
    s = summary
    print(f"\n{s['viewers']} viewers: {s['frames']} frames, fps mean {_f(s['fps_mean'], '.1f')} (min {_f(s['fps_min'], '.1f')}), "
          f"jitter {_f(s['jitter_ms_mean'])} ms, pts->viewer p50 {_f(s['latency_ms_p50_mean'])} ms / p99 max "
          f"{_f(s['latency_ms_p99_max'])} ms; lost {s['lost']}, refused {s['refused']}, malformed {s['malformed']}", file=out)
    if not math.isnan(s["rmse_mean"]):
        print(f"reconstruction vs the compressor's input: rmse {_f(s['rmse_mean'], '.5f')}, max {_f(s['max_err'], '.5f')} "
              f"({_f(s['max_err_steps'])} quantization steps)", file=out)
    if not math.isnan(s["ref_rmse_mean"]):
        print(f"against the reference capture (nearest frame): rmse {_f(s['ref_rmse_mean'], '.5f')}", file=out)
    if sink:
        print(f"sink: echo latency p50 {_f(sink.get('echo_latency_us_p50', math.nan) / 1000)} ms / p99 "
              f"{_f(sink.get('echo_latency_us_p99', math.nan) / 1000)} ms; pipeline (capture -> sink) p50 "
              f"{_f(sink.get('pipeline_latency_us_p50', math.nan) / 1000)} ms / p99 "
              f"{_f(sink.get('pipeline_latency_us_p99', math.nan) / 1000)} ms; viewers {sink.get('viewers')}, "
              f"drops {sink.get('drops')}, overruns {sink.get('overruns')}", file=out)


# --- main --------------------------------------------------------------------------------------------
def simulate(a: argparse.Namespace) -> dict[str, Any]:
    runner = feeders = None
    tmp = tempfile.TemporaryDirectory(prefix="avatar-sim-")
    record = Path(tmp.name) / "compressor-in.msgpack" if a.graph and not a.no_record else None
    sink_stats: dict | None = None
    try:
        url = a.url
        if a.graph:
            overrides = dict(kv.split("=", 1) for kv in a.args)
            runner, sink, url, feeders = start_graph(a.graph, overrides, record, a.devices)
            wait_live_sessions(runner, sink, 1 if a.session != "*" else min(a.viewers, a.devices))
        t_start = time.monotonic_ns()
        total = a.warmup + a.stagger * max(0, a.viewers - 1) + a.seconds
        viewers = asyncio.run(run_viewers(url, a.transport, a.viewers, total, a.session, a.lod, a.stagger,
                                          a.loss, a.delay / 1000))
        t_end = t_start + int(total * 1e9)
        if runner is not None:
            sink_stats = runner.stats()["nodes"][sink]["node"]
    finally:
        for f in feeders or []:
            f.stop()
        if runner is not None:
            runner.stop(drain=False)
    t0 = t_start + int((a.warmup + a.stagger * max(0, a.viewers - 1)) * 1e9)
    recorded = read_recorded(record, {f[1] for v in viewers for f in v.frames}) if record is not None else None
    reference = load_reference(a.reference) if a.reference else None
    rows = [viewer_metrics(v, t0, t_end, recorded, reference) for v in viewers]
    tmp.cleanup()
    result = {"url": url, "transport": a.transport, "seconds": a.seconds, "graph": a.graph,
              "viewers": rows, "summary": summarize(rows)}
    if sink_stats is not None:
        result["sink"] = {k: sink_stats.get(k) for k in (
            "echo_latency_us_p50", "echo_latency_us_p99", "pipeline_latency_us_p50", "pipeline_latency_us_p99",
            "viewers", "sent", "drops", "skipped", "overruns", "keyframe_requests", "echoes")}
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog="\n".join(__doc__.splitlines()[2:]),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="a running sink's page URL, e.g. http://127.0.0.1:8080/")
    where.add_argument("--graph", help="start this graph (its sink on a free port) and view it")
    ap.add_argument("args", nargs="*", metavar="k=v", help="graph args (with --graph)")
    ap.add_argument("--transport", choices=("ws", "websocket", "webrtc"), default="ws")
    ap.add_argument("--viewers", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=10.0, help="measured window (default 10)")
    ap.add_argument("--warmup", type=float, default=1.0, help="seconds before the window (default 1)")
    ap.add_argument("--stagger", type=float, default=0.0, help="seconds between viewer connections")
    ap.add_argument("--loss", type=float, default=0.0, help="each viewer's link loses this fraction of packets "
                                                            "(at random, before its decoder; default 0)")
    ap.add_argument("--delay", type=float, default=0.0, help="each viewer's link delay, ms each way (default 0)")
    ap.add_argument("--session", default=None, help="session to watch (default: the first live one; '*': spread)")
    ap.add_argument("--lod", type=int, default=None, choices=range(wf.N_LOD_LEVELS), help="level of detail to ask for")
    ap.add_argument("--devices", type=int, default=1, help="devices fed to an arkit_source graph (default 1)")
    ap.add_argument("--reference", help="compare with this capture (.csv export or .bin container) instead")
    ap.add_argument("--no-record", action="store_true", help="with --graph: no recorder, no reconstruction error")
    ap.add_argument("--json", action="store_true", help="print JSON (the table goes to stderr)")
    a = ap.parse_args(argv)
    a.transport = "webrtc" if a.transport == "webrtc" else "websocket"
    if a.args and not a.graph:
        ap.error("k=v args need --graph")
    if not 0.0 <= a.loss <= 1.0 or a.delay < 0:
        ap.error("--loss must be a fraction 0..1 and --delay at least 0 ms")
    result = simulate(a)
    print_table(result["viewers"], result["summary"], result.get("sink"), out=sys.stderr if a.json else sys.stdout)
    if a.json:
        print(json.dumps(jsonable(result), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
