"""Lip-sync measures: run speech through the nodes offline and compare mouth tracks.

The pieces ``tools/lipsync_eval.py`` prints and tests import:

- ``run_audio_path``: audio -> ``audio_phoneme`` -> ``viseme``, each node in a ``NodeHarness`` on
  simulated time, the audio fed in 20 ms chunks as a live source delivers them (each when its
  last sample is due), the viseme told the recognizer's declared latency as the runner would
  tell it. Exact and repeatable whatever the machine's load; the CPU time of both nodes is kept.
- ``run_text_path``: texts -> ``text_phoneme`` (espeak-ng, not real time) -> ``viseme``: the text
  path's frames, its exact phoneme times and the very audio it spoke (so the audio path can be
  compared with it on the same sound).
- ``energy_envelope``: the baseline every figure is set against, short-time RMS energy.
- ``on_grid`` and ``lagged_r``: tracks resampled onto one 100 Hz grid by time, and Pearson r at
  zero lag and at the best lag within +-1 s.
- ``read_audio``, ``read_capture``, ``write_llf_csv``: a user's capture (Live Link Face CSV and the
  take's .mov, or a CSV and a WAV) in, a synthetic capture out (tests).

Nodes are looked up by type name in the registry (tools import no node module), and only
params a node type declares are passed, so the tool follows the nodes as they change.
"""
from __future__ import annotations

import csv
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from nodes.face import arkit_names
from nodes.livelink import export_columns, parse_timecode, read_take
from nodes.speech import RATE, to_int16
from runtime import Message
from runtime.caps import caps_compatible
from runtime.latency import own_latency
from runtime.registry import get_node_type
from runtime.testing import NodeHarness

GRID_HZ = 100.0  # the common grid every track is compared on
CHUNK_MS = 20  # audio chunk, as audio_source and text_phoneme send it
SESSION = "s"
COL = {n: i for i, n in enumerate(arkit_names())}
MODES = ("live", "balanced", "file")


@dataclass
class Frames:
    """A mouth track: frame times (seconds on the audio's clock, sample 0 at 0) and ARKit weights."""

    times: np.ndarray  # float64 (N,)
    weights: np.ndarray  # float32 (N, 52), Apple order
    cpu_s: float = 0.0  # CPU seconds the nodes spent making it
    audio_s: float = 0.0  # seconds of audio it was made from
    latency_ms: float = 0.0  # how far frames ran behind the clock: the path's declared latency (viseme's included)
    params: dict[str, dict[str, Any]] = field(default_factory=dict)  # node type -> the params it ran with

    def channel(self, name: str) -> np.ndarray:
        return self.weights[:, COL[name]].astype(np.float64)


@dataclass
class Speech:
    """The text path's run: its audio, its phonemes (the truth for timing) and its frames."""

    pcm: np.ndarray  # int16, RATE, one continuous stream (zeros between sentences), sample 0 at time 0
    phones: list[tuple[str, float, float]]  # (ARPAbet, start s, end s) on the same clock
    frames: Frames


# --- running the nodes ---------------------------------------------------------------------------

def node_params(type_name: str, wanted: Mapping[str, Any]) -> dict[str, Any]:
    """Those of ``wanted`` the node type declares (a param it lacks, such as a new ``mode``, is left out)."""
    declared = get_node_type(type_name).params
    return {k: v for k, v in wanted.items() if k in declared}


