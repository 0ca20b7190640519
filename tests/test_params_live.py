"""Live param changes: validated, applied from the next message on, refused ones change nothing."""
from __future__ import annotations

import time

import pytest

from runtime import ControlError, Runner, parse_graph
from runtime.clock import now_ns
from runtime.recording import read_records
from tests.helpers import wait_until

GRAPH = """
args: {out: out.msgpack}
link_defaults: {policy: block, size: 8}
nodes:
  src: {type: testsrc, params: {rate: 50, pattern: counter}}
  mid: {type: identity, params: {label: a}}
  rec: {type: recorder, params: {path: "${out}"}}
links:
  - src -> mid -> rec
"""


def test_param_change_takes_effect_on_next_message_and_bad_values_are_refused(tmp_path):
    out = tmp_path / "out.msgpack"
    runner = Runner(parse_graph(GRAPH, "<test>", {"out": str(out)})).start()
    recorded = lambda: runner.stats()["nodes"]["rec"]["in"]  # noqa: E731
    try:
        wait_until(lambda: recorded() >= 10, 10, what="10 frames with the old label")
        pid = runner.pids()["mid"]
        result = runner.set_params("mid", label="b")
        changed_at = now_ns()
        assert result["label"] == "b"
        with pytest.raises(ControlError, match=r"node 'mid' \(identity\): param 'delay_ms' must be in 0.0 .. 10000.0, got -1"):
            runner.set_params("mid", delay_ms=-1)
        with pytest.raises(ControlError, match="param 'label' must be str, got int 5"):
            runner.set_params("mid", label=5)
        with pytest.raises(ControlError, match="unknown param 'colour'; allowed params: delay_ms, error_after, label"):
            runner.set_params("mid", colour="red")
        with pytest.raises(ControlError, match="no node 'nosuch' runs here"):
            runner.set_params("nosuch", label="x")
        at_change = recorded()
        wait_until(lambda: recorded() >= at_change + 10, 10, what="10 frames after the refused changes")
        stats = runner.stats()["nodes"]["mid"]
        assert stats["pid"] == pid and stats["state"] == "PLAYING" and stats["params"]["label"] == "b"
        assert stats["params"]["delay_ms"] == 0.0
    finally:
        runner.stop(drain=True)
    records = list(read_records(out))
    labels = [r["data"]["via"] for r in records]
    switch = labels.index("b")
    assert set(labels[:switch]) == {"a"} and set(labels[switch:]) == {"b"}
    # every frame the source made after the change was answered went through with the new value
    assert all(r["data"]["via"] == "b" for r in records if r["pts_ns"] > changed_at)
    assert [r["data"]["n"] for r in records] == list(range(len(records)))


def test_source_rate_changes_live(tmp_path):
    runner = Runner(parse_graph(GRAPH, "<test>", {"out": str(tmp_path / "o.msgpack")})).start()
    try:
        runner.set_params("src", rate=200.0)
        recorded = lambda: runner.stats()["nodes"]["rec"]["in"]  # noqa: E731
        wait_until(lambda: recorded() >= 20, 10, what="frames flowing at the new rate")
        assert runner.set_state("PAUSED") == "PAUSED"
        n_paused = recorded()
        # Nothing flows while PAUSED: a paused graph makes no event that could mark the time, so the
        # check is a quiet period in which a playing source at 200 Hz would have sent 60 messages.
        time.sleep(0.3)
        assert recorded() == n_paused
        runner.set_state("PLAYING")
        wait_until(lambda: recorded() > n_paused, 10, what="frames flowing again after PLAYING")
    finally:
        runner.stop(drain=False)
