"""Recordings a graph is judged on: Live Link Face takes as frames on a regular clock, with their hash.

A recording is what a phone would send: per frame 52 ARKit weights and 9 pose values, at a fixed
rate (60 fps). It comes from a Live Link Face CSV export or a packet container (``.bin``, the
format of ``tests/data/livelink``); a recording whose frames have gaps (packets the original
capture lost) is put on the regular clock by linear interpolation. Its ``sha256`` is the hash of
the file, so a baseline or a tuned graph says exactly which data it was measured on.

``python -m orchestrator.recordings DIR`` writes the default set into ``DIR``:

- ``dao.bin``: the real iPhone capture in ``tests/data/livelink`` (3 s of a face, copied as is);
- ``dao_mirror.bin`` and ``dao_reverse.bin``: the same capture mirrored left/right and played
  backwards: augmentations that keep its real sensor noise, not new takes;
- ``speech_N.bin``: a speaking mouth: Harvard sentences spoken by espeak-ng, their phones
  through the ``viseme`` node (co-articulated ARKit mouth and jaw) in simulated time, within
  ARKit's constraints (the mapper's identity table), as a phone's frames are.
"""
from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nodes.face import arkit_names, arkit_pose_names, load_morph_table
from nodes.livelink import (
    N_BLENDSHAPES,
    N_VALUES,
    SAMPLE_CAPTURE,
    build_container,
    build_packets,
    parse_packet,
    read_container,
    read_take,
)
from nodes.speech import HARVARD_SENTENCES

FPS = 60.0
DEFAULT_FOLDER = Path(__file__).resolve().parents[1] / "out" / "recordings"
CHECK_SET = ("dao", "dao_mirror", "speech_1", "speech_2")  # what avatar check measures by default
SUFFIXES = (".bin", ".csv")
SENTENCES = HARVARD_SENTENCES[:6]  # the speech recordings' texts


@dataclass(frozen=True)
class Recording:
    """One take: ``values`` (N, 61) float32 (52 weights, then the 9 pose values) at ``fps``."""

    name: str
    path: str
    sha256: str
    values: np.ndarray
    fps: float = FPS

    @property
    def seconds(self) -> float:
        return len(self.values) / self.fps

    def looped(self, frames: int) -> np.ndarray:
        """The first ``frames`` frames of the take played again and again."""
        return self.values[np.arange(frames) % len(self.values)]

    def describe(self) -> dict[str, object]:
        return {"name": self.name, "path": self.path, "sha256": self.sha256, "frames": len(self.values),
                "seconds": round(self.seconds, 3)}


def _regular(times: np.ndarray, values: np.ndarray, fps: float) -> np.ndarray:
    """Values on a regular 1/fps clock from the first frame to the last (gaps interpolated)."""
    grid = np.arange(int(round((times[-1] - times[0]) * fps)) + 1) / fps + times[0]
    if len(grid) == len(times) and np.allclose(grid, times, atol=0.25 / fps):
        return values.astype(np.float32)
    return np.stack([np.interp(grid, times, values[:, j]) for j in range(values.shape[1])], axis=1).astype(np.float32)


def load_recording(path: str | Path) -> Recording:
    """A CSV export or a packet container; ValueError naming the file when it is neither."""
    path = Path(path)
    try:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if path.suffix.lower() == ".csv":
        take = read_take(path, FPS)
        times, values = take.times, np.concatenate([take.weights, take.pose], axis=1)
    elif path.suffix.lower() == ".bin":
        try:
            frames = [parse_packet(p) for p in read_container(path)]
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
        if not frames:
            raise ValueError(f"{path}: no packets in it")
        fps = frames[0].fps[0] / frames[0].fps[1]
        t = np.array([f.frame + f.subframe for f in frames], np.float64)
        times = (t - t[0]) / fps
        values = np.stack([np.concatenate([f.weights, f.pose]) for f in frames])
    else:
        raise ValueError(f"{path}: a recording is a Live Link Face CSV export (.csv) or a packet container (.bin)")
    if len(times) < 2 or np.any(np.diff(times) <= 0):
        raise ValueError(f"{path}: needs at least 2 frames with increasing times")
    return Recording(path.stem, str(path), digest, _regular(times, values.astype(np.float64), FPS))


def load_recordings(where: str | Path | list[str | Path]) -> list[Recording]:
    """Every recording in a folder (sorted by name), or the files given."""
    paths: list[Path] = []
    for item in [where] if isinstance(where, (str, Path)) else where:
        p = Path(item)
        if p.is_dir():
            paths += sorted(q for q in p.iterdir() if q.suffix.lower() in SUFFIXES)
        else:
            paths.append(p)
    if not paths:
        raise ValueError(f"{where}: no recordings (.csv, .bin) there")
    recordings = [load_recording(p) for p in paths]
    names = [r.name for r in recordings]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"{where}: two recordings are named {', '.join(twice)} (a name is the file's stem)")
    return recordings


