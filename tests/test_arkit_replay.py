"""arkit_replay: Live Link Face CSV exports, read by column name and played through the runtime."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from nodes.livelink import SAMPLE_CAPTURE, export_columns, parse_packet, parse_timecode, read_container, read_take
from runtime.recording import read_recording
from runtime.testing import NodeHarness, start_graph

ROOT = Path(__file__).resolve().parents[1]
TAKE = ROOT / "tests" / "data" / "llf_dao_take.csv"
BIN = SAMPLE_CAPTURE
FRAMES = [parse_packet(p) for p in read_container(BIN)][:60]  # the take holds the first 60 packets
WEIGHTS = np.stack([f.weights for f in FRAMES])
POSE = np.stack([f.pose for f in FRAMES])
LINES = TAKE.read_text().splitlines()


def _write(tmp_path: Path, lines: list[str], name: str = "take.csv") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


# --- reading exports ---------------------------------------------------------------------------
def test_the_test_take_is_a_real_export_layout():
    header = LINES[0].split(",")
    assert header[:2] == ["Timecode", "BlendShapeCount"] and tuple(header[2:]) == export_columns()
    assert header.index("JawRight") < header.index("JawLeft")
    assert all(line.split(",")[1] == "61" for line in LINES[1:])


def test_read_take_gives_apple_order_values_of_the_real_packets():
    take = read_take(TAKE)
    assert take.weights.dtype == np.float32 and take.weights.shape == (60, 52)
    assert np.array_equal(take.weights, WEIGHTS) and np.array_equal(take.pose, POSE)
    frames = np.array([f.frame + f.subframe for f in FRAMES]) - (FRAMES[0].frame + FRAMES[0].subframe)
    assert np.allclose(take.times * 60, frames, atol=1e-3)  # including the capture's 8-frame gap
    assert take.lines.tolist() == list(range(2, 62)) and take.empty_rows == 0


def test_columns_are_read_by_name_in_any_order(tmp_path):
    rows = [line.split(",") for line in LINES]
    order = [0, 1] + random.Random(7).sample(range(2, 63), 61)
    path = _write(tmp_path, [",".join(r[i] for i in order) for r in rows])
    take = read_take(path)
    assert np.array_equal(take.weights, WEIGHTS) and np.array_equal(take.pose, POSE)


def test_export_quirks_are_tolerated(tmp_path):
    """A BOM, trailing commas, camelCase names, CRLF, blank lines, rows the app left without values."""
    rows = [LINES[0].replace("EyeBlinkLeft", "eyeBlinkLeft") + ","] + [line + "," for line in LINES[1:4]]
    rows.insert(2, "00:53:15:36.000,0")
    rows.append("")
    path = tmp_path / "quirks.csv"
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(rows).encode() + b"\r\n")
    take = read_take(path)
    assert np.array_equal(take.weights, WEIGHTS[:3]) and take.empty_rows == 1


def test_pose_columns_are_optional(tmp_path):
    rows = [",".join(line.split(",")[:54]) for line in LINES[:3]]
    take = read_take(_write(tmp_path, rows))
    assert np.array_equal(take.weights, WEIGHTS[:2]) and not take.pose.any()


def test_timecodes():
    assert parse_timecode("00:00:01:30.500", 60) == pytest.approx(1.5 + 0.5 / 60)
    assert parse_timecode("14:03:52:28", 30) == pytest.approx(14 * 3600 + 3 * 60 + 52 + 28 / 30)
    with pytest.raises(ValueError, match="frame 45"):
        parse_timecode("00:00:00:45.000", 30)
    with pytest.raises(ValueError, match="bad timecode"):
        parse_timecode("12.5", 60)


def test_a_take_over_midnight_keeps_running(tmp_path):
    rows = [LINES[0]] + [f"{tc},{line.split(',', 2)[1]},{line.split(',', 2)[2]}"
                         for tc, line in zip(["23:59:59:59.000", "00:00:00:00.000"], LINES[1:3])]
    assert read_take(_write(tmp_path, rows)).times.tolist() == pytest.approx([0.0, 1 / 60])


def _bad(lines: list[str], i: int, field: int, value: str) -> list[str]:
    out = list(lines)
    cells = out[i].split(",")
    cells[field] = value
    out[i] = ",".join(cells)
    return out


BAD = {
    "empty": ([], ":1: not a Live Link Face export"),
    "not an export": (["a,b,c", "1,2,3"], ":1: not a Live Link Face export"),
    "missing column": ([",".join(LINES[0].split(",")[:-10])] + LINES[1:3], ":1: missing blendshape column(s): tongueOut"),
    "unknown column": ([LINES[0] + ",Smile"] + [line + ",0" for line in LINES[1:3]], ":1: unknown column 'Smile'"),
    "duplicate column": ([LINES[0].replace("JawOpen", "JawLeft")] + LINES[1:3], ":1: column 'JawLeft' appears twice"),
    "no frames": (LINES[:1], "no frames after the header"),
    "short row": (LINES[:3] + [LINES[3].rsplit(",", 1)[0]], ":4: 62 fields, the header has 63"),
    "not a number": (_bad(LINES[:5], 3, 19, "abc"), ":4: column JawOpen is 'abc'"),
    "nan": (_bad(LINES[:5], 2, 4, "nan"), ":3: column EyeLookInLeft is 'nan'"),
    "bad timecode": (_bad(LINES[:5], 4, 0, "yesterday"), ":5: bad timecode 'yesterday'"),
    "bad count": (_bad(LINES[:5], 2, 1, "x"), ":3: invalid literal"),
    "frame above fps": (_bad(LINES[:5], 2, 0, "00:53:15:75.000"), ":3: timecode '00:53:15:75.000' has frame 75"),
    "back in time": (_bad(LINES[:5], 3, 0, "00:53:15:00.000"), ":4: timecode 00:53:15:00.000 goes back in time"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_csv_is_an_error_naming_file_and_line(tmp_path, case):
    lines, message = BAD[case]
    path = _write(tmp_path, lines, "bad take.csv")
    with pytest.raises(ValueError) as info:
        read_take(path)
    assert str(info.value).startswith(str(path)) and message in str(info.value)
    with pytest.raises(ValueError, match="bad take.csv"):  # the node fails at setup with the same error
        NodeHarness("arkit_replay", path=str(path))


def test_missing_file_and_missing_path_param(tmp_path):
    with pytest.raises(ValueError, match="nope.csv: cannot read"):
        read_take(tmp_path / "nope.csv")
    with pytest.raises(ValueError, match="param 'path' is required"):
        NodeHarness("arkit_replay")
    (tmp_path / "bin.csv").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ValueError, match="bin.csv"):
        read_take(tmp_path / "bin.csv")


# --- the node ----------------------------------------------------------------------------------
def test_replay_emits_every_row_then_eos_like_arkit_source():
    h = NodeHarness("arkit_replay", path=str(TAKE), speed=0.0, session="take-1")
    out = h.advance(0.0)  # speed 0: one row per loop turn, no waiting
    assert len(out) == 60 and h.ended
    for i, (pad, msg) in enumerate(out):
        assert pad == "out" and msg.caps == "arkit/blendshapes" and msg.session == ["take-1"]
        assert msg.data == {"active": [True]}
        assert sorted(msg.arrays) == ["arrival_ns", "frame", "pose", "weights"]
        assert msg.arrays["weights"].shape == (1, 52) and msg.arrays["pose"].shape == (1, 9)
        assert np.array_equal(msg.arrays["weights"][0], WEIGHTS[i]) and msg.arrays["frame"].tolist() == [i]
    assert h.node.stats()["sent"] == 60


def test_loop_starts_again_at_the_end():
    h = NodeHarness("arkit_replay", path=str(TAKE), speed=0.0, loop=True)
    for _ in range(130):
        h.node.tick()  # what each loop turn does at speed 0
    frames = [m.arrays["frame"][0] for _, m in h.outputs]
    assert len(frames) == 130 and not h.ended
    assert frames[:60] == frames[60:120] == list(range(60)) and h.node.stats()["loops"] == 2


def test_out_of_range_weights_are_clamped_and_counted(tmp_path):
    path = _write(tmp_path, _bad(LINES[:3], 1, 19, "1.25"))
    h = NodeHarness("arkit_replay", path=str(path), speed=0.0)
    out = h.advance(0.0)
    assert out[0][1].arrays["weights"][0, 17] == 1.0 and h.node.stats()["clamped"] == 1


GRAPH = """
name: arkit_replay_test
args: {take: take.csv, out: rec.msgpack, loop: false}
nodes:
  play: {type: arkit_replay, params: {path: "${take}", speed: 0, session: dao, loop: "${loop}"}}
  rec: {type: recorder, params: {path: "${out}"}}
links:
  - {from: play.out, to: rec.in, policy: block, size: 16}
"""


def test_replay_through_the_runtime_records_every_row_in_apple_order(tmp_path):
    out = tmp_path / "rec.msgpack"
    runner = start_graph(GRAPH, take=TAKE, out=out)
    try:
        assert runner.wait(30), "the replay did not reach EOS"
        assert runner.exit_code == 0
        assert runner.bus.messages("EOS")
    finally:
        runner.stop(drain=False)
    msgs = read_recording(out)
    assert len(msgs) == 60
    assert all(m.caps == "arkit/blendshapes" and m.session == ["dao"] and m.data == {"active": [True]} for m in msgs)
    assert np.array_equal(np.concatenate([m.arrays["weights"] for m in msgs]), WEIGHTS)
    assert np.array_equal(np.concatenate([m.arrays["pose"] for m in msgs]), POSE)
    assert [m.seq for m in msgs] == list(range(60))
