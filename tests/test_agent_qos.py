"""The ``qos`` agent's decisions on recorded traces (stats snapshots a look apart), replayed through
the guards exactly as the runner's agent host does, with a lod node's params as the state."""
from __future__ import annotations

import asyncio
import math
import threading
from typing import Any

import pytest
import websockets

from nodes.agents import QosAgent
from nodes.agents.qos import KEY, downstream_links, watchers
from runtime import parse_graph
from runtime.agents import UP, Guards, GuardState, StatsView, check_agent, decide
from runtime.api.metrics import render
from runtime.errors import GraphError
from runtime.registry import get_node_type
from runtime.testing import start_graph
from runtime.validate import validate_graph
from tests.helpers import wait_gone, wait_until

LINKS = {  # capture (forward) -> detail (lod) -> encode -> web, and the sink's requests back (feedback)
    "capture.out-detail.in": {"from": "capture.out", "to": "detail.in", "feedback": False},
    "detail.out-encode.in": {"from": "detail.out", "to": "encode.in", "feedback": False},
    "encode.out-web.in": {"from": "encode.out", "to": "web.in", "feedback": False},
    "web.requests-detail.requests": {"from": "web.requests", "to": "detail.requests", "feedback": True},
}


def snap(p95_ms: float | None, watched: dict[str, int] | None = None, n: int = 60,
         upstream_ms: float = 1.0) -> dict[str, Any]:
    """One look's stats: the worst link behind the lod node at ``p95_ms`` (None: nothing came)."""
    links: dict[str, Any] = {}
    for lid, link in LINKS.items():
        p95 = upstream_ms if lid.startswith("capture") else (500.0 if link["feedback"] else p95_ms)
        latency = {"n": 0 if p95 is None else n, "p95_us": None if p95 is None else p95 * 1000 * (
            1.0 if lid != "detail.out-encode.in" else 0.5)}
        links[lid] = {**link, "latency": latency}
    return {"nodes": {"web": {"node": {"watchers": dict(watched or {})}}, "detail": {"node": {}}}, "links": links}


class Replay:
    """The agent host's step, synchronously: keys, current, wish, guards, to_params, applied."""

    def __init__(self, level: int = 0, levels: dict[str, int] | None = None, *, up_after: float = 2.0,
                 dwell: float = 2.0, **params: Any):
        p = {k: v.default for k, v in QosAgent.params.items()}
        p.update({"over_for": 1.0, "settle": 2.0}, **params)
        self.agent = QosAgent("qos", "detail", "levels", p)
        self.guards = Guards(min=0, max=QosAgent.scale[1], fast=UP, integer=True, up_after_s=up_after,
                             dwell_s=dwell, max_per_min=60, band=0)
        self.state = GuardState()
        self.params: dict[str, Any] = {"level": level, "levels": dict(levels or {})}
        self.before: dict | None = None
        self.t = 0.0
        self.log: list[tuple[float, float, Any, str]] = []  # (t, current, new value or None, reason)

    def look(self, stats: dict[str, Any], dt: float = 1.0) -> Any:
        self.t += dt
        view = StatsView(stats, self.before, dt if self.before is not None else 0.0, self.t)
        self.before = stats
        (key,) = self.agent.keys(view, self.params)
        current = self.agent.current(self.params, key)
        wish = self.agent.wish(view, current, key)
        d = decide(self.guards, self.state, self.t, current, None if wish is None else wish.value,
                   None if wish is None else wish.age_s, "" if wish is None else wish.reason)
        if d.value is not None:
            self.params.update(self.agent.to_params({key: d.value}, self.params))
        self.log.append((self.t, current, d.value, d.reason))
        return d

    def run(self, stats: dict[str, Any], looks: int) -> None:
        for _ in range(looks):
            self.look(stats)

    def level_of(self, session: str) -> int:
        return self.params["levels"].get(session, self.params["level"])


def test_the_links_watched_by_default_are_the_forward_ones_from_the_lod_node_on():
    assert downstream_links(LINKS, "detail") == ["detail.out-encode.in", "encode.out-web.in"]
    assert downstream_links(LINKS, "web") == []


