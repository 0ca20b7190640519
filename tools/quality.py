#!/usr/bin/env python3
"""How far a graph's output is from its input: per-morph error, jitter and correlation.

    python tools/quality.py graphs/replay.yaml --seconds 10
    python tools/quality.py graphs/replay.yaml bits=6 level=2            # graph args as k=v
    python tools/quality.py --compare graphs/replay.yaml /tmp/smoother.yaml
    python tools/quality.py --recording out/replay.msgpack --reference tests/data/llf_dao_take.csv

So a change to smoothing, level of detail or compression shows its cost in quality. The graph runs
(``runtime.Runner``; web sinks on free ports, the graph's own recorders writing to a scratch folder)
for ``--seconds`` with two recorders added: one on the capture source's output (what went in: the
reference) and one on the measured output (``--output NODE``; default: the compressor's output,
decoded with ``nodes.wire.Decoder`` as a viewer would, else what feeds the last node). The
source is an ``arkit_replay`` node (its take, as the graph plays it) or an ``arkit_source`` node,
which is fed ``--reference`` (a Live Link Face CSV export or packet container; default the
recorded iPhone capture in tests/data/livelink) over UDP at its recorded timing, looped.

Alignment: input and output carry pts on one clock (CLOCK_MONOTONIC); each output frame is compared
with the input interpolated at its pts (``rmse``, ``max``: what a viewer sees against the capture at
that instant, lag included) and at its pts minus the lag that fits best (``rmse@lag``: the shape
error once the delay is taken out; ``lag_ms``). Per morph: RMSE, max |error|, Pearson correlation
with the input, and jitter, the RMS of the frame-to-frame second difference, of the output and of
the input at the same instants (a ratio below 1: smoothing; above 1: added noise or steps). The
worst morphs (by RMSE) are listed.

``--recording`` takes a recorder file instead (``avatar/packet`` or ``arkit/blendshapes``) and a
reference capture: the output's time from its first pts is laid over the take (looped, at
``--speed``), with the best lag searched in +-1 s.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from jsonable import jsonable  # noqa: E402

from orchestrator.alignment import NAMES, Series, align_by_pts, align_to_take, compare, interp, read_series  # noqa: E402,F401
from orchestrator.evaluate import headless  # noqa: E402

IN_REC, OUT_REC = "_quality_in", "_quality_out"


def load_reference(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Times (s) and weights (N, 52) of a Live Link Face CSV export or packet container."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        from nodes.livelink import read_take

        take = read_take(path)
        return take.times.astype(np.float64), np.clip(take.weights.astype(np.float64), 0.0, 1.0)
    from nodes.livelink import parse_packet, read_container

    frames = [parse_packet(p) for p in read_container(path)]
    fps = frames[0].fps[0] / frames[0].fps[1]
    t = np.array([f.frame + f.subframe for f in frames], np.float64)
    return (t - t[0]) / fps, np.clip(np.stack([f.weights for f in frames]).astype(np.float64), 0.0, 1.0)


# --- running a graph -------------------------------------------------------------------------------------
class Feeder(threading.Thread):
    """Sends a capture at its recorded timing, looped, as one device, to an arkit_source."""

    def __init__(self, port: int, reference: str | None):
        super().__init__(daemon=True)
        self.port, self.reference = port, reference
        self.stop_event = threading.Event()

    def run(self) -> None:
        from llf_send import DEFAULT_BIN, bin_frames, csv_frames, device_ids, schedule, send

        ref = self.reference or str(DEFAULT_BIN)
        if ref.lower().endswith(".csv"):
            frames, fps, first = csv_frames(ref, 60.0), 60.0, None
        else:
            frames, fps, first = bin_frames(ref)

        def until_stopped():
            for f in schedule(frames, fps, loop=True):
                if self.stop_event.is_set():
                    return
                yield f

        send(until_stopped(), "127.0.0.1", self.port, device_ids(1, first), fps=fps, quiet=True)


def prepare(path: str, overrides: dict[str, str], scratch: Path, output: str | None):
    """The graph with recorders on the source's output and on the measured output."""
    from runtime.graph import LinkSpec, NodeSpec, load_graph
    from runtime.validate import validate_graph

    graph = load_graph(path, overrides)
    validate_graph(graph)
    headless(graph, scratch)
    sources = [n for n, s in graph.nodes.items() if s.type in ("arkit_replay", "arkit_source")]
    if len(sources) != 1:
        raise SystemExit(f"{path}: needs exactly one arkit_replay or arkit_source node (has {sources or 'none'})")
    src = sources[0]
    if output is None:
        enc = [n for n, s in graph.nodes.items() if s.type == "compressor"]
        if enc:
            output = enc[0]
        else:  # what feeds the last node of the capture path
            last = [l for l in graph.links if l.forward and graph.nodes[l.dst].type not in ("recorder", "fakesink")]
            output = last[-1].src if last else src
    node, _, pad = output.partition(".")
    if node not in graph.nodes:
        raise SystemExit(f"--output: no node '{node}' in {path}")
    out_pads = sorted({l.src_pad for l in graph.links if l.src == node}) or ["out"]
    pad = pad or ("out" if "out" in out_pads else out_pads[0])
    src_pad = next((l.src_pad for l in graph.links if l.src == src), "out")
    graph.nodes[IN_REC] = NodeSpec(IN_REC, "recorder", {"path": str(scratch / "in.msgpack"), "flush_every": 30})
    graph.nodes[OUT_REC] = NodeSpec(OUT_REC, "recorder", {"path": str(scratch / "out.msgpack"), "flush_every": 30})
    # leaky, so the recorders can never hold the graph back (256 frames of slack: they never drop)
    graph.links.append(LinkSpec(src, src_pad, IN_REC, "in", "leaky", 256))
    graph.links.append(LinkSpec(node, pad, OUT_REC, "in", "leaky", 256))
    return graph, src, f"{node}.{pad}"


