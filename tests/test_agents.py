"""Agents declared in a graph: checked when it loads, run by the runner, pinned by people."""
from __future__ import annotations

import json

import httpx
import pytest

from runtime import GraphError, parse_graph, validate_graph
from runtime.api import ApiConfig, ApiServer
from runtime.testing import start_graph
from tests.helpers import AvatarProcess, avatar, wait_until

PACED = """
name: {name}
nodes:
  src: {{type: testsrc, params: {{rate: 100}}}}
  sink: fakesink
links: [src.out -> sink.in]
agents:
  pace:
    type: target
    node: src
    param: rate
    every: 0.2
    min: 5
    max: 200
    max_step: 30
    up_after: 1
    dwell: 1
    band: 5
    max_per_min: 60
    params: {{watch: nodes.sink.node.count, rate: true, target: 30, gain: 1}}
"""


def problems(text: str) -> str:
    with pytest.raises(GraphError) as e:
        validate_graph(parse_graph(text, "g.yaml"))
    return "\n".join(str(p) for p in e.value.problems)


def test_a_graph_with_an_agent_validates_and_round_trips():
    g = parse_graph(PACED.format(name="ok"), "g.yaml")
    validate_graph(g)
    assert g.agents["pace"].param == "rate" and g.agents["pace"].params["gain"] == 1.0
    assert g.to_dict()["agents"]["pace"]["max_step"] == 30


@pytest.mark.parametrize("change, expected, line", [
    ("type: target", "agent 'pace': unknown agent type 'targte' (did you mean 'target'?)", 8),
    ("node: src", "agent 'pace' (target): no node 'srx' in the graph (nodes: src, sink)", 8),
    ("param: rate", "agent 'pace' (target): node 'src' has no param 'rat' (its params: caps, num_buffers, "
                    "pattern, rate, session, width)", 8),
    ("max: 200", "agent 'pace' (target): bounds 5 .. 2e+06 go beyond param 'rate''s range 0.0 .. 1000000.0", 8),
    ("min: 5", "agent 'pace' (target): min 500 is above max 200", 8),
    ("every: 0.2", "agent 'pace': 'every' must be seconds from 0.05 to 3600, got 0", 12),
    ("dwell: 1", "agent 'pace': 'dwell' must be a number >= 0, got -1", 17),
    ("band: 5", "agent 'pace': unknown key 'bnd' (allowed: type, node, param, every, fast, params, min, max", 18),
])
def test_a_bad_agent_is_named_with_its_line(change, expected, line):
    bad = {"type: target": "type: targte", "node: src": "node: srx", "param: rate": "param: rat",
           "max: 200": "max: 2000000", "min: 5": "min: 500", "every: 0.2": "every: 0", "dwell: 1": "dwell: -1",
           "band: 5": "bnd: 5"}[change]
    text = problems(PACED.format(name="bad").replace(change, bad))
    assert expected in text, text
    assert f"g.yaml:{line}:" in text, text


def test_more_bad_agents():
    base = PACED.format(name="bad")
    assert "agent 'pace' (target): param 'caps' of node 'src' is a str; this agent type drives a number" in problems(
        base.replace("param: rate", "param: caps").replace("min: 5", "").replace("max: 200", ""))
    assert "param 'sign' must be one of 1, -1" in problems(base.replace("gain: 1", "gain: 1, sign: 2"))
    assert "'agents' must be a mapping" in problems(base.split("agents:")[0] + "agents: [pace]\n")
    assert "'fast' must be 'down' or 'up'" in problems(base.replace("every: 0.2", "every: 0.2\n    fast: sideways"))
    assert "needs a 'type'" in problems(base.replace("    type: target\n", ""))


def test_a_param_that_cannot_change_live_is_refused(graph_file):
    text = """
    name: ready
    nodes:
      src: {type: arkit_replay, params: {path: tests/data/llf_dao_take.csv}}
      sink: fakesink
    links: [src.out -> sink.in]
    agents:
      a: {type: target, node: src, param: fps, params: {watch: x}}
    """
    r = avatar("validate", graph_file(text))
    assert r.returncode == 2 and "param 'fps' of node 'src' cannot change while the graph plays" in r.stderr, r.stderr


def test_the_agent_acts_through_live_params_posts_each_action_and_holds_a_pinned_param():
    r = start_graph(PACED.format(name="agents_live"))
    try:
        wait_until(lambda: r.graph.nodes["src"].params["rate"] <= 40, timeout=30)
        actions = [m for m in r.bus.messages() if m["type"] == "AGENT"]
        assert actions and actions[0]["agent"] == "pace" and actions[0]["param"] == "rate"
        assert actions[0]["old"] == 100 and actions[0]["new"] == 70  # max_step 30, at once (down is fast)
        assert "rate" in actions[0]["reason"] and actions[0]["inputs"]["watch"] == "nodes.sink.node.count"
        stats = r.stats()["agents"]["pace"]
        assert stats["actions"] >= len(actions) and stats["looks"] > stats["actions"]
        assert stats["bounds"] == [5, 200] and stats["pinned"] is False

        r.set_params("src", rate=150.0)  # a person: pinned
        wait_until(lambda: "pinned" in r.stats()["agents"]["pace"]["last"].get("*", {}).get("decision", ""), timeout=20)
        assert r.graph.nodes["src"].params["rate"] == 150.0
        assert r.stats()["pins"] == {"src": {"rate": "person"}}
        assert r.unpin("src") == ["rate"]
        wait_until(lambda: r.graph.nodes["src"].params["rate"] < 150.0, timeout=20)  # the agent's again
        assert r.stats()["agents"]["pace"]["pinned"] is False
    finally:
        r.stop(drain=False)