def test_watchers_are_summed_over_the_sinks():
    stats = {"nodes": {"ws": {"node": {"watchers": {"a": 1, "b": 2}}}, "rtc": {"node": {"watchers": {"a": 3}}},
                       "lod": {"node": {"sessions": 4}}, "dead": {"error": "timeout"}}}
    assert watchers(stats) == {"a": 4, "b": 2}


def test_over_budget_for_a_while_sheds_the_unwatched_one_rung_at_a_time_never_the_watched():
    r = Replay()
    over = snap(40.0, {"s0": 1})
    assert r.look(over).value is None  # over, but not yet for over_for
    d = r.look(over)
    assert d.value == 1 and d.reason.startswith("up at once")
    assert r.params == {"level": 1, "levels": {"s0": 0}}
    assert r.look(over).value is None  # settling: the latency window still holds the old frames
    r.run(over, 6)
    assert r.params == {"level": 3, "levels": {"s0": 0}}  # every rung the unwatched tier has
    assert r.agent.shed == 3 and "all 3 rungs shed" in r.log[-1][3]


def test_recovered_it_gives_the_detail_back_slowly_and_leaves_the_table_as_it_found_it():
    r = Replay(levels={"v": 2})  # a viewer's own level for session v: never the agent's
    r.run(snap(40.0, {"s0": 1, "v": 1}), 8)
    assert r.params == {"level": 3, "levels": {"v": 2, "s0": 0}}
    ok = snap(2.0, {"s0": 1, "v": 1})
    d = r.look(ok)
    assert d.value is None and d.reason.startswith("wait")  # the slow way: the wish must hold first
    times = []
    for _ in range(20):
        if r.look(ok).value is not None:
            times.append(r.t)
    assert r.params == {"level": 0, "levels": {"v": 2}}
    assert len(times) == 3 and all(b - a >= 2 for a, b in zip(times, times[1:]))


def test_between_recover_and_budget_it_holds():
    r = Replay()
    r.run(snap(40.0), 3)
    assert r.agent.shed >= 1
    shed = r.agent.shed
    r.run(snap(12.0), 10)  # under 16.7 but over 0.5 of it: neither shed more nor give back
    assert r.agent.shed == shed


def test_a_session_that_gets_a_viewer_while_shed_is_listed_at_once_even_while_recovering():
    r = Replay()
    r.run(snap(40.0, {"s0": 1}), 7)
    assert r.level_of("s5") == 3 and r.agent.shed == 3
    d = r.look(snap(2.0, {"s0": 1, "s5": 2}))  # recovering, and s5 is watched now
    assert r.log[-1][1] == 2.5  # the node holds half a rung less than was written
    assert d.value == 3 and d.reason.startswith("up at once")
    assert "1 newly watched session(s) to their level (s5)" in d.reason
    assert r.level_of("s5") == 0 and r.level_of("s0") == 0 and r.params["level"] == 3
    assert r.look(snap(2.0, {"s0": 1, "s5": 2})).value is None  # nothing stale now: it waits to give back


def test_a_session_that_loses_its_viewers_is_shed_with_the_next_rung():
    r = Replay()
    r.run(snap(40.0, {"s0": 1, "s1": 1}), 3)
    assert r.params["levels"] == {"s0": 0, "s1": 0} and r.agent.shed == 1
    r.run(snap(12.0, {"s0": 1}), 3)  # s1 lost its viewer: no hurry, it stays listed ...
    assert r.params["levels"] == {"s0": 0, "s1": 0}
    r.run(snap(40.0, {"s0": 1}), 2)  # ... until the next rung is written
    assert r.params["levels"] == {"s0": 0} and r.level_of("s1") == r.params["level"] == 2


def test_max_watchers_sheds_the_fewest_watched_after_the_unwatched():
    r = Replay(max_watchers=1, max_level=2)
    stats = snap(40.0, {"one": 1, "two": 2})
    r.run(stats, 12)
    assert r.agent.shed == 4  # unwatched 1, 2; then one-viewer 1, 2
    assert r.params["level"] == 2 and r.params["levels"] == {"one": 2, "two": 0}
    assert "1-viewer sessions at level 2" in r.agent.describe(4)


