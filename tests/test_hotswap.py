"""Hot-swap a node while a 60 Hz source streams: nothing lost, other processes untouched."""
from __future__ import annotations

import os
import signal
import time

import pytest

from runtime import ControlError, Runner, parse_graph
from runtime.clock import now_ns
from runtime.recording import read_records
from tests.helpers import alive, kill_and_wait_restart, wait_until

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


def wait_through(runner: Runner, node: str, n: int, what: str) -> None:
    """Until ``node`` (its current process) has taken ``n`` messages in."""
    wait_until(lambda: runner.stats()["nodes"][node]["in"] >= n, 20, what=f"{n} messages into {node} {what}")


def test_hot_swap_loses_nothing_and_keeps_other_pids(tmp_path):
    runner = start(tmp_path)
    try:
        wait_through(runner, "rec", 60, "before the swap")
        before = runner.pids()
        new_pid = runner.swap("mid", params={"label": "new", "delay_ms": 1.0})
        swapped_at = now_ns()
        wait_through(runner, "mid", 60, "after the swap")
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
        wait_through(runner, "rec", 10, "before the swaps")
        with pytest.raises(ControlError, match="has no output pad 'out'"):  # a sink cannot sit mid-chain
            runner.swap("tail", type="fakesink")
        with pytest.raises(ControlError, match="has no input pad 'in'"):
            runner.swap("mid", type="testsrc")
        with pytest.raises(ControlError, match="unknown param 'bogus'"):
            runner.swap("mid", params={"bogus": 1})
        assert runner.stats()["nodes"]["mid"]["state"] == "PLAYING"  # refused swaps leave it running
        runner.swap("tail", type="tests.strict_sink:PassThrough")
        wait_through(runner, "tail", 10, "of the new type")
    finally:
        runner.stop(drain=True)
    records = list(read_records(tmp_path / "out.msgpack"))
    assert [r["data"]["n"] for r in records] == list(range(len(records)))
    assert any(r["data"].get("passed") for r in records)


def _flowing(tmp_path, runner: Runner, after: int) -> bool:
    """The recorder got a message later than the ``after``-th."""
    try:
        return wait_until(lambda: runner.stats()["nodes"]["rec"]["in"] > after, 5, 0.05)
    except AssertionError:
        return False


@pytest.mark.parametrize("delay", [0.0, 0.02, 0.1, 0.3], ids=["restart-asleep", "restart-due", "restart-bringing-up",
                                                               "restart-done"])
def test_swap_of_a_node_just_killed_starts_one_process(tmp_path, delay):
    """SIGKILL a node, then swap it: the restart and the swap both took ``old.instance + 1``, so two
    processes bound the same ipc endpoints ('Address already in use (ipc://.../1)') and the swap
    timed out. Now one instance counter serves both, a sleeping restart stands down for the swap,
    and a swap waits for a restart already bringing its process up: one new process either way."""
    runner = start(tmp_path)
    try:
        wait_through(runner, "rec", 10, "before the kill")
        victim = runner.pids()["mid"]
        mark = len(runner.bus)
        os.kill(victim, signal.SIGKILL)
        time.sleep(delay)  # the phase of the restart the swap meets is the parameter under test
        pid = runner.swap("mid", params={"label": "new"}, timeout=5)
        # half a second of frames through the new process: time for a second restart or bind to show
        wait_through(runner, "mid", 30, "after the swap")
        assert runner.pids()["mid"] == pid != victim and alive(pid)
        mid = runner.stats()["nodes"]["mid"]
        assert mid["state"] == "PLAYING" and mid["params"]["label"] == "new"
        after = list(runner.bus)[mark:]
        errors = [m["text"] for m in after if m["type"] == "ERROR"]
        assert errors == [f"node 'mid' (identity, pid {victim}) killed by SIGKILL"], errors
        assert [m["pid"] for m in after if m["type"] == "NODE_SWAPPED"] == [pid]
        assert len([m for m in after if m["type"] == "NODE_RESTARTED"]) <= 1
        assert _flowing(tmp_path, runner, runner.stats()["nodes"]["rec"]["in"])
    finally:
        assert runner.stop(drain=True) == 0
    ns = [r["data"]["n"] for r in read_records(tmp_path / "out.msgpack")]
    assert ns == sorted(ns) and len(ns) > 30


def test_swap_out_of_a_crash_restart_loop(tmp_path):
    """A node failing on every start (error_after) is restarted again and again; a swap with a
    fixed param, at any point of that loop, ends it with one process and nothing bound twice."""
    text = GRAPH.replace("mid: {type: identity, params: {label: old}}",
                         "mid: {type: identity, params: {label: old, error_after: 3}, max_restarts: 100}")
    runner = start(tmp_path, text)
    try:
        for wait in (0.05, 0.13, 0.21, 0.34, 0.55):
            time.sleep(wait)  # the phase of the crash loop the swap meets is what this test varies
            runner.swap("mid", params={"error_after": 3}, timeout=5)  # into the loop again, at another phase
        mark = len(runner.bus)
        pid = runner.swap("mid", params={"error_after": -1}, timeout=5)
        swapped = len(runner.bus)
        # a second of frames through the new process, far past the 3 it used to fail at
        wait_through(runner, "mid", 60, "after the fixing swap")
        assert runner.pids()["mid"] == pid and alive(pid)
        assert [m["pid"] for m in list(runner.bus)[mark:] if m["type"] == "NODE_SWAPPED"] == [pid]
        assert pid not in [m.get("pid") for m in list(runner.bus)[mark:] if m["type"] == "ERROR"]
        assert not [m for m in list(runner.bus)[swapped:] if m["type"] in ("ERROR", "NODE_RESTARTED")]
        texts = [m.get("text", "") for m in runner.bus.messages("ERROR")]
        assert not [t for t in texts if "already in use" in t], texts
        assert runner.stats()["nodes"]["mid"]["state"] == "PLAYING"
        assert _flowing(tmp_path, runner, runner.stats()["nodes"]["rec"]["in"])
    finally:
        assert runner.stop(drain=True) == 0


def test_regression_a_swap_right_after_restarts_hands_over_in_band(tmp_path, runners):
    """The drained process used to exit straight after sending its MARK, and now and then took
    the MARK (and its last frames) with it unsent: the swap waited out its whole timeout and
    killed it. It now waits for the runner's STOP, sent once the MARK has arrived downstream."""
    text = """
link_defaults: {policy: leaky, size: 8}
nodes:
  face: {type: blender, params: {rate: 60, sessions: [s1]}}
  pack: {type: compressor}
  out: {type: fakesink}
links:
  - face -> pack -> out
"""
    runner = Runner(parse_graph(text, "<test>"))
    runners.append(runner)
    runner.start()
    for i in range(6):  # it struck one swap in three to ten
        kill_and_wait_restart(runner, "face", 15)
        mark = len(runner.bus)
        runner.swap("face", timeout=10)
        late = [m["text"] for m in runner.bus.messages()[mark:] if m["type"] == "WARNING" and "did not drain" in m["text"]]
        assert not late, f"swap {i}: {late}"
