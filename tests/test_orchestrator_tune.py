"""``avatar tune``: tunable Param declarations, the Optuna search, validation on held-out recordings,
the tuned YAML with its provenance, and the stop after an automatic rollback.

The search's logic runs on a stand-in for ``evaluate`` (a known function of the params: its
choices can be checked exactly, in milliseconds); one end-to-end run tunes graphs/capture.yaml's
compressor for real and tries the candidate on a running graph (``--live``).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from orchestrator import knobs, tune
from orchestrator.recordings import write_container, write_default_set
from runtime import Message, Node, Pad, Param, load_graph
from runtime.inspect_text import describe_type
from tests.test_orchestrator_canary import live  # noqa: F401 - the running graph a live tune changes
from tests.test_orchestrator_check import avatar


class Gain(Node):
    """A user's node type with a tunable param of its own."""

    inputs = {"in": Pad("arkit/blendshapes")}
    outputs = {"out": Pad("arkit/blendshapes")}
    params = {"gain": Param(float, 1.0, "multiplier", min=0.0, max=4.0, tune=True),
              "offset": Param(float, 0.0, "added", tune=(0.01, 1.0, "log"))}

    def process(self, pad: str, msg: Message) -> Message:
        return msg


# --- declarations -------------------------------------------------------------------------------------------
def test_tunable_declarations_are_checked_and_shown():
    assert Param(int, 8, "", min=2, max=16, tune=(4, 12)).search == (4.0, 12.0, False)
    assert Param(float, 1.0, "", min=0.0, max=4.0, tune=True).search == (0.0, 4.0, False)
    assert Param(float, 1.0, "", tune=(0.1, 10, "log")).tune_text() == "0.1 .. 10 (log scale)"
    assert Param(int, 1, "").search is None
    for bad, why in ((dict(type=str, default="a", tune=(0, 1)), "only int and float"),
                     (dict(type=float, default=1.0, tune=True), "needs min and max"),
                     (dict(type=float, default=1.0, min=0.0, max=2.0, tune=(0, 3)), "beyond the param's"),
                     (dict(type=float, default=1.0, tune=(0, 3, "log")), "lo > 0"),
                     (dict(type=float, default=1.0, tune=(3, 1)), "lo < hi"),
                     (dict(type=float, default=1.0, tune=(1, 3, "cubic")), "'linear' or 'log'")):
        with pytest.raises(ValueError, match=why):
            Param(bad.pop("type"), bad.pop("default"), "", **bad)
    text = describe_type("compressor")
    assert "tunable: 4 .. 12 (avatar tune searches it)" in text
    assert "tunable: 0.1 .. 10 (log scale)" in describe_type("blender")


def test_a_graphs_knobs_are_its_node_types_declarations_a_users_type_too(graph_file):
    ks = {k.key: k for k in knobs("graphs/capture.yaml")}
    assert set(ks) == {"encode.bits", "encode.keyframe_interval", "encode.ref_interval",
                       "face.min_cutoff", "face.beta", "face.d_cutoff"}
    assert ks["encode.bits"].current == 8 and ks["encode.bits"].is_int and not ks["face.beta"].is_int
    assert [k.key for k in knobs("graphs/capture.yaml", {"bits": "6"}, ["encode.bits"])] == ["encode.bits"]
    assert knobs("graphs/capture.yaml", {"bits": "6"}, ["encode.bits"])[0].current == 6
    with pytest.raises(ValueError, match="no tunable param encode.nope"):
        knobs("graphs/capture.yaml", only=["encode.nope"])
    g = graph_file("""
        nodes:
          src: {type: testsrc}
          mine: {type: "tests.test_orchestrator_tune:Gain", params: {gain: 2.0}}
          out: {type: fakesink}
        links: [src -> mine -> out]
    """)
    mine = {k.key: k for k in knobs(str(g))}
    assert set(mine) == {"mine.gain", "mine.offset"} and mine["mine.gain"].current == 2.0 and mine["mine.offset"].log


