"""Agent type lookup: by registered name (entry-point group ``avatar.agents``) or ``module:Class``,
as node types are found (``runtime.registry``), so a user's agent type plugs in the same way."""
from __future__ import annotations

import difflib
import importlib
from functools import lru_cache
from importlib.metadata import entry_points

from ..errors import NodeTypeError
from .base import Agent

ENTRY_POINT_GROUP = "avatar.agents"


@lru_cache(maxsize=1)
def _entry_points() -> dict:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def agent_type_names() -> list[str]:
    return sorted(_entry_points())


def get_agent_type(name: str) -> type[Agent]:
    """The class for an agent type name; raises NodeTypeError naming the choices."""
    if not isinstance(name, str) or not name:
        raise NodeTypeError(f"an agent type is a registered name or 'module:Class', got {name!r}")
    if ":" in name:
        module, _, attr = name.partition(":")
        try:
            obj = importlib.import_module(module)
            for part in attr.split("."):
                obj = getattr(obj, part)
            cls = obj
        except Exception as exc:  # noqa: BLE001 - importing runs the module: any error it raises is the answer
            raise NodeTypeError(f"cannot import agent type '{name}': {type(exc).__name__}: {exc}") from exc
    else:
        ep = _entry_points().get(name)
        if ep is None:
            close = difflib.get_close_matches(name, agent_type_names(), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise NodeTypeError(f"unknown agent type '{name}'{hint}; known agent types: {', '.join(agent_type_names())}")
        try:
            cls = ep.load()
        except Exception as exc:  # noqa: BLE001 - a broken plugin: say which
            raise NodeTypeError(f"cannot load agent type '{name}' ({ep.value}): {type(exc).__name__}: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, Agent)):
        raise NodeTypeError(f"'{name}' is not an Agent subclass")
    return cls
