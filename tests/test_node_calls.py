"""Calls into a node's interfaces (GStreamer's action signals) through a real Runner: the answer
comes back, a refusal is CallRefused with the node's reason, an undeclared interface is refused
before anything is sent, and a call waits while the node's code runs (it never cuts into it)."""
from __future__ import annotations

import asyncio
import concurrent.futures

import pytest

from runtime import CallRefused, ControlError, ParamError
from runtime.testing import NodeHarness, start_graph
from tests.call_node import Counter
from tests.helpers import wait_until

GRAPH = """
name: calls
nodes:
  counter: {{type: 'tests.call_node:Counter'}}
  gate: {{type: 'tests.call_node:Gate', params: {{release: "{release}"}}, hang_timeout: 60}}
links:
  - {{from: counter.out, to: gate.in, policy: block, size: 1}}
"""


@pytest.fixture
def runner(tmp_path, runners):
    r = start_graph(GRAPH.format(release=tmp_path / "release"))
    runners.append(r)
    return r


def test_a_call_reaches_the_node_and_its_answer_comes_back(runner):
    assert runner.call("counter", "count", {"op": "add", "n": 2}) == {"total": 2}
    assert runner.call("counter", "count", {"op": "add", "n": 3}) == {"total": 5}
    assert runner.nodes_with("count") == ["counter"]
    assert runner.nodes_with("say") == []
    assert runner.stats()["nodes"]["counter"]["node"]["total"] == 5


def test_refusals_say_why_and_change_nothing(runner):
    with pytest.raises(CallRefused, match=r"node 'counter': 'n' must be a whole number >= 0, got -1"):
        runner.call("counter", "count", {"op": "add", "n": -1})
    with pytest.raises(CallRefused, match=r"node 'counter' \(tests.call_node:Counter\) has no 'say' interface "
                                          r"\(its interfaces: count\)"):
        runner.call("counter", "say", {"text": "hi"})
    with pytest.raises(CallRefused, match=r"has no 'count' interface \(its interfaces: none\)"):
        runner.call("gate", "count", {"op": "add", "n": 1})
    with pytest.raises(CallRefused, match="an integer beyond 64 bits"):  # cannot even travel to the node
        runner.call("counter", "count", {"op": "add", "n": 2 ** 70})
    with pytest.raises(ControlError, match="no node 'ghost' runs here"):
        runner.call("ghost", "count", {})
    assert issubclass(CallRefused, ControlError)
    assert runner.call("counter", "count", {"op": "peek"})["total"] == 0


def test_a_failing_call_is_an_error_but_the_node_lives_on(runner):
    pid = runner.pids()["counter"]
    with pytest.raises(ControlError, match="cannot be sent") as exc:
        runner.call("counter", "count", {"op": "unsendable"})
    assert not isinstance(exc.value, CallRefused)
    with pytest.raises(ControlError, match="the 'count' call failed: ZeroDivisionError") as exc:
        runner.call("counter", "count", {"op": "crash"})
    assert not isinstance(exc.value, CallRefused)
    assert runner.call("counter", "count", {"op": "add", "n": 1}) == {"total": 1}
    assert runner.pids()["counter"] == pid and not runner.bus.messages("NODE_RESTARTED")
    assert any("ZeroDivisionError" in m["text"] for m in runner.bus.messages("WARNING"))


def test_a_call_waits_while_node_code_runs(runner, tmp_path):
    """The counter floods a blocked link from a timer: while it waits for room, its process still
    answers stats, but a call (which changes the node) is held until the flood has returned."""
    n = 3000  # far more than the size-1 link and the sockets hold: the counter waits for room until released
    assert runner.call("counter", "count", {"op": "flood", "n": n}) == {"flooding": n}
    counter = lambda: runner.stats(nodes=["counter"])["nodes"]["counter"]  # noqa: E731 (the gate, held, answers nobody)
    wait_until(lambda: counter()["node"]["flooding"], 10, what="the counter flooding its blocked link")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        peek = pool.submit(runner.call, "counter", "count", {"op": "peek"}, 30.0)
        wait_until(lambda: counter()["deferred"] == 1, 10, what="the call held by the busy node")
        assert counter()["node"]["flooding"] and not peek.done()
        (tmp_path / "release").touch()
        assert peek.result(30) == {"flooding": False, "sent": n, "total": 0}
    assert counter()["deferred"] == 0


def test_the_api_loop_awaits_a_call_without_a_thread(runner):
    async def from_another_loop():
        a = await runner.on_loop_async(runner.call_async("counter", "count", {"op": "add", "n": 4}), 10)
        b = await runner.on_loop_async(lambda: runner.nodes_with("count"), 10)
        return a, b

    assert asyncio.run(from_another_loop()) == ({"total": 4}, ["counter"])


def test_harness_calls_go_through_the_wire_encoding():
    h = NodeHarness(Counter)
    try:
        assert h.call("count", op="add", n=7) == {"total": 7}
        with pytest.raises(ParamError, match="'n' must be a whole number"):
            h.call("count", op="add", n="7")
        with pytest.raises(ParamError, match="has no 'say' interface"):
            h.call("say", text="hi")
        with pytest.raises(TypeError):  # what a node process could not send back
            h.call("count", op="unsendable")
    finally:
        h.close()


def test_a_type_without_calls_refuses_them():
    from runtime import Node

    with pytest.raises(ParamError, match="takes no 'x' call"):
        Node("n", {}, None).on_call("x", {})  # type: ignore[arg-type]
