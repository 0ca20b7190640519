"""``avatar inspect``: node types and their pads, caps and params, like gst-inspect-1.0."""
from __future__ import annotations

from .node import Node
from .registry import get_node_type, node_type_names


def list_types() -> str:
    rows = []
    for name in node_type_names():
        try:
            rows.append((name, get_node_type(name).describe()))
        except Exception as exc:  # a broken plug-in must not hide the others
            rows.append((name, f"(cannot load: {exc})"))
    width = max((len(n) for n, _ in rows), default=0)
    return "\n".join(f"{n.ljust(width)}  {d}" for n, d in rows) + "\n"


def describe_type(name: str) -> str:
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
            if pad.doc:
                out.append(f"    {pad.doc}")
        out.append("")
    out.append("Params:")
    if not cls.params:
        out.append("  none")
    for pname, p in cls.params.items():
        out.append(f"  {pname}: {p.doc}")
        rng = p.range_text()
        out.append(f"    type: {p.type_name}   default: {p.default!r}" + (f"   range: {rng}" if rng else ""))
        out.append(f"    changes: {p.mutable_text()}")
    return "\n".join(out) + "\n"
