"""voice_in in simulated time (NodeHarness), and the decoders it uses: what comes in is what goes
out, sample for sample, at real time on continuous pts; queue, interrupt, stalls and refusals."""
from __future__ import annotations

import re

import numpy as np
import pytest

from nodes.speech import FrameDecoder, OpusDecoder, WavStream, open_stream, sample_format
from runtime import Message, ParamError
from runtime.testing import NodeHarness
from tests.speech_data import opus_packets, voice, wav_bytes, wav_header

MS = 1_000_000


def audio(h: NodeHarness, session: str | None = None) -> list[Message]:
    return [m for p, m in h.outputs if p == "audio" and (session is None or m.session == [session])]


def texts(h: NodeHarness, session: str | None = None) -> list[tuple[str, int]]:
    return [(m.data["text"][0], m.pts_ns) for p, m in h.outputs if p == "text" and (session is None or m.session == [session])]


def end_of(m: Message) -> int:
    return m.pts_ns + len(m.arrays["pcm"]) * 1_000_000_000 // m.data["rate"]


def samples(msgs: list[Message]) -> np.ndarray:
    return np.concatenate([m.arrays["pcm"] for m in msgs]) if msgs else np.zeros(0, np.int16)


def assert_continuous(msgs: list[Message]) -> None:
    """pts advance by exactly the samples sent (counted from the first chunk, no rounding drift)."""
    rate, t0, n = msgs[0].data["rate"], msgs[0].pts_ns, 0
    for m in msgs:
        assert m.pts_ns == t0 + n * 1_000_000_000 // rate, (n, m.pts_ns)
        n += len(m.arrays["pcm"])


@pytest.fixture
def h():
    harness = NodeHarness("voice_in")
    yield harness
    harness.close()


def speak(h: NodeHarness, **args):
    return h.call("speak", **args)


# --- decoding ---------------------------------------------------------------------------------------
def test_a_streamed_wav_decodes_byte_by_byte_like_the_whole_file():
    x = voice()
    body = wav_bytes(x, 22050, channels=2)
    s = WavStream()
    out = [s.feed(body[i:i + 7]) for i in range(0, len(body), 7)]
    s.finish()
    assert s.rate == 22050 and s.channels == 2
    assert np.array_equal(np.concatenate(out), x.astype(np.float32))


@pytest.mark.parametrize("body, says", [
    (b"RIFX" + bytes(40), "not a RIFF/WAVE file"),
    (b"OggS" + bytes(40), "not a RIFF/WAVE file"),
    (wav_header()[:20], "truncated WAV header (20 bytes, then the end)"),
    (b"", "empty: no WAV header"),
    (wav_header(tag=2, bits=4), "unsupported WAV format tag 2"),
    (wav_header(block=5, bits=40), "unsupported WAV sample width: 40-bit PCM"),
    (wav_header(tag=3, block=2, bits=16), "unsupported WAV sample width: 16-bit float"),
    (wav_header(channels=0), "the WAV header says 0 channels"),
    (b"RIFF\0\0\0\0WAVEdata\0\0\0\0", "'data' before 'fmt '"),
])
def test_malformed_wav_streams_say_what_is_wrong(body, says):
    s = WavStream()
    with pytest.raises(ValueError, match=re.escape(says)):
        s.feed(body)
        s.finish()


def test_every_sample_format_decodes_to_the_int16_scale():
    x = np.array([0, 16384, -16384, 32767, -32768], np.int16)
    encoded = {"s16le": x.astype("<i2").tobytes(), "s16be": x.astype(">i2").tobytes(),
               "f32le": (x / 32768).astype("<f4").tobytes(), "f64le": (x / 32768).astype("<f8").tobytes(),
               "s32le": (x.astype("<i4") << 16).tobytes(), "u8": ((x >> 8) + 128).astype(np.uint8).tobytes(),
               "s24le": b"".join((int(v) << 8).to_bytes(3, "little", signed=True) for v in x)}
    for name, raw in encoded.items():
        d = FrameDecoder(sample_format(name), 1)
        got = np.concatenate([d.feed(raw[i:i + 3]) for i in range(0, len(raw), 3)])  # pieces cut mid-sample
        tolerance = 256 if name == "u8" else 1  # 8 bits keep the top byte
        assert np.allclose(got, x, atol=tolerance), name
    with pytest.raises(ValueError, match="unknown sample format 's8'; formats: u8, s16le"):
        sample_format("s8")


