"""Viseme tables and co-articulation curves: ARPAbet -> OVR visemes -> ARKit mouth poses.

Shared by the ``viseme`` node (which schedules phonemes with these curves) and the ``blender``
(which needs to know which channels visemes own).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from runtime import ParamError

from .tables import arkit_names, load_mapping

VISEMES = ("sil", "PP", "FF", "TH", "DD", "kk", "CH", "SS", "nn", "RR", "aa", "E", "ih", "oh", "ou")
SIL = 0
# The room a phoneme source leaves for lead-ins: the longest lead of the default tables (80 ms, x 1.5
# for lip rounding). A source declares it in its latency (a recognizer) or schedules its speech that
# far ahead (text to speech), so the viseme node adds nothing of its own by default.
LEAD_ROOM_MS = 120.0
_EXP_K = 4.0  # steepness of the exponential ramp
_HOLD_EDGE = 0.3  # a hold ramps up over the first 30% of its phoneme and down over the last 30%


@dataclass(frozen=True)
class VisemeTables:
    """The loaded mapping tables as arrays (V = 15 visemes in OVR order, N = 52 ARKit channels)."""

    phone_to_viseme: dict[str, int]  # upper-case ARPAbet without stress -> viseme index, -1 = no shape
    weights: np.ndarray  # (V, N) key poses
    dominance: np.ndarray  # (V,)
    hold: np.ndarray  # (V,)
    lead_scale: np.ndarray  # (V,)
    release_scale: np.ndarray  # (V,)
    channels: np.ndarray  # (N,) bool: channels visemes own (blender)


def load_viseme_tables(phoneme_table: str, viseme_table: str) -> VisemeTables:
    """Load and check both tables; raises ParamError naming the file and the bad entry."""
    try:
        return _load_viseme_tables(phoneme_table, viseme_table)
    except ParamError:
        raise
    except (AttributeError, TypeError, ValueError) as exc:  # an entry of the wrong shape
        raise ParamError(f"{viseme_table} / {phoneme_table}: malformed table: {exc}") from None


def _load_viseme_tables(phoneme_table: str, viseme_table: str) -> VisemeTables:
    names = arkit_names()
    col = {n: i for i, n in enumerate(names)}
    vis_doc = load_mapping(viseme_table, "viseme table")
    vis = vis_doc.get("visemes") or {}
    missing = [v for v in VISEMES if v not in vis]
    if missing:
        raise ParamError(f"{viseme_table}: visemes missing: {', '.join(missing)}")
    V, N = len(VISEMES), len(names)
    weights = np.zeros((V, N))
    dominance, hold = np.ones(V), np.zeros(V)
    lead, release = np.ones(V), np.ones(V)
    for i, v in enumerate(VISEMES):
        entry = vis[v] or {}
        for name, w in (entry.get("weights") or {}).items():
            if name not in col:
                raise ParamError(f"{viseme_table}: viseme '{v}': unknown ARKit blendshape '{name}'")
            weights[i, col[name]] = float(w)
        dominance[i] = float(entry.get("dominance", 1.0))
        hold[i] = float(entry.get("hold", 0.0))
        lead[i] = float(entry.get("lead", 1.0))
        release[i] = float(entry.get("release", 1.0))
    if (dominance <= 0).any():
        raise ParamError(f"{viseme_table}: every viseme needs a positive dominance")
    channels = np.zeros(N, dtype=bool)
    for name in vis_doc.get("channels") or []:
        if name not in col:
            raise ParamError(f"{viseme_table}: channels: unknown ARKit blendshape '{name}'")
        channels[col[name]] = True
    index = {v: i for i, v in enumerate(VISEMES)}
    phones: dict[str, int] = {}
    for phone, v in (load_mapping(phoneme_table, "phoneme table").get("phonemes") or {}).items():
        if v is not None and v not in index:
            raise ParamError(f"{phoneme_table}: phoneme '{phone}' maps to unknown viseme '{v}'")
        phones[str(phone).upper()] = -1 if v is None else index[v]
    return VisemeTables(phones, weights, dominance, hold, lead, release, channels)


def ramp(x: np.ndarray, shape: str) -> np.ndarray:
    """Dominance at normalised distance x >= 0 outside a phoneme: 1 at 0, falling to 0 at 1."""
    x = np.clip(x, 0.0, 1.0)
    if shape == "exp":
        return (np.exp(-_EXP_K * x) - np.exp(-_EXP_K)) / (1.0 - np.exp(-_EXP_K))
    return 0.5 + 0.5 * np.cos(np.pi * x)


def hold_bump(u: np.ndarray) -> np.ndarray:
    """Constraint strength at position u (0..1) inside a phoneme: a plateau of 1 around the centre."""
    edge = np.minimum(u, 1.0 - u) / _HOLD_EDGE
    return np.where((u < 0) | (u > 1), 0.0, 0.5 - 0.5 * np.cos(np.pi * np.clip(edge, 0.0, 1.0)))


def strip_stress(phone: str) -> str:
    """``AA1`` -> ``AA``: lip shape does not depend on lexical stress."""
    return phone.rstrip("0123456789").upper()