# --- the search, on a known stand-in for evaluate ------------------------------------------------------------
def fake_evaluate(calls: list):
    """bytes grow with bits, error falls with them; each unit a little different, the same in every run."""
    def evaluate(graph, recordings, profiles, *, params=None, **kw):
        bits = (params or {}).get("encode", {}).get("bits", 8)
        calls.append(bits)
        units = []
        for i, (r, p) in enumerate((r, p) for r in recordings for p in profiles):
            wobble = 1 + 0.003 * ((i * 7) % 5)
            units.append({"recording": r.name, "profile": p.name, "bytes_per_frame": (2.0 + bits) * wobble,
                          "error": 0.2 / 2 ** bits * wobble, "jitter": 0.001 * wobble, "delivered": 1.0,
                          "latency_ms": 5.0, "interval_jitter_ms": 1.0})
        summary = {m: float(np.mean([u[m] for u in units])) for m in units[0] if m not in ("recording", "profile")}
        return {"summary": {**summary, "by_profile": {}}, "units": units}
    return evaluate


@pytest.fixture
def small_recordings(tmp_path) -> Path:
    folder = tmp_path / "recs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a", "b", "c", "d", "e", "f"):
        write_container(folder / f"{name}.bin", rng.uniform(0, 1, (30, 61)))
    return folder


def test_tune_writes_the_best_validated_candidate_with_its_provenance_and_resumes(tmp_path, small_recordings,
                                                                                 monkeypatch, capsys):
    calls: list = []
    monkeypatch.setattr(tune, "evaluate", fake_evaluate(calls))
    out = tmp_path / "tuned.yaml"
    argv = ["graphs/capture.yaml", "--recordings", str(small_recordings), "--params", "encode.bits",
            "--objective", "bytes_per_frame", "--constraint", "error<=0.01", "--trials", "12", "--seed", "3",
            "--state-dir", str(tmp_path / "state"), "-o", str(out), "--profiles", "clean,lossy,slow"]
    assert tune.main(argv) == 0
    text = capsys.readouterr().out
    assert "validation on b, d, f (9 pairs, 2 runs each): PASS" in text, text
    # error <= 0.01 is 0.2 / 2**bits <= 0.01: bits >= 5 (4.32); the fewest bytes: the fewest such bits tried
    best = min(b for b in calls[:12] if b >= 5)
    assert best < 8, calls
    doc = yaml.safe_load(out.read_text())
    assert doc["args"]["bits"] == best  # the YAML takes encode's bits from its arg: the arg's default changed
    assert load_graph(out).nodes["encode"].params["bits"] == best
    provenance = json.loads("\n".join(line[4:] for line in out.read_text().splitlines()[1:] if line.startswith("#   ")))
    assert provenance["params"] == {"encode.bits": best} and provenance["verdict"] == "pass"
    assert set(provenance["tuned_on"]) == {"a", "c", "e"} and set(provenance["validated_on"]) == {"b", "d", "f"}
    assert all(len(h) == 64 for h in provenance["tuned_on"].values())
    assert provenance["validation"]["error"]["verdict"] == "within constraint"
    assert doc["description"].endswith(f"Tuned by avatar tune (study {provenance['study']}, trial {provenance['trial']}).")
    assert calls[0] == 8  # the current graph's trial first
    trials = len(calls) - 4  # and the validation's runs: current and candidate twice, alternating
    assert trials == 12 and calls[-4:] == [8, best, best, 8]
    calls.clear()
    assert tune.main([*argv[:argv.index("--trials")], "--trials", "14", *argv[argv.index("--trials") + 2:]]) == 0
    assert len(calls) == 2 + 4  # resumed: two more trials, then the validation
    assert "(12 trials done)" in capsys.readouterr().err


def test_when_the_current_params_are_on_the_front_nothing_is_applied(tmp_path, small_recordings, monkeypatch, capsys):
    monkeypatch.setattr(tune, "evaluate", fake_evaluate([]))
    out = tmp_path / "tuned.yaml"
    argv = ["graphs/capture.yaml", "--recordings", str(small_recordings), "--params", "encode.bits",
            "--objective", "bytes_per_frame,error", "--trials", "6", "--state-dir", str(tmp_path / "state"),
            "-o", str(out), "--json"]
    assert tune.main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["candidate"] is None and not out.exists()
    front = [r for r in report["trials"] if r["front"]]
    assert any(r["current"] for r in front) and len(front) == len({r["params"]["encode.bits"] for r in report["trials"]})