def test_opus_packets_decode_and_a_bad_one_spoils_only_itself():
    x = voice(rate=48000)
    packets = opus_packets(x)
    d = OpusDecoder()
    first = d.decode(packets[0])
    with pytest.raises(ValueError, match="an Opus packet of 3 bytes that does not decode"):
        d.decode(b"\xff\xfe\xfd")
    rest = np.concatenate([d.decode(p) for p in packets[1:]])
    assert len(first) == 960 and len(first) + len(rest) >= len(x)
    stereo = opus_packets(x[:4800], channels=2)
    assert sum(len(OpusDecoder().decode(p)) for p in stereo[:5]) == 4800  # a stereo packet comes out mono
    with pytest.raises(ValueError, match="1 or 2 channels"):
        open_stream("opus", channels=3)
    with pytest.raises(ValueError, match="raw PCM needs its rate"):
        open_stream("pcm")


# --- the node ----------------------------------------------------------------------------------------
def test_a_wav_upload_plays_at_real_time_on_continuous_pts(h):
    x = voice()
    body = wav_bytes(x, 16000, channels=2)
    opened = speak(h, op="open", stream="a", session="s", codec="wav", transcript="hello avatar")
    assert opened == {"stream": "a", "session": "s", "codec": "wav", "rate": None, "channels": None, "queued_ms": 0.0}
    answer = speak(h, op="data", stream="a", data=body)
    assert answer["accepted"] and answer["rate"] == 16000 and answer["channels"] == 2 and answer["samples"] == len(x)
    assert answer["queued_ms"] == pytest.approx(len(x) / 16, abs=1)  # all of it, less the chunk sent now
    done = speak(h, op="end", stream="a")
    assert done["samples"] == len(x) and done["seconds"] == round(len(x) / 16000, 3) and done["bytes"] == len(body)
    assert len(audio(h)) == 1  # only what is due: the first chunk, now
    h.advance(1.001)
    assert len(audio(h)) == 51  # 50 more in a second: real time
    h.advance(10.0)
    out = audio(h)
    assert np.array_equal(samples(out), x)  # the two equal channels downmixed: the voice, sample for sample
    assert_continuous(out)
    assert {len(m.arrays["pcm"]) for m in out[:-1]} == {320} and out[0].data == {"rate": 16000}
    assert out[0].pts_ns == 0 and all(m.session == ["s"] and m.caps == "audio/pcm" for m in out)
    assert texts(h) == [("hello avatar", 0), ("", end_of(out[-1]))]  # transcript first, the end marker last
    stats = h.node.stats()
    assert stats["streams_open"] == 0 and stats["emitted_s"] == stats["received_s"] == round(len(x) / 16000, 3)


def test_the_rate_of_the_stream_is_kept_and_partial_frames_wait(h):
    x = (np.arange(8000) % 100 * 50).astype(np.int16)
    raw = np.repeat(x.astype("<f4") / 32768, 2).astype("<f4").tobytes()  # f32le, 2 channels
    speak(h, op="open", stream="p", session="s", codec="pcm", rate=8000, channels=2, format="f32le")
    for i in range(0, len(raw), 999):  # pieces that cut frames and samples
        speak(h, op="data", stream="p", data=raw[i:i + 999])
    speak(h, op="end", stream="p")
    h.advance(2.0)
    out = audio(h)
    assert out[0].data == {"rate": 8000} and {len(m.arrays["pcm"]) for m in out} == {160}
    assert np.array_equal(samples(out), x)
    assert_continuous(out)


def test_a_new_utterance_queues_behind_the_sessions_speech(h):
    x = voice()
    speak(h, op="open", stream="a", session="s", codec="pcm", rate=16000)
    speak(h, op="data", stream="a", data=x.tobytes())
    h.advance(0.5)
    b = speak(h, op="open", stream="b", session="s", codec="pcm", rate=16000)
    speak(h, op="data", stream="b", data=x[:8000].tobytes())
    assert b["queued_ms"] == pytest.approx(len(x) / 16 - 500 - 20, abs=25)  # a's rest plays first
    assert speak(h, op="status", stream="b")["queued_ms"] == pytest.approx(len(x) / 16 - 500 + 500 - 20, abs=25)
    other = speak(h, op="open", stream="c", session="t", codec="pcm", rate=16000)
    assert other["queued_ms"] == 0.0  # another session waits for nobody
    speak(h, op="data", stream="c", data=x[:3200].tobytes())
    assert audio(h, "t")[0].pts_ns == h.now_ns()
    speak(h, op="end", stream="a")
    speak(h, op="end", stream="b")
    h.advance(10.0)
    out = audio(h, "s")
    assert np.array_equal(samples(out), np.concatenate([x, x[:8000]]))
    assert_continuous(out)  # b starts exactly where a ended
    assert [t for t, _ in texts(h, "s")] == ["", ""]  # each utterance ends the recogniser's


