"""Run a graph headless on recordings under network profiles, and measure what its viewers get.

One run measures every (recording, profile) pair at once: each pair is a session of its own (the
recording sent as its own phone into the graph's capture source, ``orchestrator.feed``), watched
by one headless viewer (``orchestrator.viewers``) whose link has the profile's loss and delay.
So sessions never share compression state, and a lossy viewer's keyframe requests cost only its
own session. Measured over the window after ``warmup``:

- per pair (a *unit*): ``bytes_per_frame`` (wire bytes per packet the viewer was sent),
  ``error`` (RMSE of the decoded weights against the graph's input at the same pts: smoothing lag,
  quantization and loss together; ``orchestrator.alignment``), ``jitter`` (RMS second difference
  of the decoded weights; ``jitter_in``: of the input), ``latency_ms`` (pts -> decoded, median),
  ``interval_jitter_ms`` (standard deviation of the intervals between decoded frames) and
  ``delivered`` (frames decoded per packet sent);
- per *stage* (every node on the path from the source to the compressor, and the viewers): the
  error and jitter of what leaves it, so a change is traced to the node where it starts;
- per node: CPU (cores, sampled from ``/proc`` every half second) and processing time; per link:
  the data's age as the next node takes it (``Runner.stats``), sampled every second.

The graph's capture source must be one ``arkit_source`` (fed on a free UDP port) or ``arkit_replay``
(replaced by an ``arkit_source`` for the run); it needs a ``websocket_sink`` or ``webrtc_sink`` fed by
a ``compressor``. Sinks serve on free loopback ports and the graph's recorders write to a scratch folder.
"""
from __future__ import annotations

import asyncio
import math
import os
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from runtime import Runner
from runtime.graph import Graph, LinkSpec, NodeSpec, load_graph
from runtime.validate import validate_graph

from .alignment import NAMES, Series, align_by_pts, read_series
from .feed import Feed
from .recordings import Recording
from .viewers import Viewer, watch

SINK_TYPES = ("websocket_sink", "webrtc_sink")
SOURCE_TYPES = ("arkit_source", "arkit_replay")
IN_REC = "_eval_in"
STAGE_REC = "_eval_"
VIEWERS = "viewers"  # the stage that is what the viewers decode
_TICK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Profile:
    """A viewer's network: a fraction of packets lost at random, and a delay each way."""

    name: str
    loss: float = 0.0
    delay_ms: float = 0.0

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "loss": self.loss, "delay_ms": self.delay_ms}


PROFILES = (Profile("clean"), Profile("lossy", loss=0.02), Profile("slow", delay_ms=80.0))


def parse_profiles(text: str) -> list[Profile]:
    """``clean,lossy`` (known names) or ``NAME:loss=0.05:delay=40`` items, comma-separated."""
    known = {p.name: p for p in PROFILES}
    out = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, *opts = item.split(":")
        if not opts:
            if name not in known:
                raise ValueError(f"unknown network profile '{name}' (known: {', '.join(known)}; or NAME:loss=F:delay=MS)")
            out.append(known[name])
            continue
        kv = dict(o.split("=", 1) for o in opts if "=" in o)
        if set(kv) - {"loss", "delay"} or len(kv) != len(opts):
            raise ValueError(f"profile '{item}': options are loss=FRACTION and delay=MS")
        loss, delay = float(kv.get("loss", 0)), float(kv.get("delay", 0))
        if not 0 <= loss < 1 or delay < 0:
            raise ValueError(f"profile '{item}': loss is a fraction 0..1, delay at least 0 ms")
        out.append(Profile(name, loss, delay))
    if not out:
        raise ValueError("no network profile given")
    return out


# --- the graph, made headless ------------------------------------------------------------------------
def headless(graph: Graph, scratch: Path) -> None:
    """Every sink on a free loopback port, every recorder into ``scratch``, every arkit_source on a
    free UDP port of 127.0.0.1: a graph that can run beside others and leaves nothing behind."""
    for name, s in graph.nodes.items():
        if s.type in SINK_TYPES:
            s.params.update(port=0, host="127.0.0.1")
            if s.type == "webrtc_sink":
                s.params["ice_addresses"] = ["127.0.0.1"]
        elif s.type == "recorder":
            s.params["path"] = str(scratch / f"{name}.msgpack")
        elif s.type == "arkit_source":
            s.params.update(port=0, host="127.0.0.1")