def test_a_person_moving_the_default_level_moves_the_base():
    r = Replay()
    r.run(snap(40.0, {"s0": 1}), 3)
    assert r.params == {"level": 1, "levels": {"s0": 0}}
    r.params["level"] = 2  # avatar set detail level=2, while shed
    d = r.look(snap(20.0, {"s0": 1}))
    assert d.reason.endswith("the default level was set to 2: shedding from there")
    assert r.params == {"level": 3, "levels": {"s0": 2}}  # one rung above the person's level; s0 at it
    r.run(snap(2.0, {"s0": 1}), 20)
    assert r.params == {"level": 2, "levels": {}}


def test_no_data_holds_and_so_does_too_little():
    r = Replay()
    assert r.look(snap(None)).reason == "hold: no data"
    assert r.look(snap(40.0, n=2)).reason == "hold: no data"  # fewer than min_samples in the window
    r.run(snap(40.0), 2)
    assert r.params["level"] == 1


def test_upstream_of_the_lod_node_and_feedback_links_do_not_count():
    r = Replay()
    r.run(snap(2.0, upstream_ms=400.0), 5)  # the capture link and the requests link are slow: not ours
    assert r.agent.shed == 0


def test_named_links_are_watched_and_an_unknown_one_is_an_error_naming_it():
    r = Replay(links=["detail.out-encode.in"])
    r.run(snap(30.0), 3)  # that link is at half the worst: 15 ms, under budget
    assert r.agent.shed == 0
    bad = Replay(links=["nope.out-x.in"])
    with pytest.raises(ValueError, match="qos agent 'qos': param 'links' names no link of the graph: nope.out-x.in"):
        bad.look(snap(30.0))


def test_a_write_the_node_never_took_is_forgotten():
    r = Replay()
    r.run(snap(40.0, {"s0": 1}), 3)
    assert r.agent.shed == 1 and r.agent.pending is None  # written at the 2nd look, seen held at the 3rd
    r.agent.to_params({KEY: 2}, r.params)  # decided, but refused: the params stay as they were
    r.look(snap(12.0, {"s0": 1}))
    assert r.agent.shed == 1 and r.agent.wrote == {"s0": 0} and r.params == {"level": 1, "levels": {"s0": 0}}


def test_the_agent_is_checked_with_the_graph():
    text = """
name: q
nodes:
  src: {type: testsrc, params: {caps: arkit/blendshapes}}
  detail: lod
  sink: fakesink
links: [src -> detail.in, detail -> sink]
agents:
  qos: {type: qos, node: detail, params: {budget_ms: %s}}
"""
    spec = parse_graph(text % "20").agents["qos"]
    assert check_agent(spec, {"detail": get_node_type("lod")}) == []
    assert spec.param == "levels" and spec.params["budget_ms"] == 20.0 and spec.params["max_level"] == 3
    with pytest.raises(GraphError, match=r"agent 'qos' \(qos\): param 'budget_ms' must be in 0.1 .. 10000.0"):
        validate_graph(parse_graph(text % "-1"))
    spec = parse_graph(text.replace("node: detail", "node: sink") % "20").agents["qos"]
    assert check_agent(spec, {"sink": get_node_type("fakesink")}) == [
        "agent 'qos' (qos): node 'sink' has no param 'levels' (its params: dump)"]


def test_the_scale_bounds_every_ladder_it_can_have():
    agent = QosAgent("q", "n", "levels", {k: v.default for k, v in QosAgent.params.items()} | {"max_watchers": 3})
    agent.base = 0
    assert len(agent.rungs()) == QosAgent.scale[1]
    assert math.isfinite(QosAgent.scale[1])


# --- live: a real graph whose node falls behind -------------------------------------------------
LIVE = """
name: qos_live
link_defaults: {policy: leaky, size: 4}
nodes:
  crowd: {type: "tests.qos_nodes:Crowd", params: {sessions: 24, rate: 60}}
  detail: lod
  slow: {type: "tests.qos_nodes:Slow", params: {track: [s0, s1]}}
  encode: compressor
  web: {type: websocket_sink, params: {port: 0}}
links:
  - crowd -> detail.in
  - detail -> slow -> encode.in
  - encode -> web
  - {from: web.requests, to: encode.requests, feedback: true}
  - {from: web.requests, to: detail.requests, feedback: true}
agents:
  qos:
    type: qos
    node: detail
    every: 0.5
    up_after: 2
    dwell: 1
    max_per_min: 60
    params: {budget_ms: 50, recover: 0.3, over_for: 0.5, settle: 1.5}
"""


