"""audio_source: real WAV files (several formats, 44.1 kHz stereo) and real UDP datagrams."""
from __future__ import annotations

import socket
import struct
import wave
from pathlib import Path

import numpy as np
import pytest

from nodes.speech import Resampler, WavReader
from runtime import Message
from runtime.recording import read_recording
from runtime.testing import NodeHarness, run_to_eos


def tone(rate: int, seconds: float, freq: float = 440.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return amp * np.sin(2 * np.pi * freq * t)


def write_wav(path: Path, x: np.ndarray, rate: int, channels: int = 1, fmt: str = "i16") -> Path:
    """A WAV of float samples in -1..1 (same on every channel) in the given sample format."""
    x = np.repeat(x[:, None], channels, axis=1)
    if fmt == "i16":
        with wave.open(str(path), "wb") as w:
            w.setnchannels(channels)
            w.setsampwidth(2)
            w.setframerate(rate)
            w.writeframes((x * 32767).astype("<i2").tobytes())
        return path
    if fmt == "u8":
        data, tag, width = (x * 127 + 128).astype(np.uint8).tobytes(), 1, 1
    elif fmt == "i24":
        v = (x * 8388607).astype("<i4").reshape(-1)
        data, tag, width = np.stack([v & 255, (v >> 8) & 255, (v >> 16) & 255], 1).astype(np.uint8).tobytes(), 1, 3
    elif fmt == "f32":
        data, tag, width = x.astype("<f4").tobytes(), 3, 4
    else:
        raise ValueError(fmt)
    block = width * channels
    fmt_chunk = struct.pack("<HHIIHH", tag, channels, rate, rate * block, block, width * 8)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt_chunk)) + fmt_chunk
    body += b"LIST" + struct.pack("<I", 4) + b"INFO"  # an extra chunk the reader must skip
    body += b"data" + struct.pack("<I", len(data)) + data
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    return path


def run_file(path: Path, **params) -> list[Message]:
    h = NodeHarness("audio_source", path=str(path), realtime=False, **params)
    try:
        for _ in range(10000):
            if h.ended:
                break
            h.advance(0.001)
        assert h.ended, "no EOS at the end of the file"
        return [m for _, m in h.outputs]
    finally:
        h.close()


def peak_hz(pcm: np.ndarray, rate: int = 16000) -> float:
    spec = np.abs(np.fft.rfft(pcm.astype(np.float64) * np.hanning(len(pcm))))
    return float(np.argmax(spec) * rate / len(pcm))


def test_44k1_stereo_wav_becomes_16k_mono_chunks(tmp_path: Path) -> None:
    path = write_wav(tmp_path / "tone.wav", tone(44100, 1.0), 44100, channels=2)
    msgs = run_file(path, chunk_ms=20, session="s1")
    assert all(m.caps == "audio/pcm" and m.data == {"rate": 16000} and m.session == ["s1"] for m in msgs)
    assert all(m.arrays["pcm"].dtype == np.int16 and m.arrays["pcm"].ndim == 1 for m in msgs)
    assert [len(m.arrays["pcm"]) for m in msgs[:-1]] == [320] * (len(msgs) - 1)
    pcm = np.concatenate([m.arrays["pcm"] for m in msgs])
    assert len(pcm) == 16000
    assert abs(peak_hz(pcm) - 440) < 2
    mid = pcm[1000:-1000].astype(np.float64)
    assert np.sqrt(np.mean(mid ** 2)) == pytest.approx(0.5 * 32767 / np.sqrt(2), rel=0.02)
    steps = np.diff([m.pts_ns for m in msgs])
    assert np.all(steps == 20_000_000)


def test_resampling_removes_what_16k_cannot_carry() -> None:
    """A 10 kHz tone is above the 8 kHz Nyquist of the output: it must vanish, not alias to 6 kHz."""
    r = Resampler(44100, 16000)
    y = np.concatenate([r.process(tone(44100, 0.5, 10000.0) * 32767), r.flush()])
    assert np.sqrt(np.mean(y[500:-500] ** 2)) < 0.001 * 32767


@pytest.mark.parametrize("fmt,rate", [("u8", 22050), ("i24", 48000), ("f32", 44100), ("i16", 8000)])
def test_other_formats_and_rates(tmp_path: Path, fmt: str, rate: int) -> None:
    path = write_wav(tmp_path / f"tone_{fmt}.wav", tone(rate, 0.5, 300.0), rate, channels=1, fmt=fmt)
    assert WavReader(path).rate == rate
    msgs = run_file(path, chunk_ms=10)
    pcm = np.concatenate([m.arrays["pcm"] for m in msgs])
    assert len(pcm) == 8000
    assert abs(peak_hz(pcm) - 300) < 3
    ref = tone(16000, 0.5, 300.0) * 32767
    corr = np.corrcoef(pcm[200:-200], ref[200:-200])[0, 1]
    assert corr > 0.99


