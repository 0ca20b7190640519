"""The latency query: declared per node type, summed along paths, told to the nodes, reported per sink.

Unit tests of ``runtime.latency`` on loaded graphs; the runner's side with real processes (start,
live change, swap); the viseme's late phonemes; and the speech line a new user types, on an
espeak-ng sentence, whose mouth must move in the voiced frames and stay closed in the silences.
"""
from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

from runtime import Message, Runner
from runtime.graph import parse_graph
from runtime.inspect_text import describe_type
from runtime.latency import query, sinks
from runtime.launch import parse_launch
from runtime.recording import read_recording
from runtime.testing import NodeHarness
from runtime.validate import validate_graph

HOLD = "tests.latency_node:Holder"
FAN_IN = f"""
name: latency_fan_in
nodes:
  a: {{type: testsrc, params: {{rate: 50, num_buffers: -1}}}}
  b: {{type: testsrc, params: {{rate: 50, num_buffers: -1}}}}
  slow: {{type: "{HOLD}", params: {{hold_ms: 300}}}}
  fast: {{type: "{HOLD}", params: {{hold_ms: 20}}}}
  join: {{type: "{HOLD}", params: {{hold_ms: 5}}}}
  sink: {{type: fakesink}}
  side: {{type: fakesink}}
links:
  - a -> slow -> join
  - b -> fast -> join
  - join -> sink
  - fast -> side
"""


def loaded(text: str):
    graph = parse_graph(text, "<test>", {})
    return graph, validate_graph(graph)


def test_fan_in_takes_the_slowest_path_and_sums_along_it() -> None:
    graph, types = loaded(FAN_IN)
    lat = query(graph, types)
    assert lat["a"].upstream_ns == 0 and lat["slow"].own_ns == 300_000_000
    assert lat["join"].upstream_ns == 300_000_000  # max(0 + 300, 0 + 20)
    assert lat["sink"].upstream_ns == lat["sink"].total_ns == 305_000_000
    assert lat["sink"].path == ("a", "slow", "join", "sink")
    assert lat["side"].total_ns == 20_000_000
    assert sorted(sinks(graph)) == ["side", "sink"]


def test_a_changed_node_changes_every_path_through_it() -> None:
    graph, types = loaded(FAN_IN)
    graph.nodes["slow"].params["hold_ms"] = 10.0  # what a swap to new params leaves in the graph
    lat = query(graph, types)
    assert lat["join"].upstream_ns == 20_000_000 and lat["sink"].path == ("b", "fast", "join", "sink")
    assert lat["sink"].total_ns == 25_000_000


def test_feedback_links_carry_no_latency() -> None:
    graph, types = loaded(f"""
name: latency_feedback
nodes:
  src: {{type: testsrc}}
  mid: {{type: "{HOLD}", params: {{hold_ms: 50}}}}
  end: {{type: "{HOLD}", params: {{hold_ms: 7}}}}
links:
  - src -> mid -> end
  - {{from: end.out, to: mid.in, feedback: true}}
""")
    lat = query(graph, types)
    assert lat["mid"].upstream_ns == 0 and lat["end"].total_ns == 57_000_000


def test_the_declared_latencies_of_the_shipped_types() -> None:
    from nodes.audio_phoneme import AudioPhoneme
    from nodes.blender import Blender
    from nodes.viseme import Viseme
    from nodes.websocket_sink import WebSocketSink
    from runtime.latency import own_latency

    # balanced: lag 60 ms + (holdback 1 + 1) x 150 ms + the lead-in room, 120 ms
    assert own_latency(AudioPhoneme, {}) == 480_000_000
    assert own_latency(AudioPhoneme, {"mode": "file"}) == 820_000_000  # lag 100 + (3 + 1) x 150 + 120
    assert own_latency(AudioPhoneme, {"mode": "file", "holdback": 1}) == 520_000_000
    # half a 32 ms window, the next 10 ms frame (interpolation), a 20 ms chunk and 4 ms to be processed and sent
    assert own_latency(AudioPhoneme, {"mode": "live"}) == 50_000_000
    assert own_latency(Viseme, {}) == 0  # the sources leave the lead-in room
    assert abs(own_latency(Blender, {}) - 106_103_295) < 2  # One Euro at 1.5 Hz: 1 / (2 pi 1.5) s
    assert own_latency(WebSocketSink, {"queue_size": 6}) == 100_000_000
    assert "Latency:\n  480.0 ms" in describe_type("audio_phoneme")
    assert "Latency:\n  0 ms" in describe_type("mapper")


def test_the_runner_tells_the_nodes_and_reports_each_sink_at_start_after_a_change_and_a_swap() -> None:
    runner = Runner(parse_graph(FAN_IN, "<test>", {})).start()
    try:
        told = lambda n: runner.stats()["nodes"][n]["node"]["told"]  # noqa: E731
        first = runner.bus.wait_for("LATENCY", node="sink")
        assert first["latency_ns"] == 305_000_000 and first["path"] == ["a", "slow", "join", "sink"]
        assert runner.bus.wait_for("LATENCY", node="side")["latency_ns"] == 20_000_000
        assert told("join") == [300_000_000] and told("slow") == [0]
        n = len(runner.bus.messages())
        runner.set_params("fast", hold_ms=400.0)  # a live change: the slowest path is now through fast
        changed = runner.bus.wait_for("LATENCY", node="sink", after=n)
        assert changed["latency_ns"] == 405_000_000 and changed["path"] == ["b", "fast", "join", "sink"]
        assert told("join") == [300_000_000, 400_000_000]
        n = len(runner.bus.messages())
        runner.swap("fast", params={"hold_ms": 1.0})
        swapped = runner.bus.wait_for("LATENCY", node="sink", after=n)
        assert swapped["latency_ns"] == 305_000_000 and told("join")[-1] == 300_000_000
        assert told("fast") == [0]  # the new process was told too
    finally:
        runner.stop(drain=False)


