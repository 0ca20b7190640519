"""`avatar run` / `avatar launch` as a user runs them: bus on stdout, Ctrl-C drains, no orphans."""
from __future__ import annotations

import json
import os
import signal

from runtime.recording import read_records
from tests.helpers import abstract_sockets, avatar, wait_gone, wait_until

GRAPH = """
name: {name}
args: {{out: out.msgpack, rate: 100}}
link_defaults: {{policy: block, size: 16}}
nodes:
  src: {{type: testsrc, params: {{rate: "${{rate}}", pattern: counter}}}}
  mid: {{type: identity}}
  rec: {{type: recorder, params: {{path: "${{out}}"}}}}
links:
  - src -> mid -> rec
"""


def node_pids(proc) -> set[int]:
    ready = proc.wait_for(lambda m: m["type"] == "STATE_CHANGED" and m["node"] is None and m["new"] == "READY")
    return set(ready["pids"].values())


def test_ctrl_c_drains_and_stops_everything(graph_file, avatar_run, tmp_path):
    out = tmp_path / "out.msgpack"
    proc = avatar_run("run", graph_file(GRAPH.format(name="ctrlc")), f"out={out}")
    pids = node_pids(proc)
    run_id = proc.bus[-1]["run_id"]
    assert len(pids) == 3
    proc.wait_playing()
    # the recorder flushes every 60 messages: a file with bytes in it holds more than 10 records
    wait_until(lambda: out.exists() and out.stat().st_size > 0, 20, what="the recorder's first flush")
    proc.proc.send_signal(signal.SIGINT)
    assert proc.finish() == 0, proc.stderr
    assert any(m["type"] == "EOS" for m in proc.bus)
    assert wait_gone(pids, 1) == []
    assert abstract_sockets(run_id) == []
    ns = [r["data"]["n"] for r in read_records(out)]
    assert ns == list(range(len(ns))) and len(ns) > 10


def test_runner_killed_with_sigkill_leaves_no_orphans(graph_file, avatar_run, tmp_path):
    proc = avatar_run("run", graph_file(GRAPH.format(name="orphans")), f"out={tmp_path / 'o.msgpack'}")
    pids = node_pids(proc)
    run_id = proc.bus[-1]["run_id"]
    proc.wait_playing()
    os.kill(proc.proc.pid, signal.SIGKILL)
    proc.proc.wait()
    assert wait_gone(pids, 5) == [], "node processes outlived their runner"
    assert abstract_sockets(run_id) == []


def test_launch_one_liner_runs_to_eos(tmp_path):
    out = tmp_path / "x.msgpack"
    r = avatar("launch", "--policy", "block", f"testsrc rate=500 num_buffers=50 ! identity ! recorder path={out}")
    assert r.returncode == 0, r.stderr
    bus = [json.loads(line) for line in r.stdout.splitlines()]
    assert [m["type"] for m in bus].count("EOS") == 1
    assert len(list(read_records(out))) == 50


def test_unknown_param_on_launch_exits_nonzero():
    r = avatar("launch", "testsrc rat=5 ! fakesink")
    assert r.returncode == 2
    assert "<launch>: error: node 'testsrc' (testsrc): unknown param 'rat' (did you mean 'rate'?)" in r.stderr


def test_control_channel_from_the_cli(graph_file, avatar_run, tmp_path):
    proc = avatar_run("run", graph_file(GRAPH.format(name="ctl")), f"out={tmp_path / 'o.msgpack'}")
    pids = node_pids(proc)
    proc.wait_playing()
    r = avatar("stats", "-g", "ctl")
    assert r.returncode == 0, r.stderr
    stats = json.loads(r.stdout)
    assert stats["state"] == "PLAYING" and {n["pid"] for n in stats["nodes"].values()} == pids
    assert set(stats["links"]["mid.out-rec.in"]) >= {"sent", "received", "gaps", "drops", "depth"}
    r = avatar("stats", "-g", "ctl", "mid")  # one node's: its link's other end is left out
    one = json.loads(r.stdout)
    assert list(one["nodes"]) == ["mid"] and one["links"]["mid.out-rec.in"]["sent"] is not None
    assert one["links"]["mid.out-rec.in"]["received"] is None
    r = avatar("stats", "-g", "ctl", "ghost")
    assert r.returncode == 1 and "no node 'ghost' runs here" in r.stderr, r.stderr
    r = avatar("set", "-g", "ctl", "mid", "label=z", "delay_ms=0.5")
    assert r.returncode == 0 and json.loads(r.stdout)["label"] == "z"
    r = avatar("set", "-g", "ctl", "mid", "delay_ms=oops")
    assert r.returncode == 2 and "refused" in r.stderr and "param 'delay_ms' must be float, got str 'oops'" in r.stderr
    r = avatar("swap", "-g", "ctl", "mid", "label=y")
    assert r.returncode == 0, r.stderr
    new_pid = json.loads(r.stdout)["pid"]
    assert new_pid not in pids
    r = avatar("stats", "-g", "nosuchgraph")
    assert r.returncode == 1 and "no graph answered" in r.stderr
    r = avatar("stop", "-g", "ctl")
    assert r.returncode == 0
    assert proc.finish() == 0
    assert wait_gone(pids | {new_pid}, 5) == []


def test_second_runner_with_same_name_is_refused(graph_file, avatar_run, tmp_path):
    proc = avatar_run("run", graph_file(GRAPH.format(name="dup")), f"out={tmp_path / 'a.msgpack'}")
    proc.wait_playing()
    r = avatar("run", graph_file(GRAPH.format(name="dup"), "g2.yaml"), f"out={tmp_path / 'b.msgpack'}", timeout=60)
    assert r.returncode == 1
    assert "is a graph named 'dup' already running?" in r.stderr
