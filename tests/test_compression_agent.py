"""The ``compression`` agent: a compressor's keyframe interval follows its viewers' loss.

``wish`` on constructed traces of the sinks' counters (replayed through the guards as the runner
does), then live: a real graph, real WebSocket viewers whose links start losing packets and stop
again, and the agent in the graph's ``agents:`` section moving the interval within its bounds."""
from __future__ import annotations

import json
import sys
from typing import Any, Iterator

import pytest

from nodes.agents import CompressionAgent
from runtime import GraphError, Runner, parse_graph, validate_graph
from runtime.agents import DOWN, Guards, GuardState, StatsView, decide
from tests.helpers import ROOT, wait_gone, wait_until

sys.path.insert(0, str(ROOT / "tools"))

from bench_keyframes import ViewerPool, graph_text  # noqa: E402

GUARDS = Guards(min=15, max=240, dwell_s=3, max_step=120, max_per_min=30, up_after_s=3, fast=DOWN, integer=True)


def agent(**params: Any) -> CompressionAgent:
    defaults = {k: p.default for k, p in CompressionAgent.params.items()}
    return CompressionAgent("keyframes", "encode", "keyframe_interval", {**defaults, **params})


def counters(trace: list[dict[str, tuple[int, int]]]) -> list[dict]:
    """Snapshots of ``Runner.stats()`` from per-look increments {sink: (packets sent, losses)}."""
    total: dict[str, dict[str, int]] = {}
    out = []
    for look in trace:
        for sink, (sent, losses) in look.items():
            c = total.setdefault(sink, {"sent": 0, "drops": 0, "skipped": 0, "losses": 0})
            c["sent"] += sent
            c["losses"] += losses
        out.append({"nodes": {s: {"state": "PLAYING", "node": dict(c)} for s, c in total.items()},
                    "links": {}})
    return out


def replay(a: CompressionAgent, snapshots: list[dict], start: int, every: float = 1.0) -> list[int]:
    """The interval after each look, as the runner's host would drive it."""
    st, current, before, values = GuardState(), start, None, []
    for i, now in enumerate(snapshots):
        t = i * every
        w = a.wish(StatsView(now, before, every if before is not None else 0.0, t), current)
        d = decide(GUARDS, st, t, current, None if w is None else w.value, None if w is None else w.age_s)
        current = current if d.value is None else int(d.value)
        before = now
        values.append(current)
    return values


def changes(values: list[int]) -> list[int]:
    """+1 / -1 per change of the interval, in order."""
    return [1 if b > a else -1 for a, b in zip(values, values[1:]) if b != a]


# --- wish on traces ----------------------------------------------------------------------------
def test_loss_shortens_the_interval_at_once_and_a_clean_stream_lengthens_it_slowly() -> None:
    clean = [{"web": (240, 0)}] * 12
    lossy = [{"web": (250, 10)}] * 12  # 4 % of the packets owed: a loss every 25 frames
    values = replay(agent(), counters(clean + lossy + clean + clean), start=120)
    assert values[0] == 120 and max(values[:12]) == 240  # clean: up, after up_after, to the bound
    assert values[11:14] == [240, 120, 25]  # lossy: down at once, to the frames between losses (max_step 120)
    assert set(values[13:24]) == {25}  # steady loss: no more changes
    assert values[-1] == 240 and changes(values) == [1, -1, -1, 1, 1, 1, 1]  # back up, one step per dwell
    ups = [i for i, (a, b) in enumerate(zip(values[24:], values[25:])) if b > a]
    assert all(b - a >= 3 for a, b in zip(ups, ups[1:]))  # slowly: a dwell apart
    assert all(15 <= v <= 240 for v in values)


def test_noisy_steady_loss_and_a_rare_drop_on_a_clean_stream_move_nothing_back() -> None:
    noisy = [{"web": (240, n)} for n in (5, 14, 3, 9, 12, 4, 7, 15, 6, 3, 11, 8)]  # 1.2 % .. 6 %
    values = replay(agent(), counters([{"web": (240, 0)}] + noisy), start=240)
    assert changes(values) == [-1] * len(changes(values))  # only ever down while it stays lossy
    rare = [{"web": (240, 1 if i % 3 == 0 else 0)} for i in range(20)]  # 0.4 %: between the thresholds
    values = replay(agent(), counters([{"web": (240, 0)}] + rare), start=60)
    assert values == [60] * len(values)  # holds: neither down (not > 1 %) nor up (not < 0.2 %)


