"""Hot-swap a node while a 60 Hz source streams: nothing lost, other processes untouched."""
from __future__ import annotations

import time

import pytest

from runtime import ControlError, Runner, parse_graph
from runtime.clock import now_ns
from runtime.recording import read_records

GRAPH = """
name: swap
args: {out: out.msgpack}
link_defaults: {policy: block, size: 16}
nodes:
  src: {type: testsrc, params: {rate: 60, pattern: counter}}
  mid: {type: identity, params: {label: old}}
  rec: {type: recorder, params: {path: "${out}"}}
links:
  - src -> mid -> rec
"""


def start(tmp_path, text: str = GRAPH) -> Runner:
    return Runner(parse_graph(text, "<test>", {"out": str(tmp_path / "out.msgpack")})).start()


def test_hot_swap_loses_nothing_and_keeps_other_pids(tmp_path):
    runner = start(tmp_path)
    try:
        time.sleep(1.0)
        before = runner.pids()
        new_pid = runner.swap("mid", params={"label": "new", "delay_ms": 1.0})
        swapped_at = now_ns()
        time.sleep(1.0)
        after = runner.pids()
        assert new_pid == after["mid"] != before["mid"]
        assert after["src"] == before["src"] and after["rec"] == before["rec"]
        stats = runner.stats()
        assert stats["links"]["mid.out-rec.in"]["gaps"] == 0
        assert stats["nodes"]["mid"]["params"]["label"] == "new"
    finally:
        assert runner.stop(drain=True) == 0
    records = list(read_records(tmp_path / "out.msgpack"))
    ns = [r["data"]["n"] for r in records]
    assert ns == list(range(len(ns))), "a message was lost or reordered across the swap"
    assert [r["seq"] for r in records] == list(range(len(records))), "link sequence numbers have a gap"
    labels = [r["data"]["via"] for r in records]
    switch = labels.index("new")
    assert set(labels[:switch]) == {"old"} and set(labels[switch:]) == {"new"}
    assert all(r["data"]["via"] == "new" for r in records if r["pts_ns"] > swapped_at)
    assert len(records) > 100
    assert runner.bus.messages("NODE_SWAPPED", node="mid")


def test_swap_to_another_type(tmp_path):
    text = GRAPH.replace("rec: {type: recorder", "tail: {type: identity}\n  rec: {type: recorder").replace(
        "src -> mid -> rec", "src -> mid -> tail -> rec")
    runner = start(tmp_path, text)
    try:
        time.sleep(0.5)
        with pytest.raises(ControlError, match="has no output pad 'out'"):  # a sink cannot sit mid-chain
            runner.swap("tail", type="fakesink")
        with pytest.raises(ControlError, match="has no input pad 'in'"):
            runner.swap("mid", type="testsrc")
        with pytest.raises(ControlError, match="unknown param 'bogus'"):
            runner.swap("mid", params={"bogus": 1})
        assert runner.stats()["nodes"]["mid"]["state"] == "PLAYING"  # refused swaps leave it running
        runner.swap("tail", type="tests.strict_sink:PassThrough")
        time.sleep(0.5)
    finally:
        runner.stop(drain=True)
    records = list(read_records(tmp_path / "out.msgpack"))
    assert [r["data"]["n"] for r in records] == list(range(len(records)))
    assert any(r["data"].get("passed") for r in records)
