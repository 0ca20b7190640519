"""Live Link Face CSV takes: the app's export, read into arrays in Apple order.

The export's header is ``Timecode,BlendShapeCount,`` then PascalCase value names; the value
columns are read by name (exports do not keep Apple's order: JawRight comes before JawLeft).
Any problem with the file is a ValueError naming the file and line.
"""
from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..face.tables import arkit_names, arkit_pose_names
from .packet import N_BLENDSHAPES, N_POSE

_TIMECODE = re.compile(r"^(\d{1,3}):(\d{2}):(\d{2})[:;](\d{1,4})(?:\.(\d+))?$")
_DAY = 86400.0


@dataclass
class Take:
    """A CSV export read into arrays, one row per frame, values in Apple order."""

    path: str
    times: np.ndarray  # float64 (N,), seconds since the first row
    weights: np.ndarray  # float32 (N, 52), as written (not clamped)
    pose: np.ndarray  # float32 (N, 9); zeros where the export has no such column
    lines: np.ndarray  # int64 (N,), the file line of each row
    empty_rows: int  # rows the app wrote without values (BlendShapeCount 0), skipped


def parse_timecode(text: str, fps: float) -> float:
    """``HH:MM:SS:FF.fff`` (FF counted at ``fps``, ``.fff`` a fraction of a frame) -> seconds."""
    m = _TIMECODE.match(text.strip())
    if not m:
        raise ValueError(f"bad timecode {text!r} (expected HH:MM:SS:FF.fff)")
    h, mi, s, ff = (int(g) for g in m.group(1, 2, 3, 4))
    sub = float("0." + m.group(5)) if m.group(5) else 0.0
    if mi > 59 or s > 59:
        raise ValueError(f"bad timecode {text!r}: minutes and seconds must be below 60")
    if ff >= math.ceil(fps):
        raise ValueError(f"timecode {text!r} has frame {ff}, not below the frame rate {fps:g}; "
                         "set the node's fps param to the take's frame rate")
    return h * 3600.0 + mi * 60.0 + s + (ff + sub) / fps


def read_take(path: str | Path, fps: float = 60.0) -> Take:
    """Read a Live Link Face CSV export; raises ValueError naming the file and line of a problem."""
    path = str(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            return _read(csv.reader(f), path, fps)
    except OSError as exc:
        raise ValueError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not a text file ({exc.reason})") from None
    except csv.Error as exc:
        raise ValueError(f"{path}: bad CSV: {exc}") from None


def _read(reader: Any, path: str, fps: float) -> Take:
    header = _trim(next(reader, []))
    if len(header) < 2 or header[0].lower() != "timecode" or header[1].lower() != "blendshapecount":
        raise ValueError(f"{path}:1: not a Live Link Face export: the header must start with "
                         f"'Timecode,BlendShapeCount,', got {','.join(header[:3])!r}")
    w_col, p_col = _columns(header, path)
    times, rows, lines, empty = [], [], [], 0
    n = len(header)
    for row in reader:
        line = reader.line_num
        row = _trim(row)
        if not row:
            continue
        if len(row) == 2 and row[1].strip() == "0":  # the app's rows without a face: no values
            empty += 1
            continue
        if len(row) != n:
            raise ValueError(f"{path}:{line}: {len(row)} fields, the header has {n}")
        try:
            t = parse_timecode(row[0], fps)
            int(row[1])
        except ValueError as exc:
            raise ValueError(f"{path}:{line}: {exc}") from None
        values = []
        for col, text in enumerate(row[2:], start=2):
            try:
                v = float(text)
            except ValueError:
                v = math.nan
            if not math.isfinite(v):
                raise ValueError(f"{path}:{line}: column {header[col]} is {text!r}, not a finite number")
            values.append(v)
        if times and t < times[-1]:
            if times[-1] - t > _DAY / 2:  # the timecode passed midnight
                t += _DAY * math.ceil((times[-1] - t) / _DAY)
            else:
                raise ValueError(f"{path}:{line}: timecode {row[0]} goes back in time")
        times.append(t)
        rows.append(values)
        lines.append(line)
    if not rows:
        raise ValueError(f"{path}: no frames after the header")
    table = np.array(rows, dtype=np.float64)
    weights = table[:, np.asarray(w_col) - 2].astype(np.float32)
    pose = np.zeros((len(rows), N_POSE), np.float32)
    for i, col in enumerate(p_col):
        if col >= 0:
            pose[:, i] = table[:, col - 2]
    t = np.asarray(times, np.float64)
    return Take(path, t - t[0], weights, pose, np.asarray(lines, np.int64), empty)


def _trim(row: list[str]) -> list[str]:
    """Drop the empty field a trailing comma leaves."""
    while row and row[-1].strip() == "":
        row = row[:-1]
    return [c.strip() for c in row]


def _columns(header: list[str], path: str) -> tuple[list[int], list[int]]:
    """Header column of each blendshape (all required) and pose value (-1 when absent)."""
    shapes = {n.lower(): i for i, n in enumerate(arkit_names())}
    poses = {n.lower(): i for i, n in enumerate(arkit_pose_names())}
    w_col, p_col = [-1] * N_BLENDSHAPES, [-1] * N_POSE
    for col, name in enumerate(header[2:], start=2):
        key = name.lower()
        table, target = (w_col, shapes) if key in shapes else (p_col, poses) if key in poses else (None, None)
        if table is None:
            raise ValueError(f"{path}:1: unknown column {name!r} (column {col + 1})")
        if table[target[key]] >= 0:
            raise ValueError(f"{path}:1: column {name!r} appears twice")
        table[target[key]] = col
    missing = [n for n, c in zip(arkit_names(), w_col) if c < 0]
    if missing:
        raise ValueError(f"{path}:1: missing blendshape column(s): {', '.join(missing)}")
    return w_col, p_col
