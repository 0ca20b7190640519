"""A live canary: candidate params on one node of a running graph, watched, kept or rolled back.

Through the graph's control channel (``runtime.ControlClient``, as ``avatar set`` does), the
canary watches what a running graph can measure about itself for a window (``Watch``: per second,
each compressor's bytes per packet, each blender's smoothing jitter (alone and over the input's
noise) and lag, each link's latency, each node's CPU, restarts and ERROR messages), sets the
candidate's params (pinned, as a person's are), lets a second pass (the change's own transient,
such as the keyframe a precision change sends), watches the same window again and compares the
two on the changed nodes and the links out of them (``orchestrator.stats``: Mann-Whitney over the
per-second samples, each metric's limit). A regression, a restart or an ERROR rolls the params
back at once, gives back the pins it made, and stops the tuner (``tune.stop_tuner``) until a
person acknowledges it; otherwise the params are kept, pinned.

On one session (``session_canary``, ``avatar tune --live --canary-session S``): the candidate runs
on that session's frames alone (per-session params, ``Param.per_session``), so a bad candidate
touches one avatar, not all. The session first gets the node's own values as its own, so the
node measures it apart (the blender's ``smoothing_by_session``) for the first window; then the
candidate's; the same judgement on that session's measurements. Rolled back, the session goes
back to the node's values; passed, the candidate is promoted to the whole node (pinned) and the
session's own values are dropped: Argo Rollouts' canary step, then promotion.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from runtime.control import ControlClient, control_endpoint
from runtime.errors import ControlError

from .evaluate import cpu_seconds
from .stats import RULES, Rule, unpaired, verdict
from .tunable import as_params

LIVE_RULES = {"bytes_per_packet": RULES["bytes_per_frame"], "smoothing_jitter": RULES["jitter"],
              "smoothing_jitter_ratio": RULES["jitter"],
              "smoothing_lag_ms": Rule(True, 0.30, 5.0), "link_latency_ms": RULES["link_latency_ms"],
              "cpu": RULES["cpu"]}


class Watch:
    """Per-second samples of a running graph's own measurements, through its control channel.
    ``session``: also that session's own measurements, where ``NODE[SESSION]``."""

    def __init__(self, client: ControlClient, session: str | None = None):
        self.client = client
        self.session = session
        self.last: dict[str, Any] | None = None
        self.cpu_last: dict[str, tuple[float, float]] = {}

    def sample(self) -> dict[tuple[str, str], float]:
        """One look: (metric, node or link) -> value over the second since the last look."""
        st = self.client.request("stats")
        now = time.monotonic()
        out: dict[tuple[str, str], float] = {}
        for n, row in st["nodes"].items():
            node = row.get("node") or {}
            prev = ((self.last or {}).get("nodes", {}).get(n) or {}).get("node") or {}
            if row.get("type") == "compressor" and "packets" in node and prev.get("packets") is not None:
                dp, db = node["packets"] - prev["packets"], node["bytes"] - prev["bytes"]
                if dp > 0:
                    out[("bytes_per_packet", n)] = db / dp
            out.update(_smoothing(node.get("smoothing"), n))
            if self.session is not None:
                out.update(_smoothing((node.get("smoothing_by_session") or {}).get(self.session), f"{n}[{self.session}]"))
            c = cpu_seconds(row.get("pid"))
            was = self.cpu_last.get(n)
            if was is not None and c >= was[0] and now > was[1]:
                out[("cpu", n)] = (c - was[0]) / (now - was[1])
            self.cpu_last[n] = (c, now)
        for lid, l in st["links"].items():
            p50 = (l.get("latency") or {}).get("p50_us")
            if p50 is not None:
                out[("link_latency_ms", lid)] = p50 / 1000.0
        self.last = st
        return out

    def window(self, seconds: float, settle: float = 0.0) -> tuple[dict[tuple[str, str], list[float]], dict[str, int]]:
        """Samples over ``seconds`` after ``settle`` seconds not judged, and each node's restarts at its end."""
        series: dict[tuple[str, str], list[float]] = {}
        if settle > 0:
            self.sample()
            time.sleep(settle)  # the change's own transient (a precision change sends a keyframe) is not its effect
        end = time.monotonic() + seconds
        self.sample()  # the first look only sets the counters
        while time.monotonic() < end:
            time.sleep(min(1.0, max(0.0, end - time.monotonic())))
            for key, v in self.sample().items():
                series.setdefault(key, []).append(v)
        restarts = {n: int(r.get("restarts") or 0) for n, r in (self.last or {}).get("nodes", {}).items()}
        return series, restarts


