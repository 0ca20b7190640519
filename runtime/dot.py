"""Graphviz dot for a graph: nodes with their type and params, links with policy and size."""
from __future__ import annotations

from .graph import Graph


def _q(text: str) -> str:
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"') + '"'


def to_dot(graph: Graph) -> str:
    lines = [f"digraph {_q(graph.name)} {{", "  rankdir=LR;", "  node [shape=box, fontname=Helvetica];"]
    for name, spec in graph.nodes.items():
        params = "\\n".join(f"{k}={v}" for k, v in spec.params.items())
        label = f"{name}\\n({spec.type})" + (f"\\n{params}" if params else "")
        host = f", tooltip={_q('host ' + spec.host)}" if spec.host else ""
        lines.append(f'  {_q(name)} [label="{label}"{host}];')
    for l in graph.links:
        style = "solid" if l.policy == "block" else "dashed"
        label = f"{l.src_pad}→{l.dst_pad}\\n{l.policy} {l.size}"
        lines.append(f'  {_q(l.src)} -> {_q(l.dst)} [label="{label}", style={style}];')
    lines.append("}")
    return "\n".join(lines) + "\n"
