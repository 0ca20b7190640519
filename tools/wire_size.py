"""Bytes per frame of the avatar/packet wire format on a real Live Link Face capture.

Compares several precisions and reference modes with raw float32 and with JSON of the same
frames, so a change to ``nodes/wireformat.py`` can be judged on real motion, not synthetic.

    .venv/bin/python tools/wire_size.py [--capture PATH] [--keyframe-interval 60]
"""
from __future__ import annotations

import argparse
import json
import struct
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nodes import wireformat as wf  # noqa: E402
from nodes.tables import arkit_names  # noqa: E402

CAPTURE = ROOT.parent / "shared" / "data" / "livelink" / "llv_dao_packets.bin"


def read_capture(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Frame numbers and the 61 values of each Live Link Face v6 packet in the container."""
    data = path.read_bytes()
    _, count = struct.unpack_from(">BI", data, 0)
    off, frames, values = 5, [], []
    for _ in range(count):
        (size,) = struct.unpack_from(">I", data, off)
        p, off = data[off + 4:off + 4 + size], off + 4 + size
        o = 1
        for _ in range(2):  # device id, subject name
            o += 4 + struct.unpack_from(">i", p, o)[0]
        frames.append(struct.unpack_from(">i", p, o)[0])
        n = p[o + 16]
        values.append(np.frombuffer(p, ">f4", n, o + 17))
    return np.array(frames), np.array(values, dtype=np.float32)


def packet_sizes(weights: np.ndarray, pose: np.ndarray | None, fps_frames: np.ndarray, bits: int,
                 interval: int, ref_interval: int) -> np.ndarray:
    enc = wf.Encoder(bits=bits, keyframe_interval=interval, ref_interval=ref_interval)
    pts = 10**12 + (fps_frames - fps_frames[0]) * 1_000_000_000 // 60
    return np.array([len(enc.encode(["capture"], weights[i:i + 1], int(pts[i]), wf.TABLE_ARKIT52,
                                    None if pose is None else pose[i:i + 1])[0]) for i in range(len(weights))])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--capture", type=Path, default=CAPTURE)
    ap.add_argument("--keyframe-interval", type=int, default=60)
    ap.add_argument("--bits", type=int, nargs="+", default=[6, 8, 10, 12, 16])
    args = ap.parse_args(argv)
    frames, values = read_capture(args.capture)
    weights, pose = values[:, :52], values[:, 52:61]
    names = arkit_names()
    as_json = np.mean([len(json.dumps({n: round(float(x), 6) for n, x in zip(names, row)}, separators=(",", ":")))
                       for row in weights])
    print(f"{args.capture.name}: {len(weights)} frames, 52 ARKit weights (+ 9 pose values)")
    print(f"  raw float32 weights: {weights[0].nbytes} B/frame   JSON {{name: value}}: {as_json:.0f} B/frame")
    print(f"  wire format, keyframe every {args.keyframe_interval} frames (average over all packets, B/frame):")
    print("   bits | deltas from keyframe | from previous frame | same + pose (12-bit) key / prev")
    for bits in args.bits:
        row = [packet_sizes(weights, p, frames, bits, args.keyframe_interval, r).mean()
               for p, r in ((None, 0), (None, 1), (pose, 0), (pose, 1))]
        print(f"   {bits:4d} | {row[0]:20.1f} | {row[1]:19.1f} | {row[2]:.1f} / {row[3]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