def _smoothing(report: dict[str, Any] | None, where: str) -> dict[tuple[str, str], float]:
    """A blender's smoothing report as samples. ``smoothing_jitter_ratio``, the output's jitter over
    the input's noise, is what the smoother's params do whatever the face does that second (a
    noisier stretch of the take raises the jitter, not the ratio)."""
    out: dict[tuple[str, str], float] = {}
    if not report:
        return out
    if report.get("jitter") is not None:
        out[("smoothing_jitter", where)] = float(report["jitter"])
        if report.get("noise"):
            out[("smoothing_jitter_ratio", where)] = float(report["jitter"]) / float(report["noise"])
    if report.get("lag_ms") is not None:
        out[("smoothing_lag_ms", where)] = float(report["lag_ms"])
    return out


def judge(before: dict[tuple[str, str], list[float]], after: dict[tuple[str, str], list[float]],
          alpha: float = 0.05) -> list[dict[str, Any]]:
    """Each metric seen in both windows: after against before."""
    out = []
    for key in sorted(set(before) & set(after)):
        r = unpaired(before[key], after[key])
        r["verdict"] = verdict(r, LIVE_RULES[key[0]], alpha)
        out.append({"metric": key[0], "where": key[1], **r})
    return out


def canary(client: ControlClient, params: dict[str, dict[str, Any]], window: float, alpha: float = 0.05,
           settle: float = 1.0) -> dict[str, Any]:
    """Apply ``params`` (node -> {param: value}) for a window; keep them, or roll them back (module doc)."""
    st = client.request("stats")
    pinned_before = {n: set(p) for n, p in (st.get("pins") or {}).items()}
    old = {n: {k: st["nodes"][n]["params"][k] for k in ps} for n, ps in params.items()}
    bus_at = len(client.request("bus"))
    watch = Watch(client)
    before, restarts0 = watch.window(window)
    applied: list[str] = []
    try:
        for n, ps in params.items():
            client.request("params", node=n, params=ps)
            applied.append(n)
    except ControlError as exc:
        _restore(client, {n: old[n] for n in applied}, pinned_before)
        return {"outcome": "refused", "reason": str(exc), "old": old, "new": params, "findings": []}
    after, restarts1 = watch.window(window, settle)
    # what the change can touch: the changed nodes' own measurements, and the links out of them
    mine = lambda where: where in params or where.split(".")[0] in params  # noqa: E731
    findings = judge({k: v for k, v in before.items() if mine(k[1])}, {k: v for k, v in after.items() if mine(k[1])}, alpha)
    reasons = _problems(client, findings, bus_at, restarts0, restarts1)
    if reasons:
        _restore(client, old, pinned_before)
        return {"outcome": "rolled back", "reason": "; ".join(reasons), "old": old, "new": params, "findings": findings}
    return {"outcome": "kept", "reason": "no metric worse beyond its limit, no restart, no error", "old": old,
            "new": params, "findings": findings}


def _problems(client: ControlClient, findings: list[dict[str, Any]], bus_at: int, restarts0: dict[str, int],
              restarts1: dict[str, int]) -> list[str]:
    """Why to roll back: each regression, ERROR and restart since the change."""
    bad = [f for f in findings if f["verdict"] == "regression"]
    events = [m for m in client.request("bus", since=bus_at) if m.get("type") in ("ERROR", "NODE_RESTARTED")]
    restarted = [n for n in restarts1 if restarts1[n] > restarts0.get(n, 0)]
    reasons = [f"{f['metric']} at {f['where']}: {f['baseline']:.4g} -> {f['current']:.4g} "
               f"({f['change_rel'] * 100:+.0f}%, p={f['p']:.3g})" for f in bad]
    reasons += [f"{m.get('type')} from {m.get('node')}: {m.get('text') or m.get('error') or ''}".strip() for m in events[:3]]
    reasons += [f"node {n} restarted" for n in restarted if not any(m.get("node") == n for m in events)]
    return reasons


