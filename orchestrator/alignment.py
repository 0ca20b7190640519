"""A graph's output against its input: reading recorder files, alignment by pts, per-morph error and jitter.

Input and output carry pts on one clock (CLOCK_MONOTONIC); each output frame is compared with the
input interpolated at its pts (``rmse``, ``max``: what a viewer sees against the capture at that
instant, lag included) and at its pts minus the lag that fits best (``rmse_at_lag``, ``lag_ms``).
Per morph: RMSE, max |error|, Pearson correlation with the input, and jitter, the RMS of the
frame-to-frame second difference, of the output and of the input at the same instants.
``tools/quality.py`` and ``orchestrator.evaluate`` measure with these.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nodes import wire as wf
from nodes.face import arkit_names

NAMES = arkit_names()
LAGS_MS = np.arange(0, 301, 2)  # lags searched when aligning by pts (the output is never early)


@dataclass
class Series:
    """One session's frames: pts (ns, increasing) and weights (T, 52)."""

    pts: np.ndarray
    w: np.ndarray


# --- reading recordings --------------------------------------------------------------------------------
def read_series(path: Path) -> dict[str, Series]:
    """Per session, the ARKit weights a recording holds (arkit/blendshapes batches, or avatar/packet
    batches decoded as a viewer would: a session's frames after a loss wait for its next keyframe)."""
    from runtime.recording import read_records, record_message

    rows: dict[str, list[tuple[int, np.ndarray]]] = {}
    dec = wf.Decoder()
    try:
        for rec in read_records(path):
            msg = record_message(rec)
            ids = [str(s) for s in (msg.session if isinstance(msg.session, list) else [msg.session])]
            if msg.caps == "avatar/packet":
                for sid, packet in zip(ids, (msg.data or {}).get("packets", [])):
                    try:
                        f = dec.decode(packet)
                    except ValueError:
                        continue
                    if f is not None and (f.names == wf.TABLE_ARKIT52 or list(f.names) == NAMES):
                        rows.setdefault(sid, []).append((int(msg.pts_ns), f.weights))
                continue
            w = msg.arrays.get("weights")
            if w is None or w.ndim != 2 or w.shape[1] != len(NAMES):
                continue
            for i, sid in enumerate(ids):
                rows.setdefault(sid, []).append((int(msg.pts_ns), np.asarray(w[i], np.float64)))
    except ValueError:  # cut short by the stop: what came before counts
        pass
    out = {}
    for sid, r in rows.items():
        r.sort(key=lambda x: x[0])
        pts = np.array([p for p, _ in r], np.int64)
        keep = np.concatenate([[True], np.diff(pts) > 0])  # one frame per pts
        out[sid] = Series(pts[keep], np.clip(np.stack([w for _, w in r])[keep].astype(np.float64), 0.0, 1.0))
    return out


# --- metrics ---------------------------------------------------------------------------------------------
def interp(t_ref: np.ndarray, w_ref: np.ndarray, t: np.ndarray) -> np.ndarray:
    """The reference at times ``t`` (linear between its frames, held at its ends)."""
    return np.stack([np.interp(t, t_ref, w_ref[:, j]) for j in range(w_ref.shape[1])], axis=1)


def compare(out: np.ndarray, ref: np.ndarray) -> dict[str, Any]:
    """Per-morph RMSE, max error, correlation and jitter of ``out`` against ``ref`` (same instants)."""
    err = out - ref
    rmse = np.sqrt(np.mean(err ** 2, axis=0))
    mx = np.abs(err).max(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        so, sr = out.std(axis=0), ref.std(axis=0)
        corr = np.where((so > 1e-6) & (sr > 1e-6),
                        ((out - out.mean(0)) * (ref - ref.mean(0))).mean(0) / (so * sr), np.nan)
    d2o = np.diff(out, n=2, axis=0) if len(out) > 2 else np.zeros((1, out.shape[1]))
    d2r = np.diff(ref, n=2, axis=0) if len(ref) > 2 else np.zeros((1, ref.shape[1]))
    jo, jr = np.sqrt(np.mean(d2o ** 2, axis=0)), np.sqrt(np.mean(d2r ** 2, axis=0))
    active = sr > 1e-3  # morphs that move in the input
    return {
        "frames": int(len(out)), "rmse": float(np.sqrt(np.mean(err ** 2))), "max": float(np.abs(err).max()),
        "corr_mean": float(np.nanmean(corr[active])) if active.any() else math.nan,
        "jitter_out": float(np.sqrt(np.mean(jo[active] ** 2))) if active.any() else 0.0,
        "jitter_ref": float(np.sqrt(np.mean(jr[active] ** 2))) if active.any() else 0.0,
        "morphs": {NAMES[j]: {"rmse": float(rmse[j]), "max": float(mx[j]), "corr": float(corr[j]),
                              "jitter_out": float(jo[j]), "jitter_ref": float(jr[j]), "moves": bool(active[j])}
                   for j in range(len(NAMES))},
    }


def align_by_pts(inp: Series, out: Series) -> dict[str, Any]:
    """Output frames against the input at their pts, and at pts minus the best lag."""
    t_in = (inp.pts - inp.pts[0]) / 1e9
    t_out = (out.pts - inp.pts[0]) / 1e9
    inside = (t_out >= t_in[0]) & (t_out <= t_in[-1])
    t_out, w_out = t_out[inside], out.w[inside]
    if len(t_out) < 3:
        raise ValueError("fewer than 3 output frames overlap the input in time: nothing to compare")
    at_pts = compare(w_out, interp(t_in, inp.w, t_out))
    errs = [np.sqrt(np.mean((w_out - interp(t_in, inp.w, t_out - lag / 1000)) ** 2)) for lag in LAGS_MS]
    best = int(LAGS_MS[int(np.argmin(errs))])
    at_lag = compare(w_out, interp(t_in, inp.w, t_out - best / 1000))
    return {**at_pts, "lag_ms": best, "rmse_at_lag": at_lag["rmse"], "max_at_lag": at_lag["max"],
            "corr_at_lag": at_lag["corr_mean"], "morphs_at_lag": at_lag["morphs"]}


def align_to_take(out: Series, t_ref: np.ndarray, w_ref: np.ndarray, speed: float = 1.0) -> dict[str, Any]:
    """A recording against a take: output time from its first pts, the take looped, best lag in +-1 s."""
    period = float(np.median(np.diff(t_ref))) if len(t_ref) > 1 else 1 / 60
    loop = t_ref[-1] + period
    t = (out.pts - out.pts[0]) / 1e9 * speed

    def at(lag: float) -> np.ndarray:
        return interp(np.concatenate([t_ref, [loop]]), np.vstack([w_ref, w_ref[:1]]), np.mod(t - lag, loop))

    lags = np.arange(-1.0, 1.0 + 1e-9, 0.002)
    errs = [np.sqrt(np.mean((out.w - at(lag)) ** 2)) for lag in lags]
    best = float(lags[int(np.argmin(errs))])
    result = compare(out.w, at(best))
    return {**result, "lag_ms": round(best * 1000, 1), "rmse_at_lag": result["rmse"], "max_at_lag": result["max"],
            "corr_at_lag": result["corr_mean"], "morphs_at_lag": result["morphs"]}
