"""Structured logs: ``--log-format json`` makes every stderr line of the runner and its nodes JSON."""
from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys

from runtime.logs import JsonFormatter, configure, log_format, message_ids
from runtime.message import Message
from tests.helpers import ROOT, avatar

KEYS = {"ts", "level", "logger", "node", "pid", "msg", "session", "trace"}

GRAPH = """
name: logtest-{tag}
nodes:
  src: {{type: testsrc, params: {{rate: 200, num_buffers: 5, session: s1}}}}
  tag: {{type: "tests.log_node:Tagger"}}
  bad: {{type: identity, params: {{error_after: 3}}, restart: never}}
links:
  - {{chain: "src -> tag -> bad", policy: block, size: 16}}
"""


def run_graph(graph_file, tag: str, *flags: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    path = graph_file(GRAPH.format(tag=tag))
    return subprocess.run([sys.executable, "-m", "runtime.cli", "run", str(path), "--no-control", *flags],
                          capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env={**os.environ, "AVATAR_LOG_FORMAT": "", **(env or {})})


def json_lines(stderr: str) -> list[dict]:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines, "nothing was logged"
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            raise AssertionError(f"a stderr line is not JSON: {line!r}") from None
    for rec in records:
        assert KEYS <= rec.keys(), rec
    return records


def bus_pids(stdout: str) -> dict[str, int]:
    pids = {}
    for line in stdout.splitlines():
        msg = json.loads(line)
        if msg.get("type") == "STATE_CHANGED" and msg.get("node") and msg.get("pid"):
            pids[msg["node"]] = msg["pid"]
    return pids


def check_node_records(res: subprocess.CompletedProcess) -> None:
    assert res.returncode == 1, res.stderr  # 'bad' fails for good (restart: never)
    records = json_lines(res.stderr)
    pids = bus_pids(res.stdout)
    tagged = [r for r in records if r["logger"] == "avatar.node.tag"]
    assert [r["frame"] for r in tagged][:3] == [0, 1, 2]
    for r in tagged:
        assert r["level"] == "WARNING"
        assert r["node"] == "tag" and r["pid"] == pids["tag"]
        assert r["session"] == "s1" and r["trace"] == f"t{r['frame']}"
        assert r["msg"] == f"frame {r['frame']} tagged"
    failed = [r for r in records if r["logger"] == "avatar.worker.bad" and r["level"] == "ERROR"]
    assert len(failed) == 1, records
    assert failed[0]["node"] == "bad" and failed[0]["pid"] == pids["bad"]
    assert "RuntimeError: error_after=3 reached" in failed[0]["msg"]  # the traceback, in one JSON line


def test_nodes_log_json_lines_with_node_pid_session_and_trace(graph_file):
    check_node_records(run_graph(graph_file, "flag", "--log-format", "json"))


def test_the_environment_variable_chooses_json_too(graph_file):
    check_node_records(run_graph(graph_file, "env", env={"AVATAR_LOG_FORMAT": "json"}))


def test_text_stays_the_default(graph_file):
    res = run_graph(graph_file, "text")
    assert res.returncode == 1
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert any(" tag[" in line and "WARNING frame 0 tagged" in line for line in lines), res.stderr
    assert any(" bad[" in line and " ERROR node 'bad' failed:" in line for line in lines), res.stderr
    assert not any(line.startswith("{") for line in lines)


def test_runner_problems_are_json_too(graph_file):
    path = graph_file(GRAPH.format(tag="runner"))
    res = avatar("run", path, "--no-control", "--log-format", "json", "--api", "0.0.0.0:0", "--api-insecure-local")
    assert res.returncode == 2
    (rec,) = json_lines(res.stderr)
    assert rec["level"] == "ERROR" and rec["logger"] == "avatar.runner" and rec["node"] is None
    assert "loopback" in rec["msg"] and rec["pid"] > 0


def test_a_bad_format_in_the_environment_is_refused(graph_file):
    res = run_graph(graph_file, "bad", env={"AVATAR_LOG_FORMAT": "xml"})
    assert res.returncode == 2
    assert "log format must be one of text, json, got 'xml'" in res.stderr


# --- the formatter itself ---------------------------------------------------------------------
def test_formatter_keys_extra_fields_and_exceptions():
    stream = io.StringIO()
    assert configure(node="mid", fmt="json", level="INFO", stream=stream) == "json"
    log = logging.getLogger("avatar.node.mid")
    msg = Message("test/frame", {}, {}, session=["a", "b"], trace="abc")
    log.info("hello %s", "world", extra={**message_ids(msg), "frame": 7, "obj": object()})
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    configure(node="other", fmt="text", level="INFO", stream=stream)  # replaces the JSON handler
    log.warning("plain")
    first, second, third = stream.getvalue().splitlines()
    a, b = json.loads(first), json.loads(second)
    assert KEYS <= a.keys() and a["ts"].endswith("Z")
    assert (a["level"], a["logger"], a["node"], a["pid"]) == ("INFO", "avatar.node.mid", "mid", os.getpid())
    assert (a["msg"], a["session"], a["trace"], a["frame"]) == ("hello world", ["a", "b"], "abc", 7)
    assert a["obj"].startswith("<object object")
    assert b["session"] is None and b["trace"] is None
    assert b["exc"].startswith("Traceback") and "ValueError: boom" in b["exc"]
    assert third.endswith(f"other[{os.getpid()}] WARNING plain")
    root = logging.getLogger()
    for h in [h for h in root.handlers if getattr(h, "_avatar_logs", False)]:
        root.removeHandler(h)


def test_format_choice():
    assert log_format("JSON") == "json"
    assert log_format(None) in ("text", "json")
    assert JsonFormatter("n").node == "n"
    try:
        log_format("yaml")
    except ValueError as exc:
        assert "text, json" in str(exc)
    else:
        raise AssertionError("yaml accepted")
