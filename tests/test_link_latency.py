"""A link's latency: the age of its data (now - pts) when the receiving node takes it, per input
link in the worker's stats, joined per link in the runner's, and in the Prometheus metrics."""
from __future__ import annotations

import uuid

import zmq

from runtime import Runner, parse_graph
from runtime.api.metrics import render
from runtime.transport import AGE_MASK, AGE_RING, InLink
from tests.helpers import wait_gone, wait_until

MS = 1_000_000


def test_percentiles_are_over_the_last_second_and_the_histogram_over_everything():
    ctx = zmq.Context()
    link = InLink(ctx, "a.out-b.in", "in", f"ipc://@avatar-test-{uuid.uuid4().hex}/l", "leaky", 4)
    try:
        assert link.timed
        empty = link.latency_stats(10_000 * MS)
        assert empty["n"] == 0 and empty["p95_us"] is None and empty["hist"]["count"] == 0
        now = 10_000 * MS

        def store(at: int, age: int) -> None:  # what the worker does as the node takes a message
            i = link.age_i & AGE_MASK
            link.age_at[i], link.age_ns[i] = at, age
            link.age_i += 1

        for _ in range(50):
            store(now - 5_000 * MS, 900 * MS)  # old and slow: out of the window
        for k in range(100):
            store(now - 500 * MS, (k + 1) * MS // 10)  # 0.1 .. 10 ms, in the last second
        store(now, -2 * MS)  # stamped ahead of now
        s = link.latency_stats(now)
        assert s["n"] == 101 and s["window_s"] == 1.0
        assert 4_900 <= s["p50_us"] <= 5_100 and 9_400 <= s["p95_us"] <= 9_600 and s["max_us"] == 10_000
        assert s["hist"]["count"] == 151 and s["hist"]["buckets"][-1] == 151
        assert s["hist"]["buckets"][0] >= 1  # the negative age counts as 0
        for _ in range(AGE_RING):
            store(now, 1 * MS)  # the ring wraps: only the newest AGE_RING are kept
        s = link.latency_stats(now)
        assert s["n"] == AGE_RING and s["p95_us"] == 1000.0 and s["hist"]["count"] == 151 + AGE_RING
    finally:
        link.close()
        ctx.term()


def test_a_running_graph_reports_each_links_latency_and_prometheus_has_it():
    g = parse_graph("""
name: linklat
nodes:
  src: {type: testsrc, params: {rate: 200}}
  mid: identity
  sink: fakesink
links: [src -> mid, mid -> sink]
""")
    runner = Runner(g, control=None).start()
    pids = list(runner.pids().values())
    try:
        def latencies() -> dict | None:
            links = runner.stats()["links"]
            lat = {lid: l.get("latency") or {} for lid, l in links.items()}
            return lat if all(x.get("n", 0) >= 20 for x in lat.values()) else None

        lat = wait_until(latencies, 30, 0.05, "messages through both links")
        for s in lat.values():
            assert 0 <= s["p50_us"] <= s["p95_us"] <= s["max_us"] and s["hist"]["count"] >= s["n"]
        assert set(runner.stats()["nodes"]["mid"]["inputs"]["src.out-mid.in"]["latency"]) >= {"p50_us", "p95_us", "n"}
        text = render(runner.stats).decode()
        assert 'avatar_link_latency_seconds_count{dst="sink.in",link="mid.out-sink.in"' in text
        assert 'avatar_link_latency_p95_seconds{dst="mid.in",link="src.out-mid.in"' in text
    finally:
        runner.stop(drain=False)
    assert wait_gone(pids) == [], "a node process outlived the graph"
