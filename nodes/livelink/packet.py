"""Live Link Face: the v6 UDP packet, its JSON cousin, and the packet container file.

Pure functions over bytes (plus one reader for the container file), used by ``arkit_source``
and the tools. Every way a datagram can be wrong raises ``PacketError``, a
``ValueError`` whose ``reason`` is a short word the source node counts drops by.

v6 packet, all multi-byte fields big-endian::

    uint8 version (6) | int32 n + n bytes device id (UTF-8) | int32 n + n bytes subject name
    int32 frame | float32 sub-frame | int32 fps numerator | int32 fps denominator
    uint8 count (61) | 61 float32: 52 blendshapes (Apple order), head yaw/pitch/roll,
    left eye yaw/pitch/roll, right eye yaw/pitch/roll
"""
from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ..face.tables import arkit_names, arkit_pose_names

CAPS = "arkit/blendshapes"  # the caps of the frames a Live Link source emits
VERSION = 6
N_BLENDSHAPES = 52
N_POSE = 9
N_VALUES = N_BLENDSHAPES + N_POSE
MAX_NAME_BYTES = 255  # device ids are 32 or 36 characters; subject names are short user labels
MAX_PACKET_BYTES = 1 + 4 + MAX_NAME_BYTES + 4 + MAX_NAME_BYTES + 17 + 4 * N_VALUES
MAX_JSON_BYTES = 16384

# 180 real packets from an iPhone (think-biq/LLV, BSD-2-Clause; see PROVENANCE.md beside it), shipped
# with the repository for tests, tools and demos.
SAMPLE_CAPTURE = Path(__file__).resolve().parents[2] / "tests" / "data" / "livelink" / "llv_dao_packets.bin"

_TAIL = struct.Struct(">ifiiB")  # frame, sub-frame, fps numerator, fps denominator, count
_VALUES_BYTES = 4 * N_VALUES
_BE_F32 = np.dtype(">f4")
# What follows the two names of a v6 packet: the same 261 bytes in every packet, so a batch of
# packets whose headers are known is parsed in one go (``parse_tails``).
TAIL_BYTES = _TAIL.size + _VALUES_BYTES
TAIL_DTYPE = np.dtype([("frame", ">i4"), ("subframe", ">f4"), ("fps_num", ">i4"), ("fps_den", ">i4"),
                       ("count", "u1"), ("values", ">f4", (N_VALUES,))])
assert TAIL_DTYPE.itemsize == TAIL_BYTES


class PacketError(ValueError):
    """A datagram that is not a valid packet; ``reason`` names the kind of damage."""

    def __init__(self, reason: str, text: str):
        super().__init__(text)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class LiveLinkFrame:
    """One parsed packet: who sent it, when (in the sender's frames), and the 61 values."""

    device_id: str
    subject: str
    frame: int
    subframe: float
    fps: tuple[int, int]
    weights: np.ndarray  # float32 (52,), Apple order, not clamped
    pose: np.ndarray  # float32 (9,), radians


# --- names -----------------------------------------------------------------------------------
def pascal(name: str) -> str:
    """``eyeBlinkLeft`` -> ``EyeBlinkLeft`` (CSV exports use PascalCase, ARKit camelCase)."""
    return name[:1].upper() + name[1:]


@lru_cache(maxsize=1)
def export_columns() -> tuple[str, ...]:
    """Value columns of a Live Link Face CSV export, in the order the app writes them.

    Apple order in PascalCase, except that exports put JawRight before JawLeft and MouthRight
    before MouthLeft (as seen in published export headers); readers must go by name anyway.
    """
    cols = [pascal(n) for n in arkit_names()]
    for a, b in (("JawLeft", "JawRight"), ("MouthLeft", "MouthRight")):
        i, j = cols.index(a), cols.index(b)
        cols[i], cols[j] = cols[j], cols[i]
    return tuple(cols + [pascal(n) for n in arkit_pose_names()])


