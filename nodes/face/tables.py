"""Data tables (name orders, mappings, presets) live as YAML under ``graphs/``, not in code.

A table path in a param is looked up as given (relative to the working directory), then
relative to the project's ``graphs/`` folder, so ``mappings/arkit52.yaml`` works from anywhere.

Table params can be set live (the control API), so a table must lie inside the project's
``graphs/`` tree or inside one of the folders listed in ``$AVATAR_TABLE_PATH`` (separated by
``os.pathsep``, ``:`` on Linux); any other path is refused with ``TablePathError`` (a
``ParamError``), whether the file exists or not, symbolic links followed. A table that is not
YAML, or cannot be read, raises ``TableError`` (a ``ParamError`` too), naming the file.
"""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from runtime.errors import ParamError

GRAPHS_DIR = Path(__file__).resolve().parents[2] / "graphs"
TABLE_PATH_ENV = "AVATAR_TABLE_PATH"
TABLE_RULE = f"tables must be inside graphs/ or a folder of ${TABLE_PATH_ENV}"  # for params' help texts


class TableError(ParamError):
    """A table that cannot be used: unreadable, not YAML, or of the wrong shape; names the file."""


class TablePathError(TableError):
    """A table path outside the folders tables may come from (``table_dirs``)."""


def table_dirs() -> list[Path]:
    """The folders table files may come from: ``graphs/`` and those of ``$AVATAR_TABLE_PATH``."""
    dirs = [GRAPHS_DIR.resolve()]
    for part in os.environ.get(TABLE_PATH_ENV, "").split(os.pathsep):
        if part.strip():
            dirs.append(Path(part.strip()).expanduser().resolve())
    return dirs


def table_path(path: str | Path) -> Path:
    """The file a table param names (resolved); FileNotFoundError if there is none, TablePathError
    if the path lies outside ``table_dirs()`` (checked before the file system is asked, so the
    answer says nothing about files elsewhere)."""
    p = Path(path)
    dirs = table_dirs()
    candidates = [p] if p.is_absolute() else [p, GRAPHS_DIR / p, GRAPHS_DIR / "mappings" / p]
    allowed = []
    for candidate in candidates:
        try:
            real = candidate.resolve()
        except (OSError, RuntimeError, ValueError):  # a symlink loop, a NUL in the path
            continue
        if any(real.is_relative_to(d) for d in dirs):
            allowed.append(real)
    if not allowed:
        where = ", ".join(str(d) for d in dirs)
        raise TablePathError(f"table '{path}' is outside the folders tables may come from ({where}); "
                             f"add its folder to ${TABLE_PATH_ENV} (separated by '{os.pathsep}') to allow it")
    for real in allowed:
        try:
            if real.is_file():
                return real
        except OSError as exc:  # a folder on the way that may not be read
            raise TableError(f"table '{path}': {exc}") from None
    raise FileNotFoundError(f"table '{path}' not found (looked in ., {GRAPHS_DIR}, {GRAPHS_DIR / 'mappings'})")


@lru_cache(maxsize=64)
def _load(path: Path, mtime: float) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return yaml.safe_load(f)
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError) as exc:
        raise TableError(f"{path}: cannot read the table: {exc}") from None


def load_table(path: str | Path) -> Any:
    """Parsed YAML of a table (cached until the file changes). Raises FileNotFoundError,
    TablePathError (outside ``table_dirs()``) or TableError (unreadable, not YAML)."""
    p = table_path(path)
    try:
        mtime = p.stat().st_mtime
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise TableError(f"table '{path}': {exc}") from None
    return _load(p, mtime)


def load_mapping(path: str | Path, what: str = "table") -> dict:
    """``load_table`` for tables that are YAML mappings (an empty file is an empty one): anything
    else raises TableError naming the file."""
    doc = load_table(path)
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise TableError(f"{path}: {what} must be a YAML mapping, got a {type(doc).__name__}")
    return doc


def arkit_names() -> list[str]:
    """The 52 ARKit blendshape names in Apple's order."""
    return list(load_table("mappings/arkit52.yaml")["blendshapes"])


def arkit_pose_names() -> list[str]:
    return list(load_table("mappings/arkit52.yaml")["pose"])
