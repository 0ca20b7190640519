"""Agent type lookup: by registered name (entry-point group ``avatar.agents``) or ``module:Class``,
as node types are found (``runtime.registry``)."""
from __future__ import annotations

from ..registry import load_type, type_names
from .base import Agent

ENTRY_POINT_GROUP = "avatar.agents"


def agent_type_names() -> list[str]:
    return type_names(ENTRY_POINT_GROUP)


def get_agent_type(name: str) -> type[Agent]:
    """The class for an agent type name; raises NodeTypeError naming the choices."""
    return load_type(name, ENTRY_POINT_GROUP, Agent, "agent type")