# --- the viseme node ---------------------------------------------------------------------------
def _phonemes(c0: int, *rows: tuple[str, float, float]) -> Message:
    """A phoneme batch for session 's', times in seconds after ``c0`` (the node's clock at start)."""
    out = [[0, p, c0 + int(s * 1e9), c0 + int(e * 1e9)] for p, s, e in rows]
    return Message("phonemes/arpabet", {"phonemes": out}, pts_ns=out[0][2], session=["s"])


def test_viseme_lookahead_follows_the_path_into_it() -> None:
    h = NodeHarness("viseme", rate=50.0, max_lag_ms=0.0)
    c0 = h.node.clock_ns
    h.node.on_latency(820_000_000, {"in": 820_000_000})
    assert h.node.stats()["lookahead_ms"] == 820.0
    h.advance(1.0)
    h.feed("in", _phonemes(c0, ("AA", 0.3, 0.5)))  # 0.7 s after its start: within the 0.82 s lookahead
    (_, msg), = h.advance(0.02)
    assert msg.pts_ns == h.node.clock_ns - 820_000_000
    assert h.node.stats()["late"] == 0


def test_a_late_phoneme_is_drawn_shortened_and_counted() -> None:
    from nodes.face import arkit_names

    jaw = arkit_names().index("jawOpen")
    h = NodeHarness("viseme", rate=50.0, max_lag_ms=0.0, lookahead_ms=100.0)
    c0 = h.node.clock_ns
    h.advance(2.0)  # frames are now for pts c0 + 1.9 s
    h.feed("in", _phonemes(c0, ("AA", 1.0, 1.2), ("IY", 1.2, 1.3)))  # both long past
    frames = [m for _, m in h.advance(0.4)]
    opened = [(m.pts_ns - c0) / 1e9 for m in frames if m.arrays["weights"][0, jaw] > 0.1]
    assert opened and opened[0] < 1.95, "the late phonemes were not drawn"
    assert 0.1 <= opened[-1] - opened[0] <= 0.2, "drawn for about the late phonemes' minimum length"
    assert h.node.stats()["late"] == 2 and h.node.stats()["late_max_ms"] > 800


# --- the speech line, with real processes -------------------------------------------------------
VOWELS = set("AA AE AH AO AW AY EH ER EY IH IY OW OY UH UW".split())
LEAD_S, TRAIL_S = 0.8, 1.5  # silence before and after the sentence


def test_the_plain_speech_line_moves_the_mouth(tmp_path: Path) -> None:
    try:
        from nodes.speech import speak

        speech, phones = speak("Kick the ball straight and follow through.")
    except OSError as exc:
        pytest.skip(f"espeak-ng is not installed ({exc}); apt-get install libespeak-ng1")
    from nodes.face import arkit_names

    wav, out, audio = tmp_path / "speech.wav", tmp_path / "x.msgpack", tmp_path / "audio.msgpack"
    pcm = np.concatenate([np.zeros(int(LEAD_S * 16000), np.int16), speech, np.zeros(int(TRAIL_S * 16000), np.int16)])
    with wave.open(str(wav), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(pcm.tobytes())
    # the line a user types, plus a second recorder of the audio (its pts place the sentence in time)
    runner = Runner(parse_launch(f"audio_source name=speech path={wav} ! audio_phoneme ! viseme ! recorder path={out}"
                                 f"  speech. ! recorder path={audio}")).start()
    try:
        assert runner.wait(60), "the speech line did not end after the file"
    finally:
        code = runner.stop(drain=False)
    assert code == 0 and not runner.bus.messages("ERROR")
    total = runner.bus.wait_for("LATENCY", node="recorder", timeout=1)
    assert total["latency_ns"] == 480_000_000 and total["path"] == ["speech", "audio_phoneme", "viseme", "recorder"]

    t0 = read_recording(audio)[0].pts_ns + int(LEAD_S * 1e9)  # pts of the sentence's first sample
    frames = read_recording(out)
    t = np.array([(m.pts_ns - t0) / 1e9 for m in frames])
    jaw = np.array([m.arrays["weights"][0, arkit_names().index("jawOpen")] for m in frames])
    voiced = np.zeros(len(t), bool)
    for phone, start, end in phones:
        if phone.rstrip("012") in VOWELS:
            voiced |= (t >= start + 0.02) & (t <= end - 0.02)
    silent = (t < -0.2) | (t > len(speech) / 16000 + 0.3)
    assert voiced.sum() > 20 and silent.sum() > 30
    assert (jaw[voiced] > 0.1).mean() > 0.6, f"the mouth opened in {(jaw[voiced] > 0.1).mean():.0%} of voiced frames"
    assert (jaw[silent] < 0.05).mean() > 0.95, f"max jaw in the silences {jaw[silent].max():.2f}"
