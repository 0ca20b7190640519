"""gst-launch-style one-liners: ``testsrc rate=60 ! identity ! recorder path=x.msgpack``.

``TYPE key=value ...`` makes a node (``name=N`` names it; otherwise the type name, numbered
when repeated); ``!`` links the previous node's output to the next node's input; a token
``NAME.`` or ``NAME.PAD`` refers to a node already made, to branch (fan-out) or to join (fan-in):
``testsrc name=src ! fakesink  src. ! recorder path=x.msgpack``.
"""
from __future__ import annotations

import shlex

from .errors import GraphError, Problem
from .graph import Graph, LinkSpec, NodeSpec
from .params import parse_value
from .registry import get_node_type

FILE = "<launch>"


def parse_launch(line: str, *, policy: str | None = None, size: int = 8, name: str = "launch") -> Graph:
    """Build a graph from a launch line; raises GraphError naming the bad token.

    ``policy``: every link's queue policy; None: what each link's input pad asks for (``Pad.policy``:
    block into a recorder, audio or phonemes, so the plain line loses nothing there), else leaky."""
    try:
        tokens = shlex.split(line)
    except ValueError as exc:
        raise GraphError([Problem(f"cannot split launch line: {exc}", FILE)]) from None
    nodes: dict[str, NodeSpec] = {}
    links: list[LinkSpec] = []
    counts: dict[str, int] = {}
    prev: tuple[str, str | None] | None = None  # (node, pad) that the next '!' links from
    pending_link = False
    current: NodeSpec | None = None
    problems: list[Problem] = []

    def connect(dst: str, dst_pad: str | None) -> None:
        nonlocal pending_link
        if pending_link:
            if prev is None:
                problems.append(Problem("'!' with nothing before it", FILE))
            else:
                links.append(LinkSpec(prev[0], prev[1], dst, dst_pad, policy or _asked_policy(nodes[dst], dst_pad), size))
            pending_link = False

    for pos, tok in enumerate(tokens, start=1):
        if tok == "!":
            if pending_link:
                problems.append(Problem(f"token {pos}: two '!' in a row", FILE))
            pending_link = True
            current = None
            continue
        if "=" in tok and not tok.startswith("=") and "." not in tok.split("=", 1)[0]:
            key, value = tok.split("=", 1)
            if current is None:
                problems.append(Problem(f"token {pos}: '{tok}' must follow a node type", FILE))
            elif key == "name":
                old = current.name
                if value in nodes:
                    problems.append(Problem(f"duplicate node name '{value}'", FILE))
                    continue
                nodes[value] = nodes.pop(old)
                current.name = value
                for l in links:
                    if l.dst == old:
                        l.dst = value
                prev = (value, None)
            else:
                current.params[key] = parse_value(value)
            continue
        if "." in tok:  # reference to a node made before: NAME. or NAME.PAD
            ref, _, pad = tok.partition(".")
            if ref not in nodes:
                problems.append(Problem(f"token {pos}: '{tok}' refers to no node named '{ref}'", FILE))
                continue
            if pending_link:
                connect(ref, pad or None)
                prev = (ref, None)
            else:
                prev = (ref, pad or None)
            current = None
            continue
        n = counts.get(tok, 0)
        counts[tok] = n + 1
        node_name = tok if n == 0 else f"{tok}{n}"
        while node_name in nodes:
            n += 1
            node_name = f"{tok}{n}"
        current = NodeSpec(name=node_name, type=tok)
        nodes[node_name] = current
        connect(node_name, None)
        prev = (node_name, None)
    if pending_link:
        problems.append(Problem("launch line ends with '!'", FILE))
    if not nodes:
        problems.append(Problem("empty launch line", FILE))
    if problems:
        raise GraphError(problems)
    return Graph(name=name, nodes=nodes, links=links, file=FILE)


def _asked_policy(node: NodeSpec, pad: str | None) -> str:
    """The policy the input pad asks for, or leaky (an unknown type or pad is validation's to report)."""
    try:
        cls = get_node_type(node.type)
        spec = cls.inputs.get(pad or cls.default_input() or "")
    except Exception:
        return "leaky"
    return (spec.policy if spec is not None else None) or "leaky"
