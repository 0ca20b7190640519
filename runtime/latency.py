"""The latency query (GStreamer's): how long data is held back along every path of a graph.

Each node type declares the time it holds data back (``Node.latency_ns(params)``: a recognizer's
decision delay, a viseme's lead-in, a smoother's lag, a sink's queue), and may say it differs by
input pad (``Node.input_latency_ns``: a blender smooths its capture, not the mouth shapes it mixes
in after its smoother). The latency *at an input pad* is the most any forward link into that pad
holds data back: the sender's total. A node's total is the most, over its input pads, of the
pad's latency plus what the node holds back of that pad's data; a source's total is its own.
Feedback links (requests running upstream) carry no data to wait for and are left out, so the
forward graph is acyclic (``validate_graph`` checks that).

A node learns the latency of each of its input pads (``Node.on_latency``): a viseme follows the
recognizer that feeds it; a sink with a voice and a face holds the voice back by the difference.

Pure functions over a validated ``Graph`` and its node types: the runner asks them when the
graph starts and after every swap, restart or live param change, and tells the nodes.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from graphlib import TopologicalSorter
from typing import Any, Mapping

from . import protocol as op
from .errors import ControlError
from .graph import Graph
from .node import Node


@dataclass(frozen=True)
class Latency:
    """The answer for one node: the most any path into it holds data back (per input pad and
    overall), what it holds back itself on its slowest path, the total, and that path."""

    own_ns: int
    upstream_ns: int
    path: tuple[str, ...]  # the nodes of the slowest path through this node, this node last
    pads: Mapping[str, int] = field(default_factory=dict)  # input pad -> the most a path into it holds back
    total_ns: int = -1  # the most a path through this node holds back, its own part included

    def __post_init__(self) -> None:
        if self.total_ns < 0:
            object.__setattr__(self, "total_ns", self.upstream_ns + self.own_ns)


def _full(cls: type[Node], params: Mapping[str, Any]) -> dict[str, Any]:
    full = {k: p.default for k, p in cls.params.items()}
    full.update(params)
    return full


def own_latency(cls: type[Node], params: Mapping[str, Any], pad: str | None = None) -> int:
    """A node type's declared latency with these params (defaults filled in), never negative;
    with ``pad``, what it holds back of the data that comes in on that input pad."""
    full = _full(cls, params)
    return max(0, int(cls.latency_ns(full) if pad is None else cls.input_latency_ns(full, pad)))


def query(graph: Graph, types: Mapping[str, type[Node]]) -> dict[str, Latency]:
    """Every node's latency, in the order data flows (sources first)."""
    into: dict[str, set[str]] = {n: set() for n in graph.nodes}
    links_into: dict[str, list[Any]] = {n: [] for n in graph.nodes}
    for link in graph.links:
        if link.forward:
            into[link.dst].add(link.src)
            links_into[link.dst].append(link)
    result: dict[str, Latency] = {}
    for name in TopologicalSorter(into).static_order():
        cls, params = types[name], graph.nodes[name].params
        pads: dict[str, int] = {}
        via: dict[str, Latency] = {}
        for link in sorted(links_into[name], key=lambda l: (l.src, l.dst_pad or "")):  # the same path every run
            cand = result[link.src]
            pad = link.dst_pad or ""
            if pad not in pads or cand.total_ns > pads[pad]:
                pads[pad], via[pad] = cand.total_ns, cand
        if not pads:
            own = own_latency(cls, params)
            result[name] = Latency(own, 0, (name,))
            continue
        through = {pad: pads[pad] + own_latency(cls, params, pad) for pad in sorted(pads)}
        best = max(through, key=lambda pad: through[pad])  # the first of equals, in pad order
        result[name] = Latency(through[best] - pads[best], max(pads.values()), (*via[best].path, name),
                               pads, through[best])
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
        self.told: dict[str, tuple[int | None, int, dict[str, int]]] = {}  # node -> (pid, upstream, pads) last told
        self.reported: dict[str, int] = {}  # sink -> total_ns last posted

    async def update(self, runner: Any, *, report: bool = False) -> dict[str, Latency]:
        """Query the graph as it is now; ``report``: post every local sink's LATENCY (start, swap)."""
        try:
            answer = query(runner.graph, runner.types)
        except Exception as exc:  # a node type's own latency_ns failing must not stop a start or a swap
            runner.bus.post("WARNING", node=None, text=f"latency query failed: {type(exc).__name__}: {exc}")
            return {}
        def told(name: str, np: Any) -> tuple[int | None, int, dict[str, int]]:
            return np.pid, answer[name].upstream_ns, dict(answer[name].pads)

        todo = [(name, np) for name, np in list(runner.procs.items())
                if not np.exited.done() and self.told.get(name) != told(name, np)]

        async def tell(name: str, np: Any) -> None:
            try:
                await runner.request(np, op.LATENCY, upstream_ns=answer[name].upstream_ns,
                                     pads=dict(answer[name].pads))
                self.told[name] = told(name, np)
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
