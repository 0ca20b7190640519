"""The msgpack stream file that ``recorder`` writes and ``player`` replays.

One msgpack map per message, appended in arrival order::

    {"caps", "seq", "pts_ns", "session", "data", "trace", "t_ns",
     "arrays": {name: [dtype, shape, raw bytes]}}

``t_ns`` is when the recorder received it; the player replays at the ``pts_ns`` spacing.
"""
from __future__ import annotations

from pathlib import Path
from typing import IO, Any, Iterator

import msgpack
import numpy as np

from .message import Message


def message_record(msg: Message, t_ns: int) -> dict[str, Any]:
    return {
        "caps": msg.caps, "seq": msg.seq, "pts_ns": msg.pts_ns, "session": msg.session, "data": msg.data,
        "trace": msg.trace, "t_ns": t_ns,
        "arrays": {k: [a.dtype.str, list(a.shape), a.tobytes()] for k, a in msg.arrays.items()},
    }


def record_message(rec: dict[str, Any]) -> Message:
    arrays = {k: np.frombuffer(b, dtype=np.dtype(d)).reshape(s) for k, (d, s, b) in (rec.get("arrays") or {}).items()}
    return Message(caps=rec["caps"], data=rec.get("data"), arrays=arrays, pts_ns=rec.get("pts_ns", 0),
                   session=rec.get("session"), trace=rec.get("trace"), seq=rec.get("seq", -1))


class RecordingWriter:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f: IO[bytes] = open(self.path, "wb")
        self._pack = msgpack.Packer(use_bin_type=True).pack
        self.count = 0

    def write(self, msg: Message, t_ns: int) -> None:
        self._f.write(self._pack(message_record(msg, t_ns)))
        self.count += 1

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()


def read_records(path: str | Path) -> Iterator[dict[str, Any]]:
    """Every record in a recording; raises ValueError naming the file if it is corrupt."""
    with open(path, "rb") as f:
        unpacker = msgpack.Unpacker(f, raw=False, strict_map_key=False)
        try:
            for rec in unpacker:
                if not isinstance(rec, dict) or "caps" not in rec:
                    raise ValueError(f"{path}: not an avatar recording (record without 'caps')")
                yield rec
        except msgpack.UnpackException as exc:
            raise ValueError(f"{path}: corrupt recording: {exc}") from exc


def read_recording(path: str | Path) -> list[Message]:
    return [record_message(r) for r in read_records(path)]
