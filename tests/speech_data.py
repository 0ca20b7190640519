"""Speech for the voice tests: espeak-ng's voice as WAV bytes, raw PCM and Opus packets."""
from __future__ import annotations

import io
import struct
import wave
from functools import lru_cache

import numpy as np

from nodes.speech import Resampler, speak, to_int16


@lru_cache(maxsize=8)
def voice(text: str = "Hello, I am the avatar, and this is my own voice.", rate: int = 16000) -> np.ndarray:
    """espeak-ng saying ``text``, int16 mono at ``rate``."""
    audio, _ = speak(text)
    if rate == 16000:
        return audio
    rs = Resampler(16000, rate)
    return to_int16(np.concatenate([rs.process(audio.astype(np.float32)), rs.flush()]))


def wav_bytes(samples: np.ndarray, rate: int = 16000, channels: int = 1) -> bytes:
    """A 16-bit PCM WAV file of int16 ``samples`` (mono; repeated on every channel when channels > 1)."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.repeat(samples.astype("<i2"), channels).tobytes())
    return buf.getvalue()


def wav_header(tag: int = 1, channels: int = 1, rate: int = 16000, block: int = 2, bits: int = 16,
               data_size: int = 0) -> bytes:
    """A WAV header of our own making, for formats the wave module will not write."""
    fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * block, block, bits)
    return (b"RIFF" + struct.pack("<I", 36 + data_size) + b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
            + b"data" + struct.pack("<I", data_size))


def opus_packets(samples: np.ndarray, rate: int = 48000, channels: int = 1) -> list[bytes]:
    """Raw Opus packets (20 ms each) of int16 mono ``samples`` at 48 kHz, as WebCodecs makes them."""
    import av

    enc = av.CodecContext.create("libopus", "w")
    enc.sample_rate, enc.layout, enc.format = rate, "mono" if channels == 1 else "stereo", "s16"
    enc.open()
    out: list[bytes] = []
    x = np.repeat(samples.astype(np.int16), channels)
    step = 960 * channels
    for i in range(0, len(x), step):
        piece = x[i:i + step]
        if len(piece) < step:
            piece = np.concatenate([piece, np.zeros(step - len(piece), np.int16)])
        frame = av.AudioFrame.from_ndarray(piece[None, :], format="s16", layout=enc.layout.name)
        frame.sample_rate, frame.pts = rate, i // channels
        out += [bytes(p) for p in enc.encode(frame)]
    out += [bytes(p) for p in enc.encode(None)]
    return out
