"""A crashed node (exception or SIGKILL) is reported on the bus, restarted, and the stream resumes."""
from __future__ import annotations

import os
import signal

from runtime import Runner, parse_graph
from runtime.recording import read_records
from tests.helpers import wait_until

GRAPH = """
args: {out: out.msgpack, restart: on-failure, error_after: -1}
link_defaults: {policy: block, size: 8}
nodes:
  src: {type: testsrc, params: {rate: 60, pattern: counter}}
  mid: {type: identity, restart: "${restart}", params: {error_after: "${error_after}"}}
  rec: {type: recorder, params: {path: "${out}", flush_every: 1}}
links:
  - src -> mid -> rec
"""


def start(tmp_path, **args) -> Runner:
    args.setdefault("out", tmp_path / "out.msgpack")
    return Runner(parse_graph(GRAPH, "<test>", {k: str(v) for k, v in args.items()})).start()


def recorded_ns(path) -> list[int]:
    return [r["data"]["n"] for r in read_records(path)]


def test_sigkill_of_middle_node_restarts_it_and_bounds_loss(tmp_path):
    runner = start(tmp_path)
    nodes = lambda: runner.stats()["nodes"]  # noqa: E731
    try:
        wait_until(lambda: nodes()["rec"]["in"] >= 60, 20, what="60 frames recorded before the kill")
        victim = runner.pids()["mid"]
        mark = len(runner.bus)
        os.kill(victim, signal.SIGKILL)
        err = runner.bus.wait_for("ERROR", after=mark, node="mid", timeout=10)
        assert "killed by SIGKILL" in err["text"] and str(victim) in err["text"]
        restarted = runner.bus.wait_for("NODE_RESTARTED", after=mark, node="mid", timeout=20)
        assert restarted["pid"] != victim and runner.pids()["mid"] == restarted["pid"]
        wait_until(lambda: (n := nodes())["mid"]["in"] > 20 and n["rec"]["in"] > 110, 20,
                   what="more than 20 frames through the restarted node, 110 recorded")
        assert nodes()["mid"]["restarts"] == 1
    finally:
        assert runner.stop(drain=True) == 0
    ns = recorded_ns(tmp_path / "out.msgpack")
    assert ns == sorted(ns)
    lost = (ns[-1] + 1) - len(ns)
    print(f"messages lost to SIGKILL of the middle node: {lost}")
    assert lost <= 3 * 8, f"lost {lost}, more than the link queues hold"
    assert ns[-1] > 100


def test_exception_in_node_is_reported_and_restarted(tmp_path):
    runner = start(tmp_path, error_after=30)
    try:
        err = runner.bus.wait_for("ERROR", node="mid", timeout=15)
        assert "RuntimeError: error_after=30 reached" in err["text"]
        runner.bus.wait_for("NODE_RESTARTED", node="mid", timeout=15)
        # the restarted node counts from zero again, so it fails again after 30 more: each is restarted
        runner.bus.wait_for("NODE_RESTARTED", node="mid", restarts=2, timeout=15)
    finally:
        runner.stop(drain=False)
    assert len(recorded_ns(tmp_path / "out.msgpack")) >= 60


def test_node_with_restart_never_fails_the_graph(tmp_path):
    runner = start(tmp_path, restart="never")
    try:
        os.kill(runner.pids()["mid"], signal.SIGKILL)
        assert runner.wait(20), "graph did not stop after a node it may not restart died"
    finally:
        runner.stop(drain=False)
    assert runner.exit_code == 1
    texts = [m["text"] for m in runner.bus.messages("ERROR", node="mid")]
    assert any("is not restarted (restart policy 'never')" in t for t in texts)
