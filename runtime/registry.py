"""Plug-in lookup: node types (entry-point group ``avatar.nodes``) and agent types
(``avatar.agents``), by registered name or as ``module:Class``, so a user's types plug in the
same way as ours."""
from __future__ import annotations

import difflib
import importlib
from functools import lru_cache
from importlib.metadata import entry_points
from typing import TypeVar

from .errors import NodeTypeError
from .node import Node

ENTRY_POINT_GROUP = "avatar.nodes"
T = TypeVar("T")


@lru_cache(maxsize=None)
def _entry_points(group: str) -> dict:
    return {ep.name: ep for ep in entry_points(group=group)}


def type_names(group: str) -> list[str]:
    return sorted(_entry_points(group))


def node_type_names() -> list[str]:
    return type_names(ENTRY_POINT_GROUP)


def _dotted(path: str) -> bool:
    """``a.b.c``: Python identifiers joined by dots."""
    return all(part.isidentifier() for part in path.split("."))


def load_type(name: str, group: str, base: type[T], what: str) -> type[T]:
    """The ``base`` subclass a name stands for (a name of ``group``, or ``module:Class``);
    NodeTypeError naming the choices, or why it cannot be loaded."""
    if not isinstance(name, str) or not name:
        raise NodeTypeError(f"a {what} is a registered name or 'module:Class', got {name!r}")
    if ":" in name:
        module, _, attr = name.partition(":")
        if not _dotted(module) or not _dotted(attr):
            raise NodeTypeError(f"bad {what} '{name}': expected 'module:Class' (a Python module path, "
                                f"e.g. 'mypkg.nodes:MyNode'), or a registered name")
        try:
            obj = importlib.import_module(module)
            for part in attr.split("."):
                obj = getattr(obj, part)
            cls = obj
        except (ImportError, AttributeError) as exc:
            raise NodeTypeError(f"cannot import {what} '{name}': {exc}") from exc
        except Exception as exc:  # noqa: BLE001 - importing runs the module: any error it raises is the answer
            raise NodeTypeError(f"cannot import {what} '{name}': {type(exc).__name__}: {exc}") from exc
    else:
        ep = _entry_points(group).get(name)
        if ep is None:
            names = type_names(group)
            close = difflib.get_close_matches(name, names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise NodeTypeError(f"unknown {what} '{name}'{hint}; known {what}s: {', '.join(names)}")
        try:
            cls = ep.load()
        except Exception as exc:  # noqa: BLE001 - a broken plugin: say which
            raise NodeTypeError(f"cannot load {what} '{name}' ({ep.value}): {type(exc).__name__}: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise NodeTypeError(f"'{name}' is not a {base.__name__} subclass")
    return cls


def get_node_type(name: str) -> type[Node]:
    """The class for a type name used in a graph; raises NodeTypeError naming the choices."""
    return load_type(name, ENTRY_POINT_GROUP, Node, "node type")
