"""Send Live Link Face UDP packets, as iPhones running the app would: a test feed and load generator.

Sources: a Live Link Face CSV export (--csv), a packet container file (--bin, the default is the
real capture in shared/data/livelink), or synthetic faces (--synthetic). Recorded timing is kept
(scaled by --speed; 0 = as fast as possible). --devices N sends every frame as N devices with
distinct 36-character ids, so one process can stand in for a room full of phones: a frame's packets
go out with one ``sendmmsg`` (``nodes.livelink._udp``; a ``sendto`` per packet where it is not built).

    python tools/llf_send.py --port 11111                      # the real capture, once
    python tools/llf_send.py --csv take.csv --loop --speed 2   # a take, looped, twice as fast
    python tools/llf_send.py --synthetic --devices 200 --duration 30
"""
from __future__ import annotations

import argparse
import math
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import Iterator

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nodes.compiled import load  # noqa: E402
from nodes.livelink import (  # noqa: E402
    N_BLENDSHAPES,
    N_VALUES,
    SAMPLE_CAPTURE,
    build_json_packet,
    build_packets,
    parse_packet,
    read_container,
    read_take,
)

DEFAULT_BIN = SAMPLE_CAPTURE
_udp = load("nodes.livelink._udp")  # sendmmsg; None: sendto per packet

Frame = tuple[float, int, np.ndarray]  # seconds since the first frame, frame number, (61,) values


def device_ids(n: int, first: str | None = None) -> list[str]:
    """``n`` distinct, stable, 36-character device ids (the first may be the recorded one)."""
    ids = [str(uuid.uuid5(uuid.NAMESPACE_URL, f"avatar-engine/llf_send/{i}")).upper() for i in range(n)]
    if first and n >= 1:
        ids[0] = first
    return ids


def bin_frames(path: str | Path) -> tuple[list[Frame], float, str | None]:
    """Frames of a container file, timed by their frame numbers; also the fps and the device id."""
    parsed = [parse_packet(p) for p in read_container(path)]
    if not parsed:
        return [], 60.0, None
    fps = parsed[0].fps[0] / parsed[0].fps[1]
    f0 = parsed[0].frame + parsed[0].subframe
    frames = [((f.frame + f.subframe - f0) / fps, f.frame, np.concatenate([f.weights, f.pose])) for f in parsed]
    return frames, fps, parsed[0].device_id


def csv_frames(path: str | Path, fps: float) -> list[Frame]:
    take = read_take(path, fps)
    values = np.concatenate([take.weights, take.pose], axis=1)
    return [(float(t), i, values[i]) for i, t in enumerate(take.times)]


def synthetic_values(t: float, n: int) -> np.ndarray:
    """(n, 61) smooth, distinct faces at time ``t``: every device has its own phase."""
    phase = np.arange(n, dtype=np.float64)[:, None] * 0.37 + np.arange(N_VALUES)[None, :] * 0.11
    w = 0.5 + 0.5 * np.sin(2 * math.pi * 0.5 * t + phase)
    w[:, N_BLENDSHAPES:] = 0.2 * np.sin(2 * math.pi * 0.2 * t + phase[:, N_BLENDSHAPES:])
    return w.astype(np.float32)


def schedule(frames: list[Frame], fps: float, loop: bool) -> Iterator[Frame]:
    """The frames again and again (when looping), timestamps running on past the end."""
    offset = 0.0
    while frames:
        for t, n, v in frames:
            yield t + offset, n, v
        if not loop:
            return
        offset += frames[-1][0] + 1.0 / fps


def synthetic(rate: float, duration: float) -> Iterator[Frame]:
    i = 0
    while duration <= 0 or i / rate < duration:
        yield i / rate, i, np.empty(0, np.float32)  # values are made per device set when sent
        i += 1


