"""``avatar check G.yaml [--baseline F]``: measure a graph on recordings and compare it with a baseline.

The graph runs headless on recordings under network profiles (``orchestrator.evaluate``). Without
a baseline file, or with ``--update``, the measurement is written as the baseline. With one, every
metric is compared (``orchestrator.stats``): per unit (recording x profile, paired), per stage of
the path (so an error that grows is traced to the node where it starts), per node (CPU) and per
link (latency). Findings (metric, node or link, size, significance) print as a table or JSON; the
exit code is 3 when any finding is a regression, 2 for bad input, 1 when the graph did not run.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import sys
from pathlib import Path
from typing import Any

from runtime.errors import GraphError, NodeTypeError

from .evaluate import METRICS, PROFILES, VIEWERS, evaluate, parse_profiles
from .recordings import CHECK_SET, default_recordings, load_recordings
from .stats import ALPHA, RULES, paired, unpaired, verdict

EXIT_REGRESSION = 3
BASELINE_VERSION = 1


def _units(result: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(u["recording"], u["profile"]): u for u in result["units"]}


def param_changes(baseline: dict[str, Any], current: dict[str, Any]) -> list[dict[str, Any]]:
    """Node params that differ between the two measurements (node, param, old, new)."""
    out = []
    old_all, new_all = baseline.get("node_params", {}), current.get("node_params", {})
    for node in sorted(set(old_all) | set(new_all)):
        old, new = old_all.get(node, {}), new_all.get(node, {})
        for k in sorted(set(old) | set(new)):
            if k in ("port", "host", "path", "ice_addresses"):  # made headless: not the graph's own
                continue
            if old.get(k) != new.get(k):
                out.append({"node": node, "param": k, "old": old.get(k), "new": new.get(k)})
    return out


def same_data(baseline: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Why the two were not measured on the same recordings, profiles and window (empty: they were)."""
    problems = []
    old = {r["name"]: r["sha256"] for r in baseline.get("recordings", [])}
    for r in current.get("recordings", []):
        if r["name"] in old and old[r["name"]] != r["sha256"]:
            problems.append(f"recording '{r['name']}' differs from the baseline's (sha256 {old[r['name']][:12]} "
                            f"-> {r['sha256'][:12]})")
    if not set(_units(baseline)) & set(_units(current)):
        problems.append("no (recording, profile) pair in common with the baseline")
    if baseline.get("seconds") != current.get("seconds"):
        problems.append(f"the window differs ({baseline.get('seconds')} s in the baseline, {current.get('seconds')} s now)")
    return problems


def compare(baseline: dict[str, Any], current: dict[str, Any], alpha: float = ALPHA) -> list[dict[str, Any]]:
    """Every metric of ``current`` against ``baseline``: one finding each (verdict 'same' included)."""
    findings: list[dict[str, Any]] = []
    bu, cu = _units(baseline), _units(current)
    keys = sorted(set(bu) & set(cu))
    enc, sink = current["encoder"], current["sink"]
    changed = param_changes(baseline, current)

    def add(metric: str, where: str, kind: str, result: dict[str, Any], rule_name: str | None = None) -> None:
        result["verdict"] = verdict(result, RULES[rule_name or metric], alpha)
        params = [c for c in changed if c["node"] == where.split(" ")[0]]
        findings.append({"metric": metric, "where": where, "kind": kind, **result,
                         **({"params_changed": params} if params else {})})

    for m in METRICS:
        if m in ("error", "jitter"):
            continue  # by stage, below
        where = enc if m == "bytes_per_frame" else sink
        add(m, where, "node", paired([(bu[k].get(m), cu[k].get(m)) for k in keys]))
    for m in ("error", "jitter"):
        first = True
        for stage in current["stages"]:
            if stage == VIEWERS:
                pairs = [(bu[k].get(m), cu[k].get(m)) for k in keys]
                where = f"{enc} (decoded by the viewers)"
            else:
                bs = {(s["recording"], s["profile"]): s for s in baseline.get("stage_units", {}).get(stage, [])}
                cs = {(s["recording"], s["profile"]): s for s in current.get("stage_units", {}).get(stage, [])}
                pairs = [(bs[k].get(m), cs[k].get(m)) for k in keys if k in bs and k in cs]
                where = stage
            add(m, where, "stage", paired(pairs))
            if findings[-1]["verdict"] != "same":
                findings[-1]["origin"] = first  # the first stage on the path where it changed
                first = False
    for n, row in current["nodes"].items():
        old = baseline.get("nodes", {}).get(n)
        if old is not None:
            add("cpu", n, "node", unpaired(old.get("cpu_samples", []), row.get("cpu_samples", [])))
    for lid, row in current["links"].items():
        old = baseline.get("links", {}).get(lid)
        if old is not None:
            add("link_latency_ms", lid, "link", unpaired(old.get("latency_samples", []), row.get("latency_samples", [])))
    return findings