@dataclass
class Plan:
    """The prepared graph and the roles of its nodes."""

    graph: Graph
    source: str
    encoder: str
    sink: str
    stages: list[str] = field(default_factory=list)  # between source and encoder, in path order


def _reach(graph: Graph, start: str, forward: bool) -> dict[str, int]:
    """Nodes reachable from ``start`` along forward links (or against them), with their distance."""
    seen, todo = {start: 0}, deque([start])
    while todo:
        n = todo.popleft()
        for l in graph.links:
            if l.feedback:
                continue
            a, b = (l.src, l.dst) if forward else (l.dst, l.src)
            if a == n and b not in seen:
                seen[b] = seen[n] + 1
                todo.append(b)
    return seen


def prepare(path: str, scratch: Path, overrides: Mapping[str, str] | None = None,
            params: Mapping[str, Mapping[str, Any]] | None = None, stages: bool = True) -> Plan:
    """The graph at ``path`` with ``params`` (node -> {param: value}) over its own, made headless,
    its source an arkit_source, and recorders on the source's output and (``stages``) on each stage."""
    graph = load_graph(path, dict(overrides or {}))
    for node, values in (params or {}).items():
        if node not in graph.nodes:
            raise ValueError(f"{path}: no node '{node}' to set {', '.join(values)} on (nodes: {', '.join(graph.nodes)})")
        graph.nodes[node].params.update(values)
    validate_graph(graph)  # fills in pad names
    sources = [n for n, s in graph.nodes.items() if s.type in SOURCE_TYPES]
    if len(sources) != 1:
        raise ValueError(f"{path}: needs exactly one arkit_source or arkit_replay node (has {sources or 'none'})")
    src = sources[0]
    if graph.nodes[src].type == "arkit_replay":  # the recordings come in as phones would
        old = graph.nodes[src]
        graph.nodes[src] = NodeSpec(src, "arkit_source", {}, host=old.host, line=old.line)
    headless(graph, scratch)
    encoders = [l for l in graph.links if graph.nodes[l.src].type == "compressor" and graph.nodes[l.dst].type in SINK_TYPES]
    if not encoders:
        raise ValueError(f"{path}: needs a compressor feeding a websocket_sink or webrtc_sink (the viewers watch it)")
    enc, sink = encoders[0].src, encoders[0].dst
    down, up = _reach(graph, src, True), _reach(graph, enc, False)
    if enc not in down:
        raise ValueError(f"{path}: the compressor '{enc}' is not downstream of the source '{src}'")
    path_nodes = sorted((n for n in down if n in up and n not in (src, enc)), key=lambda n: down[n])
    src_pad = next(l.src_pad for l in graph.links if l.src == src)
    graph.nodes[IN_REC] = NodeSpec(IN_REC, "recorder", {"path": str(scratch / "in.msgpack"), "flush_every": 30})
    graph.links.append(LinkSpec(src, src_pad, IN_REC, "in", "leaky", 256))
    plan = Plan(graph, src, enc, sink)
    if stages:
        for n in path_nodes:
            pad = next(l.src_pad for l in graph.links if l.src == n and l.forward and (l.dst in path_nodes or l.dst == enc))
            rec = STAGE_REC + n
            graph.nodes[rec] = NodeSpec(rec, "recorder", {"path": str(scratch / f"{rec}.msgpack"), "flush_every": 30})
            graph.links.append(LinkSpec(n, pad, rec, "in", "leaky", 256))
            plan.stages.append(n)
    return plan


# --- measuring ------------------------------------------------------------------------------------------
def cpu_seconds(pid: int | None) -> float:
    """utime + stime of a process (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK
    except (OSError, ValueError, IndexError, TypeError):
        return 0.0


def _finite(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def unit_metrics(v: Viewer, inp: Series | None, t0: int, t1: int) -> dict[str, Any]:
    """What one viewer got over [t0, t1] (monotonic ns), against the graph's input."""
    rows = [f for f in v.frames if t0 <= f[0] <= t1 and f[5] is not None and len(f[5]) == len(NAMES)]
    sizes = [b for t, b in v.sizes if t0 <= t <= t1]
    out: dict[str, Any] = {"frames": len(rows), "packets": len(sizes),
                           "bytes_per_frame": float(np.mean(sizes)) if sizes else None,
                           "delivered": len(rows) / len(sizes) if sizes else None}
    if len(rows) < 3:
        return out
    arrival = np.array([r[0] for r in rows], np.int64)
    pts_ms = np.array([r[2] for r in rows], np.int64)
    out["latency_ms"] = float(np.median(arrival / 1e6 - pts_ms))
    out["interval_jitter_ms"] = float(np.std(np.diff(arrival) / 1e6))
    order = np.argsort(pts_ms, kind="stable")
    pts = pts_ms[order] * 1_000_000
    keep = np.concatenate([[True], np.diff(pts) > 0])
    w = np.clip(np.stack([rows[i][5] for i in order]).astype(np.float64), 0.0, 1.0)
    if inp is not None:
        out.update(_quality(inp, Series(pts[keep], w[keep])))
    return out