def test_a_failing_agent_is_reported_once_and_the_graph_goes_on():
    text = PACED.format(name="agents_broken") + """
  broken:
    type: tests.agent_types:Broken
    node: src
    param: rate
    every: 0.1
"""
    r = start_graph(text)
    try:
        wait_until(lambda: r.stats()["agents"]["broken"]["errors"] >= 3, timeout=20)
        errors = [m for m in r.bus.messages() if m["type"] == "ERROR"]
        assert len(errors) == 1 and "this agent is broken on purpose" in errors[0]["text"], errors
        wait_until(lambda: r.stats()["agents"]["pace"]["actions"] >= 1, timeout=20)  # the other one works
        assert r.stats()["nodes"]["src"]["state"] == "PLAYING"
    finally:
        r.stop(drain=False)


def test_a_keyed_agent_keeps_one_guard_per_key_and_merges_its_values_into_the_table():
    text = """
name: agents_keyed
nodes:
  src: {type: arkit_replay, params: {path: tests/data/llf_dao_take.csv, loop: true}}
  lod: {type: lod, params: {levels: {keep: 2}}}
  sink: fakesink
links: [src -> lod -> sink]
agents:
  per:
    type: tests.agent_types:PerSession
    node: lod
    every: 0.1
    max_step: 1
    up_after: 100
    params: {want: {a: 3, b: 0, c: 1}}
"""
    r = start_graph(text)
    try:
        wait_until(lambda: r.graph.nodes["lod"].params["levels"].get("a") == 3, timeout=20)
        levels = r.graph.nodes["lod"].params["levels"]
        # up is fast: a and c went up at once, one step a look; b's wish (0) is its level: nothing to do
        assert levels == {"keep": 2, "a": 3, "c": 1}, levels
        moves = [(m["key"], m["old"], m["new"]) for m in r.bus.messages() if m["type"] == "AGENT"]
        assert moves == [("a", 0, 1), ("c", 0, 1), ("a", 1, 2), ("a", 2, 3)], moves
        assert r.stats()["nodes"]["lod"]["params"]["levels"] == levels  # the node holds them
    finally:
        r.stop(drain=False)


def test_the_cli_and_the_api_pin_and_unpin(graph_file):
    path = graph_file(PACED.format(name="agents_cli"))
    p = AvatarProcess("run", path, "--api", "127.0.0.1:0", "--api-insecure-local")
    try:
        p.wait_playing()
        p.wait_for(lambda m: m["type"] == "AGENT")
        r = avatar("set", "-g", "agents_cli", "src", "rate=120")
        assert r.returncode == 0, r.stderr
        stats = json.loads(avatar("stats", "-g", "agents_cli").stdout)
        assert stats["pins"] == {"src": {"rate": "person"}} and stats["agents"]["pace"]["pinned"] is True
        r = avatar("unpin", "-g", "agents_cli", "src", "rate")
        assert r.returncode == 0 and json.loads(r.stdout) == {"node": "src", "unpinned": ["rate"]}, r.stderr
        r = avatar("unpin", "-g", "agents_cli", "nosuch")
        assert r.returncode == 1 and "no node 'nosuch' runs here" in r.stderr
    finally:
        avatar("stop", "-g", "agents_cli", "--now")
        p.finish()
        p.kill()


def test_the_api_unpins_and_exports_agent_metrics():
    r = start_graph(PACED.format(name="agents_api"))
    try:
        with ApiServer(r, ApiConfig(port=0, insecure_local=True)) as api:
            c = httpx.Client(base_url=api.url, timeout=30)
            assert c.post("/nodes/src/params", json={"params": {"rate": 90}}).status_code == 200
            assert c.get("/stats").json()["pins"] == {"src": {"rate": "person"}}
            res = c.delete("/nodes/src/pins", params={"param": ["rate"]})
            assert res.status_code == 200 and res.json() == {"node": "src", "unpinned": ["rate"]}
            assert c.delete("/nodes/nosuch/pins").status_code == 404
            wait_until(lambda: r.stats()["agents"]["pace"]["actions"] >= 1, timeout=20)
            text = c.get("/metrics").text
            assert 'avatar_agent_actions_total{agent="pace",node="src",param="rate",type="target"}' in text
            assert 'avatar_agent_pinned{agent="pace",node="src",param="rate",type="target"} 0.0' in text
    finally:
        r.stop(drain=False)


def test_inspect_lists_and_describes_agent_types():
    r = avatar("inspect")
    assert "Agent types" in r.stdout and "target" in r.stdout.split("Agent types")[1]
    r = avatar("inspect", "target")
    assert r.returncode == 0 and "Agent type: target" in r.stdout and "watch:" in r.stdout