# --- output ---------------------------------------------------------------------------------------------
def _num(x: Any) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:.4g}" if isinstance(x, float) else str(x)


def findings_text(findings: list[dict[str, Any]], changed: list[dict[str, Any]], show_same: bool = False) -> str:
    lines = []
    if changed:
        lines.append("params changed since the baseline: " + ", ".join(
            f"{c['node']}.{c['param']} {c['old']!r} -> {c['new']!r}" for c in changed))
    shown = [f for f in findings if show_same or f["verdict"] != "same"]
    order = {"regression": 0, "improvement": 1, "unsure": 2, "same": 3}
    shown.sort(key=lambda f: order[f["verdict"]])
    lines.append(f"{'verdict':<12} {'metric':<19} {'where':<44} {'baseline':>9} {'current':>9} {'change':>8} "
                 f"{'p':>7} {'n':>3}  note")
    for f in shown:
        rel = f.get("change_rel")
        note = []
        if f.get("origin"):
            note.append("starts here")
        elif f.get("origin") is False:
            note.append("carried from upstream")
        if f.get("params_changed"):
            note.append("params changed: " + ", ".join(f"{c['param']} {c['old']!r}->{c['new']!r}" for c in f["params_changed"]))
        lines.append(f"{f['verdict'].upper() if f['verdict'] == 'regression' else f['verdict']:<12} {f['metric']:<19} "
                     f"{f['where'][:44]:<44} {_num(f.get('baseline')):>9} {_num(f.get('current')):>9} "
                     f"{(f'{rel * 100:+.1f}%' if rel is not None and math.isfinite(rel) else '-'):>8} "
                     f"{_num(f.get('p')):>7} {f.get('n', '-'):>3}  {'; '.join(note)}")
    if not shown:
        lines.append("(no metric changed beyond its limits)")
    return "\n".join(lines) + "\n"


def summary_text(result: dict[str, Any]) -> str:
    s = result["summary"]
    lines = [f"{result['graph']}: {len(result['recordings'])} recordings x {len(result['profiles'])} profiles, "
             f"{result['seconds']:g} s window",
             f"  {'profile':<10} " + " ".join(f"{m:>18}" for m in METRICS)]
    for p, row in s["by_profile"].items():
        lines.append(f"  {p:<10} " + " ".join(f"{_num(row[m]):>18}" for m in METRICS))
    lines.append(f"  {'all':<10} " + " ".join(f"{_num(s[m]):>18}" for m in METRICS))
    busy = sorted(((n, r["cpu"]) for n, r in result["nodes"].items() if r.get("cpu") is not None), key=lambda x: -x[1])
    lines.append("  cpu (cores): " + ", ".join(f"{n} {c:.3f}" for n, c in busy))
    return "\n".join(lines) + "\n"


# --- errors ----------------------------------------------------------------------------------------------
def problem_text(exc: Exception) -> str:
    """An error for the person at the terminal (a GraphError's problems, one per line)."""
    if isinstance(exc, GraphError):
        return "\n".join(str(p) for p in exc.problems)
    return str(exc)


# --- command line ---------------------------------------------------------------------------------------
def recordings_from(items: list[str] | None, subset: tuple[str, ...] | None) -> list:
    """The recordings named (files or folders), or the default set (``subset`` of it)."""
    if items:
        return load_recordings(list(items))
    recs = default_recordings()
    return [r for r in recs if subset is None or r.name in subset]


