"""Multi-host graphs: the hosts table, tcp links between hosts, and runners that come and go.

The end-to-end test runs one `avatar run --host` in each of two network namespaces joined by a
veth pair (two machines on one network); it needs root and is skipped, saying why, without.
The other tests run two runners in this process on the loopback, which needs nothing.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Callable, Iterator

import pytest

from runtime import Runner
from runtime.endpoints import cross_host_links, link_ports, tcp_links
from runtime.errors import ControlError, GraphError
from runtime.graph import parse_graph
from runtime.validate import validate_graph
from tests.helpers import ROOT, AvatarProcess, avatar, wait_gone, wait_until
from tests.netns import NetNS

TWO_HOSTS = """
name: mh
hosts:
  a: {address: 10.0.0.1}
  b: {address: 10.0.0.2, port: 7100}
nodes:
  src: {type: testsrc}                 # no host: the first one, a
  mid: {type: identity, host: a}
  back: {type: identity, host: b}
  sink: {type: fakesink, host: b}
  rec: {type: recorder, host: b, params: {path: x.msgpack}}
  tail: {type: fakesink, host: a}
links:
  - src -> mid -> back -> sink
  - {from: mid.out, to: rec.in, policy: block, size: 64}
  - back -> tail
"""


def graph(text: str):
    g = parse_graph(text, "g.yaml")
    validate_graph(g)
    return g


def problems(text: str) -> str:
    with pytest.raises(GraphError) as err:
        graph(text)
    return str(err.value)


# --- the hosts table and the ports ------------------------------------------------------------
def test_ports_come_from_the_hosts_table():
    g = graph(TWO_HOSTS)
    assert [l.id for l in cross_host_links(g)] == ["mid.out-back.in", "mid.out-rec.in", "back.out-tail.in"]
    # each receiving host numbers the links it receives from its 'port' (default 7000), in graph order
    assert link_ports(g) == {"mid.out-back.in": 7100, "mid.out-rec.in": 7101, "back.out-tail.in": 7000}
    t = tcp_links(g)["mid.out-back.in"]
    assert (t.src_host, t.dst_host, t.connect, t.bind) == ("a", "b", "tcp://10.0.0.2:7100", "tcp://*:7100")
    assert g.nodes_on("a") == ["src", "mid", "tail"] and g.nodes_on("b") == ["back", "sink", "rec"]

    # a link may name its port; the numbered ones skip it. 'bind' narrows the listening interface.
    g = graph(TWO_HOSTS.replace("{from: mid.out, to: rec.in,", "{from: mid.out, to: rec.in, port: 7100,")
              .replace("port: 7100}", "port: 7100, bind: 10.0.0.2}"))
    assert link_ports(g) == {"mid.out-back.in": 7101, "mid.out-rec.in": 7100, "back.out-tail.in": 7000}
    assert tcp_links(g)["mid.out-rec.in"].bind == "tcp://10.0.0.2:7100"

    # moving a node is its host line: the links that cross change, and so do their ports
    g = graph(TWO_HOSTS.replace("mid: {type: identity, host: a}", "mid: {type: identity, host: b}"))
    assert [l.id for l in cross_host_links(g)] == ["src.out-mid.in", "back.out-tail.in"]
    assert link_ports(g) == {"src.out-mid.in": 7100, "back.out-tail.in": 7000}


def test_one_runner_runs_every_host_over_local_links(runners):
    """Without --host a runner runs the whole graph on this machine: every link is ipc."""
    g = graph(TWO_HOSTS.replace("{type: testsrc}", "{type: testsrc, params: {num_buffers: 20, rate: 0}}")
              .replace("x.msgpack", "/dev/null"))
    r = Runner(g, start_timeout=20)
    runners.append(r)
    assert not r.tcp and all(e.startswith("unix://") for e in r.endpoints.values())
    r.start()
    assert r.wait(20) and r.exit_code == 0


@pytest.mark.parametrize("edit, expected", [
    (("host: b}", "host: c}"), "node 'back': host 'c' is not in the graph's hosts (a, b)"),
    (("b: {address: 10.0.0.2, port: 7100}", "b: {port: 7100}"), "host 'b' needs an 'address'"),
    (("b: {address: 10.0.0.2, port: 7100}", "b: {address: 10.0.0.2, port: 70000}"),
     "host 'b': port must be a TCP port number (1 .. 65535), got 70000"),
    (("b: {address: 10.0.0.2, port: 7100}", "b: {address: 10.0.0.2, prot: 7100}"),
     "host 'b': unknown key 'prot' (allowed: address, port, bind)"),
    (("- back -> tail", "- back -> tail\n  - {from: src, to: sink, port: 7100}\n  - {from: mid, to: sink, port: 7100}"),
     "port 7100 on host 'b' is already used by link src.out -> sink.in; give one link another 'port:'"),
    (("b: {address: 10.0.0.2, port: 7100}", "b: {address: 10.0.0.1, port: 7000}"),
     "port 7000 on host 'a' is already used by link mid.out -> back.in on host 'b' (both at 10.0.0.1)"),
    (("- back -> tail", "- {chain: back -> tail -> sink, port: 7300}"), "'port' names one link's port"),
])
def test_bad_hosts_are_reported(edit, expected):
    assert expected in problems(TWO_HOSTS.replace(*edit))


def test_a_host_needs_a_hosts_table():
    text = "nodes: {src: testsrc, sink: {type: fakesink, host: edge}}\nlinks: [src -> sink]\n"
    assert "node 'sink': host 'edge' needs a 'hosts:' table" in problems(text)


def test_run_refuses_an_unknown_host(graph_file):
    r = avatar("run", graph_file(TWO_HOSTS), "--host", "c", "--no-control", timeout=30)
    assert r.returncode == 2
    assert "no host 'c' in the graph's hosts (a, b)" in r.stderr


# --- two runners on the loopback ------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


LOOPBACK = """
name: loop
hosts:
  a: {{address: 127.0.0.1, port: {pa}}}
  b: {{address: 127.0.0.1, port: {pb}}}