@lru_cache(maxsize=1)
def _name_index() -> dict[str, int]:
    return {n.lower(): i for i, n in enumerate(arkit_names())}


# --- binary packets --------------------------------------------------------------------------
def parse_packet(data: bytes | bytearray | memoryview) -> LiveLinkFrame:
    """Parse one v6 packet; raises PacketError (a ValueError) saying what is wrong."""
    n = len(data)
    if n > MAX_PACKET_BYTES:
        raise PacketError("oversized", f"packet of {n} bytes is over the {MAX_PACKET_BYTES}-byte limit")
    if n < 5:
        raise PacketError("truncated", f"truncated packet: {n} bytes, too short for a header")
    if data[0] != VERSION:
        raise PacketError("version", f"unsupported packet version {data[0]} (expected {VERSION})")
    device, pos = _string(data, 1, "device id", allow_empty=False)
    subject, pos = _string(data, pos, "subject name", allow_empty=True)
    if n - pos < _TAIL.size:
        raise PacketError("truncated", f"truncated packet: {n} bytes, ends inside the frame header")
    frame, sub, num, den, count = _TAIL.unpack_from(data, pos)
    pos += _TAIL.size
    if count != N_VALUES:
        raise PacketError("count", f"value count {count}, expected {N_VALUES}")
    if n - pos < _VALUES_BYTES:
        raise PacketError("truncated", f"truncated packet: {n} bytes, only {(n - pos) // 4} of {N_VALUES} values")
    if n - pos > _VALUES_BYTES:
        raise PacketError("oversized", f"{n - pos - _VALUES_BYTES} trailing bytes after the {N_VALUES} values")
    if num <= 0 or den <= 0:
        raise PacketError("corrupt", f"bad frame rate {num}/{den}")
    if not math.isfinite(sub):
        raise PacketError("nonfinite", f"sub-frame is {sub}")
    values = np.frombuffer(data, _BE_F32, N_VALUES, pos).astype(np.float32)
    _check_finite(values)
    return LiveLinkFrame(device, subject, frame, sub, (num, den), values[:N_BLENDSHAPES], values[N_BLENDSHAPES:])


def header_of(data: bytes) -> bytes:
    """The part of a v6 packet before its tail (version, device id, subject): equal for every
    packet a device sends, so a receiver can map it to the device once ``parse_packet`` accepted it."""
    return data[:-TAIL_BYTES]