def run_graph(path: str, overrides: dict[str, str], seconds: float, output: str | None,
              reference: str | None) -> dict[str, Any]:
    """Run the graph, then compare what its output recorder got with what its input recorder got."""
    from runtime import Runner

    with tempfile.TemporaryDirectory(prefix="avatar-quality-") as tmp:
        scratch = Path(tmp)
        graph, src, measured = prepare(path, overrides, scratch, output)
        runner = Runner(graph, stop_on_eos=True).start()
        feeder = None
        try:
            if graph.nodes[src].type == "arkit_source":
                feeder = Feeder(runner.stats()["nodes"][src]["node"]["port"], reference)
                feeder.start()
            runner.wait(seconds)
        finally:
            if feeder is not None:
                feeder.stop_event.set()
                feeder.join(5)
            runner.stop(drain=False)
        inp, out = read_series(scratch / "in.msgpack"), read_series(scratch / "out.msgpack")
    if not inp or not out:
        raise SystemExit(f"{path}: nothing recorded (input sessions {list(inp)}, output sessions {list(out)})")
    results = {}
    for sid in sorted(set(inp) & set(out)):
        try:
            results[sid] = align_by_pts(inp[sid], out[sid])
        except ValueError as exc:
            raise SystemExit(f"{path}: session {sid}: {exc}") from None
    if not results:
        raise SystemExit(f"{path}: input sessions {list(inp)} and output sessions {list(out)} have none in common")
    return {"graph": path, "args": overrides, "output": measured, "seconds": seconds, "sessions": results}


# --- output ----------------------------------------------------------------------------------------------
def _f(x: Any, fmt: str = ".4f") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def print_report(r: dict[str, Any], worst: int) -> None:
    where = r.get("graph") or r.get("recording")
    print(f"{where} {' '.join(f'{k}={v}' for k, v in (r.get('args') or {}).items())}".rstrip()
          + (f"  (output {r['output']})" if r.get("output") else ""))
    for sid, s in r["sessions"].items():
        print(f"  session {sid}: {s['frames']} frames; rmse {_f(s['rmse'])}, max {_f(s['max'])}, corr {_f(s['corr_mean'], '.3f')}; "
              f"at lag {s['lag_ms']} ms: rmse {_f(s['rmse_at_lag'])}, max {_f(s['max_at_lag'])}, "
              f"corr {_f(s['corr_at_lag'], '.3f')}; jitter out/in {_f(s['jitter_out'])}/{_f(s['jitter_ref'])}")
        morphs = sorted(s["morphs"].items(), key=lambda kv: -kv[1]["rmse"])[:worst]
        print(f"    {'worst morphs':<22} {'rmse':>7} {'max':>7} {'corr':>6} {'rmse@lag':>8} {'jitter out':>10} {'jitter in':>9}")
        for name, m in morphs:
            at = s["morphs_at_lag"][name]
            print(f"    {name:<22} {_f(m['rmse']):>7} {_f(m['max']):>7} {_f(m['corr'], '.3f'):>6} {_f(at['rmse']):>8} "
                  f"{_f(m['jitter_out']):>10} {_f(m['jitter_ref']):>9}")


