"""Per-session params (``Param.per_session``): one session runs with its own values, set from the
CLI, the API or the control channel like any live param, kept across a node's restart, refused
with the reason where a param or a node type has none."""
from __future__ import annotations

import json
import secrets

import httpx

from runtime import Runner, parse_graph
from runtime.api import ApiConfig, ApiServer
from tests.helpers import avatar, kill_and_wait_restart, wait_until

GRAPH = """
name: sessparams
nodes:
  face: {type: blender, params: {sessions: [a, b]}}
  sink: fakesink
links: [face.out -> sink.in]
"""


def own(runner) -> dict:
    return runner.stats()["nodes"]["face"]["params"]["session_params"]


def test_one_sessions_params_from_the_cli_and_the_api_survive_a_restart_and_bad_ones_are_refused():
    endpoint = f"ipc://@avatar-ctl/test-sessparams-{secrets.token_hex(4)}"
    r = Runner(parse_graph(GRAPH, "<test>"), control=endpoint).start()

    def cli(*args: str):
        return avatar("set", "--control", endpoint, *args)

    try:
        wait_until(lambda: r.stats()["nodes"]["sink"]["node"]["count"] > 10, 20, what="frames at the sink")
        got = cli("face", "min_cutoff=0.5", "beta=4", "--session", "b")
        assert got.returncode == 0, got.stderr
        assert json.loads(got.stdout)["session_params"] == {"b": {"min_cutoff": 0.5, "beta": 4}}
        assert r.stats()["nodes"]["face"]["params"]["min_cutoff"] == 1.5  # the node's own value is untouched
        by = r.stats()["nodes"]["face"]["node"]["smoothing_by_session"]
        assert list(by) == ["b"] and by["b"]["params"] == {"min_cutoff": 0.5, "beta": 4.0}

        got = cli("face", "rate=30", "--session", "b")
        assert got.returncode == 2 and "'rate' cannot be set per session (these can: beta, d_cutoff, min_cutoff)" \
            in got.stderr, got.stderr
        got = cli("sink", "count=3", "--session", "b")
        assert got.returncode == 2 and "node 'sink' (fakesink): its type has no per-session params" in got.stderr
        assert own(r) == {"b": {"min_cutoff": 0.5, "beta": 4}}  # refusals changed nothing

        with ApiServer(r, ApiConfig(port=0, insecure_local=True)) as api:
            c = httpx.Client(base_url=api.url, timeout=30)
            res = c.post("/nodes/face/params", json={"params": {"beta": None, "d_cutoff": 3.0}, "session": "b"})
            assert res.status_code == 200, res.text
            assert res.json()["session"] == "b" and own(r) == {"b": {"min_cutoff": 0.5, "d_cutoff": 3.0}}
            res = c.post("/nodes/face/params", json={"params": {"min_cutoff": -1}, "session": "a"})
            assert res.status_code == 422 and "session 'a': param 'min_cutoff' must be in 0.01 .. inf" in res.text
            assert c.post("/nodes/face/params", json={"params": {"beta": 1}, "session": ""}).status_code == 422

        kill_and_wait_restart(r, "face")  # the next process starts with the session's values
        assert own(r) == {"b": {"min_cutoff": 0.5, "d_cutoff": 3.0}}
        wait_until(lambda: "b" in r.stats()["nodes"]["face"]["node"].get("smoothing_by_session", {}), 10,
                   what="session b measured apart again")
        got = cli("face", "min_cutoff=null", "d_cutoff=null", "--session", "b")
        assert got.returncode == 0 and own(r) == {}, got.stderr
        assert "smoothing_by_session" not in r.stats()["nodes"]["face"]["node"]
    finally:
        r.stop(drain=False)
