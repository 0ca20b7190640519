"""The latency query (GStreamer's): how long data is held back along every path of a graph.

Each node type declares the time it holds data back (``Node.latency_ns(params)``: a recognizer's
decision delay, a viseme's lead-in, a smoother's lag, a sink's queue). A node's *upstream*
latency is the most any forward path into it holds data back: the maximum over its forward
input links of the sender's upstream latency plus the sender's own. A sink's total is its
upstream latency plus its own. Feedback links (requests running upstream) carry no data to
wait for and are left out, so the forward graph is acyclic (``validate_graph`` checks that).

Pure functions over a validated ``Graph`` and its node types: the runner asks them when the
graph starts and after every swap, restart or live param change, and tells the nodes.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from graphlib import TopologicalSorter
from typing import Any, Mapping

from . import protocol as op
from .errors import ControlError
from .graph import Graph
from .node import Node


@dataclass(frozen=True)
class Latency:
    """The answer for one node: its own latency, the most any path into it adds, and that path."""

    own_ns: int
    upstream_ns: int
    path: tuple[str, ...]  # the nodes of the slowest path into this node, this node last

    @property
    def total_ns(self) -> int:
        return self.upstream_ns + self.own_ns


def own_latency(cls: type[Node], params: Mapping[str, Any]) -> int:
    """A node type's declared latency with these params (defaults filled in), never negative."""
    full = {k: p.default for k, p in cls.params.items()}
    full.update(params)
    return max(0, int(cls.latency_ns(full)))


def query(graph: Graph, types: Mapping[str, type[Node]]) -> dict[str, Latency]:
    """Every node's latency, in the order data flows (sources first)."""
    into: dict[str, set[str]] = {n: set() for n in graph.nodes}
    for link in graph.links:
        if link.forward:
            into[link.dst].add(link.src)
    result: dict[str, Latency] = {}
    for name in TopologicalSorter(into).static_order():
        own = own_latency(types[name], graph.nodes[name].params)
        best: Latency | None = None
        for src in sorted(into[name]):  # sorted: the same path named on every run
            cand = result[src]
            if best is None or cand.total_ns > best.total_ns:
                best = cand
        if best is None:
            result[name] = Latency(own, 0, (name,))
        else:
            result[name] = Latency(own, best.total_ns, (*best.path, name))
    return result


def sinks(graph: Graph) -> list[str]:
    """Nodes that feed no forward link: where a path's total latency is reported."""
    feeding = {link.src for link in graph.links if link.forward}
    return [n for n in graph.nodes if n not in feeding]


class LatencyTracker:
    """The runner's side of the query: tells each node process its upstream latency (op
    ``latency``, the node's ``on_latency``) and posts a LATENCY bus message per local sink.
    It remembers what it told, so an update after a param change tells only what changed (a new
    process is always told) and reports a sink again only when its total changed."""

    def __init__(self) -> None:
        self.told: dict[str, tuple[int | None, int]] = {}  # node -> (pid, upstream_ns) last told
        self.reported: dict[str, int] = {}  # sink -> total_ns last posted

    async def update(self, runner: Any, *, report: bool = False) -> dict[str, Latency]:
        """Query the graph as it is now; ``report``: post every local sink's LATENCY (start, swap)."""
        try:
            answer = query(runner.graph, runner.types)
        except Exception as exc:  # a node type's own latency_ns failing must not stop a start or a swap
            runner.bus.post("WARNING", node=None, text=f"latency query failed: {type(exc).__name__}: {exc}")
            return {}
        todo = [(name, np) for name, np in list(runner.procs.items())
                if not np.exited.done() and self.told.get(name) != (np.pid, answer[name].upstream_ns)]

        async def tell(name: str, np: Any) -> None:
            try:
                await runner.request(np, op.LATENCY, upstream_ns=answer[name].upstream_ns)
                self.told[name] = (np.pid, answer[name].upstream_ns)
            except ControlError as exc:
                runner.bus.post("WARNING", node=name, text=f"latency query: {exc}")

        await asyncio.gather(*(tell(name, np) for name, np in todo))
        local = set(runner.local)
        for name in sinks(runner.graph):
            total = answer[name].total_ns
            if name in local and (report or self.reported.get(name) != total):
                self.reported[name] = total
                runner.bus.post("LATENCY", node=name, latency_ns=total, latency_ms=round(total / 1e6, 3),
                                path=list(answer[name].path),
                                text=f"sink '{name}': {total / 1e6:.1f} ms along {' -> '.join(answer[name].path)}")
        return answer