def test_wish_holds_without_data_and_sums_the_sinks_it_watches() -> None:
    a = agent()
    first = counters([{"web": (240, 0)}])[0]
    assert a.wish(StatsView(first, None, 0.0), 120) is None  # one look: no rate yet
    went_back = counters([{"web": (240, 5)}, {"web": (240, 5)}])
    assert a.wish(StatsView(went_back[0], went_back[1], 1.0), 120) is None  # counters went back: restarted
    few = counters([{"web": (240, 0)}, {"web": (30, 5)}])
    w = a.wish(StatsView(few[1], few[0], 1.0), 120)
    assert w.value == 120 and "too few" in w.reason  # 30 packets owed < min_packets 60
    two = counters([{"web": (240, 0), "web2": (240, 0)}, {"web": (100, 0), "web2": (100, 8)}])
    w = a.wish(StatsView(two[1], two[0], 1.0), 120)
    assert w.inputs == {"sinks": ["web", "web2"], "losses": 8, "owed": 200, "loss": 0.04} and w.value == 25
    w = agent(sink="web").wish(StatsView(two[1], two[0], 1.0), 120)
    assert w.inputs["sinks"] == ["web"] and w.value == 240  # web alone is clean: up
    assert agent(sink="nope").wish(StatsView(two[1], two[0], 1.0), 120) is None
    nothing = {"nodes": {"encode": {"node": {"packets": 5}}}}
    assert a.wish(StatsView(nothing, nothing, 1.0), 120) is None  # no node reports viewer losses


def test_the_agent_checks_its_params_when_the_graph_loads() -> None:
    doc = json.loads(graph_text(120))
    doc["agents"] = {"keyframes": {"type": "compression", "node": "encode", "min": 15, "max": 240,
                                   "params": {"loss_high": 2.0}}}
    with pytest.raises(GraphError) as e:
        validate_graph(parse_graph(json.dumps(doc), "g.yaml"))
    assert "agent 'keyframes' (compression)" in str(e.value) and "loss_high" in str(e.value)
    doc["agents"]["keyframes"]["params"] = {}
    g = parse_graph(json.dumps(doc), "g.yaml")
    validate_graph(g)
    assert g.agents["keyframes"].param == "keyframe_interval" and g.agents["keyframes"].params["loss_high"] == 0.01


# --- live --------------------------------------------------------------------------------------
@pytest.fixture
def runner() -> Iterator[Runner]:
    doc = json.loads(graph_text(120, sink_params={"queue_size": 64}))
    doc["agents"] = {"keyframes": {
        "type": "compression", "node": "encode", "every": 0.5, "min": 15, "max": 240, "max_step": 120,
        "up_after": 1, "dwell": 1, "max_per_min": 30, "params": {"sink": "web", "min_packets": 60}}}
    r = Runner(parse_graph(json.dumps(doc), "<test>"), stop_on_eos=False, control=None).start()
    yield r
    pids = list(r.pids().values())
    r.stop(drain=False)
    assert wait_gone(pids) == [], "a node process outlived the graph"


def test_live_the_interval_follows_the_viewers_loss_down_and_back_up(runner: Runner) -> None:
    interval = lambda: runner.graph.nodes["encode"].params["keyframe_interval"]  # noqa: E731
    agent_stats = lambda: runner.stats()["agents"]["keyframes"]  # noqa: E731

    def moves(since: int, clean: bool = False) -> list[tuple[int, int]]:
        """The changes since ``since``; ``clean``: those made on a look that saw no loss (the first
        looks after the loss stops may still count what the reports told of just before)."""
        return [(m["old"], m["new"]) for m in runner.bus.messages("AGENT")[since:]
                if not clean or m["inputs"].get("losses") == 0]

    url = wait_until(lambda: runner.stats()["nodes"]["web"]["node"].get("url"), 30, what="the sink's URL")
    with ViewerPool(url, 4) as pool:
        wait_until(pool.decoding, 60, what=lambda: f"4 viewers to decode ({pool.problems()})")
        wait_until(lambda: interval() == 240, 30, what=lambda: f"a clean stream's interval to grow to 240 "
                                                              f"({agent_stats()['last']})")
        mark = len(runner.bus.messages("AGENT"))
        pool.set_loss(0.05)  # every viewer's link now loses 5 % of the packets
        wait_until(lambda: interval() <= 60, 30, what=lambda: f"the interval to shorten under loss ({agent_stats()['last']})")
        looks = agent_stats()["looks"]
        wait_until(lambda: agent_stats()["looks"] >= looks + 5, 30, what="5 more looks under loss")
        lossy = moves(mark)
        assert lossy and all(new < old for old, new in lossy), lossy  # down only, while the loss lasts
        assert 15 <= interval() <= 60
        mark = len(runner.bus.messages("AGENT"))
        pool.set_loss(0.0)
        wait_until(lambda: interval() == 240, 60, what=lambda: f"the interval back at 240 ({agent_stats()['last']})")
        looks = agent_stats()["looks"]
        wait_until(lambda: agent_stats()["looks"] >= looks + 4, 30, what="4 more looks on a clean stream")
        clean = moves(mark, clean=True)
        assert clean and all(new > old for old, new in clean), moves(mark)  # up only, and then it stays
        assert clean[-1][1] == 240 and interval() == 240
        sink = runner.stats()["nodes"]["web"]["node"]
        assert sink["losses"] > 0 and not pool.problems()
    every = [(m["old"], m["new"]) for m in runner.bus.messages("AGENT")]
    assert all(15 <= new <= 240 for _, new in every)
    assert agent_stats()["reversals"] <= 2  # up, down at the loss, up after it: no flapping
