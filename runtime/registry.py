"""Node type lookup: by registered name (entry-point group ``avatar.nodes``) or ``module:Class``."""
from __future__ import annotations

import difflib
import importlib
from functools import lru_cache
from importlib.metadata import entry_points

from .errors import NodeTypeError
from .node import Node

ENTRY_POINT_GROUP = "avatar.nodes"


@lru_cache(maxsize=1)
def _entry_points() -> dict:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def node_type_names() -> list[str]:
    return sorted(_entry_points())


def _dotted(path: str) -> bool:
    """``a.b.c``: Python identifiers joined by dots."""
    return all(part.isidentifier() for part in path.split("."))


def get_node_type(name: str) -> type[Node]:
    """The class for a type name used in a graph; raises NodeTypeError naming the choices."""
    if not isinstance(name, str) or not name:
        raise NodeTypeError(f"a node type is a registered name or 'module:Class', got {name!r}")
    if ":" in name:
        module, _, attr = name.partition(":")
        if not _dotted(module) or not _dotted(attr):
            raise NodeTypeError(f"bad node type '{name}': expected 'module:Class' (a Python module path, "
                                f"e.g. 'mypkg.nodes:MyNode'), or a registered name")
        try:
            obj = importlib.import_module(module)
            for part in attr.split("."):
                obj = getattr(obj, part)
            cls = obj
        except (ImportError, AttributeError) as exc:
            raise NodeTypeError(f"cannot import node type '{name}': {exc}") from exc
        except Exception as exc:  # noqa: BLE001 - importing runs the module: any error it raises is the answer
            raise NodeTypeError(f"cannot import node type '{name}': {type(exc).__name__}: {exc}") from exc
    else:
        ep = _entry_points().get(name)
        if ep is None:
            close = difflib.get_close_matches(name, node_type_names(), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise NodeTypeError(
                f"unknown node type '{name}'{hint}; known types: {', '.join(node_type_names())}"
            )
        try:
            cls = ep.load()
        except Exception as exc:  # noqa: BLE001 - a broken plugin: say which
            raise NodeTypeError(f"cannot load node type '{name}' ({ep.value}): {type(exc).__name__}: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, Node)):
        raise NodeTypeError(f"'{name}' is not a Node subclass")
    return cls