link_defaults: {{policy: {policy}, size: 16}}
nodes:
  src: {{type: testsrc, params: {{rate: {rate}, num_buffers: {n}}}}}
  mid: {{type: identity, host: a}}
  sink: {{type: fakesink, host: b}}
links:
  - src -> mid -> sink
"""


def loopback(rate: float = 200, n: int = -1, policy: str = "leaky") -> str:
    return LOOPBACK.format(pa=free_port(), pb=free_port(), rate=rate, n=n, policy=policy)


def count(r: Runner) -> int:
    return r.stats()["nodes"]["sink"]["node"]["count"]


def test_frames_cross_hosts_and_survive_a_receiver_restart_and_swap(runners, monkeypatch):
    monkeypatch.setenv("AVATAR_LINK_WARN_S", "0.5")  # how long a tcp link may be down before a WARNING
    text = loopback()
    a, b = Runner(parse_graph(text), host="a"), Runner(parse_graph(text), host="b")
    runners += [a, b]
    assert a.local == ["src", "mid"] and b.local == ["sink"]
    a.start()  # the sender first: its frames wait (leaky, bounded) for the other host
    warning = a.bus.wait_for("WARNING", node="mid", link="mid.out-sink.in")
    assert "host 'b' not reached at tcp://127.0.0.1:" in warning["text"]
    with pytest.raises(ControlError, match="no node 'sink' runs here: it runs on host 'b'"):
        a.set_params("sink", dump=True)
    b.start()
    a.bus.wait_for("LINK_UP", node="mid", link="mid.out-sink.in", peer="b", direction="out")
    b.bus.wait_for("LINK_UP", node="sink", link="mid.out-sink.in", peer="a", direction="in")
    wait_until(lambda: count(b) > 20, what="frames at host b")
    link = b.stats()["links"]["mid.out-sink.in"]
    assert link["transport"] == "tcp" and link["up"] is True and link["peer"] == "a"

    # the receiving node dies: its runner restarts it on the same port; the sender reconnects by itself
    mark = len(a.bus)
    os.kill(b.pids()["sink"], signal.SIGKILL)
    b.bus.wait_for("NODE_RESTARTED", node="sink")
    a.bus.wait_for("LINK_DOWN", node="mid", after=mark)
    a.bus.wait_for("LINK_UP", node="mid", after=mark)
    wait_until(lambda: count(b) > 20, what="frames after the restart")

    # a hot-swap of the receiving node: the old one lets go of the port, the new one takes it
    pid = b.swap("sink")
    b.bus.wait_for("NODE_SWAPPED", node="sink", pid=pid)
    wait_until(lambda: count(b) > 20, what="frames after the swap")
    assert b.stats()["links"]["mid.out-sink.in"]["up"] is True

    # a hot-swap of the sending node: it reconnects, and continues the link's sequence numbers
    before = b.stats()["nodes"]["sink"]["inputs"]["mid.out-sink.in"]
    pid = a.swap("mid")
    a.bus.wait_for("NODE_SWAPPED", node="mid", pid=pid)
    wait_until(lambda: b.stats()["nodes"]["sink"]["inputs"]["mid.out-sink.in"]["received"] > before["received"] + 20,
               what="frames after swapping the sender")
    assert b.stats()["nodes"]["sink"]["inputs"]["mid.out-sink.in"]["resets"] == before["resets"]

    # Ctrl-C on the receiving host ends its part of the graph; the sending host runs on
    mark = len(a.bus)
    assert b.stop(drain=True) == 0 and b.bus.messages("EOS")
    a.bus.wait_for("LINK_DOWN", node="mid", after=mark)
    assert a.state == "PLAYING"


def test_a_finite_stream_ends_both_runners(runners):
    text = loopback(rate=0, n=500, policy="block")
    a = Runner(parse_graph(text), host="a")
    b = Runner(parse_graph(text), host="b")
    runners += [b, a]
    b.stop_on_eos = False  # to read its sink's count after the EOS
    b.start()
    a.start()
    assert a.wait(30), "the EOS did not end runner a"
    assert a.exit_code == 0 and a.bus.messages("EOS")
    b.bus.wait_for("EOS", timeout=10)
    # a block link loses nothing while it is up: every frame crossed, in order
    stats = b.stats()
    assert stats["nodes"]["sink"]["node"]["count"] == 500
    assert stats["links"]["mid.out-sink.in"]["received"] == 500 and stats["links"]["mid.out-sink.in"]["gaps"] == 0
    assert b.stop() == 0


# --- two machines: network namespaces joined by a veth pair ---------------------------------------
ADDR_A, ADDR_B = "10.77.0.1", "10.77.0.2"
NETNS_GRAPH = f"""
name: mh
hosts:
  a: {{address: {ADDR_A}}}
  b: {{address: {ADDR_B}}}
