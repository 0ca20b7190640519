"""State that outlives a node process: live params in the runner's store (memory, or a real Redis)."""
from __future__ import annotations

import socket

import pytest

from runtime import GraphError, Message, Node, Pad, Runner, parse_graph
from runtime.state import StateError, open_store
from tests.helpers import kill_and_wait_restart, wait_until

GRAPH = """
name: state-test
state: STATE
link_defaults: {policy: leaky, size: 4}
nodes:
  face: {type: blender, params: {rate: 60, sessions: [s1]}}  # idle motion for s1, no capture
  detail: {type: lod}
  asker: {type: "tests.test_state:LodAsker"}
links:
  - face -> detail -> asker
  - {from: asker.requests, to: detail.requests, feedback: true}
"""


class LodAsker(Node):
    """A viewer stand-in: once it sees session s1, asks the lod node for level 2 for it."""

    inputs = {"in": Pad()}
    outputs = {"requests": Pad("avatar/request")}

    def setup(self) -> None:
        self.asked = False

    def process(self, pad, msg):
        if not self.asked:
            self.asked = True
            self.emit("requests", Message("avatar/request", {"keyframe": [], "lod": {"s1": 2}}))


def wait_for(fn, timeout: float = 10.0):
    """``fn``'s value once truthy, or its last (falsy) value after ``timeout`` for the caller to assert."""
    try:
        return wait_until(fn, timeout, 0.05)
    except AssertionError:
        return fn()


def params(runner: Runner, node: str) -> dict:
    return runner.stats()["nodes"][node]["params"]


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_a_restarted_node_resumes_with_the_state_it_had(store, request):
    url = request.getfixturevalue("redis_url") if store == "redis" else "memory"
    runner = Runner(parse_graph(GRAPH.replace("STATE", url), "<test>")).start()
    try:
        runner.set_params("face", emotion="happy", intensity=0.7)  # an operator's change
        # a viewer's wish, made inside the lod node (its requests pad), not through the runner
        assert wait_for(lambda: params(runner, "detail")["levels"] == {"s1": 2})
        assert wait_for(lambda: runner.graph.nodes["detail"].params.get("levels") == {"s1": 2})
        for node in ("face", "detail"):
            kill_and_wait_restart(runner, node)
        assert params(runner, "face")["emotion"] == "happy" and params(runner, "face")["intensity"] == 0.7
        assert params(runner, "detail")["levels"] == {"s1": 2}
    finally:
        runner.stop(drain=False)
    if store == "redis":  # the store outlives the runner too: the graph starts where it was
        again = Runner(parse_graph(GRAPH.replace("STATE", url), "<test>")).start()
        try:
            assert params(again, "face")["emotion"] == "happy"
            assert params(again, "detail")["levels"] == {"s1": 2}
        finally:
            again.stop(drain=False)


def test_a_bad_or_unreachable_store_is_a_clear_error():
    with pytest.raises(GraphError, match="state must be 'memory' or a redis:// URL"):
        Runner(parse_graph(GRAPH.replace("STATE", "postgres://x"), "<test>"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here
    with pytest.raises(StateError, match=f"state store redis://127.0.0.1:{port}/0"):
        open_store(f"redis://127.0.0.1:{port}/0", "g")
