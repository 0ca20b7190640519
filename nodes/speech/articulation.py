"""Acoustic articulation: how far the jaw and lips open, frame by frame, from the sound itself.

Systems that animate faces well from speech (JALI, SIGGRAPH 2016; NVIDIA Audio2Face) drive the
*amount* of jaw and lip activity from how the speech sounds and let the phonetic content pick the
shapes. This module is the acoustic half, streaming, at 100 frames/s:

- **level**: voicing-gated short-time energy in dB, normalised per speaker (``SpeakerLevels``:
  the speech peak and the noise floor are running estimates, so a quiet and a loud speaker both
  reach full opening);
- **F1 and F2** from LPC on the 0-4 kHz band: the first formant rises with jaw opening (/a/ high,
  /i/, /u/ low), the second falls with lip rounding (/u/, /o/, /w/);
- **voicing** (normalised autocorrelation peak at 80-400 Hz) and the high-band share (fricatives);
- **voice activity**: energy well above the noise floor *and* voiced or fricated, with a short
  hangover: the mouth closes in silence, not merely when the voice gets quiet.

Channels out (``CHANNELS``), each 0..1: ``jaw`` (jaw opening), ``lips`` (lip aperture),
``round`` (lip rounding cue), ``voice`` (voice activity). Frame k is centred on sample
``k * HOP`` of the stream; it is computed once ``WIN / 2`` samples past its centre have been fed,
so the algorithmic delay is 16 ms (``causal``) or 16 ms plus the centred smoother's half width
(``centred``: 40 ms).

No constant here is fitted to a recording: they are phonetic ranges (F1 of 250-800 Hz for an
adult voice before the running estimate takes over) and time constants of articulators.
"""
from __future__ import annotations

import numpy as np

from .pcm import RATE
from .speaker import SpeakerLevels

HOP = RATE // 100  # 10 ms
WIN = 512  # 32 ms analysis window (two pitch periods at 60 Hz)
FRAME_NS = 1_000_000_000 * HOP // RATE
CHANNELS = ("jaw", "lips", "round", "voice")
_NFFT = 1024  # zero-padded: the autocorrelation is linear, not circular
_LPC_ORDER = 10  # at 8 kHz: four formants and the spectral slope
_LAG_MIN, _LAG_MAX = RATE // 400, RATE // 80  # pitch 80-400 Hz
_HANN = np.hanning(WIN + 2)[1:-1].astype(np.float64)
_HANN_AC = np.fft.irfft(np.abs(np.fft.rfft(_HANN, _NFFT)) ** 2)[:_LAG_MAX + 1]
_FREQS = np.fft.rfftfreq(_NFFT, 1.0 / RATE)
_LOW = _FREQS <= 4000.0
_HIGH = _FREQS >= 3000.0
# pre-emphasis (1 - 0.9 z^-1) as a spectral weight: the LPC fits the vocal tract, not the glottal tilt
_PRE = np.abs(1.0 - 0.9 * np.exp(-2j * np.pi * _FREQS[_LOW] / RATE)) ** 2
_TOEPLITZ = np.abs(np.arange(_LPC_ORDER)[:, None] - np.arange(_LPC_ORDER)[None, :])
_SMOOTH_HALF = 2  # centred smoother: +-2 frames (a 5-tap raised cosine, 40 ms wide)
_SMOOTH = np.hanning(2 * _SMOOTH_HALF + 3)[1:-1]
_SMOOTH = _SMOOTH / _SMOOTH.sum()
# causal envelope: the jaw opens in ~20 ms and closes in ~50 ms (muscle time constants)
_ATTACK = 1.0 - np.exp(-10.0 / 20.0)
_RELEASE = 1.0 - np.exp(-10.0 / 50.0)
_HANGOVER = 5  # frames of voice activity kept after the last active frame (50 ms)


def centred_delay_frames(smooth: str) -> int:
    """Frames beyond the analysis window a smoother needs before it can give a frame."""
    return _SMOOTH_HALF if smooth == "centred" else 0