def print_comparison(a: dict[str, Any], b: dict[str, Any], worst: int) -> None:
    print(f"A: {a['graph']}\nB: {b['graph']}\n")
    for sid in sorted(set(a["sessions"]) & set(b["sessions"])):
        sa, sb = a["sessions"][sid], b["sessions"][sid]
        print(f"session {sid}")
        print(f"  {'':<14} {'A':>9} {'B':>9} {'B - A':>9}")
        for key, fmt in (("frames", "d"), ("rmse", ".4f"), ("max", ".4f"), ("rmse_at_lag", ".4f"), ("lag_ms", "d"),
                         ("corr_mean", ".3f"), ("jitter_out", ".4f"), ("jitter_ref", ".4f")):
            va, vb = sa[key], sb[key]
            diff = vb - va if isinstance(va, (int, float)) and isinstance(vb, (int, float)) else math.nan
            print(f"  {key:<14} {_f(va, fmt):>9} {_f(vb, fmt):>9} {_f(diff, '+' + fmt):>9}")
        delta = sorted(NAMES, key=lambda n: -(sb["morphs"][n]["rmse"] - sa["morphs"][n]["rmse"]))[:worst]
        print("  morphs B made worse most (rmse A -> B): " + ", ".join(
            f"{n} {_f(sa['morphs'][n]['rmse'], '.3f')}->{_f(sb['morphs'][n]['rmse'], '.3f')}" for n in delta))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog="\n".join(__doc__.splitlines()[2:]),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("graph", nargs="?", help="graph to run (YAML)")
    ap.add_argument("args", nargs="*", metavar="k=v", help="graph args")
    ap.add_argument("--compare", nargs=2, metavar=("A", "B"), help="run two graphs and show what B costs against A")
    ap.add_argument("--recording", help="a recorder file to judge instead of running a graph (needs --reference)")
    ap.add_argument("--reference", help="a Live Link Face CSV export or .bin container (fed to arkit_source; "
                                        "with --recording, the take to compare with)")
    ap.add_argument("--output", help="NODE or NODE.PAD to measure (default: the compressor, decoded)")
    ap.add_argument("--seconds", type=float, default=10.0, help="how long each graph runs (default 10)")
    ap.add_argument("--speed", type=float, default=1.0, help="with --recording: the replay speed it was made at")
    ap.add_argument("--worst", type=int, default=8, help="morphs listed (default 8)")
    ap.add_argument("--json", action="store_true", help="print JSON instead of tables")
    a = ap.parse_args(argv)
    overrides = dict(kv.split("=", 1) for kv in a.args)
    if a.recording:
        if not a.reference:
            ap.error("--recording needs --reference")
        t_ref, w_ref = load_reference(a.reference)
        series = read_series(Path(a.recording))
        if not series:
            raise SystemExit(f"{a.recording}: no ARKit-52 frames in it")
        result = {"recording": a.recording, "reference": a.reference,
                  "sessions": {sid: align_to_take(s, t_ref, w_ref, a.speed) for sid, s in series.items()}}
        results = [result]
    elif a.compare:
        results = [run_graph(g, overrides, a.seconds, a.output, a.reference) for g in a.compare]
    elif a.graph:
        results = [run_graph(a.graph, overrides, a.seconds, a.output, a.reference)]
    else:
        ap.error("give a graph, --compare A B, or --recording FILE --reference TAKE")
    if a.json:
        print(json.dumps(jsonable(results if len(results) > 1 else results[0]), indent=1))
    elif a.compare:
        for r in results:
            print_report(r, a.worst)
            print()
        print_comparison(results[0], results[1], a.worst)
    else:
        print_report(results[0], a.worst)
    return 0


if __name__ == "__main__":
    sys.exit(main())
