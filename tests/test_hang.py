"""A hung node (SIGSTOP, or node code that never returns) is reported, killed and restarted;
a node busy in a long setup is not. The graphs use short hang timeouts to keep the tests short."""
from __future__ import annotations

import math
import os
import signal
import time

import pytest

from runtime import GraphError, Runner, parse_graph, validate_graph
from runtime.protocol import beat_period
from runtime.recording import read_records
from tests.helpers import wait_gone, wait_until

LINK_SIZE = 8
RATE = 60
GRAPH = """
link_defaults: {{policy: block, size: 8}}
nodes:
  src: {{type: testsrc, params: {{rate: {rate}, pattern: counter}}}}
  mid: {{type: "{mid}", hang_timeout: {hang_timeout}, params: {params}}}
  rec: {{type: recorder, params: {{path: "{out}", flush_every: 1}}}}
links:
  - src -> mid -> rec
"""


def start(tmp_path, runners, mid: str = "identity", params: str = "{}", hang_timeout: float = 1.5) -> Runner:
    text = GRAPH.format(rate=RATE, mid=mid, params=params, hang_timeout=hang_timeout, out=tmp_path / "out.msgpack")
    runner = Runner(parse_graph(text, "<test>"))
    runners.append(runner)
    return runner.start()


def wait_received(runner: Runner, node: str, more_than: int, timeout: float = 15.0) -> int:
    """Wait until ``node`` has taken more than ``more_than`` messages; its count."""
    def taken() -> int:
        return runner.stats()["nodes"][node].get("in") or 0

    return wait_until(lambda: taken() if taken() > more_than else 0, timeout, 0.05,
                      lambda: f"'{node}' to take more than {more_than} messages (it took {taken()})")


def assert_loss_bounded(path, hung_s: float) -> None:
    """What was lost is what the link queues held, and what the source sent into the hung
    process's socket before it was caught (a frozen process's kernel buffers die with it)."""
    ns = [r["data"]["n"] for r in read_records(path)]
    assert ns == sorted(ns)
    lost = (ns[-1] + 1) - len(ns)
    bound = 3 * LINK_SIZE + math.ceil(RATE * (hung_s + 0.25))
    print(f"lost {lost} to a hang of {hung_s:.2f}s (bound {bound})")
    assert lost <= bound, f"lost {lost}, more than the link queues and {hung_s:.2f}s of stream hold"


def assert_hang_handled(runner: Runner, victim: int, mark: int) -> dict:
    """The hang's ERROR, after checking it and the restart that follows it."""
    err = runner.bus.wait_for("ERROR", after=mark, node="mid", timeout=10)
    assert "not responding" in err["text"] and str(victim) in err["text"] and err["pid"] == victim
    restarted = runner.bus.wait_for("NODE_RESTARTED", after=mark, node="mid", timeout=15)
    assert restarted["pid"] != victim and runner.pids()["mid"] == restarted["pid"]
    assert not wait_gone([victim]), "the hung process was not killed"
    return err


def test_sigstopped_middle_node_is_killed_and_restarted(tmp_path, runners):
    runner = start(tmp_path, runners)
    wait_received(runner, "rec", 20)
    victim, mark = runner.pids()["mid"], len(runner.bus)
    stopped_at = time.time()
    os.kill(victim, signal.SIGSTOP)
    err = assert_hang_handled(runner, victim, mark)
    assert "no heartbeat" in err["text"]
    # silent for its hang_timeout, counted from its last beat (up to a beat period before the stop);
    # how much later it is caught depends on the machine
    assert err["ts"] - stopped_at >= 1.5 - beat_period(1.5)
    wait_received(runner, "rec", runner.stats()["nodes"]["rec"]["in"] + 30)  # the stream flows again
    assert runner.stop(drain=True) == 0
    assert_loss_bounded(tmp_path / "out.msgpack", err["ts"] - stopped_at)


def test_process_that_never_returns_is_killed_and_restarted(tmp_path, runners):
    params = f"{{hang_after: 30, marker: '{tmp_path / 'spun'}'}}"
    runner = start(tmp_path, runners, mid="tests.hang_nodes:Spinner", params=params, hang_timeout=1)
    victim, mark = runner.pids()["mid"], len(runner.bus)
    err = assert_hang_handled(runner, victim, mark)
    assert "loop has not turned" in err["text"]
    spun_at = (tmp_path / "spun").stat().st_mtime
    # not before its hang_timeout, counted from the loop's last turn (just before this process() call)
    assert err["ts"] - spun_at + 0.1 >= 1.0
    wait_received(runner, "rec", 60)  # 30 before the hang, and more than as many after it
    assert runner.stats()["nodes"]["mid"]["restarts"] == 1
    assert runner.stop(drain=True) == 0
    assert_loss_bounded(tmp_path / "out.msgpack", err["ts"] - spun_at)


def test_long_setup_is_not_a_hang(tmp_path, runners):
    runner = start(tmp_path, runners, mid="tests.hang_nodes:SlowSetup", params="{setup_s: 2.0}", hang_timeout=1)
    pid = runner.pids()["mid"]  # start() returned: mid's setup, twice its hang timeout, is over
    wait_received(runner, "rec", 10)
    assert not runner.bus.messages("ERROR"), runner.bus.messages("ERROR")
    stats = runner.stats()["nodes"]["mid"]
    assert runner.pids()["mid"] == pid and stats["restarts"] == 0
    assert 0 <= stats["heartbeat_age_s"] < 1


@pytest.mark.parametrize("value", [0, -1, "soon", True, 1e9])
def test_bad_hang_timeout_is_refused_with_its_line(value):
    text = f"nodes:\n  a: {{type: testsrc, hang_timeout: {value!r}}}\n"
    with pytest.raises(GraphError, match=r"node 'a': hang_timeout must be a number of seconds from 0.2 to 3600") as exc:
        validate_graph(parse_graph(text, "<test>"))
    assert exc.value.problems[0].line == 2


def test_the_setups_last_beat_is_no_hang_once_the_node_is_ready() -> None:
    """The beat sent just before setup ended measured the setup as the loop's age; the node's READY
    can come before the next beat. The watchdog looking in between killed a healthy node (seen
    once in a full suite on two loaded cores)."""
    from types import SimpleNamespace

    from runtime.states import NULL, READY
    from runtime.supervisor import Supervisor

    node = SimpleNamespace(hang_timeout=1.0, max_restarts=3)
    runner = SimpleNamespace(graph=SimpleNamespace(nodes={"mid": node}), local=["mid"], start_timeout=30.0)
    sup = Supervisor(runner)  # type: ignore[arg-type]
    np = SimpleNamespace(name="mid", state=NULL, last_beat=10.0, spawned_at=8.0, in_setup=True, loop_age_s=2.0)
    assert sup.hang_of(np, 10.2) is None  # in setup, 2 s: not a hang
    np.state = READY  # READY came; the last beat is still the one from setup
    assert sup.hang_of(np, 10.3) is None
    np.in_setup, np.loop_age_s, np.last_beat = False, 0.01, 10.4  # the next beat
    assert sup.hang_of(np, 10.5) is None
    np.loop_age_s, np.last_beat = 1.5, 11.9  # a loop that stopped turning after setup: hung
    assert "has not turned for 1.5s" in sup.hang_of(np, 12.0)
    assert "no heartbeat" in sup.hang_of(np, 13.5)  # and one that stopped beating
