"""A refused live param changes nothing anywhere: not the node, not the graph's recorded params,
not the state store (memory or Redis). The node's next process, after a SIGKILL or a swap,
starts with the last accepted values. Refusals by range, by the state a param may change in, by
a param's own check, by the node itself (an unknown emotion) and by a failed bind."""
from __future__ import annotations

import socket

import pytest

from runtime import ControlError, ParamRefused, Runner, parse_graph
from tests.helpers import free_udp_port, kill_and_wait_restart

GRAPH = """
name: refused-{store_kind}
state: {state}
link_defaults: {{policy: leaky, size: 8}}
nodes:
  cap: {{type: arkit_source, params: {{port: {port}}}}}
  face: {{type: blender, params: {{rate: 60, sessions: [s1]}}}}
  view: {{type: websocket_sink, params: {{port: 0}}}}
  pack: {{type: compressor}}
links:
  - cap -> face.capture
  - face -> pack -> view
"""


def live(runner: Runner, node: str) -> dict:
    return runner.stats()["nodes"][node]


def recorded(runner: Runner, node: str) -> tuple[dict, dict]:
    """What the runner would start the node's next process with: the graph's params and the store's."""
    return runner.graph.nodes[node].params, runner.store.load().get(node, {})


def check_kept(runner: Runner, node: str, expected: dict) -> None:
    """The node runs with ``expected`` and the runner would start its next process with it."""
    params, stored = recorded(runner, node)
    for k, v in expected.items():
        assert live(runner, node)["params"][k] == v, k
        assert params[k] == v and stored[k] == v, (k, params.get(k), stored.get(k))


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_refused_values_change_nothing_and_survive_neither_restart_nor_swap(store, request, runners):
    state = request.getfixturevalue("redis_url") if store == "redis" else "memory"
    first, second = free_udp_port(), free_udp_port()
    runner = Runner(parse_graph(GRAPH.format(store_kind=store, state=state, port=first), "<test>"))
    runners.append(runner)
    runner.start()

    # accepted changes: recorded everywhere
    runner.set_params("face", emotion="happy", intensity=0.5)
    runner.set_params("cap", port=second)
    check_kept(runner, "face", {"emotion": "happy", "intensity": 0.5})
    check_kept(runner, "cap", {"port": second})
    assert live(runner, "cap")["node"]["port"] == second

    held = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # someone else listens on this port
    held.bind(("127.0.0.1", 0))
    try:
        refusals = [
            ("face", {"intensity": 2.0}, r"param 'intensity' must be in 0.0 .. 1.0"),  # range
            ("face", {"seed": 3}, r"param 'seed' can only change in READY"),  # state
            ("view", {"api": "ftp://x"}, r"param 'api': must be an http\(s\) URL"),  # the param's own check
            ("face", {"emotion": "smug", "intensity": 0.9}, r"unknown emotion 'smug'"),  # the node's own check
            ("cap", {"port": held.getsockname()[1]}, r"cannot listen on UDP [\d.]+:\d+: .*; still listening"),  # bind
        ]
        for node, values, why in refusals:
            before = (dict(live(runner, node)["params"]), *map(dict, recorded(runner, node)))
            with pytest.raises(ParamRefused, match=why):
                runner.set_params(node, **values)
            after = (dict(live(runner, node)["params"]), *map(dict, recorded(runner, node)))
            assert after == before, f"{node} {values}: something changed"
    finally:
        held.close()
    assert live(runner, "cap")["node"]["port"] == second  # it still listens where it did

    # the next processes start with the last accepted values: after a crash...
    for node in ("face", "cap"):
        kill_and_wait_restart(runner, node, 15)
    check_kept(runner, "face", {"emotion": "happy", "intensity": 0.5})
    check_kept(runner, "cap", {"port": second})
    assert live(runner, "cap")["node"]["port"] == second
    # ...and after a swap (a READY-only param changes this way)
    runner.swap("face", params={"seed": 3})
    runner.swap("cap")
    check_kept(runner, "face", {"emotion": "happy", "intensity": 0.5, "seed": 3})
    check_kept(runner, "cap", {"port": second})
    assert live(runner, "cap")["node"]["port"] == second
    assert runner.bus.wait_for("NODE_SWAPPED", node="cap", timeout=5)


def test_a_refusal_is_also_a_control_error_with_the_nodes_reason(runners):
    """Callers that catch ControlError (the API: 422) still do; the message names node and type."""
    runner = Runner(parse_graph(GRAPH.format(store_kind="x", state="memory", port=free_udp_port()), "<test>"))
    runners.append(runner)
    runner.start()
    with pytest.raises(ControlError, match=r"node 'face': unknown emotion 'smug'"):
        runner.set_params("face", emotion="smug")
    with pytest.raises(ControlError, match=r"node 'face' \(blender\): param 'seed' can only change in READY"):
        runner.set_params("face", seed=1)
