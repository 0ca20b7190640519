"""Level-of-detail tables: per level, which morphs a face keeps and how often it is sent.

The table is ``graphs/mappings/lod.yaml`` (or one like it); the ``lod`` node applies it per session.
"""
from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Mapping

import numpy as np

from ..wire import N_LOD_LEVELS
from .morphs import load_morph_table
from .tables import arkit_names, load_table, table_path


class LodTableError(ValueError):
    """The LOD table is wrong; the message names the file and the entry."""


def load_lod_table(path: str) -> tuple[np.ndarray, list[list[str] | None]]:
    """``every`` per level (int array) and the patterns each level keeps (None: all)."""
    try:
        where = str(table_path(path))
        doc = load_table(path)
    except FileNotFoundError as exc:
        raise LodTableError(f"lod table: {exc}") from None
    except Exception as exc:
        raise LodTableError(f"{path}: cannot read lod table: {exc}") from None
    levels = doc.get("levels") if isinstance(doc, Mapping) else None
    if not isinstance(levels, Mapping) or set(levels) != set(range(N_LOD_LEVELS)):
        raise LodTableError(f"{where}: levels: must map each of 0..{N_LOD_LEVELS - 1} to {{every, keep | arkit, cc4}}")
    arkit = arkit_names()
    cc4 = {n for p in ("standard", "extended") for n in load_morph_table(p).names}
    every = np.ones(N_LOD_LEVELS, dtype=np.int64)
    patterns: list[list[str] | None] = []
    for lv in range(N_LOD_LEVELS):
        spec = levels[lv]
        at = f"{where}: levels.{lv}"
        if not isinstance(spec, Mapping):
            raise LodTableError(f"{at}: must be a mapping with every and keep (or arkit / cc4)")
        n = spec.get("every", 1)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise LodTableError(f"{at}.every: must be a positive integer, got {n!r}")
        every[lv] = n
        if spec.get("keep") == "all":
            patterns.append(None)
            continue
        keep: list[str] = []
        for key, names in (("arkit", arkit), ("cc4", cc4)):
            for pat in spec.get(key) or []:
                if not isinstance(pat, str) or not any(fnmatchcase(n, pat) for n in names):
                    raise LodTableError(f"{at}.{key}: pattern {pat!r} matches no {key} morph name")
                keep.append(pat)
        if not keep:
            raise LodTableError(f"{at}: keeps nothing; give arkit / cc4 patterns or 'keep: all'")
        patterns.append(keep)
    return every, patterns


def level_masks(patterns: list[list[str] | None], names: list[str]) -> np.ndarray:
    """(levels, M) float32: 1 where a level keeps the morph of that name, 0 where it drops it."""
    return np.array([[pats is None or any(fnmatchcase(n, p) for p in pats) for n in names] for pats in patterns],
                    dtype=np.float32)
