"""Write Live Link Face packets from a container file as a CSV in the app's export format.

The test take ``tests/data/llf_dao_take.csv`` is this tool's output for the real packets in
``shared/data/livelink/llv_dao_packets.bin``: same values (float32, written so they read back
bit for bit), the export's column order, and timecodes made from the packets' frame numbers.

    python tools/llf_bin_to_csv.py ../shared/data/livelink/llv_dao_packets.bin tests/data/llf_dao_take.csv --rows 60
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nodes.face import arkit_names, arkit_pose_names  # noqa: E402
from nodes.livelink import LiveLinkFrame, export_columns, parse_packet, read_container  # noqa: E402


def timecode(frame: int, subframe: float, fps: int) -> str:
    """``HH:MM:SS:FF.fff`` of a frame count at ``fps`` (wrapped at midnight, like a clock)."""
    seconds, ff = divmod(frame, fps)
    h, rest = divmod(seconds % 86400, 3600)
    m, s = divmod(rest, 60)
    sub = min(999, max(0, int(round(subframe * 1000))))
    return f"{h:02d}:{m:02d}:{s:02d}:{ff:02d}.{sub:03d}"


def _num(v: np.float32) -> str:
    return np.format_float_positional(v, unique=True, trim="-")


def csv_lines(frames: list[LiveLinkFrame]) -> list[str]:
    """Header and one line per frame, columns in the export's order."""
    cols = export_columns()
    apple = [n.lower() for n in arkit_names() + arkit_pose_names()]
    order = [apple.index(c.lower()) for c in cols]
    lines = ["Timecode,BlendShapeCount," + ",".join(cols)]
    for f in frames:
        values = np.concatenate([f.weights, f.pose])[order]
        fps = max(1, round(f.fps[0] / f.fps[1]))
        lines.append(f"{timecode(f.frame, f.subframe, fps)},{len(cols)}," + ",".join(_num(v) for v in values))
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("container", help="packet container file (uint8 version, uint32 count, (uint32 len, packet)*)")
    ap.add_argument("output", help="CSV file to write")
    ap.add_argument("--rows", type=int, default=0, help="write only the first N packets (0 = all)")
    args = ap.parse_args(argv)
    packets = read_container(args.container)
    if args.rows > 0:
        packets = packets[: args.rows]
    lines = csv_lines([parse_packet(p) for p in packets])
    Path(args.output).write_text("\n".join(lines) + "\n")
    print(f"wrote {len(lines) - 1} frames to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
