"""Morph mapping tables: ARKit 52 blendshapes -> a rig's morphs, compiled into dense arrays.

A mapping table (YAML under ``graphs/mappings/``; format in ``cc4_standard.yaml``) is compiled once
into arrays, so a batch of S sessions costs one (S, 52) @ (52, M) matmul, a second small matmul for
the secondary rules (an open jaw pulls the cheeks and nostrils a little) and one vectorised
``minimum`` for the constraints (a closed mouth cannot exceed the open jaw; a blinking eye cannot
be wide open). Keeping rules in YAML lets an artist retune a rig without touching code.

A table whose every morph copies one ARKit shape at weight 1 (the identity table of the capture
graphs, or a reordering) skips the matmul: each output is then its input exactly, as the matmul
would give it (every other product is a zero), which costs a copy instead of 52 multiply-adds per
value. Only for finite inputs: a NaN or infinite input spreads through the matmul's zero products
to the whole row, and such a batch takes the matmul, so the results are the same bits either way.
"""
from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from .tables import arkit_names, load_table, table_path

PROFILES = {
    "standard": "mappings/cc4_standard.yaml",
    "extended": "mappings/cc4_extended.yaml",
    "identity": "mappings/arkit_identity.yaml",
}
MORPH_CAPS = ("morphs/cc4", "arkit/blendshapes")  # what a mapping table may produce
_KEYS = ("caps", "morphs", "map", "secondary", "constraints")


class MorphTableError(ValueError):
    """A mapping table is wrong; the message names the file and the entry."""


@dataclass(frozen=True)
class MorphTable:
    """A compiled mapping table: everything ``apply`` needs, as arrays."""

    path: str
    caps: str
    names: tuple[str, ...]
    matrix: np.ndarray      # (52, M) float32: ARKit shape -> morph weights
    sec_from: np.ndarray    # (K,) int: morph whose value drives secondary rule k
    sec_gain: np.ndarray    # (K, M) float32: what rule k adds per unit of its source
    lim_target: np.ndarray  # (C,) int: morph limited by constraint c
    lim_by: np.ndarray      # (C,) int: morph the limit is computed from
    lim_scale: np.ndarray   # (C,) float32
    lim_offset: np.ndarray  # (C,) float32
    # (M,) int: the ARKit shape each morph copies when the map only copies shapes (weight 1, one
    # each), else None; arange(52) for the identity
    select: np.ndarray | None = None
    lim_unique: bool = True  # no morph has two constraints (else the tightest wins, np.minimum.at)

    def __post_init__(self) -> None:
        m = self.matrix
        ones = (m == 1.0).sum(axis=0) == 1
        select = None
        if ones.all() and np.count_nonzero(m) == m.shape[1]:  # a single 1.0 per column, zeros elsewhere
            select = np.argmax(m == 1.0, axis=0).astype(np.intp)
            if np.array_equal(select, np.arange(m.shape[0])):
                select = select[:0]  # the identity: no gather
        object.__setattr__(self, "select", select)
        object.__setattr__(self, "lim_unique", len(np.unique(self.lim_target)) == len(self.lim_target))

    def apply(self, weights: np.ndarray) -> np.ndarray:
        """(S, 52) ARKit weights -> (S, M) morph weights in 0..1.

        Secondary rules all read the mapped values (they do not chain); constraints all read the
        values after the secondary rules, then the result is clamped again.
        """
        x = np.asarray(weights, dtype=np.float32)
        if self.select is not None and x.ndim == 2 and x.shape[1] == self.matrix.shape[0] and np.isfinite(x.sum()):
            # what the matmul gives for finite values, without it (+ 0: a zero comes out of it +0.0)
            out = (x[:, self.select] if len(self.select) else x) + np.float32(0.0)
        else:
            out = x @ self.matrix
        np.clip(out, 0.0, 1.0, out=out)
        if len(self.sec_from):
            out += out[:, self.sec_from] @ self.sec_gain
            np.clip(out, 0.0, 1.0, out=out)
        if len(self.lim_target):
            upper = out[:, self.lim_by] * self.lim_scale + self.lim_offset
            if self.lim_unique:  # only these columns change (the others are clamped already)
                np.minimum(out[:, self.lim_target], upper, out=upper)
                out[:, self.lim_target] = np.clip(upper, 0.0, 1.0, out=upper)
            else:  # several limits on one morph: the tightest wins
                bound = np.full_like(out, np.inf)
                np.minimum.at(bound, (slice(None), self.lim_target), upper)
                np.minimum(out, bound, out=out)
                np.clip(out, 0.0, 1.0, out=out)
        return out


def profile_path(profile: str) -> str:
    """A profile name (standard / extended / identity) or a table path -> the table's path."""
    return PROFILES.get(profile, profile)