class Viewer:
    """A WebSocket viewer of one session, reading (and counting) its packets on a thread of its own."""

    def __init__(self, port: int, session: str):
        self.url, self.packets, self.error = f"ws://127.0.0.1:{port}/ws?session={session}", 0, None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self.thread.start()

    async def _run(self) -> None:
        try:
            async with websockets.connect(self.url) as ws:
                while not self.stop.is_set():
                    try:
                        m = await asyncio.wait_for(ws.recv(), 0.2)
                    except asyncio.TimeoutError:
                        continue
                    self.packets += isinstance(m, bytes)
        except Exception as exc:  # noqa: BLE001 - reported by the test
            self.error = exc

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)


def worst_p95_ms(stats: dict) -> float | None:
    """What the agent watches: the worst p95 of the forward links from the lod node on."""
    values = [l["latency"]["p95_us"] for lid, l in stats["links"].items()
              if lid in downstream_links(stats["links"], "detail") and (l.get("latency") or {}).get("p95_us")]
    return max(values) / 1000.0 if values else None


def test_live_a_node_falls_behind_the_unwatched_are_shed_latency_recovers_and_detail_comes_back():
    runner = start_graph(LIVE)
    pids = list(runner.pids().values())
    viewer = None
    try:
        port = wait_until(lambda: runner.stats()["nodes"]["web"]["node"].get("port"), 20, 0.05, "the sink's port")
        viewer = Viewer(port, "s0")
        wait_until(lambda: runner.stats()["nodes"]["web"]["node"].get("watchers") == {"s0": 1}, 30, 0.05,
                   "the viewer watching s0")
        wait_until(lambda: (p := worst_p95_ms(runner.stats())) is not None and p < 50, 30, 0.1,
                   "the links behind the lod node flowing, under budget")
        detail = dict(runner.graph.nodes["detail"].params)  # as the agent must leave them
        assert detail["level"] == 0 and detail["levels"] == {}

        runner.set_params("slow", row_ms=1.0)  # 24 ms a batch of 24 rows, every 16.7 ms: it falls behind
        peak = wait_until(lambda: (p := worst_p95_ms(runner.stats())) is not None and p > 50 and p, 30, 0.1,
                          "the latency over budget")
        wait_until(lambda: runner.graph.nodes["detail"].params["level"] >= 2, 30, 0.1,
                   lambda: f"the unwatched shed; agent: {runner.stats()['agents']['qos']}")
        under = wait_until(lambda: (p := worst_p95_ms(runner.stats())) is not None and p < 50 and p, 30, 0.1,
                           lambda: f"the latency back under budget; agent: {runner.stats()['agents']['qos']}")
        shed = dict(runner.graph.nodes["detail"].params)
        assert shed["levels"] == {"s0": 0}, shed  # the watched session listed at its own level
        slow = runner.stats()["nodes"]["slow"]["node"]
        assert slow["coarsest"]["s1"] >= 2 and slow["coarsest"]["s0"] == 0, slow
        print(f"\nqos live: worst p95 {peak:.1f} ms over a 50 ms budget -> {under:.1f} ms with the unwatched at "
              f"level {shed['level']}")

        runner.set_params("slow", row_ms=0.0)  # the load goes away
        wait_until(lambda: runner.graph.nodes["detail"].params == detail, 60, 0.1,
                   lambda: f"the detail given back; agent: {runner.stats()['agents']['qos']}")
        st = runner.stats()
        agent = st["agents"]["qos"]
        assert agent["errors"] == agent["refused"] == 0, agent
        assert {a["new"] for a in agent["recent"]} >= {1, 0} and agent["last"]["shed"]["value"] == 0, agent
        messages = [m for m in runner.bus.messages() if m.get("type") == "AGENT"]
        assert messages and all(m["agent"] == "qos" and m["node"] == "detail" for m in messages)
        assert st["nodes"]["slow"]["node"]["coarsest"]["s0"] == 0  # never degraded, start to end
        assert viewer.error is None and viewer.packets > 0
        assert "avatar_link_latency_seconds_bucket" in render(runner.stats).decode()
    finally:
        if viewer is not None:
            viewer.close()
        runner.stop(drain=False)
    assert wait_gone(pids) == [], "a node process outlived the graph"
