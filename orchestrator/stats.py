"""Is a change real, and is it big enough to matter? Paired and unpaired tests with effect-size limits.

A metric moves by chance from run to run (timing, the machine's load), so a finding needs both:
a size beyond the metric's limit (``Rule``: relative and absolute, both must be passed: what is
worth a person's attention) and a p-value below ``alpha`` (SciPy: the Wilcoxon signed-rank test
over the units paired per recording and profile; Mann-Whitney U over the per-second samples of a
node's CPU or a link's latency, which have no pairs).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

ALPHA = 0.05


@dataclass(frozen=True)
class Rule:
    """How a metric is judged: which way is better, and the smallest change that matters."""

    lower_is_better: bool = True
    rel: float = 0.05  # relative to the baseline's value
    abs: float = 0.0  # in the metric's unit


RULES = {
    "bytes_per_frame": Rule(True, 0.03, 0.2),
    "error": Rule(True, 0.08, 0.0005),
    "error_at_lag": Rule(True, 0.08, 0.0005),
    "jitter": Rule(True, 0.08, 0.0002),
    "latency_ms": Rule(True, 0.30, 5.0),
    "interval_jitter_ms": Rule(True, 0.50, 3.0),
    "delivered": Rule(False, 0.02, 0.01),
    "cpu": Rule(True, 0.50, 0.03),
    "link_latency_ms": Rule(True, 0.50, 3.0),
}


def _clean(pairs: Sequence[tuple[Any, Any]]) -> tuple[np.ndarray, np.ndarray]:
    ok = [(a, b) for a, b in pairs if a is not None and b is not None and math.isfinite(a) and math.isfinite(b)]
    return np.array([a for a, _ in ok], np.float64), np.array([b for _, b in ok], np.float64)


def paired(pairs: Sequence[tuple[Any, Any]]) -> dict[str, Any]:
    """(baseline, current) per unit: means, the mean change, Wilcoxon's p and Cohen's d_z."""
    a, b = _clean(pairs)
    out: dict[str, Any] = {"n": int(len(a)), "test": "wilcoxon signed-rank, paired per unit"}
    if len(a) == 0:
        return {**out, "baseline": None, "current": None, "p": None, "effect": None}
    d = b - a
    out.update(baseline=float(a.mean()), current=float(b.mean()))
    if len(a) < 2 or np.all(d == 0):
        return {**out, "p": 1.0 if np.all(d == 0) else None, "effect": 0.0 if np.all(d == 0) else None}
    from scipy import stats

    p = float(stats.wilcoxon(a, b, zero_method="zsplit").pvalue)
    sd = float(d.std(ddof=1))
    out.update(p=p, effect=float(d.mean() / sd) if sd > 0 else math.copysign(math.inf, float(d.mean())))
    return out


def unpaired(base: Sequence[float], cur: Sequence[float]) -> dict[str, Any]:
    """Samples of two runs: means, Mann-Whitney U's p and the rank-biserial correlation."""
    a, b = np.array(list(base), np.float64), np.array(list(cur), np.float64)
    out: dict[str, Any] = {"n": int(min(len(a), len(b))), "test": "mann-whitney u, per-second samples"}
    if len(a) == 0 or len(b) == 0:
        return {**out, "baseline": float(a.mean()) if len(a) else None,
                "current": float(b.mean()) if len(b) else None, "p": None, "effect": None}
    out.update(baseline=float(a.mean()), current=float(b.mean()))
    if len(a) < 2 or len(b) < 2:
        return {**out, "p": None, "effect": None}
    from scipy import stats

    res = stats.mannwhitneyu(b, a, alternative="two-sided")
    out.update(p=float(res.pvalue), effect=float(2 * res.statistic / (len(a) * len(b)) - 1))
    return out


def verdict(result: dict[str, Any], rule: Rule, alpha: float = ALPHA) -> str:
    """``regression`` / ``improvement`` (big enough and significant), ``unsure`` (big enough, not
    significant) or ``same``."""
    base, cur, p = result.get("baseline"), result.get("current"), result.get("p")
    if base is None or cur is None:
        return "same"
    change = cur - base
    result["change"] = change
    result["change_rel"] = change / abs(base) if base else (math.inf if change else 0.0)
    if abs(change) <= rule.abs or abs(change) <= rule.rel * abs(base):
        return "same"
    if p is None or p >= alpha:
        return "unsure"
    worse = change > 0 if rule.lower_is_better else change < 0
    return "regression" if worse else "improvement"
