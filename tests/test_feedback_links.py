"""Feedback links: a downstream node's requests run back upstream (GStreamer's upstream events)."""
from __future__ import annotations

from runtime import Runner, parse_graph
from tests.helpers import avatar, wait_until

LOOP = """
name: feedback
link_defaults: {policy: block, size: 16}
nodes:
  src: {type: testsrc, params: {rate: 500, num_buffers: 200}}
  served: {type: "tests.strict_sink:Served"}
  asker: {type: "tests.strict_sink:Requester"}
links:
  - src -> served.in
  - served -> asker
  - {from: asker.requests, to: served.requests, feedback: true}
"""


def test_requests_flow_back_and_eos_still_reaches_the_end():
    runner = Runner(parse_graph(LOOP, "<test>"), stop_on_eos=False).start()
    try:
        wait_until(lambda: runner.eos_reached, 30, what="EOS (a feedback input must not hold a node's EOS back)")
        nodes = runner.stats()["nodes"]
    finally:
        runner.stop(drain=False)
    assert nodes["asker"]["in"] == 200  # the block links lost nothing
    assert 0 < nodes["served"]["node"]["requests"] <= 200  # leaky: requests may drop, never block the frames
    link = next(l for l in runner.graph.links if l.feedback)
    assert link.policy == "leaky"  # whatever link_defaults say


def test_validate_refuses_a_cycle_without_feedback_and_a_blocking_feedback_link(graph_file):
    r = avatar("validate", graph_file(LOOP))
    assert r.returncode == 0, r.stderr
    r = avatar("validate", graph_file(LOOP.replace(", feedback: true", "")))
    assert r.returncode == 2
    assert "cycle in graph: served -> asker -> served" in r.stderr and "feedback: true" in r.stderr
    r = avatar("validate", graph_file(LOOP.replace("feedback: true", "feedback: true, policy: block")))
    assert r.returncode == 2 and "a feedback link must be leaky" in r.stderr, r.stderr
