"""Prometheus metrics from the runner's stats: per node, per link, and timing histograms.

A custom collector: every scrape asks the runner for fresh stats (one control round-trip to
each node) and turns them into metric families; nothing is kept between scrapes, so counters
restart from zero when a node process is restarted or swapped (Prometheus handles resets).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_NODE_COUNTERS = (  # stats key, metric name, help
    ("in", "avatar_node_messages_in", "Messages a node has taken from its inputs."),
    ("out", "avatar_node_messages_out", "Messages a node has emitted."),
    ("drops", "avatar_node_drops", "Messages dropped by a node's leaky links (in and out)."),
    ("restarts", "avatar_node_restarts", "Times the runner restarted a node (within the restart window)."),
)
_LINK_COUNTERS = (
    ("sent", "avatar_link_sent", "Messages sent on a link."),
    ("received", "avatar_link_received", "Messages received from a link."),
    ("gaps", "avatar_link_gaps", "Messages a link's receiver never saw (gaps in seq)."),
    ("drops", "avatar_link_drops", "Messages dropped on a link (leaky queues, both ends)."),
)


class RunnerCollector:
    """Collects a runner's stats as Prometheus metric families."""

    def __init__(self, stats: Callable[[], dict[str, Any]]):
        self.stats = stats

    def describe(self) -> list[Metric]:
        return []  # registering must not ask the runner anything

    def collect(self) -> Iterator[Metric]:
        stats = self.stats()
        yield from _graph_metrics(stats)
        yield from _node_metrics(stats.get("nodes") or {})
        yield from _link_metrics(stats.get("links") or {})
        yield from _agent_metrics(stats.get("agents") or {})


def _graph_metrics(stats: dict[str, Any]) -> Iterator[Metric]:
    g = GaugeMetricFamily("avatar_graph_info", "The running graph (always 1).", labels=["graph", "state"])
    g.add_metric([str(stats.get("graph")), str(stats.get("state"))], 1)
    yield g


def _node_metrics(nodes: dict[str, dict[str, Any]]) -> Iterator[Metric]:
    counters = {key: CounterMetricFamily(name, doc, labels=["node", "type"]) for key, name, doc in _NODE_COUNTERS}
    up = GaugeMetricFamily("avatar_node_up", "1 if the node answered the stats request, else 0.", labels=["node", "type"])
    playing = GaugeMetricFamily("avatar_node_playing", "1 if the node is PLAYING.", labels=["node", "type"])
    depth = GaugeMetricFamily("avatar_node_queue_depth", "Messages waiting in a node's input queues.",
                              labels=["node", "type"])
    proc = HistogramMetricFamily("avatar_node_processing_seconds", "Time a node's code takes per message.",
                                 labels=["node", "type"])
    latency = HistogramMetricFamily("avatar_sink_latency_seconds", "End-to-end latency at a sink, from pts to arrival.",
                                    labels=["node", "type"])
    for name, s in nodes.items():
        labels = [name, str(s.get("type", ""))]
        up.add_metric(labels, 0 if "error" in s else 1)
        playing.add_metric(labels, 1 if s.get("state") == "PLAYING" else 0)
        for key, _, _ in _NODE_COUNTERS:
            if _number(s.get(key)):
                counters[key].add_metric(labels, s[key])
        if _number(s.get("queue_depth")):
            depth.add_metric(labels, s["queue_depth"])
        _add_histogram(proc, labels, s.get("proc_hist"))
        node = s.get("node")
        if isinstance(node, dict):
            _add_histogram(latency, labels, node.get("latency_hist"))
    yield up
    yield playing
    yield from counters.values()
    yield depth
    yield proc
    yield latency


def _link_metrics(links: dict[str, dict[str, Any]]) -> Iterator[Metric]:
    label_names = ["link", "src", "dst", "policy"]
    counters = {key: CounterMetricFamily(name, doc, labels=label_names) for key, name, doc in _LINK_COUNTERS}
    depth = GaugeMetricFamily("avatar_link_depth", "Messages queued at a link's receiver.", labels=label_names)
    latency = HistogramMetricFamily("avatar_link_latency_seconds", "Age of a link's data (now - pts) when the "
                                    "receiving node takes it.", labels=label_names)
    p95 = GaugeMetricFamily("avatar_link_latency_p95_seconds", "95th percentile of a link's latency over the "
                            "last second (absent when nothing came).", labels=label_names)
    for link_id, s in links.items():
        labels = [link_id, str(s.get("from")), str(s.get("to")), str(s.get("policy"))]
        for key, _, _ in _LINK_COUNTERS:
            if _number(s.get(key)):
                counters[key].add_metric(labels, s[key])
        if _number(s.get("depth")):
            depth.add_metric(labels, s["depth"])
        lat = s.get("latency")
        if isinstance(lat, dict):
            _add_histogram(latency, labels, lat.get("hist"))
            if _number(lat.get("p95_us")):
                p95.add_metric(labels, lat["p95_us"] / 1e6)
    yield from counters.values()
    yield depth
    yield latency
    yield p95


_AGENT_COUNTERS = (
    ("actions", "avatar_agent_actions", "Params an agent changed (per key, for a per-viewer agent)."),
    ("reversals", "avatar_agent_reversals", "Changes an agent made against the direction of its previous one."),
    ("looks", "avatar_agent_looks", "Times an agent looked at the graph's stats."),
)


def _agent_metrics(agents: dict[str, dict[str, Any]]) -> Iterator[Metric]:
    labels = ["agent", "type", "node", "param"]
    counters = {key: CounterMetricFamily(name, doc, labels=labels) for key, name, doc in _AGENT_COUNTERS}
    pinned = GaugeMetricFamily("avatar_agent_pinned", "1 while the param an agent drives is pinned by a person.",
                               labels=labels)
    for name, s in agents.items():
        values = [name, str(s.get("type")), str(s.get("node")), str(s.get("param"))]
        for key, _, _ in _AGENT_COUNTERS:
            if _number(s.get(key)):
                counters[key].add_metric(values, s[key])
        pinned.add_metric(values, 1 if s.get("pinned") else 0)
    yield from counters.values()
    yield pinned


def _add_histogram(family: HistogramMetricFamily, labels: list[str], hist: Any) -> None:
    """Add a ``runtime.histogram`` dict (microsecond bounds, cumulative counts) in seconds."""
    if not isinstance(hist, dict) or not hist.get("buckets"):
        return
    bounds, counts = hist["le_us"], hist["buckets"]
    if len(counts) != len(bounds) + 1:
        return
    buckets = [(_le(b / 1e6), c) for b, c in zip(bounds, counts)] + [("+Inf", counts[-1])]
    family.add_metric(labels, buckets, hist.get("sum_us", 0.0) / 1e6)


def _le(seconds: float) -> str:
    return repr(float(seconds))


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def render(stats: Callable[[], dict[str, Any]]) -> bytes:
    """The Prometheus text exposition of a runner's stats."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RunnerCollector(stats))
    return generate_latest(registry)
