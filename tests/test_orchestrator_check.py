"""``avatar check``: a graph measured on recordings under network profiles, compared with a baseline.

The pure parts (recordings, the statistics, the comparison) on constructed data; then the real
thing: graphs/capture.yaml run headless on recordings (the real capture and a spoken sentence),
its baseline written, and the same graph with 4-bit weights reported as a regression of the
error that starts at the compressor, with exit code 3, through the ``avatar`` command.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from orchestrator import load_recordings
from orchestrator.check import compare, param_changes
from orchestrator.evaluate import VIEWERS, parse_profiles
from orchestrator.recordings import load_recording, mirrored, speech_values, write_container, write_default_set
from orchestrator.stats import RULES, paired, verdict
from tests.helpers import ROOT

PLUGINS = "check=orchestrator.check:add_parser,tune=orchestrator.tune:add_parser"


def avatar(*args: str, timeout: float = 150) -> subprocess.CompletedProcess:
    """The avatar command from this checkout, its plug-in commands named by $AVATAR_COMMANDS (the
    installed metadata may predate the entry points: runtime/cli.py reads both)."""
    env = {**os.environ, "AVATAR_COMMANDS": PLUGINS}
    return subprocess.run([sys.executable, "-m", "runtime.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


# --- recordings -------------------------------------------------------------------------------------------
def test_the_real_capture_loads_on_a_regular_clock_with_its_gap_filled():
    r = load_recording(ROOT / "tests" / "data" / "livelink" / "llv_dao_packets.bin")
    assert r.values.shape[1] == 61 and r.fps == 60.0
    assert len(r.values) == 187  # 180 packets, and the 7 frames of the capture's one gap interpolated
    csv = load_recording(ROOT / "tests" / "data" / "llf_dao_take.csv")
    assert np.allclose(csv.values, r.values[:len(csv.values)], atol=1e-4)  # the CSV take: its first 60 packets (timecodes round the sub-frames)
    assert r.sha256 != csv.sha256 and len(r.sha256) == 64


def test_mirroring_swaps_left_and_right_and_twice_is_the_same():
    r = load_recording(ROOT / "tests" / "data" / "livelink" / "llv_dao_packets.bin")
    m = mirrored(r.values)
    from nodes.face import arkit_names

    names = arkit_names()
    assert np.array_equal(m[:, names.index("eyeBlinkLeft")], r.values[:, names.index("eyeBlinkRight")])
    assert np.array_equal(m[:, names.index("jawOpen")], r.values[:, names.index("jawOpen")])
    assert np.allclose(mirrored(m), r.values)


def test_a_spoken_sentence_moves_the_jaw_and_rests_at_both_ends(tmp_path):
    values = speech_values("Glue the sheet to the dark blue background.")
    from nodes.face import arkit_names

    jaw = values[:, arkit_names().index("jawOpen")]
    assert len(values) > 60 and jaw.max() > 0.1
    assert jaw[:5].max() < 0.05 and jaw[-5:].max() < 0.05
    write_container(tmp_path / "s.bin", values)
    assert np.allclose(load_recording(tmp_path / "s.bin").values, values, atol=1e-6)


def test_the_default_set_and_a_folder_of_recordings(tmp_path):
    paths = write_default_set(tmp_path, speech=1)
    assert [p.name for p in paths] == ["dao.bin", "dao_mirror.bin", "dao_reverse.bin", "speech_1.bin"]
    recs = load_recordings(tmp_path)
    assert [r.name for r in recs] == ["dao", "dao_mirror", "dao_reverse", "speech_1"]
    (tmp_path / "bad.csv").write_text("not,a,take\n")
    with pytest.raises(ValueError, match="bad.csv"):
        load_recordings(tmp_path)


def test_network_profiles_parse_and_bad_ones_are_named():
    assert [p.name for p in parse_profiles("clean,lossy,slow")] == ["clean", "lossy", "slow"]
    p = parse_profiles("far:loss=0.05:delay=40")[0]
    assert (p.loss, p.delay_ms) == (0.05, 40.0)
    with pytest.raises(ValueError, match="unknown network profile 'wifi'"):
        parse_profiles("wifi")
    with pytest.raises(ValueError, match="loss is a fraction"):
        parse_profiles("x:loss=2")


# --- statistics and findings on constructed measurements ---------------------------------------------------
def test_a_consistent_change_beyond_the_limit_is_significant_and_a_tiny_one_is_not():
    rng = np.random.default_rng(1)
    base = rng.uniform(0.010, 0.012, 12)
    worse = paired(list(zip(base, base * 1.5 + rng.normal(0, 1e-4, 12))))
    assert worse["p"] < 0.01 and verdict(worse, RULES["error"]) == "regression"
    better = paired(list(zip(base, base * 0.5)))
    assert verdict(better, RULES["error"]) == "improvement"
    tiny = paired(list(zip(base, base * 1.01)))
    assert tiny["p"] < 0.01 and verdict(tiny, RULES["error"]) == "same"  # significant, but below the limit
    noisy = paired(list(zip(base, base * 1.5 * rng.choice([0.5, 1.5], 12))))
    assert verdict(noisy, RULES["error"]) in ("unsure", "same", "regression")
    assert paired([(1.0, 1.0)] * 5)["p"] == 1.0


def _measurement(err_face: float, err_viewers: float, bpf: float, bits: int) -> dict:
    units = [{"recording": r, "profile": p, "error": err_viewers * (1 + 0.01 * i), "jitter": 0.002,
              "bytes_per_frame": bpf + 0.1 * i, "latency_ms": 5.0, "interval_jitter_ms": 1.0, "delivered": 1.0}
             for i, (r, p) in enumerate((r, p) for r in "abcd" for p in ("clean", "lossy", "slow"))]
    stages = {s: [{"recording": u["recording"], "profile": u["profile"], "error": e * (1 + 0.01 * i), "jitter": 0.002}
                  for i, u in enumerate(units)] for s, e in (("retarget", 0.001), ("face", err_face))}
    return {"units": units, "stage_units": stages, "stages": ["retarget", "face", VIEWERS], "encoder": "encode",
            "sink": "web", "nodes": {"encode": {"cpu_samples": [0.02] * 8}}, "links": {},
            "node_params": {"encode": {"bits": bits}, "face": {"min_cutoff": 1.5}}}


def test_a_worse_error_is_traced_to_the_stage_where_it_starts():
    base = _measurement(0.004, 0.006, 10.0, 8)
    cur = _measurement(0.004, 0.012, 7.0, 4)
    findings = compare(base, cur)
    by = {(f["metric"], f["where"]): f for f in findings}
    err = by[("error", "encode (decoded by the viewers)")]
    assert err["verdict"] == "regression" and err["origin"] is True
    assert err["params_changed"] == [{"node": "encode", "param": "bits", "old": 8, "new": 4}]
    assert by[("error", "face")]["verdict"] == "same"
    assert by[("bytes_per_frame", "encode")]["verdict"] == "improvement"
    assert param_changes(base, cur) == [{"node": "encode", "param": "bits", "old": 8, "new": 4}]
    # a smoother that lags more: the error starts at the blender and is carried to the viewers
    findings = compare(base, _measurement(0.008, 0.010, 10.0, 8))
    starts = [f for f in findings if f["metric"] == "error" and f["verdict"] == "regression"]
    assert [(f["where"], f["origin"]) for f in starts] == [("face", True), ("encode (decoded by the viewers)", False)]


# --- the real graph ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def recordings(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("recordings")
    write_default_set(folder, speech=1)
    (folder / "dao_reverse.bin").unlink()
    return folder


def test_check_writes_a_baseline_and_reports_four_bit_weights_as_a_regression_at_the_compressor(tmp_path, recordings):
    baseline = tmp_path / "capture.json"
    common = ["--recordings", str(recordings), "--seconds", "4", "--warmup", "1"]
    first = avatar("check", "graphs/capture.yaml", "--baseline", str(baseline), *common)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "baseline written" in first.stdout
    saved = json.loads(baseline.read_text())
    assert {r["name"] for r in saved["recordings"]} == {"dao", "dao_mirror", "speech_1"}
    assert len(saved["units"]) == 9 and all(u["frames"] > 100 for u in saved["units"]), saved["units"]
    assert saved["stages"] == ["retarget", "face", "detail", VIEWERS]
    clean = [u for u in saved["units"] if u["profile"] == "clean"]
    assert all(u["delivered"] > 0.95 and u["error"] < 0.05 for u in clean), clean
    assert saved["nodes"]["encode"]["cpu"] is not None and saved["links"]

    out = tmp_path / "report.json"  # one run: the text on stdout, the JSON in a file
    worse = avatar("check", "graphs/capture.yaml", "bits=4", "--baseline", str(baseline), "--json-out", str(out), *common)
    assert worse.returncode == 3, (worse.stdout[-3000:], worse.stderr[-3000:])
    assert "REGRESSION" in worse.stdout and "params changed: bits 8->4" in worse.stdout
    assert "regression" in worse.stdout.splitlines()[-1] and "exit 3" in worse.stdout.splitlines()[-1]
    report = json.loads(out.read_text())
    assert report["params_changed"] == [{"node": "encode", "param": "bits", "old": 8, "new": 4}]
    regressions = [f for f in report["findings"] if f["verdict"] == "regression"]
    err = next(f for f in regressions if f["metric"] == "error")
    assert err["where"].startswith("encode") and err["origin"] is True and err["p"] < 0.05
    assert err["change_rel"] > 0.1  # the smoother's lag is most of the error at 8 bits: 4 bits add a fifth
    assert not any(f["metric"] == "error" and f["where"] in ("retarget", "face", "detail") and f["verdict"] != "same"
                   for f in report["findings"])
    assert any(f["metric"] == "bytes_per_frame" and f["verdict"] == "improvement" for f in report["findings"])


def test_check_refuses_a_baseline_made_on_other_data(tmp_path, recordings):
    baseline = tmp_path / "b.json"
    doc = {"version": 1, "recordings": [{"name": "dao", "sha256": "0" * 64}], "profiles": [{"name": "clean"}],
           "units": [{"recording": "dao", "profile": "clean"}], "seconds": 2.0}
    baseline.write_text(json.dumps(doc))
    r = avatar("check", "graphs/capture.yaml", "--baseline", str(baseline), "--recordings", str(recordings / "dao.bin"),
               "--profiles", "clean", "--seconds", "2", "--warmup", "1")
    assert r.returncode == 2 and "recording 'dao' differs from the baseline's" in r.stderr


def test_check_names_a_bad_graph_and_bad_options():
    r = avatar("check", "graphs/nope.yaml", "--profiles", "clean", "--recordings", "tests/data/llf_dao_take.csv")
    assert r.returncode == 2 and "graphs/nope.yaml" in r.stderr
    r = avatar("check", "graphs/capture.yaml", "--profiles", "wifi")
    assert r.returncode == 2 and "unknown network profile 'wifi'" in r.stderr