def test_interrupt_drops_what_is_queued_and_starts_now(h):
    x = voice()
    speak(h, op="open", stream="a", session="s", codec="pcm", rate=16000)
    speak(h, op="data", stream="a", data=x.tobytes())
    speak(h, op="open", stream="b", session="s", codec="pcm", rate=16000)
    speak(h, op="data", stream="b", data=x.tobytes())
    h.advance(0.5)
    sent_before = len(audio(h, "s"))
    c = speak(h, op="open", stream="c", session="s", codec="pcm", rate=16000, interrupt=True, transcript="stop")
    assert c["queued_ms"] == 0.0
    assert speak(h, op="data", stream="a", data=x[:320].tobytes()) == {"stream": "a", "ended": "interrupted",
                                                                         "accepted": False, "queued_ms": 0}
    assert speak(h, op="end", stream="b")["ended"] == "interrupted"
    speak(h, op="data", stream="c", data=x[:16000].tobytes())
    speak(h, op="end", stream="c")
    h.advance(5.0)
    out = audio(h, "s")
    old, new = out[:sent_before], out[sent_before:]
    assert np.array_equal(samples(old), x[:len(samples(old))])  # a, up to the cut
    assert np.array_equal(samples(new), x[:16000])  # then c, and nothing more of a or b
    assert new[0].pts_ns == end_of(old[-1]) and end_of(old[-1]) - h.outputs[0][1].pts_ns <= 520 * MS
    assert_continuous(new)
    marks = texts(h, "s")
    assert marks == [("", end_of(old[-1])), ("stop", new[0].pts_ns), ("", end_of(new[-1]))]
    assert h.node.stats()["interrupted"] == 2


def test_a_stream_slower_than_real_time_plays_as_it_comes_and_a_pause_moves_it_on(h):
    x = voice()
    speak(h, op="open", stream="live", session="s", codec="pcm", rate=16000)
    for i in range(10):  # 20 ms every 20 ms: a microphone
        speak(h, op="data", stream="live", data=x[i * 320:(i + 1) * 320].tobytes())
        h.advance(0.02)
    h.advance(0.5)  # the network stalls half a second (less than stall_timeout)
    speak(h, op="data", stream="live", data=x[3200:3520].tobytes())
    out = audio(h)
    assert_continuous(out[:10])
    assert out[10].pts_ns == h.now_ns() and out[10].pts_ns > end_of(out[9])  # a pause, not half a second late
    assert h.node.stats()["underruns"] == 1


def test_a_stream_that_stalls_ends_by_itself(h):
    x = voice()[:8000]
    speak(h, op="open", stream="a", session="s", codec="pcm", rate=16000)
    speak(h, op="data", stream="a", data=x.tobytes())
    h.advance(1.9)  # played by 0.5 s; 1.9 s without data: not yet
    assert h.node.stats()["stalls"] == 0
    h.advance(0.2)
    stats = h.node.stats()
    assert stats["stalls"] == 1 and stats["streams_open"] == 0
    assert speak(h, op="data", stream="a", data=x.tobytes())["ended"] == "stall"
    assert np.array_equal(samples(audio(h)), x)
    assert texts(h)[-1][0] == ""  # the recogniser was told: the mouth closes


def test_an_aborted_stream_plays_what_came_and_fades_out(h):
    x = np.full(8000, 10000, np.int16)  # loud to the last sample: the fade shows
    speak(h, op="open", stream="a", session="s", codec="pcm", rate=16000)
    speak(h, op="data", stream="a", data=x.tobytes() + b"\x01")  # and half a sample: dropped
    done = speak(h, op="abort", stream="a", reason="the client disconnected")
    assert done["samples"] == 8000 and h.node.stats()["aborted"] == 1
    h.advance(1.0)
    out = samples(audio(h))
    assert len(out) == 8000 and np.all(out[:-160] == 10000)
    assert out[-1] < 100 and np.all(np.diff(out[-160:].astype(int)) <= 0)  # faded over the last 10 ms
    assert texts(h) == [("", end_of(audio(h)[-1]))]


def test_a_paused_upload_with_audio_queued_never_stalls(h):
    x = voice()
    speak(h, op="open", stream="a", session="s", codec="pcm", rate=16000)
    speak(h, op="data", stream="a", data=x.tobytes())  # seconds queued, then the client waits
    h.advance(len(x) / 16000 - 0.1)
    assert h.node.stats()["stalls"] == 0
    assert speak(h, op="data", stream="a", data=x[:3200].tobytes())["accepted"]


def test_a_sessions_queue_is_bounded(h):
    h.node.p.max_queue_s = 2.0
    x = voice()
    speak(h, op="open", stream="a", session="s", codec="pcm", rate=16000)
    assert speak(h, op="data", stream="a", data=x.tobytes())["accepted"]  # taken: the queue was empty
    full = speak(h, op="data", stream="a", data=x[:320].tobytes())
    assert full["accepted"] is False and full["retry_ms"] > 0 and h.node.stats()["full"] == 1
    h.advance(1.5)
    assert speak(h, op="data", stream="a", data=x[:320].tobytes())["accepted"]  # partly played: room again


