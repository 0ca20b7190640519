"""``avatar tune G.yaml --recordings DIR``: search the graph's tunable params, validate, apply.

1. **Search** (Optuna): the params the graph's node types declare tunable (``Param(tune=...)``,
   ``orchestrator.tunable``), each trial one headless run on the tuning recordings under the
   network profiles (``orchestrator.evaluate``). Several objectives (default bytes/frame, error,
   jitter: a Pareto front) or one under constraints (``--constraint bytes_per_frame<=1.0x``: at
   most the current graph's). The study lives in a SQLite file, so a search stopped half-way
   goes on where it was (same ``--study``); the current graph is its first trial.
2. **Choose**: on the front, the trial with the largest summed relative gain over the current
   graph that loses on no objective by more than that metric's limit (``orchestrator.stats``).
3. **Validate** on the held-out recordings (never tuned on): candidate and current graph, each
   run ``--repeats`` times alternating, paired per (recording, profile): ``pass`` (a significant
   gain beyond its limit and beyond the current graph's own run-to-run noise, and no such loss),
   ``fail`` (a significant loss) or ``marginal`` (neither).
4. **Apply** (on pass, or marginal with ``--accept-marginal``): a tuned YAML with its provenance
   (study, trial, data hashes, metrics), or with ``--live`` a canary on the running graph
   (``orchestrator.canary``). An automatic rollback stops the tuner until a person runs
   ``avatar tune --acknowledge``.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import math
import sys
from pathlib import Path
from typing import Any

import yaml

from runtime.errors import GraphError, NodeTypeError

from .check import add_common, problem_text, recordings_from
from .evaluate import METRICS, evaluate, parse_profiles, summarize
from .recordings import Recording
from .stats import RULES, paired, verdict
from .tunable import Knob, as_params, knobs

STATE_DIR = Path("out/tune")
STOP_FILE = "STOPPED"
VALIDATED = ("bytes_per_frame", "error", "jitter", "delivered")
EXIT_FAIL, EXIT_STOPPED = 3, 4


# --- the stop after an automatic rollback --------------------------------------------------------------
def stopped(state_dir: Path) -> dict[str, Any] | None:
    """Why the tuner is stopped (an automatic rollback a person has not acknowledged), or None."""
    f = state_dir / STOP_FILE
    if not f.exists():
        return None
    try:
        return json.loads(f.read_text())
    except ValueError:
        return {"reason": f.read_text()[:500]}


def stop_tuner(state_dir: Path, reason: dict[str, Any]) -> Path:
    state_dir.mkdir(parents=True, exist_ok=True)
    f = state_dir / STOP_FILE
    f.write_text(json.dumps({"stopped": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                             **reason}, indent=1, default=str) + "\n")
    return f


# --- objectives and constraints ---------------------------------------------------------------------------
def parse_constraint(text: str) -> tuple[str, float, bool]:
    """``METRIC<=VALUE`` or ``METRIC<=Fx`` (F times the current graph's value) -> (metric, limit, relative)."""
    metric, sep, limit = text.partition("<=")
    metric, limit = metric.strip(), limit.strip()
    if not sep or metric not in METRICS:
        raise ValueError(f"constraint '{text}': write METRIC<=VALUE or METRIC<=1.05x (metrics: {', '.join(METRICS)})")
    rel = limit.endswith("x")
    try:
        return metric, float(limit[:-1] if rel else limit), rel
    except ValueError:
        raise ValueError(f"constraint '{text}': '{limit}' is not a number (or a number and x)") from None


def _direction(metric: str) -> str:
    return "minimize" if RULES[metric].lower_is_better else "maximize"


def pareto(points: list[tuple[Any, list[float]]], directions: list[str]) -> list[Any]:
    """The items of ``points`` that no other point beats on every objective."""
    sign = [1 if d == "minimize" else -1 for d in directions]

    def beats(a: list[float], b: list[float]) -> bool:
        return all(s * x <= s * y for s, x, y in zip(sign, a, b)) and any(s * x < s * y for s, x, y in zip(sign, a, b))

    return [t for t, v in points if not any(beats(w, v) for _, w in points)]


def gains(values: dict[str, float], current: dict[str, float], objectives: list[str]) -> dict[str, float]:
    """Relative gain on each objective over the current graph (positive: better)."""
    out = {}
    for m in objectives:
        base, v = current[m], values[m]
        g = (base - v) / abs(base) if base else 0.0
        out[m] = g if RULES[m].lower_is_better else -g
    return out


def choose(rows: list[dict[str, Any]], current: dict[str, float], objectives: list[str]) -> dict[str, Any] | None:
    """Among the feasible front, the trial with the largest summed gain that loses on no objective
    beyond its limit and gains beyond its limit on one; None: the current graph stays."""
    best, best_score = None, 0.0
    for r in rows:
        if not r["front"] or not r["feasible"] or r.get("current"):
            continue
        g = gains(r["values"], current, objectives)
        losses = [m for m in objectives if g[m] < -RULES[m].rel]
        wins = [m for m in objectives if g[m] > RULES[m].rel]
        score = sum(g.values())
        if not losses and wins and score > best_score:
            best, best_score = r, score
    return best


# --- the study ---------------------------------------------------------------------------------------------
class Search:
    """One Optuna study over the graph's knobs (ask/tell: each trial one evaluation)."""

    def __init__(self, a: argparse.Namespace, ks: list[Knob], tune_recs: list[Recording], profiles: list,
                 objectives: list[str], constraints: list[tuple[str, float, bool]], storage: str, study: str,
                 overrides: dict[str, str]):
        import optuna

        self.a, self.knobs, self.recs, self.profiles = a, ks, tune_recs, profiles
        self.objectives, self.constraints, self.overrides = objectives, constraints, overrides
        self.config = {"graph": a.graph, "args": overrides, "knobs": [k.key for k in ks], "objectives": objectives,
                       "constraints": [list(c) for c in constraints], "profiles": [p.describe() for p in profiles],
                       "recordings": {r.name: r.sha256 for r in tune_recs}, "seconds": a.seconds}
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        # constraints reach the sampler through each trial's set_constraint (Optuna 5)
        sampler = optuna.samplers.TPESampler(seed=a.seed, multivariate=True, n_startup_trials=min(8, max(2, a.trials // 3)))
        self.study = optuna.create_study(study_name=study, storage=storage, load_if_exists=True, sampler=sampler,
                                         directions=[_direction(m) for m in objectives])
        made = self.study.user_attrs.get("config")
        if made is None:
            self.study.set_user_attr("config", self.config)
        elif json.loads(json.dumps(made)) != json.loads(json.dumps(self.config)):
            diff = [k for k in self.config if made.get(k) != json.loads(json.dumps(self.config[k]))]
            raise ValueError(f"study '{study}' in {storage} was made with other settings ({', '.join(diff)}); "
                             f"give another --study to start a new one")

    def done(self) -> list[Any]:
        import optuna

        return [t for t in self.study.trials if t.state == optuna.trial.TrialState.COMPLETE]

    def run(self, total: int, log: Any) -> None:
        import optuna

        if not self.study.trials:  # the current graph first: every candidate is judged against it
            self.study.enqueue_trial({k.key: k.current for k in self.knobs}, user_attrs={"current": True},
                                     skip_if_exists=True)
        while len(self.done()) < total:
            trial = self.study.ask()
            values = {}
            for k in self.knobs:
                if k.is_int:
                    values[k.key] = trial.suggest_int(k.key, int(k.lo), int(k.hi), log=k.log)
                else:
                    values[k.key] = trial.suggest_float(k.key, k.lo, k.hi, log=k.log)
            try:
                result = evaluate(self.a.graph, self.recs, self.profiles, overrides=self.overrides,
                                  params=as_params(values), seconds=self.a.seconds, warmup=self.a.warmup,
                                  stages=False, transport=self.a.transport)
            except (ValueError, TimeoutError, RuntimeError) as exc:
                trial.set_user_attr("error", str(exc))
                self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
                log(f"trial {trial.number}: failed: {exc}")
                continue
            s = result["summary"]
            trial.set_user_attr("summary", s)
            objs = [s[m] for m in self.objectives]
            if any(v is None for v in objs):
                self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
                log(f"trial {trial.number}: no measurement of {', '.join(m for m, v in zip(self.objectives, objs) if v is None)}")
                continue
            if self.constraints:
                values_c = self._constraint_values(s)
                trial.set_user_attr("constraint", values_c)
                for (metric, limit, rel), v in zip(self.constraints, values_c):
                    trial.set_constraint(f"{metric}<={limit:g}{'x' if rel else ''}", v)
            self.study.tell(trial, objs)
            log(f"trial {trial.number}: " + ", ".join(f"{k}={_fmt(v)}" for k, v in values.items()) + " -> "
                + ", ".join(f"{m} {_fmt(s[m])}" for m in self.objectives))

    def current_summary(self) -> dict[str, Any]:
        for t in self.done():
            if t.user_attrs.get("current"):
                return t.user_attrs["summary"]
        raise ValueError("the study has no completed trial of the current graph")

    def _constraint_values(self, s: dict[str, Any]) -> list[float]:
        out = []
        try:
            cur = self.current_summary()
        except ValueError:
            cur = s  # this is the current graph's own trial
        for metric, limit, rel in self.constraints:
            bound = limit * cur[metric] if rel else limit
            out.append(float(s[metric] - bound) if s[metric] is not None else 1e9)
        return out

    def rows(self) -> list[dict[str, Any]]:
        """Every completed trial: its params, objective values, feasibility and whether it is on the front."""
        rows = []
        for t in self.done():
            rows.append({"trial": t.number, "params": dict(t.params), "values": {m: t.user_attrs["summary"][m] for m in METRICS},
                         "feasible": all(c <= 0 for c in t.user_attrs.get("constraint", [0.0])),
                         "current": bool(t.user_attrs.get("current"))})
        front = pareto([(r["trial"], [r["values"][m] for m in self.objectives]) for r in rows if r["feasible"]],
                       [_direction(m) for m in self.objectives])
        for r in rows:
            r["front"] = r["trial"] in front
        return rows


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


# --- validation ---------------------------------------------------------------------------------------------
def validate(a: argparse.Namespace, held: list[Recording], profiles: list, overrides: dict[str, str],
             candidate: dict[str, Any], objectives: list[str],
             constraints: list[tuple[str, float, bool]] = ()) -> dict[str, Any]:
    """Candidate against the current graph on the held-out recordings, paired per (recording, profile).

    ``--repeats`` runs of each, alternating (current, candidate, candidate, current, ...), each
    unit's values averaged over them: what the machine was doing in one run falls on both sides.
    An objective or another quality metric is judged as ``check`` judges (its limit, significance),
    and also against the run-to-run noise (how far the current graph's own runs differ: a change
    within it is ``unsure``); a constrained metric only by its constraint (the person's bound)."""
    reps = max(1, int(getattr(a, "repeats", 1)))
    runs: dict[str, list[dict[str, Any]]] = {"current": [], "candidate": []}
    for i in range(reps):
        for label in (("current", "candidate") if i % 2 == 0 else ("candidate", "current")):
            params = as_params(candidate) if label == "candidate" else {}
            runs[label].append(evaluate(a.graph, held, profiles, overrides=overrides, params=params, seconds=a.seconds,
                                        warmup=a.warmup, stages=False, transport=a.transport))
    cur, new = _mean_units(runs["current"]), _mean_units(runs["candidate"])
    keys = sorted(set(cur) & set(new))
    cur_summary, new_summary = summarize(list(cur.values())), summarize(list(new.values()))
    metrics = {}
    bounds = {m: (limit * cur_summary[m] if rel else limit) for m, limit, rel in constraints
              if m not in objectives and cur_summary.get(m) is not None}
    for m in dict.fromkeys([*objectives, *VALIDATED, *bounds]):
        r = paired([(cur[k].get(m), new[k].get(m)) for k in keys])
        r["verdict"] = verdict(r, RULES[m], a.alpha)
        r["run_noise"] = _run_noise(runs["current"], m)
        if r["verdict"] in ("improvement", "regression") and r["run_noise"] is not None \
                and abs(r.get("change_rel") or 0.0) <= r["run_noise"]:
            r["verdict"] = "unsure"
        if m in bounds and r.get("current") is not None:
            r["bound"] = bounds[m]
            ok = r["current"] <= bounds[m] if RULES[m].lower_is_better else r["current"] >= bounds[m]
            r["verdict"] = "within constraint" if ok else "regression"
        metrics[m] = r
    if any(r["verdict"] == "regression" for r in metrics.values()):
        overall = "fail"
    elif any(metrics[m]["verdict"] == "improvement" for m in objectives) and not any(
            r["verdict"] == "unsure" and _worse(r, m) for m, r in metrics.items()):
        overall = "pass"
    else:
        overall = "marginal"
    return {"verdict": overall, "metrics": metrics, "recordings": [r.describe() for r in held], "repeats": reps,
            "units": len(keys), "current": cur_summary, "candidate": new_summary}


def _mean_units(runs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """Per (recording, profile), each metric's mean over the runs (None where no run measured it)."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for run in runs:
        for u in run["units"]:
            out.setdefault((u["recording"], u["profile"]), {}).setdefault("_rows", []).append(u)
    for key, row in out.items():
        rows = row.pop("_rows")
        row.update(recording=key[0], profile=key[1])
        for m in METRICS:
            vals = [u[m] for u in rows if u.get(m) is not None]
            row[m] = float(sum(vals) / len(vals)) if vals else None
    return out


def _run_noise(runs: list[dict[str, Any]], m: str) -> float | None:
    """How far the same graph's runs differ on ``m``: the largest relative gap between two runs' means."""
    means = [r["summary"].get(m) for r in runs if r["summary"].get(m) is not None]
    if len(means) < 2 or not max(abs(x) for x in means):
        return None
    return float((max(means) - min(means)) / (sum(abs(x) for x in means) / len(means)))


def _worse(r: dict[str, Any], m: str) -> bool:
    change = r.get("change") or 0.0
    return change > 0 if RULES[m].lower_is_better else change < 0


# --- applying ---------------------------------------------------------------------------------------------
def tuned_yaml(path: str, overrides: dict[str, str], params: dict[str, Any], provenance: dict[str, Any]) -> str:
    """The graph with the candidate's params (an arg's default where the YAML takes the param from an
    arg), the command line's args baked in, and its provenance as a comment header."""
    from runtime.params import parse_value

    doc = yaml.safe_load(Path(path).read_text())
    args = doc.setdefault("args", {}) if overrides or doc.get("args") else {}
    for k, v in overrides.items():
        args[k] = parse_value(v)
    for key, value in params.items():
        node, _, param = key.partition(".")
        spec = doc["nodes"][node].setdefault("params", {})
        held = spec.get(param)
        if isinstance(held, str) and held.startswith("${") and held.endswith("}") and held[2:-1] in args:
            args[held[2:-1]] = value
        else:
            spec[param] = value
    doc["description"] = (f"{doc.get('description', '') + ' ' if doc.get('description') else ''}"
                          f"Tuned by avatar tune (study {provenance['study']}, trial {provenance['trial']}).")
    head = ["# Tuned by `avatar tune` from " + path + ". Provenance:"]
    head += ["#   " + line for line in json.dumps(provenance, indent=1, default=str).splitlines()]
    return "\n".join(head) + "\n" + yaml.safe_dump(doc, sort_keys=False, default_flow_style=None, width=110)


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


# --- command line ------------------------------------------------------------------------------------------
def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """``avatar tune`` (the ``avatar.commands`` entry point)."""
    sp = subparsers.add_parser("tune", help="search a graph's tunable params on recordings (Optuna), validate the "
                                            "best on held-out ones, write a tuned YAML or run a live canary",
                               description=__doc__.splitlines()[0])
    add_common(sp)
    sp.add_argument("--recordings", nargs="+", metavar="PATH",
                    help="recording files or folders (default: the default set, python -m orchestrator.recordings)")
    sp.add_argument("--holdout", help="recordings kept for validation, comma-separated names (default: every "
                                      "second one in name order, starting with the second)")
    sp.add_argument("--objective", default="bytes_per_frame,error,jitter",
                    help=f"metrics to optimize, comma-separated (of {', '.join(METRICS)}; default "
                         "bytes_per_frame,error,jitter: a Pareto front)")
    sp.add_argument("--constraint", action="append", default=[], metavar="M<=V",
                    help="a limit a candidate must keep: METRIC<=VALUE, or METRIC<=1.0x (the current graph's)")
    sp.add_argument("--params", help="only these: NODE or NODE.PARAM, comma-separated (default: every tunable one)")
    sp.add_argument("--trials", type=int, default=24, help="completed trials the study should have (default 24)")
    sp.add_argument("--study", help="study name (default: the graph's file name and a hash of the settings)")
    sp.add_argument("--state-dir", default=str(STATE_DIR), help=f"studies and the tuner's stop (default {STATE_DIR})")
    sp.add_argument("--seed", type=int, default=1, help="sampler seed (default 1)")
    sp.add_argument("--alpha", type=float, default=0.05, help="significance level of the validation (default 0.05)")
    sp.add_argument("--repeats", type=int, default=2, help="validation runs of each side, alternating (default 2)")
    sp.add_argument("--accept-marginal", action="store_true", help="apply a candidate whose validation is marginal")
    sp.add_argument("-o", "--out", help="tuned YAML to write (default STATE_DIR/<graph>.tuned.yaml)")
    sp.add_argument("--json", action="store_true", help="print the report as JSON")
    live = sp.add_argument_group("live canary (orchestrator.canary)")
    live.add_argument("--live", action="store_true", help="apply the candidate to the running graph as a canary "
                                                           "instead of writing a YAML")
    live.add_argument("-g", "--graph-name", help="the running graph's name (default: the YAML's name)")
    live.add_argument("--control", help="its control endpoint (default ipc://@avatar-ctl/<graph name>)")
    live.add_argument("--canary-node", help="apply only this node's params (default: every node the candidate changes)")
    live.add_argument("--canary-session", metavar="S",
                      help="try the candidate on session S alone first (params its node types declare per-session), "
                           "then promote it to the whole node if S's measurements hold")
    live.add_argument("--window", type=float, default=15.0, help="seconds watched before and after (default 15)")
    live.add_argument("--acknowledge", action="store_true",
                      help="a person has looked at an automatic rollback: let the tuner run again, and exit")
    sp.set_defaults(fn=run)
    return sp


def run(a: argparse.Namespace) -> int:
    state = Path(a.state_dir)
    if a.acknowledge:
        why = stopped(state)
        if why is None:
            print("avatar tune: the tuner is not stopped")
        else:
            (state / STOP_FILE).unlink()
            print(f"avatar tune: acknowledged the rollback of {why.get('stopped')} ({why.get('reason', '')}); "
                  "the tuner may run again")
        return 0
    why = stopped(state)
    if why is not None:
        print(f"avatar tune: stopped since {why.get('stopped')} after an automatic rollback: {why.get('reason')}\n"
              f"  {state / STOP_FILE} holds the details; a person acknowledges it with: avatar tune {a.graph} --acknowledge",
              file=sys.stderr)
        return EXIT_STOPPED
    log = (lambda text: print(text, file=sys.stderr, flush=True))
    try:
        overrides = dict(kv.split("=", 1) for kv in a.args)
        profiles = parse_profiles(a.profiles)
        recs = recordings_from(a.recordings, None)
        held_names = a.holdout.split(",") if a.holdout else [r.name for r in recs[1::2]]
        unknown = [n for n in held_names if n not in {r.name for r in recs}]
        if unknown:
            raise ValueError(f"--holdout: no recording {', '.join(unknown)} (recordings: {', '.join(r.name for r in recs)})")
        held = [r for r in recs if r.name in held_names]
        tune_recs = [r for r in recs if r.name not in held_names]
        if not held or not tune_recs:
            raise ValueError(f"need recordings both to tune on and to validate on (tune: {[r.name for r in tune_recs]}, "
                             f"held out: {[r.name for r in held]})")
        objectives = [o.strip() for o in a.objective.split(",") if o.strip()]
        bad = [o for o in objectives if o not in METRICS]
        if bad or not objectives:
            raise ValueError(f"--objective: unknown metric {', '.join(bad)} (metrics: {', '.join(METRICS)})")
        constraints = [parse_constraint(c) for c in a.constraint]
        ks = knobs(a.graph, overrides, [s.strip() for s in a.params.split(",")] if a.params else None)
        if not ks:
            raise ValueError(f"{a.graph}: no node declares a tunable param (Param(..., tune=...))")
        state.mkdir(parents=True, exist_ok=True)
        stem = Path(a.graph).stem
        study = a.study or f"{stem}-{_hash([[k.key for k in ks], objectives, a.constraint, a.profiles, a.seconds, [r.sha256 for r in tune_recs]])}"
        storage = f"sqlite:///{state / (stem + '.db')}"
        search = Search(a, ks, tune_recs, profiles, objectives, constraints, storage, study, overrides)
    except (ValueError, GraphError, NodeTypeError) as exc:
        print(f"avatar tune: {problem_text(exc)}", file=sys.stderr)
        return 2
    log(f"tuning {', '.join(k.describe() for k in ks)}\n  on {', '.join(r.name for r in tune_recs)}; held out: "
        f"{', '.join(r.name for r in held)}; study {study} in {storage} ({len(search.done())} trials done)")
    search.run(a.trials, log)
    rows = search.rows()
    current = search.current_summary()
    pick = choose(rows, current, objectives)
    report: dict[str, Any] = {"study": study, "storage": storage, "objectives": objectives, "constraints": a.constraint,
                              "knobs": [k.describe() for k in ks], "tuned_on": [r.describe() for r in tune_recs],
                              "held_out": [r.describe() for r in held], "trials": rows, "current": current,
                              "candidate": pick}
    out_text = [front_text(rows, objectives)]
    code = 0
    if pick is None:
        out_text.append("no trial on the front beats the current graph beyond the limits without a loss: "
                        "the current params stay (the front above is the evidence)")
    else:
        out_text.append(f"candidate: trial {pick['trial']}: " + ", ".join(f"{k}={_fmt(v)}" for k, v in pick["params"].items()))
        val = validate(a, held, profiles, overrides, pick["params"], objectives, constraints)
        report["validation"] = val
        out_text.append(validation_text(val))
        apply = val["verdict"] == "pass" or (val["verdict"] == "marginal" and a.accept_marginal)
        if val["verdict"] == "fail":
            code = EXIT_FAIL
        if apply and a.live:
            from .canary import run_canary

            result = run_canary(a, pick["params"], state, report)
            report["canary"] = result
            out_text.append(result["text"])
            code = EXIT_STOPPED if result["outcome"] == "rolled back" else code
        elif apply:
            out = Path(a.out or state / f"{stem}.tuned.yaml")
            provenance = {"study": study, "storage": storage, "trial": pick["trial"], "params": pick["params"],
                          "objectives": objectives, "constraints": a.constraint,
                          "tuned_on": {r.name: r.sha256 for r in tune_recs},
                          "validated_on": {r.name: r.sha256 for r in held}, "profiles": a.profiles,
                          "seconds": a.seconds, "verdict": val["verdict"],
                          "validation": {m: {"current_graph": r.get("baseline"), "tuned": r.get("current"),
                                             "change_rel": r.get("change_rel"), "p": r.get("p"),
                                             "run_noise": r.get("run_noise"), "verdict": r["verdict"]}
                                         for m, r in val["metrics"].items()},
                          "repeats": val["repeats"],
                          "made": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(tuned_yaml(a.graph, overrides, pick["params"], provenance))
            report["tuned_yaml"] = str(out)
            out_text.append(f"wrote {out}")
        else:
            out_text.append(f"not applied: the validation says {val['verdict']}")
    if a.json:
        print(json.dumps(report, indent=1, default=str))
    else:
        print("\n".join(out_text))
    return code


def front_text(rows: list[dict[str, Any]], objectives: list[str]) -> str:
    cols = list(dict.fromkeys([*objectives, "bytes_per_frame", "error", "jitter"]))
    keys = list(rows[0]["params"]) if rows else []
    lines = ["Pareto front (current graph marked *), and the current graph:",
             f"  {'trial':>5} " + " ".join(f"{k.split('.')[-1][:12]:>12}" for k in keys) + " | "
             + " ".join(f"{c:>15}" for c in cols)]
    for r in sorted((r for r in rows if r["front"] or r["current"]), key=lambda r: r["values"][objectives[0]]):
        lines.append(f"  {str(r['trial']) + ('*' if r['current'] else ''):>5} "
                     + " ".join(f"{_fmt(r['params'].get(k)):>12}" for k in keys) + " | "
                     + " ".join(f"{_fmt(r['values'][c]):>15}" for c in cols)
                     + ("" if r["feasible"] else "  (breaks a constraint)"))
    return "\n".join(lines)


def validation_text(val: dict[str, Any]) -> str:
    lines = [f"validation on {', '.join(r['name'] for r in val['recordings'])} ({val['units']} pairs, "
             f"{val['repeats']} run{'s' if val['repeats'] != 1 else ''} each): {val['verdict'].upper()}",
             f"  {'metric':<16} {'current':>10} {'candidate':>10} {'change':>8} {'p':>8} {'d_z':>6} {'run noise':>9}  verdict"]
    for m, r in val["metrics"].items():
        rel, noise = r.get("change_rel"), r.get("run_noise")
        lines.append(f"  {m:<16} {_fmt(r.get('baseline')):>10} {_fmt(r.get('current')):>10} "
                     f"{(f'{rel * 100:+.1f}%' if rel is not None and math.isfinite(rel) else '-'):>8} "
                     f"{_fmt(r.get('p')):>8} {_fmt(r.get('effect')):>6} "
                     f"{(f'{noise * 100:.1f}%' if noise is not None else '-'):>9}  {r['verdict']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="avatar")
    add_parser(ap.add_subparsers(dest="command", required=True))
    a = ap.parse_args(["tune", *(sys.argv[1:] if argv is None else argv)])
    return a.fn(a)


if __name__ == "__main__":
    sys.exit(main())
