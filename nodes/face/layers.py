"""The curves and tables of the face's layers: emotion presets, eased transitions, blinks.

Pure functions over arrays; the ``blender`` node schedules them per session.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Mapping

import numpy as np

from runtime import ParamError

from .tables import arkit_names


@lru_cache(maxsize=1)
def _columns() -> dict[str, int]:
    return {n: i for i, n in enumerate(arkit_names())}


def smoothstep(x: np.ndarray) -> np.ndarray:
    """Ease in and out; monotone from 0 at x<=0 to 1 at x>=1."""
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def blink_curve(p: np.ndarray) -> np.ndarray:
    """Eyelid closure over a blink's phase p (0..1): closes fast (35%), opens slower."""
    close = 0.5 - 0.5 * np.cos(np.pi * np.clip(p / 0.35, 0, 1))
    opened = 0.5 + 0.5 * np.cos(np.pi * np.clip((p - 0.35) / 0.65, 0, 1))
    return np.where((p < 0) | (p > 1), 0.0, np.where(p < 0.35, close, opened))


def weight_table(entries: Mapping[str, Mapping[str, float]], where: str) -> tuple[list[str], np.ndarray]:
    """Names and an (K, 52) array from a YAML mapping of name -> {ARKit shape: weight}; a table
    of another shape raises ParamError naming the file and the entry."""
    col = _columns()
    if not isinstance(entries, Mapping):
        raise ParamError(f"{where}: must map names to {{ARKit shape: weight}}, got a {type(entries).__name__}")
    names = [str(n) for n in entries]
    table = np.zeros((len(names), len(col)))
    for i, (name, shapes) in enumerate(entries.items()):
        if not isinstance(shapes or {}, Mapping):
            raise ParamError(f"{where}: '{name}': must map ARKit shapes to weights, got a {type(shapes).__name__}")
        for shape, w in (shapes or {}).items():
            if shape not in col:
                raise ParamError(f"{where}: '{name}': unknown ARKit blendshape '{shape}'")
            try:
                value = float(w) if isinstance(w, (int, float)) and not isinstance(w, bool) else math.nan
            except OverflowError:
                value = math.nan
            if not math.isfinite(value):
                raise ParamError(f"{where}: '{name}': '{shape}': a weight must be a finite number, got {w!r}")
            table[i, col[shape]] = value
    return names, table


def approach(x: np.ndarray, target: np.ndarray, dt: float, fade_ms: float) -> np.ndarray:
    """Move x linearly toward target (0 or 1), taking fade_ms for the full way."""
    step = 1.0 if fade_ms <= 0 else dt * 1000.0 / fade_ms
    return np.clip(x + np.where(target, step, -step), 0.0, 1.0)
