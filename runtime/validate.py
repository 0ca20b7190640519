"""Checks a loaded graph against the node registry with networkx: types, pads, params, caps, shape.

Every problem is collected, each with the YAML file and line, so a user fixes them all in one go.
"""
from __future__ import annotations

import difflib
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from typing import Any

import networkx as nx

from .agents.spec import check_agent
from .caps import ANY, CapsSpec, caps_compatible, caps_text
from .endpoints import port_problems
from .errors import GraphError, NodeTypeError, ParamError, Problem
from .graph import Graph, LinkSpec
from .node import Node
from .params import check_params
from .registry import get_node_type


def validate_graph(graph: Graph) -> dict[str, type[Node]]:
    """Validate in place (fills in omitted pad names, full params); returns the node classes.

    Raises GraphError listing every problem.
    """
    problems: list[Problem] = list(graph.problems)
    p = lambda msg, line: problems.append(Problem(msg, graph.file, line))  # noqa: E731
    types: dict[str, type[Node]] = {}
    bad_params: set[str] = set()  # their caps cannot be worked out from params that are wrong

    for name, spec in graph.nodes.items():
        try:
            cls = get_node_type(spec.type)
        except NodeTypeError as exc:
            p(f"node '{name}': {exc}", spec.type_line or spec.line)
            continue
        types[name] = cls
        params_ok = True
        for key, value in spec.params.items():
            try:
                check_params(cls.params, {key: value}, fill_defaults=False)
            except ParamError as exc:
                params_ok = False
                bad_params.add(name)
                p(f"node '{name}' ({spec.type}): {exc}", spec.param_lines.get(key) or spec.line)
        if params_ok:
            for problem in cls.check_config(check_params(cls.params, spec.params)):
                p(f"node '{name}' ({spec.type}): {problem}", spec.line)
        if spec.host is not None:
            if not isinstance(spec.host, str):
                p(f"node '{name}': host must be a host name of the graph's hosts table, got {spec.host!r}", spec.line)
            elif not graph.hosts:
                p(f"node '{name}': host '{spec.host}' needs a 'hosts:' table naming it (with its address)", spec.line)
            elif spec.host not in graph.hosts:
                close = difflib.get_close_matches(spec.host, list(graph.hosts), n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                p(f"node '{name}': host '{spec.host}' is not in the graph's hosts ({', '.join(graph.hosts)}){hint}", spec.line)

    seen: dict[tuple, LinkSpec] = {}
    good_links: list[LinkSpec] = []
    for link in graph.links:
        ok = True
        for node, attr, kind in ((link.src, "src_pad", "outputs"), (link.dst, "dst_pad", "inputs")):
            if node not in graph.nodes:
                close = difflib.get_close_matches(node, list(graph.nodes), n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                p(f"link {_ends(link)}: unknown node '{node}'{hint}", link.line)
                ok = False
                continue
            end_cls = types.get(node)
            if end_cls is None:
                ok = False
                continue
            pads = getattr(end_cls, kind)
            pad = getattr(link, attr)
            word = "output" if kind == "outputs" else "input"
            if pad is None:
                default = end_cls.default_output() if kind == "outputs" else end_cls.default_input()
                if default is not None:
                    setattr(link, attr, default)
                else:
                    p(f"link {_ends(link)}: node '{node}' ({graph.nodes[node].type}) has "
                      f"{len(pads) or 'no'} {word} pads ({', '.join(pads) or 'none'}); name one", link.line)
                    ok = False
            elif pad not in pads:
                p(f"link {_ends(link)}: node '{node}' ({graph.nodes[node].type}) has no {word} pad '{pad}'; "
                  f"its {word} pads: {', '.join(pads) or 'none'}", link.line)
                ok = False
        if not ok:
            continue
        ends = (link.src, link.src_pad, link.dst, link.dst_pad)
        if ends in seen:
            p(f"link {link} is declared twice (first at line {seen[ends].line})", link.line)
            continue
        seen[ends] = link
        good_links.append(link)

    g = nx.MultiDiGraph()
    g.add_nodes_from(graph.nodes)
    for link in good_links:
        if link.forward:  # a feedback link runs upstream on purpose: it may close a loop
            g.add_edge(link.src, link.dst, link=link)
    try:
        cycle = nx.find_cycle(g)
    except nx.NetworkXNoCycle:
        cycle = None
    if cycle:
        names = [edge[0] for edge in cycle] + [cycle[0][0]]
        first = g.edges[cycle[0]]["link"]
        p(f"cycle in graph: {' -> '.join(names)} (a link that runs upstream on purpose, such as a "
          f"sink's keyframe requests, says 'feedback: true')", first.line)

    for name, cls in types.items():
        only = cls.default_input()
        connected = {l.dst_pad or only for l in graph.links if l.dst == name}
        required = ({n for n, pad in cls.inputs.items() if pad.required} if name in bad_params  # as declared
                    else cls.required_inputs(_full_params(cls, graph.nodes[name].params)))
        for pad_name in cls.inputs:
            if pad_name in required and pad_name not in connected:
                p(f"node '{name}' ({graph.nodes[name].type}): required input '{pad_name}' is not connected", graph.nodes[name].line)

    if not cycle:
        _check_caps(graph, types, good_links, g, p, bad_params)

    if graph.hosts and len(good_links) == len(graph.links) and not any(
            isinstance(s.host, str) and s.host not in graph.hosts for s in graph.nodes.values()):
        for message, line in port_problems(graph):  # every pad is resolved by now: link ids are final
            p(message, line)

    for agent in graph.agents.values():
        if agent.node in graph.nodes and agent.node not in types:
            continue  # its node's type is already reported
        for message in check_agent(agent, types):
            p(message, agent.line)

    if problems:
        raise GraphError(problems)
    for name, cls in types.items():
        graph.nodes[name].params = check_params(cls.params, graph.nodes[name].params)
    return types


def _check_caps(graph: Graph, types: dict[str, type[Node]], links: list[LinkSpec], g: nx.MultiDiGraph, p,
                bad_params: AbstractSet[str] = frozenset()) -> None:
    """Propagate caps in topological order; a mismatch names both pads and both caps."""
    arriving: dict[tuple[str, str], CapsSpec] = {}
    for name in nx.topological_sort(g):
        cls = types.get(name)
        if cls is None:
            continue
        params = graph.nodes[name].params
        for link in (l for l in links if l.src == name):
            assert link.src_pad is not None and link.dst_pad is not None  # good links: pads resolved above
            pad = cls.outputs[link.src_pad]
            produced: CapsSpec | None = ANY  # a node already reported: anything may come out of it
            if name not in bad_params:
                produced = cls.output_caps(link.src_pad, _full_params(cls, params))
            if produced is None:
                produced = arriving.get((name, pad.same_as or ""), ANY)
            dst_cls = types.get(link.dst)
            if dst_cls is None:
                continue
            accepted: CapsSpec = ANY  # a node already reported: it may take anything
            if link.dst not in bad_params:
                accepted = dst_cls.input_caps(link.dst_pad, _full_params(dst_cls, graph.nodes[link.dst].params))
            if not caps_compatible(produced, accepted):
                p(f"caps mismatch on link {link}: {link.src}.{link.src_pad} produces '{caps_text(produced)}' "
                  f"but {link.dst}.{link.dst_pad} accepts '{caps_text(accepted)}'", link.line)
            key = (link.dst, link.dst_pad)
            if key not in arriving or arriving[key] == ANY:
                arriving[key] = produced


def _full_params(cls: type[Node], given: Mapping[str, Any]) -> dict[str, Any]:
    """A node's params with the type's defaults filled in, for its classmethods (caps, inputs)."""
    return {**{k: v.default for k, v in cls.params.items()}, **given}


def _ends(link: LinkSpec) -> str:
    a = f"{link.src}.{link.src_pad}" if link.src_pad else link.src
    b = f"{link.dst}.{link.dst_pad}" if link.dst_pad else link.dst
    return f"'{a} -> {b}'"