def test_a_validation_that_fails_applies_nothing(tmp_path, small_recordings, monkeypatch, capsys):
    calls: list = []
    real = fake_evaluate(calls)

    def worse_when_held_out(graph, recordings, profiles, **kw):  # a candidate that only looked good on the tuning set
        res = real(graph, recordings, profiles, **kw)
        if recordings[0].name == "b" and (kw.get("params") or {}).get("encode"):
            for u in res["units"]:
                u["jitter"] *= 3
        return res

    monkeypatch.setattr(tune, "evaluate", worse_when_held_out)
    out = tmp_path / "tuned.yaml"
    code = tune.main(["graphs/capture.yaml", "--recordings", str(small_recordings), "--params", "encode.bits",
                      "--objective", "bytes_per_frame", "--constraint", "error<=0.01", "--trials", "8",
                      "--state-dir", str(tmp_path / "state"), "-o", str(out)])
    text = capsys.readouterr().out
    assert code == tune.EXIT_FAIL and "FAIL" in text and "not applied: the validation says fail" in text
    assert not out.exists()


def test_a_study_with_other_settings_is_not_mixed_in(tmp_path, small_recordings, monkeypatch, capsys):
    monkeypatch.setattr(tune, "evaluate", fake_evaluate([]))
    base = ["graphs/capture.yaml", "--recordings", str(small_recordings), "--trials", "2", "--study", "s",
            "--state-dir", str(tmp_path / "state"), "-o", str(tmp_path / "t.yaml")]
    assert tune.main([*base, "--params", "encode.bits"]) == 0
    assert tune.main([*base, "--params", "encode.ref_interval"]) == 2
    assert "was made with other settings (knobs)" in capsys.readouterr().err


def test_the_tuner_stays_stopped_after_a_rollback_until_a_person_acknowledges(tmp_path, small_recordings, capsys):
    state = tmp_path / "state"
    tune.stop_tuner(state, {"reason": "canary on capture rolled back: bytes_per_packet at encode: 10 -> 25"})
    argv = ["graphs/capture.yaml", "--recordings", str(small_recordings), "--state-dir", str(state)]
    assert tune.main(argv) == tune.EXIT_STOPPED
    err = capsys.readouterr().err
    assert "stopped since" in err and "bytes_per_packet" in err and "--acknowledge" in err
    assert tune.main([*argv, "--acknowledge"]) == 0
    assert "acknowledged" in capsys.readouterr().out and tune.stopped(state) is None


# --- for real ---------------------------------------------------------------------------------------------------
def test_tune_the_capture_graphs_compressor_on_recordings_for_real_and_try_it_live(tmp_path, live):  # noqa: F811
    """The whole loop on real processes: trials on recordings, validation on held-out ones, then
    the candidate as a canary on the running graph (``--live``), kept because it saves bytes."""
    runner, endpoint = live
    recs = tmp_path / "recs"
    write_default_set(recs, speech=1)
    (recs / "dao_reverse.bin").unlink()
    r = avatar("tune", "graphs/capture.yaml", "--recordings", str(recs), "--holdout", "dao_mirror,speech_1",
               "--params", "encode.bits", "--objective", "bytes_per_frame", "--constraint", "error<=0.05",
               "--constraint", "jitter<=1.5x", "--trials", "2", "--seed", "2",  # seed 2: the second trial tries 7 bits
               "--seconds", "3", "--warmup", "1", "--repeats", "1",
               "--state-dir", str(tmp_path / "st"),
               "--live", "--control", endpoint, "--window", "4", "--json", timeout=200)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-3000:])
    report = json.loads(r.stdout)
    assert [t["current"] for t in report["trials"]][0] is True and len(report["trials"]) == 2
    cand = report["candidate"]
    assert cand is not None and cand["params"]["encode.bits"] < 8, report["trials"]
    val = report["validation"]
    assert val["units"] == 6 and val["repeats"] == 1 and val["verdict"] == "pass", val
    assert val["metrics"]["bytes_per_frame"]["verdict"] == "improvement"
    assert report["canary"]["outcome"] == "kept", report["canary"]
    st = runner.stats()
    assert st["nodes"]["encode"]["params"]["bits"] == cand["params"]["encode.bits"] and "bits" in st["pins"]["encode"]
    assert not list((tmp_path / "st").glob("*.tuned.yaml"))  # live: the graph changed, no file written