def parse_tails(tails: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The tails (``TAIL_BYTES`` each, concatenated) of packets whose headers are known good:
    frame numbers (int64), values (float32, (N, 61)) and which tails are valid (count 61, a
    positive frame rate, finite numbers). ``parse_packet`` says what is wrong with an invalid one."""
    rec = np.frombuffer(tails, TAIL_DTYPE)
    values = rec["values"].astype(np.float32)
    ok = ((rec["count"] == N_VALUES) & (rec["fps_num"] > 0) & (rec["fps_den"] > 0)
          & np.isfinite(rec["subframe"]) & np.isfinite(values).all(axis=1))
    return rec["frame"].astype(np.int64), values, ok


def _string(data: Any, pos: int, what: str, allow_empty: bool) -> tuple[str, int]:
    n = len(data)
    if n - pos < 4:
        raise PacketError("truncated", f"truncated packet: {n} bytes, ends before the {what} length")
    length = int.from_bytes(data[pos:pos + 4], "big", signed=True)
    if length < (0 if allow_empty else 1) or length > MAX_NAME_BYTES:
        raise PacketError("length", f"bad {what} length {length} (allowed {0 if allow_empty else 1}..{MAX_NAME_BYTES})")
    pos += 4
    if n - pos < length:
        raise PacketError("truncated", f"truncated packet: {n} bytes, ends inside the {what}")
    try:
        text = bytes(data[pos:pos + length]).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PacketError("encoding", f"{what} is not UTF-8: {exc.reason} at byte {exc.start}") from None
    return text, pos + length


def _check_finite(values: np.ndarray) -> None:
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        i = int(bad[0])
        names = arkit_names() + arkit_pose_names()
        label = names[i] if i < len(names) else f"#{i}"
        raise PacketError("nonfinite", f"value {label} is {values[i]} ({bad.size} non-finite values)")


def build_packet(device_id: str, weights: Sequence[float] | np.ndarray, pose: Sequence[float] | np.ndarray | None = None,
                 *, subject: str = "Avatar", frame: int = 0, subframe: float = 0.0,
                 fps: tuple[int, int] = (60, 1), version: int = VERSION) -> bytes:
    """A v6 packet as the app sends it (values are not checked, so tests can build bad ones)."""
    w = np.asarray(weights, dtype=np.float32).reshape(-1)
    p = np.zeros(N_POSE, np.float32) if pose is None else np.asarray(pose, dtype=np.float32).reshape(-1)
    if w.size != N_BLENDSHAPES or p.size != N_POSE:
        raise ValueError(f"need {N_BLENDSHAPES} weights and {N_POSE} pose values, got {w.size} and {p.size}")
    dev, sub = device_id.encode("utf-8"), subject.encode("utf-8")
    return b"".join((
        struct.pack(">Bi", version, len(dev)), dev, struct.pack(">i", len(sub)), sub,
        _TAIL.pack(frame, subframe, fps[0], fps[1], N_VALUES),
        np.concatenate([w, p]).astype(_BE_F32).tobytes(),
    ))


def build_packets(device_ids: Sequence[str], values: np.ndarray, *, subject: str = "Avatar", frame: int = 0,
                  subframe: float = 0.0, fps: tuple[int, int] = (60, 1)) -> list[bytes]:
    """One v6 packet per device for one frame; ``values`` is (N, 61). Fast enough for load tests."""
    vals = np.asarray(values, dtype=_BE_F32)
    if vals.shape != (len(device_ids), N_VALUES):
        raise ValueError(f"values must be ({len(device_ids)}, {N_VALUES}), got {vals.shape}")
    tail = _TAIL.pack(frame, subframe, fps[0], fps[1], N_VALUES)
    return [_prefix(d, subject) + tail + row.tobytes() for d, row in zip(device_ids, vals)]


@lru_cache(maxsize=65536)
def _prefix(device_id: str, subject: str) -> bytes:
    dev, sub = device_id.encode("utf-8"), subject.encode("utf-8")
    return struct.pack(">Bi", VERSION, len(dev)) + dev + struct.pack(">i", len(sub)) + sub


# --- JSON packets ----------------------------------------------------------------------------
def parse_json_packet(data: bytes | bytearray | memoryview) -> LiveLinkFrame:
    """``{"session": id, "blendshapes": {name: w} | [52 floats], "pose": [9 floats]?, "frame": int?}``.

    Names may be camelCase or PascalCase; missing names are 0. Raises PacketError.
    """
    if len(data) > MAX_JSON_BYTES:
        raise PacketError("oversized", f"JSON packet of {len(data)} bytes is over the {MAX_JSON_BYTES}-byte limit")
    try:
        doc = json.loads(bytes(data).decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise PacketError("encoding", f"JSON packet is not UTF-8: {exc.reason}") from None
    except (ValueError, RecursionError) as exc:
        raise PacketError("json", f"bad JSON packet: {exc}") from None
    if not isinstance(doc, dict):
        raise PacketError("json", f"JSON packet must be an object, got {type(doc).__name__}")
    session = doc.get("session")
    if not isinstance(session, str) or not session or len(session.encode("utf-8")) > MAX_NAME_BYTES:
        raise PacketError("json", f"JSON packet needs a 'session' string of 1..{MAX_NAME_BYTES} bytes")
    shapes = doc.get("blendshapes")
    if isinstance(shapes, dict):
        weights = np.zeros(N_BLENDSHAPES, np.float32)
        index = _name_index()
        for name, value in shapes.items():
            i = index.get(name.lower()) if isinstance(name, str) else None
            if i is None:
                raise PacketError("json", f"unknown blendshape name {name!r} in JSON packet")
            weights[i] = _floats([value], 1, f"blendshape {name}")[0]
    elif isinstance(shapes, list):
        weights = _floats(shapes, N_BLENDSHAPES, "'blendshapes'")
    else:
        raise PacketError("json", "JSON packet needs 'blendshapes': a {name: weight} object or a list of 52 floats")
    pose = doc.get("pose")
    pose = np.zeros(N_POSE, np.float32) if pose is None else _floats(pose, N_POSE, "'pose'")
    frame = doc.get("frame", -1)
    if not isinstance(frame, int) or isinstance(frame, bool) or not -(2**31) <= frame < 2**31:
        raise PacketError("json", f"'frame' must be an int32, got {frame!r}")
    _check_finite(np.concatenate([weights, pose]))
    return LiveLinkFrame(session, "", frame, 0.0, (0, 1), weights, pose)


def _floats(values: Any, n: int, what: str) -> np.ndarray:
    if not isinstance(values, list) or len(values) != n:
        raise PacketError("json", f"{what} must be a list of {n} numbers")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise PacketError("json", f"{what} must hold numbers only")
    try:
        with np.errstate(over="ignore"):  # too large for float32 becomes inf, reported as non-finite
            return np.array(values, dtype=np.float64).astype(np.float32)
    except OverflowError:
        raise PacketError("nonfinite", f"{what} holds a number too large for float32") from None


def build_json_packet(session: str, weights: Sequence[float] | Mapping[str, float] | np.ndarray,
                      pose: Sequence[float] | np.ndarray | None = None, frame: int | None = None) -> bytes:
    """The JSON form of a packet (a mapping of names, or 52 weights in Apple order)."""
    doc: dict[str, Any] = {"session": session}
    doc["blendshapes"] = dict(weights) if isinstance(weights, Mapping) else [float(v) for v in np.asarray(weights).reshape(-1)]
    if pose is not None:
        doc["pose"] = [float(v) for v in np.asarray(pose).reshape(-1)]
    if frame is not None:
        doc["frame"] = frame
    return json.dumps(doc, separators=(",", ":")).encode()


def parse_datagram(data: bytes | bytearray | memoryview) -> LiveLinkFrame:
    """Either form: JSON if it starts with ``{`` (after whitespace), else a binary packet."""
    if len(data) and data[0] in b"{ \t\r\n":
        return parse_json_packet(data)
    return parse_packet(data)


# --- the container file ----------------------------------------------------------------------
def read_container(path: str | Path) -> list[bytes]:
    """Packets of a container file: uint8 version (6), uint32 count, then (uint32 length, payload)*.

    Raises ValueError naming the file and the byte offset of the problem.
    """
    blob = Path(path).read_bytes()
    if len(blob) < 5:
        raise ValueError(f"{path}: not a packet container ({len(blob)} bytes)")
    version, count = struct.unpack_from(">BI", blob)
    if version != VERSION:
        raise ValueError(f"{path}: container version {version}, expected {VERSION}")
    packets, pos = [], 5
    for i in range(count):
        if len(blob) - pos < 4:
            raise ValueError(f"{path}: truncated at byte {pos}: packet {i} of {count} missing")
        (length,) = struct.unpack_from(">I", blob, pos)
        pos += 4
        if len(blob) - pos < length:
            raise ValueError(f"{path}: truncated at byte {pos}: packet {i} needs {length} bytes")
        packets.append(blob[pos:pos + length])
        pos += length
    if pos != len(blob):
        raise ValueError(f"{path}: {len(blob) - pos} unexpected bytes after {count} packets at byte {pos}")
    return packets


def build_container(packets: Iterable[bytes]) -> bytes:
    """The container form of some packets (for tests and tools)."""
    packets = list(packets)
    return struct.pack(">BI", VERSION, len(packets)) + b"".join(struct.pack(">I", len(p)) + p for p in packets)