def viseme_params(rate: float = 60.0, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The viseme's params for an offline run: ``rate`` frames/s, exact frame-count time (max_lag_ms 0)."""
    return {**node_params("viseme", {"rate": rate, "max_lag_ms": 0.0}), **(extra or {})}


class _Chain:
    """A source's messages into a viseme harness, routed by caps, with its latency told as the runner would."""

    def __init__(self, upstream: NodeHarness, vparams: Mapping[str, Any], direct_caps: str | None = None):
        self.vi = NodeHarness("viseme", "viseme", **dict(vparams))
        self.vparams = dict(vparams)
        self.cpu_s = 0.0
        self.routes: dict[str, str] = {}  # upstream output pad -> viseme input pad
        for out, opad in upstream.cls.outputs.items():
            for inp, ipad in self.vi.cls.inputs.items():
                if caps_compatible(opad.static_caps(_declared(upstream)) or "any", ipad.caps) and inp not in self.routes.values():
                    self.routes[out] = inp
                    break
        if not self.routes:
            raise RuntimeError(f"no output of {upstream.cls.__name__} fits an input of the viseme")
        # a viseme input for the audio itself (the graph would tee the source into it)
        self.direct = None if direct_caps is None else next(
            (p for p, pad in self.vi.cls.inputs.items()
             if p not in self.routes.values() and caps_compatible(direct_caps, pad.caps)), None)
        up_ns = own_latency(upstream.cls, _declared(upstream))
        pads = {p: up_ns for p in self.routes.values()}
        if self.direct is not None:
            pads[self.direct] = 0
        self.vi.node.on_latency(max(pads.values()), pads)
        # how far frames run behind the clock: the path's latency into the viseme and its own, per pad
        self.latency_ns = max(n + own_latency(self.vi.cls, self.vparams, p) for p, n in pads.items())
        self.frames: list[tuple[int, np.ndarray]] = []

    def forward(self, out: list[tuple[str, Message]]) -> None:
        for pad, msg in out:
            if pad in self.routes:
                self._vi(lambda m=msg, p=pad: self.vi.feed(self.routes[p], m))

    def _vi(self, fn: Any) -> None:
        t0 = time.process_time()
        out = fn()
        self.cpu_s += time.process_time() - t0
        for _, msg in out:
            if msg.caps == "arkit/blendshapes" and SESSION in msg.session:
                self.frames.append((msg.pts_ns, np.asarray(msg.arrays["weights"][msg.session.index(SESSION)])))

    def timed(self, fn: Any) -> Any:
        """fn() (a call into the upstream node), its CPU time counted."""
        t0 = time.process_time()
        out = fn()
        self.cpu_s += time.process_time() - t0
        return out

    def feed_direct(self, msg: Message) -> None:
        self._vi(lambda: self.vi.feed(self.direct, msg))

    def step_viseme(self, to_s: float) -> None:
        self._vi(lambda: self.vi.advance(max(0.0, to_s - self.vi.now)))

    def result(self, audio_s: float, params: dict[str, dict[str, Any]]) -> Frames:
        self._vi(self.vi.eos)
        self.vi.close()
        frames = sorted(self.frames, key=lambda f: f[0])
        times = np.array([p / 1e9 for p, _ in frames], np.float64)
        weights = np.array([w for _, w in frames], np.float32).reshape(-1, len(COL))
        return Frames(times, weights, self.cpu_s, audio_s, self.latency_ns / 1e6, params)


def _declared(h: NodeHarness) -> dict[str, Any]:
    return {k: getattr(h.node.p, k) for k in h.cls.params}


def run_audio_path(pcm: np.ndarray, rate: int = RATE, *, mode: str | None = None,
                   audio_params: Mapping[str, Any] | None = None, viseme: Mapping[str, Any] | None = None,
                   frame_rate: float = 60.0, tail_s: float = 1.0, max_tail_s: float = 60.0) -> Frames:
    """Audio (int16 or float on the int16 scale, mono, ``rate`` Hz) through ``audio_phoneme ! viseme``.

    Chunks of CHUNK_MS go in at their pts (sample 0 at 0), each when its last sample is due, as
    from a microphone; time advances one frame at a time. After the audio, time runs on for the
    path's latency plus ``tail_s`` (at most ``max_tail_s``: a file mode may declare a long one)
    with no more audio, then both nodes get EOS. ``mode`` is passed only if audio_phoneme has a
    ``mode`` param. Frames cover the audio and what the viseme drew after it.
    """
    ap_cls = get_node_type("audio_phoneme")
    aparams = dict(audio_params or {})
    if mode is not None and "mode" in ap_cls.params:
        aparams["mode"] = mode
    vparams = viseme_params(frame_rate, viseme)
    ap = NodeHarness(ap_cls, "audio_phoneme", **aparams)
    chain = _Chain(ap, vparams, direct_caps="audio/pcm")
    pcm = np.asarray(pcm).reshape(-1)
    if pcm.dtype != np.int16:
        pcm = to_int16(pcm.astype(np.float32))
    step = rate * CHUNK_MS // 1000
    chunks = [(i, pcm[i:i + step]) for i in range(0, len(pcm), step)]
    audio_s = len(pcm) / rate
    frame_s = 1.0 / frame_rate
    end_s = audio_s + min(max_tail_s, chain.latency_ns / 1e9 + tail_s)
    k, n_frames = 0, int(math.ceil(end_s / frame_s))
    for f in range(1, n_frames + 1):
        t = f * frame_s
        while k < len(chunks) and (chunks[k][0] + len(chunks[k][1])) / rate <= t + 1e-9:
            i, part = chunks[k]
            due = (i + len(part)) / rate
            msg = Message("audio/pcm", {"rate": rate}, {"pcm": part}, pts_ns=i * 1_000_000_000 // rate, session=[SESSION])
            chain.forward(chain.timed(lambda d=due: ap.advance(max(0.0, d - ap.now))))
            chain.forward(chain.timed(lambda m=msg: ap.feed("in", m)))
            if chain.direct is not None:
                chain.step_viseme(due)
                chain.feed_direct(msg)
            k += 1
        chain.forward(chain.timed(lambda t=t: ap.advance(max(0.0, t - ap.now))))
        chain.step_viseme(t)
    chain.forward(chain.timed(ap.eos))
    ap.close()
    return chain.result(audio_s, {"audio_phoneme": _declared(ap), "viseme": _declared(chain.vi)})


def run_text_path(sentences: Iterable[str], *, gap_s: float = 0.5, lead_s: float = 0.5, tail_s: float = 1.0,
                  text_params: Mapping[str, Any] | None = None, viseme: Mapping[str, Any] | None = None,
                  frame_rate: float = 60.0) -> Speech:
    """Each sentence said by ``text_phoneme`` (realtime false) ``gap_s`` after the previous one ended
    (the first at ``lead_s``), its phonemes into a viseme: the frames, the phoneme times and the audio."""
    tparams = {"realtime": False, **(text_params or {})}
    tp = NodeHarness("text_phoneme", "text_phoneme", **tparams)
    chain = _Chain(tp, viseme_params(frame_rate, viseme))
    grid = CHUNK_MS / 1000
    audio: list[tuple[int, np.ndarray]] = []
    phones: list[tuple[str, float, float]] = []
    at = lead_s
    for text in sentences:
        at = math.ceil(at / grid - 1e-9) * grid  # on the chunk grid, so the stream stays continuous
        chain.step_viseme(at)
        out = tp.advance(max(0.0, at - tp.now))
        out += tp.feed("text", Message("text/plain", {"text": [text]}, pts_ns=int(round(at * 1e9)), session=[SESSION]))
        chain.forward(out)
        end = at
        for pad, msg in out:
            if pad == "audio":
                audio.append((msg.pts_ns, np.asarray(msg.arrays["pcm"]).reshape(-1)))
                end = max(end, msg.pts_ns / 1e9 + len(msg.arrays["pcm"]) / RATE)
            elif msg.caps == "phonemes/arpabet":
                phones += [(str(ph), s / 1e9, e / 1e9) for _, ph, s, e in msg.data["phonemes"]]
        at = end + gap_s
    total = at - gap_s + tail_s
    pcm = np.zeros(int(round(total * RATE)), np.int16)
    for pts, part in audio:
        i = int(round(pts * RATE / 1e9))
        pcm[i:i + len(part)] = part[: len(pcm) - i]
    frame_s = 1.0 / frame_rate
    until = total + chain.latency_ns / 1e9  # frames drawn up to the end
    for f in range(int(math.ceil(chain.vi.now / frame_s)), int(math.ceil(until / frame_s)) + 1):
        chain.step_viseme(f * frame_s)
    tp.close()
    frames = chain.result(total, {"text_phoneme": _declared(tp), "viseme": _declared(chain.vi)})
    keep = frames.times <= total
    frames.times, frames.weights = frames.times[keep], frames.weights[keep]
    return Speech(pcm, sorted(phones, key=lambda p: p[1]), frames)


# --- signals -------------------------------------------------------------------------------------

def energy_envelope(pcm: np.ndarray, rate: int = RATE, hop_ms: float = 10.0, win_ms: float = 20.0) -> tuple[np.ndarray, np.ndarray]:
    """The baseline: short-time RMS of the audio, one value every ``hop_ms`` (window ``win_ms``,
    centred on its time, so it has no delay), scaled so its largest value is 1. (times s, values)."""
    x = np.asarray(pcm, np.float64).reshape(-1) / 32768.0
    hop, win = max(1, int(round(rate * hop_ms / 1000))), max(1, int(round(rate * win_ms / 1000)))
    n = len(x) // hop + 1
    c = np.concatenate([[0.0], np.cumsum(x * x)])
    centres = np.arange(n) * hop
    lo, hi = np.clip(centres - win // 2, 0, len(x)), np.clip(centres + (win - win // 2), 0, len(x))
    rms = np.sqrt(np.maximum(c[hi] - c[lo], 0.0) / np.maximum(hi - lo, 1))
    top = rms.max() if rms.size else 0.0
    return centres / rate, (rms / top if top > 0 else rms)


def grid_between(*times: np.ndarray, hz: float = GRID_HZ) -> np.ndarray:
    """The grid (seconds) over the span every one of these time series covers."""
    start = max(float(t[0]) for t in times)
    end = min(float(t[-1]) for t in times)
    if end <= start:
        return np.zeros(0)
    first = math.ceil(start * hz - 1e-9)
    return (first + np.arange(int(math.floor(end * hz + 1e-9)) - first + 1)) / hz


def on_grid(times: np.ndarray, values: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Values at the grid's times, linearly interpolated (times ascending)."""
    return np.interp(grid, times, np.asarray(values, np.float64))


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r; NaN when either does not vary."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 3:
        return math.nan
    a, b = a - a.mean(), b - b.mean()
    den = math.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b / den) if den > 1e-12 else math.nan


@dataclass
class LagR:
    """Correlation of a track with a reference: at zero lag, and the best within the search window.
    ``lag_ms`` > 0: the track is late (it shows at t + lag what the reference shows at t)."""

    r0: float
    best_r: float
    lag_ms: float

    def as_dict(self) -> dict[str, float]:
        return {"r0": self.r0, "best_r": self.best_r, "lag_ms": self.lag_ms}


def lagged_r(track: np.ndarray, ref: np.ndarray, hz: float = GRID_HZ, max_lag_s: float = 1.0,
             min_overlap: float = 0.5) -> LagR:
    """r of two series on one grid, at zero lag and at the best lag within +-max_lag_s (each lag
    compares only the overlap, at least ``min_overlap`` of the length)."""
    n = min(len(track), len(ref))
    track, ref = np.asarray(track[:n], np.float64), np.asarray(ref[:n], np.float64)
    best, best_k = -math.inf, 0
    for k in range(-int(round(max_lag_s * hz)), int(round(max_lag_s * hz)) + 1):
        if n - abs(k) < max(3, min_overlap * n):
            continue
        r = pearson(track[k:], ref[:n - k]) if k >= 0 else pearson(track[:n + k], ref[-k:])
        if r > best:
            best, best_k = r, k
    if best == -math.inf:
        return LagR(pearson(track, ref), math.nan, math.nan)
    return LagR(pearson(track, ref), best, best_k * 1000.0 / hz)


# --- captures ------------------------------------------------------------------------------------

@dataclass
class Capture:
    """A recorded face: row times (seconds on the audio's clock) and ARKit weights."""

    times: np.ndarray
    weights: np.ndarray
    path: str = ""
    offset_s: float = 0.0  # what was added to the capture's own times

    def channel(self, name: str) -> np.ndarray:
        return self.weights[:, COL[name]].astype(np.float64)


def read_audio(path: str | Path, rate: int = RATE) -> tuple[np.ndarray, float]:
    """The first audio track of a file PyAV reads (a WAV, a Live Link Face .mov), mono int16 at
    ``rate``, and the track's start time in seconds on the file's clock."""
    import av

    with av.open(str(path)) as container:
        if not container.streams.audio:
            raise ValueError(f"{path}: no audio track")
        stream = container.streams.audio[0]
        start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
        resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
        parts, first = [], None
        for frame in container.decode(stream):
            if first is None and frame.time is not None:
                first = float(frame.time)
            for out in resampler.resample(frame):
                parts.append(out.to_ndarray().reshape(-1))
        for out in resampler.resample(None):
            parts.append(out.to_ndarray().reshape(-1))
    pcm = np.concatenate(parts).astype(np.int16) if parts else np.zeros(0, np.int16)
    skip = int(round(((first if first is not None else start) - start) * rate))  # < 0: priming before the start
    pcm = pcm[-skip:] if skip < 0 else np.concatenate([np.zeros(skip, np.int16), pcm])
    return pcm, start


def media_timecode(path: str | Path) -> tuple[float, float, float] | None:
    """A .mov's start timecode (Live Link Face writes one) in seconds, with the video's and the
    audio's start times on the file's clock; None without a timecode."""
    import av

    def start(stream: Any) -> float:
        return float(stream.start_time * stream.time_base) if stream is not None and stream.start_time is not None else 0.0

    try:
        with av.open(str(path)) as container:
            tags = [container.metadata] + [s.metadata for s in container.streams]
            tc = next((t["timecode"] for t in tags if t.get("timecode")), None)
            video = container.streams.video[0] if container.streams.video else None
            audio = container.streams.audio[0] if container.streams.audio else None
            fps = float(video.average_rate) if video is not None and video.average_rate else 30.0
            starts = start(video), start(audio)
    except (OSError, ValueError, av.error.FFmpegError):
        return None
    try:
        return (parse_timecode(tc, fps), *starts) if tc else None
    except ValueError:
        return None


def first_timecode(csv_path: str | Path, fps: float = 60.0) -> float:
    """Seconds of a Live Link Face CSV's first frame timecode (rows without values skipped)."""
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        next(reader, None)
        for row in reader:
            if len(row) > 2 and row[1].strip() != "0":
                return parse_timecode(row[0], fps)
    raise ValueError(f"{csv_path}: no frames after the header")


def read_capture(csv_path: str | Path, fps: float = 60.0, offset_s: float = 0.0) -> Capture:
    """A Live Link Face CSV take; its first row at ``offset_s`` on the audio's clock."""
    take = read_take(csv_path, fps)
    return Capture(take.times + offset_s, take.weights, str(csv_path), offset_s)


def write_llf_csv(path: str | Path, times: np.ndarray, weights: np.ndarray, start_s: float = 3600.0,
                  fps: float = 60.0) -> None:
    """A Live Link Face CSV export of these frames (the app's columns and timecodes), for tests."""
    cols = export_columns()
    index = [COL[c[:1].lower() + c[1:]] if (c[:1].lower() + c[1:]) in COL else -1 for c in cols]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Timecode", "BlendShapeCount", *cols])
        for t, row in zip(times, weights):
            frames = (start_s + float(t)) * fps
            whole = int(math.floor(frames + 1e-6))
            sec, ff = divmod(whole, int(fps))
            h, rest = divmod(sec, 3600)
            m, s = divmod(rest, 60)
            frac = max(0.0, frames - whole)
            values = [f"{row[i]:.6g}" if i >= 0 else "0" for i in index]
            w.writerow([f"{h:02d}:{m:02d}:{s:02d}:{ff:02d}.{int(frac * 1000):03d}", len(cols), *values])


# --- timing on speech with known phoneme times ---------------------------------------------------

BILABIALS = frozenset({"P", "B", "M"})
VOICED = frozenset({"AA", "AE", "AH", "AO", "AW", "AY", "EH", "ER", "EY", "IH", "IY", "OW", "OY", "UH", "UW",
                    "B", "D", "G", "V", "DH", "Z", "ZH", "JH", "M", "N", "NG", "L", "R", "W", "Y"})


def _base(phone: str) -> str:
    return phone.rstrip("012").upper()


def speech_spans(phones: list[tuple[str, float, float]]) -> list[tuple[float, float]]:
    """Stretches of speech (non-silence phones, touching ones joined), in order."""
    spans: list[list[float]] = []
    for ph, s, e in sorted(phones, key=lambda p: p[1]):
        if _base(ph) == "SIL":
            continue
        if spans and s <= spans[-1][1] + 1e-6:
            spans[-1][1] = max(spans[-1][1], e)
        else:
            spans.append([s, e])
    return [(a, b) for a, b in spans]


def silences(phones: list[tuple[str, float, float]], end_s: float, min_s: float = 0.15) -> list[tuple[float, float]]:
    """Silences longer than ``min_s`` between 0 and ``end_s``: before, between and after the speech."""
    out, at = [], 0.0
    for s, e in speech_spans(phones) + [(end_s, end_s)]:
        if s - at > min_s:
            out.append((at, s))
        at = max(at, e)
    return out


def _summary(values: list[float]) -> dict[str, float]:
    v = np.asarray(values, np.float64)
    if not v.size:
        return {"n": 0, "median": math.nan, "p90": math.nan}
    return {"n": int(v.size), "median": float(np.median(v)), "p90": float(np.percentile(v, 90))}


def closure_timing(frames: Frames, phones: list[tuple[str, float, float]], window_s: float = 0.15,
                   min_peak: float = 0.1, within_ms: float = 40.0) -> dict[str, Any]:
    """(a) For each P/B/M: |time of the mouthClose peak within +-window_s of its centre - its centre|.
    A peak lower than ``min_peak`` is a closure missed. Errors in ms: median, p90, and the share of
    all P/B/M (missed ones included) within ``within_ms``."""
    close = frames.channel("mouthClose")
    errors, missed = [], 0
    for ph, s, e in phones:
        if _base(ph) not in BILABIALS:
            continue
        c = (s + e) / 2
        near = np.flatnonzero(np.abs(frames.times - c) <= window_s)
        if not near.size or close[near].max() < min_peak:
            missed += 1
            continue
        top = near[close[near] >= close[near].max() - 1e-3]  # the middle of a flat top
        errors.append(abs(float(frames.times[top].mean()) - c) * 1000)
    total = len(errors) + missed
    return {**_summary(errors), "bilabials": total, "missed": missed,
            "within": (sum(1 for x in errors if x <= within_ms) / total) if total else math.nan}


def onset_delays(frames: Frames, phones: list[tuple[str, float, float]], threshold: float = 0.1,
                 min_silence_s: float = 0.15, search_s: float = 1.0) -> dict[str, Any]:
    """(b) For each start of speech after a silence longer than ``min_silence_s``: the first frame
    with jawOpen above ``threshold`` minus the start of its first voiced phone, in ms (negative:
    the jaw moved first). Searched from the middle of the silence before it to ``search_s`` after."""
    jaw = frames.channel("jawOpen")
    spans = speech_spans(phones)
    delays, missed, prev_end = [], 0, 0.0
    for i, (s, e) in enumerate(spans):
        if i and s - prev_end <= min_silence_s:
            prev_end = e
            continue
        voiced = [p[1] for p in phones if s - 1e-6 <= p[1] < e and _base(p[0]) in VOICED]
        onset = voiced[0] if voiced else s
        lo = (prev_end + s) / 2
        idx = np.flatnonzero((frames.times >= lo) & (frames.times <= onset + search_s) & (jaw > threshold))
        if idx.size:
            delays.append((float(frames.times[idx[0]]) - onset) * 1000)
        else:
            missed += 1
        prev_end = e
    return {**_summary(delays), "missed": missed}


def closed_in_silence(frames: Frames, phones: list[tuple[str, float, float]], end_s: float, min_s: float = 0.15,
                      edge_s: float = 0.06, last_s: float = 0.1) -> dict[str, Any]:
    """(c) The most jawOpen inside silences longer than ``min_s`` (``edge_s`` left out at each edge),
    and in the last ``last_s`` of the track."""
    jaw = frames.channel("jawOpen")
    worst = []
    for a, b in silences(phones, end_s, min_s):
        inside = (frames.times >= a + edge_s) & (frames.times <= b - edge_s)
        if inside.any():
            worst.append(float(jaw[inside].max()))
    last = frames.times >= frames.times[-1] - last_s if frames.times.size else np.zeros(0, bool)
    return {"silences": len(worst), "max_jaw": max(worst) if worst else math.nan,
            "median_max_jaw": float(np.median(worst)) if worst else math.nan,
            "last_jaw": float(jaw[last].max()) if last.any() else math.nan}


def track_r(times: np.ndarray, values: np.ndarray, ref_times: np.ndarray, ref_values: np.ndarray,
            max_lag_s: float = 1.0) -> LagR:
    """``lagged_r`` of one track against a reference, both put on the 100 Hz grid of their overlap."""
    grid = grid_between(times, ref_times)
    return lagged_r(on_grid(times, values, grid), on_grid(ref_times, ref_values, grid), max_lag_s=max_lag_s)