def load_morph_table(profile: str) -> MorphTable:
    """Load and compile a mapping table; raises MorphTableError naming the file and the bad entry."""
    ref = profile_path(profile)
    try:
        path = str(table_path(ref))
        doc = load_table(ref)
    except FileNotFoundError as exc:
        raise MorphTableError(f"mapper profile '{profile}': {exc}") from None
    except Exception as exc:  # YAML syntax and the like
        raise MorphTableError(f"{ref}: cannot read mapping table: {exc}") from None
    return _compile(doc, path)


def _compile(doc: Any, path: str) -> MorphTable:
    def fail(where: str, problem: str) -> MorphTableError:
        return MorphTableError(f"{path}: {where}: {problem}")

    if not isinstance(doc, Mapping):
        raise fail("top level", "a mapping table is a YAML mapping with caps, morphs and map")
    for key in doc:
        if key not in _KEYS:
            raise fail(str(key), f"unknown key (allowed: {', '.join(_KEYS)})")
    arkit = arkit_names()
    caps = doc.get("caps")
    if caps not in MORPH_CAPS:
        raise fail("caps", f"must be one of {', '.join(MORPH_CAPS)}, got {caps!r}")

    morphs = doc.get("morphs")
    if morphs == "arkit52":
        morphs = arkit
    if not isinstance(morphs, list) or not morphs:
        raise fail("morphs", "must be a non-empty list of morph names (or 'arkit52')")
    index: dict[str, int] = {}
    for i, name in enumerate(morphs):
        if not isinstance(name, str) or not name:
            raise fail(f"morphs[{i}]", f"a morph name must be a non-empty string, got {name!r}")
        if name in index:
            raise fail(f"morphs[{i}]", f"'{name}' is listed twice")
        index[name] = i

    def morph(where: str, name: Any) -> int:
        if name not in index:
            close = difflib.get_close_matches(str(name), list(index), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise fail(where, f"unknown morph {name!r}{hint}; it must be listed under 'morphs'")
        return index[name]

    def number(where: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise fail(where, f"must be a finite number, got {value!r}")
        return float(value)

    matrix = np.zeros((len(arkit), len(morphs)), dtype=np.float32)
    table = doc.get("map")
    if table == "identity":
        for a, shape in enumerate(arkit):
            matrix[a, morph(f"map (identity): {shape}", shape)] = 1.0
    elif isinstance(table, Mapping):
        for shape, target in table.items():
            if shape not in arkit:
                close = difflib.get_close_matches(str(shape), arkit, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise fail(f"map.{shape}", f"not an ARKit blendshape name{hint}")
            a = arkit.index(shape)
            if target is None:
                continue
            if isinstance(target, str):
                target = {target: 1.0}
            if not isinstance(target, Mapping):
                raise fail(f"map.{shape}", f"must be a morph name, {{morph: weight}} or null, got {target!r}")
            for name, w in target.items():
                matrix[a, morph(f"map.{shape}", name)] = number(f"map.{shape}.{name}", w)
        missing = [s for s in arkit if s not in table]
        if missing:
            raise fail("map", f"ARKit shapes missing (write 'null' for no equivalent): {', '.join(missing)}")
    else:
        raise fail("map", "must be a mapping of every ARKit shape, or 'identity'")

    rules = doc.get("secondary") or []
    if not isinstance(rules, list):
        raise fail("secondary", "must be a list of {from, add} rules")
    sec_from = np.zeros(len(rules), dtype=np.intp)
    sec_gain = np.zeros((len(rules), len(morphs)), dtype=np.float32)
    for k, rule in enumerate(rules):
        where = f"secondary[{k}]"
        if not isinstance(rule, Mapping) or not isinstance(rule.get("add"), Mapping):
            raise fail(where, "a rule is {why, from: morph, add: {morph: gain}}")
        sec_from[k] = morph(f"{where}.from", rule.get("from"))
        for name, gain in rule["add"].items():
            sec_gain[k, morph(f"{where}.add", name)] = number(f"{where}.add.{name}", gain)

    limits = doc.get("constraints") or []
    if not isinstance(limits, list):
        raise fail("constraints", "must be a list of {limit, by, scale, offset}")
    n = len(limits)
    lim_target, lim_by = np.zeros(n, dtype=np.intp), np.zeros(n, dtype=np.intp)
    lim_scale, lim_offset = np.ones(n, dtype=np.float32), np.zeros(n, dtype=np.float32)
    for c, lim in enumerate(limits):
        where = f"constraints[{c}]"
        if not isinstance(lim, Mapping):
            raise fail(where, "a constraint is {why, limit: morph, by: morph, scale, offset}")
        lim_target[c] = morph(f"{where}.limit", lim.get("limit"))
        lim_by[c] = morph(f"{where}.by", lim.get("by"))
        lim_scale[c] = number(f"{where}.scale", lim.get("scale", 1.0))
        lim_offset[c] = number(f"{where}.offset", lim.get("offset", 0.0))

    return MorphTable(path, caps, tuple(morphs), matrix, sec_from, sec_gain, lim_target, lim_by, lim_scale, lim_offset)