def session_canary(client: ControlClient, session: str, params: dict[str, dict[str, Any]], window: float,
                   alpha: float = 0.05, settle: float = 1.5, promote: bool = True) -> dict[str, Any]:
    """``params`` (node -> {param: value}, per-session params only) on one session for a window;
    promoted to the nodes, or rolled back to the nodes' values (module doc)."""
    st = client.request("stats")
    pinned_before = {n: set(p) for n, p in (st.get("pins") or {}).items()}
    old = {n: {k: st["nodes"][n]["params"][k] for k in ps} for n, ps in params.items()}
    had = {n: dict((st["nodes"][n]["params"].get("session_params") or {}).get(session) or {}) for n in params}
    applied: list[str] = []

    def back() -> None:  # the session runs with what it ran with before
        for n in applied:
            client.request("params", node=n, session=session, params={k: had[n].get(k) for k in params[n]})
        _unpin(client, {n: ["session_params"] for n in applied}, pinned_before)

    try:  # the session measured apart, with the values it runs with now
        for n, ps in params.items():
            client.request("params", node=n, session=session, params={k: had[n].get(k, old[n][k]) for k in ps})
            applied.append(n)
    except ControlError as exc:
        back()
        return {"outcome": "refused", "reason": str(exc), "session": session, "old": old, "new": params, "findings": []}
    bus_at = len(client.request("bus"))
    watch = Watch(client, session)
    before, restarts0 = watch.window(window, settle)
    for n, ps in params.items():
        client.request("params", node=n, session=session, params=ps)
    after, restarts1 = watch.window(window, settle)
    tag = f"[{session}]"
    findings = judge({k: v for k, v in before.items() if k[1].endswith(tag)},
                     {k: v for k, v in after.items() if k[1].endswith(tag)}, alpha)
    reasons = _problems(client, findings, bus_at, restarts0, restarts1)
    if not findings and not reasons:
        reasons = [f"no measurement of session '{session}' in both windows (is it running? is the face still or "
                   "moving enough to measure?)"]
    if reasons:
        back()
        return {"outcome": "rolled back", "reason": "; ".join(reasons), "session": session, "old": old, "new": params,
                "findings": findings}
    if promote:
        for n, ps in params.items():
            client.request("params", node=n, params=ps)  # pinned, as a person's change
        back()
    return {"outcome": "promoted" if promote else "kept",
            "reason": f"no measurement of session '{session}' worse beyond its limit, no restart, no error",
            "session": session, "old": old, "new": params, "findings": findings}


def _unpin(client: ControlClient, names: dict[str, list[str]], pinned_before: dict[str, set[str]]) -> None:
    for n, ps in names.items():
        mine = [k for k in ps if k not in pinned_before.get(n, set())]
        if mine:
            client.request("unpin", node=n, params=mine)


def _restore(client: ControlClient, old: dict[str, dict[str, Any]], pinned_before: dict[str, set[str]]) -> None:
    """Put the old values back; unpin what only the canary had pinned."""
    for n, ps in old.items():
        client.request("params", node=n, params=ps)
    _unpin(client, {n: list(ps) for n, ps in old.items()}, pinned_before)


def per_session_only(params: dict[str, dict[str, Any]], types: dict[str, str]) -> list[str]:
    """The params (``node.param``) that are not per-session in their node's type."""
    from runtime.registry import get_node_type

    out = []
    for n, ps in params.items():
        declared = get_node_type(types[n]).params if n in types else {}
        out += [f"{n}.{k}" for k in ps if not (k in declared and declared[k].per_session)]
    return out


def run_canary(a: argparse.Namespace, candidate: dict[str, Any], state_dir: Path, report: dict[str, Any]) -> dict[str, Any]:
    """The ``--live`` step of ``avatar tune``: the canary, and the tuner's stop after a rollback."""
    from runtime.graph import load_graph

    from .tune import stop_tuner

    name = a.graph_name or load_graph(a.graph, dict(kv.split("=", 1) for kv in a.args)).name
    client = ControlClient(a.control or control_endpoint(name))
    params = as_params(candidate)
    if a.canary_node:
        if a.canary_node not in params:
            return {"outcome": "refused", "reason": f"the candidate changes nothing on node '{a.canary_node}' "
                                                    f"(it changes {', '.join(params)})", "text": ""}
        params = {a.canary_node: params[a.canary_node]}
    session = getattr(a, "canary_session", None)
    if session is not None:
        types = {n: row["type"] for n, row in client.request("stats")["nodes"].items()}
        whole = per_session_only(params, types)
        if whole:
            why = (f"{', '.join(whole)} cannot be set per session: a canary on session '{session}' cannot try them "
                   "(run it on a node: --canary-node, or leave --canary-session out)")
            return {"outcome": "refused", "reason": why, "text": f"canary on {name}: REFUSED ({why})"}
        result = session_canary(client, session, params, a.window, a.alpha)
    else:
        result = canary(client, params, a.window, a.alpha)
    where = f"{name}, session '{session}'" if session is not None else name
    lines = [f"canary on {where}: {', '.join(f'{n}.{k}={v!r}' for n, ps in params.items() for k, v in ps.items())}: "
             f"{result['outcome'].upper()} ({result['reason']})"]
    for f in result["findings"]:
        if f["verdict"] != "same":
            lines.append(f"  {f['verdict']:<12} {f['metric']:<18} {f['where']:<40} {f['baseline']:.4g} -> {f['current']:.4g}")
    if result["outcome"] == "rolled back":
        stop = stop_tuner(state_dir, {"reason": f"canary on {where} rolled back: {result['reason']}", "graph": a.graph,
                                      "params": params, "old": result["old"], "study": report.get("study")})
        lines.append(f"the tuner is stopped until a person acknowledges it ({stop}): avatar tune {a.graph} --acknowledge")
    result["text"] = "\n".join(lines)
    return result