def _quality(inp: Series, out: Series) -> dict[str, Any]:
    try:
        q = align_by_pts(inp, out)
    except ValueError:
        return {}
    return {"error": _finite(q["rmse"]), "error_at_lag": _finite(q["rmse_at_lag"]), "lag_ms": q["lag_ms"],
            "jitter": _finite(q["jitter_out"]), "jitter_in": _finite(q["jitter_ref"]), "corr": _finite(q["corr_mean"])}


class Sampler(threading.Thread):
    """CPU of every node every ``every`` seconds, and the links' latency every second, until stopped."""

    def __init__(self, runner: Runner, nodes: list[str], every: float = 0.5):
        super().__init__(daemon=True, name="orchestrator-sampler")
        self.runner, self.nodes, self.every = runner, nodes, every
        self.cpu: dict[str, list[float]] = {n: [] for n in nodes}
        self.links: dict[str, list[float]] = {}
        self.stop_event = threading.Event()
        self.last_stats: dict[str, Any] = {}

    def run(self) -> None:
        pids = self.runner.pids()
        last = {n: cpu_seconds(pids.get(n)) for n in self.nodes}
        t_last, k = time.monotonic(), 0
        while not self.stop_event.wait(self.every):
            now, pids = time.monotonic(), self.runner.pids()
            for n in self.nodes:
                c = cpu_seconds(pids.get(n))
                if c >= last[n]:  # a restarted node's new process starts again from 0
                    self.cpu[n].append((c - last[n]) / (now - t_last))
                last[n] = c
            t_last, k = now, k + 1
            if k % max(1, round(1 / self.every)) == 0:
                try:
                    self.last_stats = self.runner.stats()
                except Exception:  # noqa: BLE001 - a stats call that fails costs one sample
                    continue
                for lid, l in self.last_stats["links"].items():
                    p50 = (l.get("latency") or {}).get("p50_us")
                    if p50 is not None:
                        self.links.setdefault(lid, []).append(p50 / 1000.0)

    def stop(self) -> None:
        self.stop_event.set()
        self.join(10)


def _wait_sessions(runner: Runner, sink: str, n: int, timeout: float) -> str:
    """Wait until the sink has seen ``n`` sessions; its page URL."""
    deadline = time.monotonic() + timeout
    seen = 0
    while time.monotonic() < deadline:
        node = runner.stats()["nodes"][sink].get("node") or {}
        seen = node.get("sessions", 0)
        if seen >= n and node.get("url"):
            return node["url"]
        time.sleep(0.1)
    raise TimeoutError(f"the sink '{sink}' saw {seen} of the {n} sessions fed within {timeout:.0f} s")


def session_id(recording: str, profile: str) -> str:
    return f"{recording}~{profile}"