def send(frames: Iterator[Frame], host: str, port: int, ids: list[str], *, speed: float = 1.0, fps: float = 60.0,
         count: int = 0, as_json: bool = False, subject: str = "llf_send", quiet: bool = False) -> int:
    """Send frames to host:port, each as every device in ``ids``; returns the packets sent."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    target = (host, port)
    if _udp is not None:
        sock.connect(target)  # sendmmsg sends to the connected address
    sent = frames_sent = 0
    start = time.monotonic()
    try:
        for t, frame_no, values in frames:
            if count and frames_sent >= count:
                break
            if speed > 0:
                delay = start + t / speed - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            rows = synthetic_values(t, len(ids)) if values.size == 0 else np.broadcast_to(values, (len(ids), N_VALUES))
            if as_json:
                packets = [build_json_packet(d, r[:N_BLENDSHAPES], r[N_BLENDSHAPES:], frame_no) for d, r in zip(ids, rows)]
            else:
                frac = (t * fps) % 1.0
                packets = build_packets(ids, rows, subject=subject, frame=frame_no, subframe=frac,
                                        fps=(int(round(fps)), 1))
            if _udp is not None:  # refusals (nobody listening yet) are skipped, as sendto ignores them
                _udp.send_batch(sock.fileno(), packets)
            else:
                for p in packets:
                    sock.sendto(p, target)
            sent += len(packets)
            frames_sent += 1
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
    if not quiet:
        took = time.monotonic() - start
        print(f"sent {sent} packets ({frames_sent} frames x {len(ids)} devices) to {host}:{port} in {took:.2f}s",
              file=sys.stderr)
    return sent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog="\n".join(__doc__.splitlines()[2:]),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1", help="where arkit_source listens (default 127.0.0.1)")
    ap.add_argument("--port", type=int, default=11111, help="its UDP port (default 11111)")
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--csv", metavar="PATH", help="a Live Link Face CSV export")
    src.add_argument("--bin", metavar="PATH", help=f"a packet container file (default {DEFAULT_BIN})")
    src.add_argument("--synthetic", action="store_true", help="generated faces (see --rate, --duration)")
    ap.add_argument("--devices", type=int, default=1, help="send each frame as N devices with distinct ids")
    ap.add_argument("--speed", type=float, default=1.0, help="timing scale; 0 = as fast as possible")
    ap.add_argument("--loop", action="store_true", help="start the recording again at its end")
    ap.add_argument("--count", type=int, default=0, help="stop after N frames (0 = no limit)")
    ap.add_argument("--fps", type=float, default=60.0, help="frame rate of the CSV's timecodes (default 60)")
    ap.add_argument("--rate", type=float, default=60.0, help="synthetic frames per second (default 60)")
    ap.add_argument("--duration", type=float, default=10.0, help="synthetic seconds; 0 = until interrupted")
    ap.add_argument("--json", action="store_true", help="send the JSON form instead of v6 binary packets")
    ap.add_argument("--quiet", action="store_true", help="print no summary")
    args = ap.parse_args(argv)
    if args.devices < 1 or args.speed < 0 or args.rate <= 0 or args.fps <= 0:
        ap.error("--devices must be >= 1, --speed >= 0, --rate and --fps > 0")
    try:
        if args.synthetic:
            frames, fps, first = synthetic(args.rate, args.duration), args.rate, None
        elif args.csv:
            frames, fps, first = schedule(csv_frames(args.csv, args.fps), args.fps, args.loop), args.fps, None
        else:
            recorded, fps, first = bin_frames(args.bin or DEFAULT_BIN)
            frames = schedule(recorded, fps, args.loop)
    except (OSError, ValueError) as exc:
        print(f"llf_send: {exc}", file=sys.stderr)
        return 2
    ids = device_ids(args.devices, first)
    send(frames, args.host, args.port, ids, speed=args.speed, fps=fps, count=args.count,
         as_json=args.json, quiet=args.quiet)
    return 0


if __name__ == "__main__":
    sys.exit(main())
