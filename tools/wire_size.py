"""Bytes per frame of the avatar/packet wire format on a real Live Link Face capture.

Measures what the compressor sees in each of three setups, at several precisions:

- raw: the capture's frames as they came from the phone (ARKit jitter included);
- smoothed: the same frames through the blender's One Euro filter at the blender's default
  params (``nodes.face.OneEuro``), one frame per 1/60 s tick, the last frame held over the
  capture's gap, as the blender does;
- pipeline: the real nodes ``mapper`` (identity) -> ``blender`` (defaults) -> ``lod`` (L0), run
  in-process on simulated time, so blends, clamps and micro-expressions are all in.

For each it encodes one session with the default (deltas from the previous frame,
``ref_interval=1``) and with deltas from the keyframe (``ref_interval=0``), decodes every
packet and checks each weight is within half a quantization step of its input. Averages
include the keyframes (every ``--keyframe-interval`` frames).

    .venv/bin/python tools/wire_size.py [--capture PATH] [--keyframe-interval 120] [--bits 6 8 ...]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nodes import livelink  # noqa: E402
from nodes import wire as wf
from nodes.face import OneEuro, arkit_names  # noqa: E402
from nodes.livelink import SAMPLE_CAPTURE  # noqa: E402
from runtime.registry import get_node_type  # noqa: E402

CAPTURE = SAMPLE_CAPTURE
FPS = 60


def read_capture(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frame numbers, weights (T, 52) and pose (T, 9) of a Live Link Face packet container."""
    frames = [livelink.parse_packet(p) for p in livelink.read_container(path)]
    return (np.array([f.frame for f in frames]), np.array([f.weights for f in frames], dtype=np.float32),
            np.array([f.pose for f in frames], dtype=np.float32))


def on_ticks(frames: np.ndarray, *arrays: np.ndarray) -> list[np.ndarray]:
    """One row per 1/60 s tick from the first frame to the last, holding the latest frame over gaps."""
    idx = np.searchsorted(frames, np.arange(frames[0], frames[-1] + 1), side="right") - 1
    return [a[idx] for a in arrays]


def one_euro_smoothed(frames: np.ndarray, weights: np.ndarray, pose: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The blender's smoothing alone: clip weights to 0..1, One Euro at the blender's default params."""
    p = {k: get_node_type("blender").params[k].default for k in ("min_cutoff", "beta", "d_cutoff")}
    euro = OneEuro(weights.shape[1] + pose.shape[1], p["min_cutoff"], p["beta"], p["d_cutoff"])
    w, ps = on_ticks(frames, weights, pose)
    out = np.array([euro(np.concatenate([np.clip(a, 0, 1), b])[None], 1.0 / FPS)[0] for a, b in zip(w, ps)])
    return np.clip(out[:, :weights.shape[1]], 0, 1).astype(np.float32), out[:, weights.shape[1]:].astype(np.float32)


def node_pipeline(frames: np.ndarray, weights: np.ndarray, pose: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """mapper (identity) -> blender (defaults) -> lod (level 0) on simulated time: what reaches the compressor."""
    from runtime import Message
    from runtime.testing import NodeHarness

    mapper, blender, lod = NodeHarness("mapper", profile="identity"), NodeHarness("blender"), NodeHarness("lod")
    out_w, out_p = [], []
    t0 = frames[0]
    for f in range(int(frames[0]), int(frames[-1]) + 1):
        j = np.searchsorted(frames, f)
        if j < len(frames) and frames[j] == f:  # a captured frame arrives; none during the gap
            msg = Message("arkit/blendshapes", None, {"weights": weights[j:j + 1], "pose": pose[j:j + 1]},
                          int(f - t0) * 1_000_000_000 // FPS, ["performer"])
            for _, m in mapper.feed("in", msg):
                blender.feed("capture", m)
        for _, m in blender.advance(1.0 / FPS):
            for _, m2 in lod.feed("in", m):
                out_w.append(m2.arrays["weights"][0])
                out_p.append(m2.arrays["pose"][0])
    return np.array(out_w, dtype=np.float32), np.array(out_p, dtype=np.float32)


def packet_sizes(weights: np.ndarray, pose: np.ndarray | None, bits: int, interval: int,
                 ref_interval: int) -> np.ndarray:
    """Bytes of each packet of one session; asserts the decoded weights are within half a step."""
    enc = wf.Encoder(bits=bits, keyframe_interval=interval, ref_interval=ref_interval)
    dec = wf.Decoder()
    half = wf.step(bits, *wf.WEIGHT_RANGE) / 2
    sizes = []
    for i in range(len(weights)):
        packet = enc.encode(["capture"], weights[i:i + 1], 10**12 + i * 1_000_000_000 // FPS, wf.TABLE_ARKIT52,
                            None if pose is None else pose[i:i + 1])[0]
        frame = dec.decode(packet)
        err = np.abs(frame.weights.astype(np.float64) - np.clip(weights[i].astype(np.float64), 0, 1)).max()
        assert err <= half + 1e-6, f"frame {i}: error {err} above half a step {half}"
        sizes.append(len(packet))
    return np.array(sizes)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--capture", type=Path, default=CAPTURE)
    ap.add_argument("--keyframe-interval", type=int, default=120)
    ap.add_argument("--bits", type=int, nargs="+", default=[6, 8, 10, 12, 16])
    args = ap.parse_args(argv)
    frames, weights, pose = read_capture(args.capture)
    names = arkit_names()
    as_json = np.mean([len(json.dumps({n: round(float(x), 6) for n, x in zip(names, row)}, separators=(",", ":")))
                       for row in weights])
    streams = {"raw capture": (weights, pose), "smoothed (One Euro, blender defaults)":
               one_euro_smoothed(frames, weights, pose), "pipeline (mapper > blender > lod L0)":
               node_pipeline(frames, weights, pose)}
    print(f"{args.capture.name}: {len(weights)} frames ({frames[-1] - frames[0] + 1} ticks at {FPS} fps), "
          f"52 ARKit weights (+ 9 pose values)")
    print(f"  raw float32 weights: {weights[0].nbytes} B/frame   JSON {{name: value}}: {as_json:.0f} B/frame")
    print(f"  avatar/packet v{wf.VERSION}, keyframe every {args.keyframe_interval} frames, average B/frame over all "
          f"packets (keyframes included); every decoded weight checked within half a step")
    for title, (w, p) in streams.items():
        print(f"  {title}, {len(w)} frames:")
        print("     bits | default (ref_interval=1) | from keyframe (ref_interval=0) | default + 12-bit pose")
        for bits in args.bits:
            row = [packet_sizes(w, pp, bits, args.keyframe_interval, r).mean()
                   for pp, r in ((None, 1), (None, 0), (p, 1))]
            print(f"     {bits:4d} | {row[0]:24.1f} | {row[1]:30.1f} | {row[2]:.1f}")
        # a clip of a few seconds holds few keyframes: what a long stream averages (default column)
        once = packet_sizes(w, None, 8, len(w) + 1, 1)
        delta = once[1:].mean()
        print(f"     8-bit default, a long stream: {delta + (once[0] - delta) / args.keyframe_interval:.2f} B/frame "
              f"(deltas {delta:.2f}, a keyframe {once[0]:.0f} every {args.keyframe_interval})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