def evaluate(path: str, recordings: list[Recording], profiles: list[Profile] | tuple[Profile, ...] = PROFILES, *,
             overrides: Mapping[str, str] | None = None, params: Mapping[str, Mapping[str, Any]] | None = None,
             seconds: float = 6.0, warmup: float = 1.5, stages: bool = True, transport: str = "websocket",
             timeout: float = 30.0) -> dict[str, Any]:
    """Run the graph once on every (recording, profile) pair and measure it (module doc)."""
    if not recordings or not profiles:
        raise ValueError("evaluate needs at least one recording and one network profile")
    units = [(r, p, session_id(r.name, p.name)) for r in recordings for p in profiles]
    with tempfile.TemporaryDirectory(prefix="avatar-eval-") as tmp:
        scratch = Path(tmp)
        plan = prepare(path, scratch, overrides, params, stages)
        nodes = [n for n in plan.graph.nodes if n != IN_REC and not n.startswith(STAGE_REC)]
        runner = Runner(plan.graph, stop_on_eos=False).start()
        feed = sampler = None
        try:
            port = runner.stats()["nodes"][plan.source]["node"]["port"]
            feed = Feed(port, {sid: r.values for r, _, sid in units})
            feed.start()
            url = _wait_sessions(runner, plan.sink, len(units), timeout)
            viewers = [Viewer(i, transport, sid, None, loss=p.loss, delay_s=p.delay_ms / 1000)
                       for i, (_, p, sid) in enumerate(units)]
            t_start = time.monotonic_ns()
            t0, t1 = t_start + int(warmup * 1e9), t_start + int((warmup + seconds) * 1e9)
            watching = threading.Thread(target=lambda: asyncio.run(watch(viewers, url, warmup + seconds)), daemon=True)
            watching.start()
            time.sleep(warmup)  # the window starts after warmup; the viewers keep their own time
            sampler = Sampler(runner, nodes)
            sampler.start()
            watching.join(warmup + seconds + 30)
            sampler.stop()
            final = runner.stats()
        finally:
            if sampler is not None:
                sampler.stop()
            if feed is not None:
                feed.stop()
            runner.stop(drain=False)
        inp = read_series(scratch / "in.msgpack")
        staged = {n: read_series(scratch / f"{STAGE_REC}{n}.msgpack") for n in plan.stages}
    unit_rows = []
    for (rec, prof, sid), v in zip(units, viewers):
        row = {"recording": rec.name, "profile": prof.name, "session": sid, **unit_metrics(v, inp.get(sid), t0, t1)}
        if v.closed or v.errors:
            row["viewer_problem"] = v.closed or v.errors[0]
        unit_rows.append(row)
    stage_rows: dict[str, list[dict[str, Any]]] = {}
    for n, series in staged.items():
        stage_rows[n] = [{"recording": r.name, "profile": p.name,
                          **(_quality(inp[sid], series[sid]) if sid in inp and sid in series else {})}
                         for r, p, sid in units]
    node_rows = {}
    for n in nodes:
        st = final["nodes"].get(n, {})
        samples = sampler.cpu.get(n, []) if sampler else []
        node_rows[n] = {"type": plan.graph.nodes[n].type, "cpu": float(np.mean(samples)) if samples else None,
                        "cpu_samples": [round(x, 5) for x in samples], "proc_us_p50": st.get("proc_us_p50"),
                        "restarts": st.get("restarts"), "drops": st.get("drops")}
    link_rows = {}
    for lid, l in final["links"].items():
        if l["to"].split(".")[0] in (IN_REC,) or l["to"].startswith(STAGE_REC):
            continue
        samples = sampler.links.get(lid, []) if sampler else []
        link_rows[lid] = {"from": l["from"], "to": l["to"], "drops": l.get("drops"), "gaps": l.get("gaps"),
                          "latency_ms": float(np.median(samples)) if samples else None,
                          "latency_samples": [round(x, 3) for x in samples]}
    return {"graph": path, "args": dict(overrides or {}), "params": {n: dict(v) for n, v in (params or {}).items()},
            "node_params": {n: dict(s.params) for n, s in plan.graph.nodes.items() if n in nodes},
            "recordings": [r.describe() for r in recordings], "profiles": [p.describe() for p in profiles],
            "seconds": seconds, "warmup": warmup, "transport": transport, "source": plan.source,
            "encoder": plan.encoder, "sink": plan.sink, "stages": plan.stages + [VIEWERS],
            "units": unit_rows, "stage_units": stage_rows, "nodes": node_rows, "links": link_rows,
            "summary": summarize(unit_rows)}


METRICS = ("bytes_per_frame", "error", "jitter", "latency_ms", "interval_jitter_ms", "delivered")


def summarize(units: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean of each unit metric over all units, and per profile."""
    def mean(rows: list[dict[str, Any]], key: str) -> float | None:
        vals = [r[key] for r in rows if r.get(key) is not None]
        return float(np.mean(vals)) if vals else None

    out: dict[str, Any] = {k: mean(units, k) for k in METRICS}
    out["by_profile"] = {p: {k: mean([u for u in units if u["profile"] == p], k) for k in METRICS}
                         for p in dict.fromkeys(u["profile"] for u in units)}
    return out