# --- the default set ---------------------------------------------------------------------------------
def write_container(path: Path, values: np.ndarray, device: str = "RECORDING", fps: float = FPS) -> None:
    """``values`` (N, 61) as a packet container, one v6 packet per frame."""
    packets = [build_packets([device], v[None, :], subject=device, frame=i, fps=(int(round(fps)), 1))[0]
               for i, v in enumerate(values.astype(np.float32))]
    path.write_bytes(build_container(packets))


def mirrored(values: np.ndarray) -> np.ndarray:
    """Left and right swapped: each ...Left weight with its ...Right twin, yaw and roll negated."""
    names = arkit_names()
    order = list(range(N_VALUES))
    for i, n in enumerate(names):
        for a, b in (("Left", "Right"), ("Right", "Left")):
            if n.endswith(a) and n[: -len(a)] + b in names:
                order[i] = names.index(n[: -len(a)] + b)
    out = values[:, order].copy()
    pose = arkit_pose_names()  # headYaw, headPitch, headRoll, leftEye..., rightEye...
    pidx = {n: N_BLENDSHAPES + i for i, n in enumerate(pose)}
    for i, n in enumerate(pose):
        src = n.replace("left", "RIGHT").replace("right", "left").replace("RIGHT", "right")
        out[:, N_BLENDSHAPES + i] = values[:, pidx.get(src, N_BLENDSHAPES + i)]
        if n.lower().endswith(("yaw", "roll")):
            out[:, N_BLENDSHAPES + i] *= -1
    return out


def speech_values(text: str, fps: float = FPS) -> np.ndarray:
    """(N, 61) frames of a mouth saying ``text``: espeak-ng's phones through the viseme node, in
    simulated time (``runtime.testing.NodeHarness``), 0.3 s of rest before and after, within ARKit's
    constraints as a phone's frames are."""
    from nodes.speech import speak
    from runtime import Message
    from runtime.testing import NodeHarness

    _, phones = speak(text)
    lead = 0.3
    h = NodeHarness("viseme", articulation=False, rate=fps, max_lag_ms=0.0)
    rows = [[0, p, int((lead + s) * 1e9), int((lead + e) * 1e9)] for p, s, e in phones]
    h.feed("in", Message("phonemes/arpabet", {"phonemes": rows}, {}, 0, ["s"]))
    end = lead + (phones[-1][2] if phones else 0.0) + lead
    frames = [m.arrays["weights"][0] for _, m in h.advance(end + 0.5) if m.pts_ns <= end * 1e9]
    # as a phone's weights obey ARKit's own rules (mouthClose at most jawOpen, ...): the identity table's
    weights = load_morph_table("identity").apply(np.clip(np.stack(frames), 0.0, 1.0)).astype(np.float64)
    return np.concatenate([weights, np.zeros((len(weights), N_VALUES - N_BLENDSHAPES))], axis=1)


def write_default_set(folder: str | Path, speech: int = 4) -> list[Path]:
    """The default recordings (module doc) into ``folder``; returns their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    dao = folder / "dao.bin"
    shutil.copyfile(SAMPLE_CAPTURE, dao)
    real = load_recording(dao).values
    written = [dao]
    for name, values in (("dao_mirror", mirrored(real)), ("dao_reverse", real[::-1])):
        write_container(folder / f"{name}.bin", values)
        written.append(folder / f"{name}.bin")
    for i, text in enumerate(SENTENCES[:speech], 1):
        path = folder / f"speech_{i}.bin"
        write_container(path, speech_values(text))
        written.append(path)
    return written


def default_recordings(folder: str | Path = DEFAULT_FOLDER) -> list[Recording]:
    """The default set (written into ``folder`` first when it is not there yet)."""
    folder = Path(folder)
    names = ["dao", "dao_mirror", "dao_reverse"] + [f"speech_{i}" for i in range(1, 5)]
    if not all((folder / f"{n}.bin").is_file() for n in names):
        write_default_set(folder)
    return load_recordings([folder / f"{n}.bin" for n in names])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Write the default recordings (the real capture, its mirrored and "
                                             "reversed versions, spoken sentences) into a folder.")
    ap.add_argument("folder")
    ap.add_argument("--speech", type=int, default=4, choices=range(len(SENTENCES) + 1),
                    help=f"spoken sentences (default 4, at most {len(SENTENCES)})")
    a = ap.parse_args(argv)
    for path in write_default_set(a.folder, a.speech):
        r = load_recording(path)
        print(f"{path}: {len(r.values)} frames, {r.seconds:.2f} s, sha256 {r.sha256[:12]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