def algorithmic_delay_ns(smooth: str) -> int:
    """How long after a frame's centre the frame can be computed (the window's second half and
    the centred smoother's look-ahead)."""
    return (WIN // 2) * 1_000_000_000 // RATE + centred_delay_frames(smooth) * FRAME_NS


class Articulator:
    """One speaker's stream: ``feed`` int16 16 kHz samples, get the finished frames (n, 4)."""

    def __init__(self, smooth: str = "causal", levels: SpeakerLevels | None = None):
        if smooth not in ("causal", "centred"):
            raise ValueError(f"smooth must be 'causal' or 'centred', not {smooth!r}")
        self.smooth = smooth
        self.levels = levels or SpeakerLevels()
        self._buf = np.zeros(WIN // 2, np.float64)  # frame 0 is centred on sample 0: half a window of silence before
        self._buf_start = -(WIN // 2)  # stream sample of _buf[0]
        self.frames = 0  # frames handed out
        self._computed = 0  # frames analysed (ahead of handed-out by the smoother's look-ahead)
        self._raw: np.ndarray = np.zeros((0, 4))  # analysed, not yet smoothed (centred)
        self._env = np.zeros(2)  # causal envelope state of jaw, lips
        self._hang = 0
        self.clipped = 0  # samples at full scale (a clipped recording still opens the jaw: level is relative)
        self._hist = np.zeros((_SMOOTH_HALF, 4))  # the centred smoother's last frames before _raw

    def feed(self, pcm: np.ndarray) -> np.ndarray:
        """Frames completed by these samples, float32 (n, 4) in ``CHANNELS`` order; frame i of the
        result is stream frame ``self.frames - n + i`` (centred on its sample ``k * HOP``)."""
        x = np.asarray(pcm).reshape(-1)
        if x.dtype == np.int16:
            self.clipped += int(np.count_nonzero((x == 32767) | (x == -32768)))
            x = x.astype(np.float64) / 32768.0
        else:
            x = np.nan_to_num(x.astype(np.float64), nan=0.0, posinf=1.0, neginf=-1.0)
        self._buf = np.concatenate([self._buf, x])
        n = self._ready()
        if n <= 0:
            return np.zeros((0, len(CHANNELS)), np.float32)
        starts = (self._computed + np.arange(n)) * HOP - WIN // 2 - self._buf_start
        frames = self._buf[starts[:, None] + np.arange(WIN)[None, :]]
        raw = self._analyse(frames)
        self._computed += n
        drop = (self._computed * HOP - WIN // 2) - self._buf_start
        if drop > 0:
            self._buf = self._buf[drop:]
            self._buf_start += drop
        return self._finish(raw)

    def flush(self) -> np.ndarray:
        """The frames a centred smoother still holds (the end of the stream: the future is silence)."""
        if self.smooth != "centred" or not len(self._raw):
            return np.zeros((0, len(CHANNELS)), np.float32)
        pad = np.zeros((_SMOOTH_HALF, 4))
        out = self._smoothed(np.concatenate([self._raw, pad]), len(self._raw))
        self._raw = self._raw[:0]
        self.frames += len(out)
        return out

    # --- internals ---------------------------------------------------------------------------
    def _ready(self) -> int:
        end = self._buf_start + len(self._buf)  # stream samples fed so far
        last = (end - WIN // 2) // HOP  # the last frame whose window is complete
        return last + 1 - self._computed

    def _analyse(self, frames: np.ndarray) -> np.ndarray:
        """Per frame: jaw, lips, round, voice before smoothing (n, 4)."""
        frames = frames - frames.mean(axis=1, keepdims=True)  # a DC offset is not speech
        spec = np.fft.rfft(frames * _HANN, _NFFT)
        power = spec.real ** 2 + spec.imag ** 2
        total = power.sum(axis=1) + 1e-12
        db = 10.0 * np.log10(total / (_HANN ** 2).sum() / _NFFT + 1e-12)
        ac = np.fft.irfft(power, _NFFT)[:, :_LAG_MAX + 1]
        norm = ac / (ac[:, :1] + 1e-12) / (_HANN_AC / _HANN_AC[0])
        voicing = np.clip(norm[:, _LAG_MIN:].max(axis=1), 0.0, 1.0)
        high = power[:, _HIGH].sum(axis=1) / total
        f1, f2 = _formants(power[:, _LOW] * _PRE)
        lv = self.levels
        voiced = voicing > 0.45
        loud, act, f1n, f2n = (np.zeros(len(db)) for _ in range(4))
        for i in range(len(db)):  # frame by frame: the same frames whatever the chunking
            lv.observe(db[i:i + 1], voiced[i:i + 1], f1[i:i + 1], f2[i:i + 1])
            loud[i] = lv.loudness(db[i:i + 1])[0]
            f1n[i], f2n[i] = lv.f1_norm(f1[i:i + 1])[0], lv.f2_norm(f2[i:i + 1])[0]
            a = db[i] > lv.floor_db + 9.0 and (voiced[i] or high[i] > 0.3) and loud[i] > 0.05
            self._hang = _HANGOVER if a else max(0, self._hang - 1)  # a stop's closure is not a pause
            act[i] = 1.0 if a else (0.5 if self._hang else 0.0)
        v = voicing[:, None] >= 0.45
        jaw = np.where(v[:, 0], 0.55 * loud + 0.45 * f1n * loud ** 0.5, 0.3 * loud)
        lips = np.where(v[:, 0], 0.7 * loud + 0.3 * f1n, 0.45 * loud)
        rnd = np.where(v[:, 0], np.clip((1.0 - f2n) * (1.0 - 0.6 * f1n), 0.0, 1.0) * np.minimum(1.0, 2.0 * loud), 0.0)
        out = np.stack([jaw * act, lips * act, rnd * (act >= 1.0), act], axis=1)
        return np.nan_to_num(np.clip(out, 0.0, 1.0))

    def _finish(self, raw: np.ndarray) -> np.ndarray:
        if self.smooth == "causal":
            out = np.empty_like(raw)
            env = self._env
            for i in range(len(raw)):
                target = raw[i, :2]
                k = np.where(target > env, _ATTACK, _RELEASE)
                env = env + k * (target - env)
                out[i, :2] = env if raw[i, 3] > 0 else 0.0  # silence: closed, not a decaying tail
            self._env = env
            out[:, 2:] = raw[:, 2:]
            self.frames += len(out)
            return out.astype(np.float32)
        self._raw = np.concatenate([self._raw, raw])
        n = len(self._raw) - _SMOOTH_HALF  # frames whose look-ahead has come
        if n <= 0:
            return np.zeros((0, len(CHANNELS)), np.float32)
        out = self._smoothed(self._raw, n)
        self._raw = self._raw[n:]
        self.frames += len(out)
        return out

    def _smoothed(self, raw: np.ndarray, n: int) -> np.ndarray:
        """The first n frames of ``raw`` smoothed with the centred kernel; ``raw`` keeps the
        frames before them (up to _SMOOTH_HALF, held from the last call) as their history."""
        padded = np.concatenate([self._hist, raw])
        out = np.empty((n, 4))
        for c in range(4):
            out[:, c] = np.convolve(padded[:, c], _SMOOTH, mode="valid")[:n]
        out[:, 3] = raw[:n, 3]  # voice activity stays sharp: a pause closes the mouth where it starts
        self._hist = padded[n:n + _SMOOTH_HALF]
        return np.clip(out, 0.0, 1.0).astype(np.float32)


def _formants(low_power: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """F1 and F2 (Hz) per frame from LPC (autocorrelation method) on the pre-emphasised 0-4 kHz band;
    NaN where no resonance qualifies."""
    r = np.fft.irfft(low_power, 2 * (low_power.shape[1] - 1))[:, :_LPC_ORDER + 1]
    n = len(r)
    r[:, 0] = r[:, 0] * (1.0 + 1e-4) + 1e-15  # white-noise correction: stable on silence and clipping
    r = r / r[:, :1]
    # the normal equations (Toeplitz in r), solved for every frame at once: one call, not a
    # Levinson-Durbin loop of small ones
    coef = np.linalg.solve(r[:, _TOEPLITZ], -r[:, 1:, None])[:, :, 0]
    comp = np.zeros((n, _LPC_ORDER, _LPC_ORDER))
    comp[:, 0, :] = -coef
    comp[:, np.arange(1, _LPC_ORDER), np.arange(_LPC_ORDER - 1)] = 1.0
    roots = np.linalg.eigvals(comp)
    fs = 8000.0
    freq = np.angle(roots) * fs / (2 * np.pi)
    bw = -np.log(np.abs(roots) + 1e-12) * fs / np.pi
    ok = (roots.imag > 0) & (freq > 200.0) & (freq < 3800.0) & (bw < 500.0)
    freq = np.where(ok, freq, np.inf)
    freq.sort(axis=1)
    f1 = np.where(np.isfinite(freq[:, 0]), freq[:, 0], np.nan)
    f2 = np.where(np.isfinite(freq[:, 1]), freq[:, 1], np.nan)
    return f1, f2