nodes:
  src: {{type: testsrc, host: a, params: {{rate: 100}}}}
  mid: {{type: identity, host: a}}
  sink: {{type: fakesink, host: b}}
links:
  - src -> mid
  - {{from: mid, to: sink, policy: leaky, size: 16}}
"""


@pytest.fixture
def machines() -> Iterator[tuple[NetNS, NetNS, str]]:
    """Two network namespaces joined by a veth pair (and the name of b's end of it); every process
    in them is killed at the end."""
    if os.geteuid() != 0:
        pytest.skip("two machines are simulated with network namespaces, which need root")
    if shutil.which("ip") is None:
        pytest.skip("two machines are simulated with network namespaces, which need iproute2 ('ip')")
    made: list[NetNS] = []
    try:
        for side in "ab":
            ns = NetNS.make(f"avatar-mh-{side}-{os.getpid()}")
            if ns is None:
                pytest.skip("'ip netns add' failed: this machine does not let us make network namespaces")
            made.append(ns)
        try:
            _, dev_b = made[0].join(made[1], ADDR_A, ADDR_B)
        except subprocess.CalledProcessError as exc:
            pytest.skip(f"cannot join the namespaces with a veth pair: {exc.stderr.decode().strip()}")
        yield made[0], made[1], dev_b
    finally:
        for ns in made:
            left = wait_gone(ns.kill_all(), 5.0)
            ns.remove()
            assert not left, f"processes {left} survived in {ns.name}"


class Bus:
    """The bus of an `avatar run` process, read line by line on a thread (a wait never blocks past its timeout)."""

    def __init__(self, proc: AvatarProcess):
        self.proc = proc
        self.messages: list[dict] = []
        self.stderr: list[str] = []
        self.cond = threading.Condition()
        self.readers = [threading.Thread(target=self._read, args=(stream, bus), daemon=True)
                        for stream, bus in ((proc.proc.stdout, True), (proc.proc.stderr, False))]
        for t in self.readers:
            t.start()

    def _read(self, stream, bus: bool) -> None:
        for line in stream:
            with self.cond:
                if bus:
                    self.messages.append(json.loads(line))
                else:
                    self.stderr.append(line)
                self.cond.notify_all()

    def wait(self, pred: Callable[[dict], bool], timeout: float = 20.0, after: int = 0) -> dict:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for m in self.messages[after:]:
                    if pred(m):
                        return m
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.proc.poll() is not None and not self.cond.wait(0.2)):
                    raise AssertionError(f"not on the bus within {timeout}s (exit {self.proc.proc.poll()}); "
                                         f"bus: {self.messages[-10:]}; stderr: {''.join(self.stderr)[-2000:]}")
                self.cond.wait(min(left, 0.5))

    def finish(self, timeout: float = 30.0) -> int:
        """Wait for the process to exit (and its output to be read); its exit code."""
        code = self.proc.proc.wait(timeout)
        for t in self.readers:
            t.join(5)
        return code

    def interrupt(self) -> None:
        """Ctrl-C: the runner lets its sources finish, waits for their EOS downstream, then stops."""
        self.proc.proc.send_signal(signal.SIGINT)

    def types(self, after: int = 0) -> list[str]:
        with self.cond:
            return [m["type"] for m in self.messages[after:]]

    def __len__(self) -> int:
        with self.cond:
            return len(self.messages)


def playing(m: dict) -> bool:
    return m["type"] == "STATE_CHANGED" and m["node"] is None and m["new"] == "PLAYING"


def sink_count(ns: NetNS) -> int:
    """The sink's count, asked with `avatar stats` inside the namespace (its control socket is there)."""
    r = subprocess.run([*ns.prefix, sys.executable, "-m", "runtime.cli", "stats", "-g", "mh"], capture_output=True,
                       text=True, timeout=20, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["nodes"]["sink"]["node"]["count"]


def grows(ns: NetNS, by: int = 50, timeout: float = 10.0) -> None:
    start = sink_count(ns)
    wait_until(lambda: sink_count(ns) >= start + by, timeout, what=f"sink count growing by {by} in {ns.name}")


def test_two_machines(machines, avatar_run, graph_file):
    ns_a, ns_b, dev_b = machines
    path = graph_file(NETNS_GRAPH)

    def run(ns: NetNS, host: str) -> Bus:
        return Bus(avatar_run("run", str(path), "--host", host, prefix=ns.prefix))

    # 1. frames cross from the source on host a to the sink on host b
    a, b = run(ns_a, "a"), run(ns_b, "b")
    a.wait(playing), b.wait(playing)
    up_a = a.wait(lambda m: m["type"] == "LINK_UP")
    assert (up_a["node"], up_a["link"], up_a["host"], up_a["peer"]) == ("mid", "mid.out-sink.in", "a", "b")
    assert up_a["endpoint"] == f"tcp://{ADDR_B}:7000"
    up_b = b.wait(lambda m: m["type"] == "LINK_UP")
    assert (up_b["node"], up_b["link"], up_b["host"], up_b["peer"]) == ("sink", "mid.out-sink.in", "b", "a")
    grows(ns_b)

    # Ctrl-C on host a: its source ends the stream, the EOS crosses to b, and both runners finish
    a.interrupt()
    assert a.finish() == 0, a.stderr
    assert b.finish() == 0, b.stderr  # nobody told b to stop: the EOS from a did
    assert "EOS" in b.types()

    # 2. the middle node moves to host b: its host line is the only change
    path.write_text(path.read_text().replace("mid: {type: identity, host: a}", "mid: {type: identity, host: b}"))
    a, b = run(ns_a, "a"), run(ns_b, "b")
    a.wait(playing), b.wait(playing)
    assert a.wait(lambda m: m["type"] == "LINK_UP")["link"] == "src.out-mid.in"
    assert b.wait(lambda m: m["type"] == "LINK_UP")["node"] == "mid"
    grows(ns_b)

    # 3. host b's runner dies (SIGKILL, its nodes follow it) and comes back: the stream resumes by itself
    mark = len(a)
    b.proc.kill()
    down = a.wait(lambda m: m["type"] == "LINK_DOWN", after=mark)
    assert (down["node"], down["link"], down["peer"]) == ("src", "src.out-mid.in", "b")
    b = run(ns_b, "b")
    b.wait(playing)
    a.wait(lambda m: m["type"] == "LINK_UP", after=mark)
    b.wait(lambda m: m["type"] == "LINK_UP")
    grows(ns_b)
    assert a.proc.proc.poll() is None and "ERROR" not in a.types()

    # 4. host b's network goes away without a word (no reset, no FIN): heartbeats notice it on both
    # sides, and when it is back the link comes up again by itself
    mark_a, mark_b = len(a), len(b)
    ns_b.set_link(dev_b, up=False)
    a.wait(lambda m: m["type"] == "LINK_DOWN", after=mark_a, timeout=15)
    b.wait(lambda m: m["type"] == "LINK_DOWN", after=mark_b, timeout=15)
    ns_b.set_link(dev_b, up=True)
    a.wait(lambda m: m["type"] == "LINK_UP", after=mark_a, timeout=15)
    b.wait(lambda m: m["type"] == "LINK_UP", after=mark_b, timeout=15)
    grows(ns_b)

    a.interrupt()
    assert a.finish() == 0, a.stderr
    assert b.finish() == 0, b.stderr