def add_common(sp: argparse.ArgumentParser) -> None:
    """Options ``check`` and ``tune`` share: graph args, recordings, profiles, the window."""
    sp.add_argument("graph", help="graph YAML file")
    sp.add_argument("args", nargs="*", metavar="key=value", help="graph args")
    sp.add_argument("--profiles", default=",".join(p.name for p in PROFILES),
                    help="network profiles: names (clean, lossy, slow) or NAME:loss=F:delay=MS, comma-separated "
                         "(default clean,lossy,slow: no loss; 2%% of packets lost; 80 ms each way)")
    sp.add_argument("--seconds", type=float, default=6.0, help="measured window per run (default 6)")
    sp.add_argument("--warmup", type=float, default=1.5, help="seconds before the window (default 1.5)")
    sp.add_argument("--transport", choices=("websocket", "webrtc"), default="websocket", help="the viewers' transport")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """``avatar check`` (the ``avatar.commands`` entry point)."""
    sp = subparsers.add_parser("check", help="measure a graph on recordings under network profiles and compare it "
                                             "with a baseline (exit 3 on a regression)",
                               description=__doc__.splitlines()[0])
    add_common(sp)
    sp.add_argument("--baseline", metavar="F", help="baseline JSON: compared with, or written when missing")
    sp.add_argument("--update", action="store_true", help="write the measurement to --baseline even if it exists")
    sp.add_argument("--recordings", nargs="+", metavar="PATH",
                    help=f"recording files or folders (default: {', '.join(CHECK_SET)} of the default set, "
                         "python -m orchestrator.recordings)")
    sp.add_argument("--alpha", type=float, default=ALPHA, help=f"significance level (default {ALPHA})")
    sp.add_argument("--all", action="store_true", help="list unchanged metrics too")
    sp.add_argument("--json", action="store_true", help="print the findings and the measurement as JSON")
    sp.add_argument("--json-out", metavar="FILE", help="also write them as JSON to FILE (the text for the log, the "
                                                      "JSON for a CI job's artifacts, from one run)")
    sp.set_defaults(fn=run)
    return sp


def run(a: argparse.Namespace) -> int:
    try:
        overrides = dict(kv.split("=", 1) for kv in a.args)
        profiles = parse_profiles(a.profiles)
        recordings = recordings_from(a.recordings, None if a.recordings else CHECK_SET)
    except ValueError as exc:
        print(f"avatar check: {exc}", file=sys.stderr)
        return 2
    baseline = None
    if a.baseline and Path(a.baseline).exists() and not a.update:
        try:
            baseline = json.loads(Path(a.baseline).read_text())
        except (OSError, ValueError) as exc:
            print(f"avatar check: cannot read baseline {a.baseline}: {exc}", file=sys.stderr)
            return 2
        if baseline.get("version") != BASELINE_VERSION:
            print(f"avatar check: {a.baseline} is not a baseline of this version (version {baseline.get('version')!r})",
                  file=sys.stderr)
            return 2
        # measure as the baseline was measured, so the pairs are like for like
        profiles = [p for p in profiles if p.name in {q["name"] for q in baseline["profiles"]}] or profiles
    try:
        result = evaluate(a.graph, recordings, profiles, overrides=overrides, seconds=a.seconds, warmup=a.warmup,
                          transport=a.transport)
    except (ValueError, TimeoutError, RuntimeError, GraphError, NodeTypeError) as exc:
        print(f"avatar check: {a.graph}: {problem_text(exc)}", file=sys.stderr)
        return 1 if isinstance(exc, (TimeoutError, RuntimeError)) else 2
    result.update(version=BASELINE_VERSION, made=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    if baseline is None:
        text = summary_text(result)
        if a.baseline:
            Path(a.baseline).write_text(json.dumps(result, indent=1, default=str) + "\n")
            text += f"baseline written: {a.baseline}\n"
        doc = json.dumps({"measurement": result}, indent=1, default=str) + "\n"
        _json_out(a, doc)
        sys.stdout.write(doc if a.json else text)
        return 0
    problems = same_data(baseline, result)
    if any("differs from the baseline" in p or "no (recording" in p for p in problems):
        print("avatar check: not comparable with the baseline: " + "; ".join(problems), file=sys.stderr)
        return 2
    findings = compare(baseline, result, a.alpha)
    changed = param_changes(baseline, result)
    regressions = [f for f in findings if f["verdict"] == "regression"]
    doc = json.dumps({"findings": [f for f in findings if a.all or f["verdict"] != "same"],
                      "params_changed": changed, "regressions": len(regressions), "notes": problems,
                      "measurement": result}, indent=1, default=str) + "\n"
    _json_out(a, doc)
    if a.json:
        sys.stdout.write(doc)
    else:
        sys.stdout.write(summary_text(result) + "\n" + findings_text(findings, changed, a.all))
        for p in problems:
            print(f"note: {p}")
        print(f"{len(regressions)} regression{'s' if len(regressions) != 1 else ''}"
              + (f": exit {EXIT_REGRESSION}" if regressions else ""))
    return EXIT_REGRESSION if regressions else 0


def _json_out(a: argparse.Namespace, doc: str) -> None:
    if a.json_out:
        Path(a.json_out).write_text(doc)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="avatar")
    add_parser(ap.add_subparsers(dest="command", required=True))
    a = ap.parse_args(["check", *(sys.argv[1:] if argv is None else argv)])
    return a.fn(a)


if __name__ == "__main__":
    sys.exit(main())