def test_realtime_paces_chunks_by_the_timer(tmp_path: Path) -> None:
    path = write_wav(tmp_path / "tone.wav", tone(16000, 1.0), 16000)
    h = NodeHarness("audio_source", path=str(path), realtime=True, chunk_ms=10)
    try:
        first = h.advance(0.1)
        assert 8 <= len(first) <= 11  # one 10 ms chunk per tick, not the whole file
        h.advance(2.0)
        assert h.ended and len(h.outputs) == 100
    finally:
        h.close()


def test_a_looped_file_plays_again_after_its_pause_on_the_clock(tmp_path: Path) -> None:
    x = tone(16000, 0.5)
    path = write_wav(tmp_path / "tone.wav", x, 16000)
    h = NodeHarness("audio_source", path=str(path), loop=True, loop_gap_s=0.3)
    try:
        out = [m for _, m in h.advance(2.5)]  # 0.5 s, 0.3 s pause, 0.5 s, pause, 0.5 s, pause, 0.1 s
        assert not h.ended and h.node.stats()["loops"] == 3
        pcm = np.concatenate([m.arrays["pcm"] for m in out])
        assert len(pcm) == 8000 * 3 + 1600 and np.array_equal(pcm[:8000], pcm[8000:16000])  # the same file again
        pts = np.array([m.pts_ns for m in out])
        gaps = np.diff(pts)[np.diff(pts) > 20_000_000]
        assert np.allclose(gaps, 320_000_000, atol=1)  # a chunk and the pause: silence is time, not samples sent
        assert pts[-1] <= h.now_ns()  # never ahead of the clock
    finally:
        h.close()


def test_a_file_looped_without_a_pause_plays_on_seamlessly(tmp_path: Path) -> None:
    path = write_wav(tmp_path / "tone.wav", tone(16000, 0.5), 16000)
    h = NodeHarness("audio_source", path=str(path), loop=True, loop_gap_s=0.0)
    try:
        out = [m for _, m in h.advance(1.6)]
        assert not h.ended and h.node.stats()["loops"] == 3
        pts = np.array([m.pts_ns for m in out])
        assert np.all(np.diff(pts) == 20_000_000)  # chunk after chunk, no gap at the seams
    finally:
        h.close()


def test_needs_exactly_one_source() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        NodeHarness("audio_source")


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_udp_pcm_is_resampled_and_rechunked() -> None:
    port = free_udp_port()
    h = NodeHarness("audio_source", udp_port=port, udp_rate=8000, chunk_ms=20, session="mic")
    try:
        x = (tone(8000, 0.5, 200.0) * 32767).astype("<i2")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            for i in range(0, len(x), 160):  # 20 ms datagrams
                tx.sendto(x[i:i + 160].tobytes(), ("127.0.0.1", port))
        (sock, on_readable), = h.watched.items()
        got = 0
        for _ in range(200):
            on_readable()
            got = sum(len(m.arrays["pcm"]) for _, m in h.outputs)
            if got >= 7600:
                break
        assert got >= 7600, f"only {got} samples arrived"
        assert all(len(m.arrays["pcm"]) == 320 and m.session == ["mic"] for _, m in h.outputs)
        h.eos()  # asked to finish: the rest goes out
        pcm = np.concatenate([m.arrays["pcm"] for _, m in h.outputs])
        assert len(pcm) == 8000
        assert abs(peak_hz(pcm) - 200) < 3
        pts = [m.pts_ns for _, m in h.outputs]
        assert np.all(np.diff(pts) > 0)
    finally:
        h.close()


def test_graph_file_to_recorder(tmp_path: Path) -> None:
    path = write_wav(tmp_path / "tone.wav", tone(44100, 0.6), 44100, channels=2)
    rec = tmp_path / "rec.msgpack"
    run_to_eos(f"""
nodes:
  src: {{type: audio_source, params: {{path: "{path}", realtime: false, chunk_ms: 20}}}}
  rec: {{type: recorder, params: {{path: "{rec}"}}}}
links:
  - {{from: src.out, to: rec.in, policy: block, size: 4}}
""", timeout=30)
    msgs = read_recording(rec)
    assert sum(len(m.arrays["pcm"]) for m in msgs) == 9600
    assert [m.seq for m in msgs] == list(range(len(msgs)))
