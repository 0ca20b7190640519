"""``avatar inspect``: node types and their pads, caps and params, like gst-inspect-1.0."""
from __future__ import annotations

from .agents import Agent, agent_type_names, get_agent_type
from .latency import own_latency
from .node import Node
from .params import Param
from .registry import get_node_type, node_type_names


def list_types() -> str:
    rows = []
    for name in node_type_names():
        try:
            rows.append((name, get_node_type(name).describe()))
        except Exception as exc:  # a broken plug-in must not hide the others
            rows.append((name, f"(cannot load: {exc})"))
    agents = []
    for name in agent_type_names():
        try:
            agents.append((name, get_agent_type(name).doc))
        except Exception as exc:  # likewise
            agents.append((name, f"(cannot load: {exc})"))
    width = max((len(n) for n, _ in rows + agents), default=0)
    text = "\n".join(f"{n.ljust(width)}  {d}" for n, d in rows) + "\n"
    if agents:
        text += "\nAgent types (a graph's agents: section):\n" + "\n".join(f"{n.ljust(width)}  {d}" for n, d in agents) + "\n"
    return text


def describe_type(name: str) -> str:
    if name in agent_type_names() and name not in node_type_names():
        return describe_agent_type(name)
    cls: type[Node] = get_node_type(name)
    out = [f"Node type: {name}", f"  class: {cls.__module__}:{cls.__qualname__}", ""]
    doc = (cls.__doc__ or "").strip()
    if doc:
        out += ["  " + line for line in doc.splitlines()] + [""]
    for title, pads in (("Input pads", cls.inputs), ("Output pads", cls.outputs)):
        out.append(f"{title}:")
        if not pads:
            out.append("  none")
        for pad_name, pad in pads.items():
            req = "" if title == "Output pads" or pad.required else " (optional)"
            out.append(f"  {pad_name}{req}")
            out.append(f"    caps: {pad.describe()}")
            if pad.policy:
                out.append(f"    a link that names no policy (a launch line) gets: {pad.policy}")
            if pad.doc:
                out.append(f"    {pad.doc}")
        out.append("")
    out += latency_lines(cls) + [""]
    if cls.interfaces:  # control interfaces the API reaches it by (POST /emotion: "emotion")
        out += ["Interfaces:", "  " + ", ".join(sorted(cls.interfaces)), ""]
    out += param_lines(cls.params)
    return "\n".join(out) + "\n"


def param_lines(params: dict[str, Param], live: bool = True) -> list[str]:
    out = ["Params:"]
    if not params:
        out.append("  none")
    for pname, p in params.items():
        out.append(f"  {pname}: {p.doc}")
        rng = p.range_text()
        out.append(f"    type: {p.type_name}   default: {p.default!r}" + (f"   range: {rng}" if rng else ""))
        if live:
            out.append(f"    changes: {p.mutable_text()}")
        if p.search is not None:
            out.append(f"    tunable: {p.tune_text()} (avatar tune searches it)")
        if p.per_session:
            out.append("    per session: a session may have its own (session_params; avatar set --session S)")
    return out


def describe_agent_type(name: str) -> str:
    cls: type[Agent] = get_agent_type(name)
    out = [f"Agent type: {name}", f"  class: {cls.__module__}:{cls.__qualname__}", f"  {cls.doc}", ""]
    doc = (cls.__doc__ or "").strip()
    if doc:
        out += ["  " + line for line in doc.splitlines()] + [""]
    fast = ", ".join(f"{d} {cls.fast_for(d)}" for d in cls.drives) if cls.drives else cls.fast
    out += ["Drives:", f"  param: {cls.default_param or '(name it: param)'}"
            + (f" (it can drive: {', '.join(cls.drives)})" if cls.drives else ""),
            f"  at once: {fast} (the other direction waits for up_after)", ""]
    out += ["Guards (keys of the agent in the graph): min, max, band, dwell, max_step, max_per_min, up_after, stale;",
            "  every: seconds between looks. See docs/agents.md.", ""]
    out += param_lines(cls.params, live=False)
    return "\n".join(out) + "\n"


def latency_lines(cls: type[Node]) -> list[str]:
    """What the type declares to the latency query (``Node.latency_ns``), at its default params."""
    if cls.latency_ns.__func__ is Node.latency_ns.__func__:  # type: ignore[attr-defined]
        return ["Latency:", "  0 ms: holds no data back"]
    try:
        text = f"{own_latency(cls, {}) / 1e6:.1f} ms with the default params"
    except Exception as exc:  # a broken declaration must not hide the rest of the page
        text = f"(cannot compute: {type(exc).__name__}: {exc})"
    why = (cls.latency_ns.__doc__ or "").strip().splitlines()
    return ["Latency:", f"  {text}"] + ([f"    {why[0]}"] if why else [])