def test_silence_flows_like_speech(h):
    speak(h, op="open", stream="z", session="s", codec="wav")
    speak(h, op="data", stream="z", data=wav_bytes(np.zeros(16000, np.int16)))
    speak(h, op="end", stream="z")
    h.advance(2.0)
    assert np.array_equal(samples(audio(h)), np.zeros(16000, np.int16))


def test_eos_sends_what_is_queued_at_once(h):
    x = voice()
    speak(h, op="open", stream="a", session="s", codec="pcm", rate=16000)
    speak(h, op="data", stream="a", data=x.tobytes())
    h.eos()
    assert np.array_equal(samples(audio(h)), x)


@pytest.mark.parametrize("args, says", [
    ({"codec": "mp3"}, "unknown codec 'mp3'; codecs: wav, pcm, opus"),
    ({"codec": "pcm"}, "raw PCM needs its rate"),
    ({"codec": "pcm", "rate": 7999}, "rate 7999 is outside 8000 .. 48000 Hz"),
    ({"codec": "pcm", "rate": 96000}, "rate 96000 is outside 8000 .. 48000 Hz"),
    ({"codec": "pcm", "rate": 16000.5}, "'rate' must be an integer"),
    ({"codec": "pcm", "rate": 16000, "channels": 0}, "channels 0 is outside 1 .. 8"),
    ({"codec": "pcm", "rate": 16000, "channels": 9}, "channels 9 is outside 1 .. 8"),
    ({"codec": "pcm", "rate": 16000, "format": "s8"}, "unknown sample format 's8'"),
    ({"codec": "opus", "channels": 3}, "1 or 2 channels"),
    ({"codec": "pcm", "rate": 16000, "session": "s" * 1025}, "'session' must be a non-empty string of at most 1024"),
    ({"codec": "pcm", "rate": 16000, "session": ""}, "'session' must be a non-empty string"),
    ({"codec": "pcm", "rate": 16000, "transcript": "x" * 10001}, "'transcript' must be a string of at most 10000"),
    ({"codec": "pcm", "rate": 16000, "interrupt": 1}, "'interrupt' must be true or false"),
])
def test_open_refuses_what_it_cannot_play(h, args, says):
    with pytest.raises(ParamError, match=re.escape(says)):
        speak(h, op="open", stream="x", **args)
    assert h.node.stats()["refused"] == 1 and h.node.stats()["streams_open"] == 0
    assert speak(h, op="open", stream="x", codec="pcm", rate=16000)["rate"] == 16000  # the next good one works


def test_calls_on_streams_that_are_not_open(h):
    with pytest.raises(ParamError, match="unknown op 'pause'"):
        speak(h, op="pause", stream="x")
    with pytest.raises(ParamError, match="no open stream 'x'"):
        speak(h, op="data", stream="x", data=b"")
    assert speak(h, op="abort", stream="x", reason="gone")["ended"] == "unknown"  # cleaning up never fails
    speak(h, op="open", stream="x", codec="pcm", rate=16000)
    with pytest.raises(ParamError, match="stream 'x' is already open"):
        speak(h, op="open", stream="x", codec="pcm", rate=16000)
    h.node.p.max_streams = 1
    with pytest.raises(ParamError, match=r"1 streams are open, the most this node takes \(max_streams\)"):
        speak(h, op="open", stream="y", codec="pcm", rate=16000)


def test_a_malformed_wav_ends_its_stream_and_a_bad_opus_packet_only_itself(h):
    speak(h, op="open", stream="w", session="s", codec="wav")
    with pytest.raises(ParamError, match="not a RIFF/WAVE file"):
        speak(h, op="data", stream="w", data=b"ID3\x04" + bytes(100))
    assert h.node.stats()["streams_open"] == 0
    assert speak(h, op="abort", stream="w", reason="refused")["ended"] == "failed"
    speak(h, op="open", stream="r", session="s", codec="wav")
    with pytest.raises(ParamError, match="the WAV header says rate 96000, outside 8000 .. 48000 Hz"):
        speak(h, op="data", stream="r", data=wav_header(rate=96000))
    speak(h, op="open", stream="o", session="s", codec="opus")
    packets = opus_packets(voice(rate=48000)[:9600])
    speak(h, op="data", stream="o", data=packets[0])
    with pytest.raises(ParamError, match="does not decode"):
        speak(h, op="data", stream="o", data=b"\xff\xfe\xfd")
    for p in packets[1:]:
        speak(h, op="data", stream="o", data=p)
    done = speak(h, op="end", stream="o")
    assert done["rate"] == 48000 and done["samples"] == 960 * len(packets)
    h.advance(1.0)
    assert len(samples(audio(h))) == 960 * len(packets) and audio(h)[0].data == {"rate": 48000}
