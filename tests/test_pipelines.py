"""The shipped pipelines in graphs/: each validates from the CLI, and the ones that need no phone
run for real (one process per node) and record packets that decode to sane faces."""
from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

from nodes import wire as wf
from nodes.face import arkit_names
from nodes.livelink import read_take
from runtime import Runner
from runtime.graph import load_graph
from runtime.recording import read_records
from tests.helpers import ROOT, avatar, wait_until

GRAPHS = sorted((ROOT / "graphs").glob("*.yaml"))
TAKE = ROOT / "tests" / "data" / "llf_dao_take.csv"
JAW = arkit_names().index("jawOpen")


def start(name: str, **args: object) -> Runner:
    graph = load_graph(ROOT / "graphs" / f"{name}.yaml", {k: str(v) for k, v in args.items()})
    return Runner(graph).start()


def decode_packets(path: Path) -> tuple[np.ndarray, list[wf.Frame], wf.Decoder]:
    """pts (ns) and decoded frames of every packet in a recording of avatar/packet messages."""
    dec = wf.Decoder()
    pts, frames = [], []
    for rec in read_records(path):
        assert rec["caps"] == "avatar/packet"
        assert len(rec["data"]["packets"]) == len(rec["session"])
        for packet in rec["data"]["packets"]:
            frame = dec.decode(packet, rec["pts_ns"])
            assert frame is not None, f"packet refused: {dec.status}"
            pts.append(rec["pts_ns"])
            frames.append(frame)
    return np.array(pts, dtype=np.int64), frames, dec


def check_faces(pts: np.ndarray, frames: list[wf.Frame], session: str) -> np.ndarray:
    """Every packet decodes, losslessly in sequence, to a 52-weight ARKit face with pose; the weights."""
    assert frames, "no packets recorded"
    assert frames[0].keyframe
    assert {f.session for f in frames} == {session}
    assert all(f.names == wf.TABLE_ARKIT52 for f in frames)
    weights = np.stack([f.weights for f in frames])
    pose = np.stack([f.pose for f in frames])
    assert weights.shape == (len(frames), 52) and pose.shape == (len(frames), 9)
    assert weights.min() >= 0.0 and weights.max() <= 1.0
    assert np.isfinite(pose).all() and np.abs(pose).max() <= np.pi
    assert np.all(np.diff(pts) > 0)
    # the blender's frame clock counts 60 Hz periods (it only jumps forward after lost ticks)
    assert 15e6 < np.median(np.diff(pts)) < 18.5e6
    return weights


def recorded_pcm(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """pts (ns) of each chunk and all samples of a recording of audio/pcm messages."""
    recs = list(read_records(path))
    assert recs and all(r["caps"] == "audio/pcm" for r in recs)
    chunks = [np.frombuffer(r["arrays"]["pcm"][2], np.dtype(r["arrays"]["pcm"][0])) for r in recs]
    return np.array([r["pts_ns"] for r in recs], dtype=np.int64), np.concatenate(chunks)


@pytest.mark.parametrize("path", GRAPHS, ids=[p.name for p in GRAPHS])
def test_graph_validates_from_the_cli(path: Path) -> None:
    r = avatar("validate", path, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert ": ok (" in r.stdout


def test_the_pipelines_are_all_there() -> None:
    assert {"capture.yaml", "replay.yaml", "lipsync_audio.yaml", "say.yaml"} <= {p.name for p in GRAPHS}


def test_replay_records_the_take_as_decodable_packets(tmp_path: Path) -> None:
    out = tmp_path / "replay.msgpack"
    runner = start("replay", take=TAKE, out=out)
    try:
        # 150 blender ticks (2.5 s at 60 Hz): the 60-frame take, looped, two and a half times
        wait_until(lambda: runner.stats()["nodes"]["rec"]["in"] >= 150, 30, what="150 packets at the recorder")
        assert runner.stats()["state"] == "PLAYING"
    finally:
        code = runner.stop(drain=True)
    assert code == 0
    assert not runner.bus.messages("ERROR")
    pts, frames, dec = decode_packets(out)
    assert dec.counts["lost"] == dec.counts["refused"] == 0
    weights = check_faces(pts, frames, "replay")
    assert len(frames) >= 30
    # the take shows through the blender: the face's average expression is the take's, not idle motion
    take = np.clip(read_take(TAKE).weights, 0.0, 1.0)
    assert np.corrcoef(weights.mean(axis=0), take.mean(axis=0))[0, 1] > 0.9
    assert weights.std(axis=0).max() > 0.02  # and it moves


def test_say_speaks_and_moves_the_mouth_in_time(tmp_path: Path) -> None:
    from nodes.speech import speak

    text = "Hello, how are you today?"
    out, audio_out = tmp_path / "say.msgpack", tmp_path / "say_pcm.msgpack"
    runner = start("say", text=text, once="true", out=out, audio_out=audio_out, port=0)
    try:
        assert runner.wait(30), "say.yaml did not end after speaking"
    finally:
        code = runner.stop(drain=False)
    assert code == 0
    assert runner.bus.messages("EOS") and not runner.bus.messages("ERROR")

    apts, pcm = recorded_pcm(audio_out)
    sizes = np.array([len(r["arrays"]["pcm"][2]) // 2 for r in read_records(audio_out)])
    # every chunk of the speech, none twice: each starts where the one before ended
    assert np.abs(np.diff(apts) - sizes[:-1] * 1_000_000_000 // 16000).max() <= 1000
    expected, _ = speak(text)  # espeak-ng's length varies a little from run to run
    assert abs(len(pcm) - len(expected)) < 0.1 * len(expected)
    assert np.abs(pcm.astype(np.int32)).max() > 1000

    pts, frames, dec = decode_packets(out)
    assert dec.counts["lost"] == 0
    weights = check_faces(pts, frames, "default")
    jaw = weights[:, JAW]
    assert jaw.max() > 0.2, "the mouth never opened"
    # it opens while the audio plays (frames come up to lookahead + smoothing after their audio)
    talking = pts[jaw > 0.15]
    assert talking.min() >= apts[0] and talking.max() <= apts[-1] + 600_000_000


def test_lipsync_audio_moves_the_mouth_from_a_wav(tmp_path: Path) -> None:
    from nodes.speech import speak

    text = "Kick the ball straight and follow through."
    speech, _ = speak(text)
    wav = tmp_path / "speech.wav"
    with wave.open(str(wav), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(speech.tobytes())
    out = tmp_path / "lips.msgpack"
    runner = start("lipsync_audio", wav=wav, loop="false", transcript=text, out=out, port=0)
    try:
        assert runner.wait(30), "lipsync_audio.yaml did not end after the file"
    finally:
        code = runner.stop(drain=False)
    assert code == 0
    assert not runner.bus.messages("ERROR")
    pts, frames, _ = decode_packets(out)
    weights = check_faces(pts, frames, "default")
    assert weights[:, JAW].max() > 0.15, "the mouth never opened"
