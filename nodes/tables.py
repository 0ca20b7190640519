"""Data tables (name orders, mappings, presets) live as YAML under ``graphs/``, not in code.

A table path in a param is looked up as given (relative to the working directory), then
relative to the project's ``graphs/`` folder, so ``mappings/arkit52.yaml`` works from anywhere.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

GRAPHS_DIR = Path(__file__).resolve().parent.parent / "graphs"


def table_path(path: str | Path) -> Path:
    p = Path(path)
    for candidate in (p, GRAPHS_DIR / p, GRAPHS_DIR / "mappings" / p):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"table '{path}' not found (looked in ., {GRAPHS_DIR}, {GRAPHS_DIR / 'mappings'})")


@lru_cache(maxsize=64)
def _load(path: Path, mtime: float) -> Any:
    with open(path) as f:
        return yaml.safe_load(f)


def load_table(path: str | Path) -> Any:
    """Parsed YAML of a table (cached until the file changes)."""
    p = table_path(path)
    return _load(p, p.stat().st_mtime)


def arkit_names() -> list[str]:
    """The 52 ARKit blendshape names in Apple's order."""
    return list(load_table("mappings/arkit52.yaml")["blendshapes"])


def arkit_pose_names() -> list[str]:
    return list(load_table("mappings/arkit52.yaml")["pose"])
