"""Agents: controllers declared in a graph that watch its stats and drive live params, guarded."""
from .base import Agent, StatsView, Wish, lookup
from .guard import DOWN, UP, Decision, Guards, GuardState, decide
from .host import AgentHost
from .registry import agent_type_names, get_agent_type
from .spec import AgentSpec, check_agent, parse_agents

__all__ = ["Agent", "AgentHost", "AgentSpec", "DOWN", "Decision", "GuardState", "Guards", "StatsView", "UP", "Wish",
           "agent_type_names", "check_agent", "decide", "get_agent_type", "lookup", "parse_agents"]
