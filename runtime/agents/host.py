"""Runs a graph's agents on the runner's loop: look, wish, guard, act through the live params.

Each agent looks every ``every`` seconds; agents due together share one stats request. An action
is a live param change like a person's (``Runner.set_params_async``: checked, kept in the state
store), posted on the bus as ``AGENT`` (agent, node, param, old, new, reason, the inputs it saw)
and counted (``Runner.stats()['agents']``, the Prometheus ``avatar_agent_*`` metrics). A param a
person set is pinned (``Runner.pins``): the agent holds until ``avatar unpin`` frees it. A failing
agent (a bug in its ``wish``) is reported once and holds; the graph goes on.
"""
from __future__ import annotations

import asyncio
import logging
import math
import time
import traceback
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import ControlError, ParamRefused
from ..states import PLAYING
from .base import Agent, StatsView, Wish
from .guard import Decision, Guards, GuardState, decide
from .registry import get_agent_type
from .spec import AgentSpec, guards_for

if TYPE_CHECKING:
    from ..runner import Runner

log = logging.getLogger("avatar.agents")
_RECENT = 16  # actions kept per agent for stats


@dataclass
class RunningAgent:
    spec: AgentSpec
    agent: Agent
    guards: Guards
    every: float
    states: dict[str | None, GuardState] = field(default_factory=dict)  # per key (None: an unkeyed agent's one)
    due: float = 0.0
    before: dict | None = None
    before_at: float = 0.0
    counts: dict[str, int] = field(default_factory=lambda: {"looks": 0, "actions": 0, "reversals": 0, "holds": 0,
                                                            "pinned_looks": 0, "refused": 0, "errors": 0})
    last: dict[str, Any] = field(default_factory=dict)  # per key ("value" when unkeyed; "*": why it held)
    recent: list[dict[str, Any]] = field(default_factory=list)
    failed: bool = False

    def stats(self, pinned: bool) -> dict[str, Any]:
        g = self.guards
        return {"type": self.spec.type, "node": self.spec.node, "param": self.spec.param, "every": self.every,
                "pinned": pinned, **self.counts, "last": self.last, "recent": list(self.recent),
                "bounds": [_finite(g.min), _finite(g.max)], "fast": g.fast}


class AgentHost:
    """The agents of one runner (those driving a node of its host)."""

    def __init__(self, runner: "Runner"):
        self.runner = runner
        self.agents: dict[str, RunningAgent] = {}
        for name, spec in runner.graph.agents.items():
            if spec.node not in runner.local or spec.param is None:
                continue
            cls = get_agent_type(spec.type)
            decl = runner.types[spec.node].params[spec.param]
            agent = cls(name, spec.node, spec.param, spec.params)
            self.agents[name] = RunningAgent(spec, agent, guards_for(spec, decl, cls), every=spec.every or cls.every)
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        if self.agents and self._task is None:
            now = time.monotonic()
            for a in self.agents.values():
                a.due = now + a.every
            self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - stopping: nothing more to say
                pass
            self._task = None

    def stats(self) -> dict[str, Any]:
        return {name: a.stats(self.pinned(a)) for name, a in self.agents.items()}

    def pinned(self, a: RunningAgent) -> bool:
        return a.spec.param in self.runner.pins.get(a.spec.node, {})

    async def _run(self) -> None:
        while True:
            now = time.monotonic()
            due = [a for a in self.agents.values() if a.due <= now]
            if due and self.runner.state == PLAYING and not self.runner.stopping:
                snapshot = await self.runner.stats_async(agents=False)
                at = time.monotonic()
                for a in due:
                    await self.step(a, snapshot, at)
            for a in due:
                a.due = max(a.due + a.every, now)
            wait = min(a.due for a in self.agents.values()) - time.monotonic()
            await asyncio.sleep(max(0.01, wait))

    async def step(self, a: RunningAgent, snapshot: dict[str, Any], now: float) -> dict[str | None, Decision]:
        """One look of one agent: what it saw, what it wished, what the guards let it do (per key)."""
        view = StatsView(snapshot, a.before, now - a.before_at if a.before is not None else 0.0, now)
        a.before, a.before_at = snapshot, now
        a.counts["looks"] += 1
        node, param = a.spec.node, a.spec.param
        assert param is not None  # filled in by check_agent before the host is built
        np = self.runner.procs.get(node)
        if np is None or np.state != PLAYING:
            return self._hold(a, f"hold: node '{node}' is not playing")
        if self.pinned(a):
            a.counts["pinned_looks"] += 1
            return self._hold(a, f"hold: '{node}.{param}' is pinned (set by a person; avatar unpin frees it)")
        a.last.pop("*", None)
        params = self.runner.graph.nodes[node].params
        decisions: dict[str | None, Decision] = {}
        changes: dict[str | None, tuple[Decision, float, Wish | None]] = {}
        try:
            keys: list[str | None] = list(a.agent.keys(view, params)) if a.agent.keyed else [None]
            for key in keys:
                st = a.states.setdefault(key, GuardState())
                current = a.agent.current(params, key)
                wish = a.agent.wish(view, current, key)
                d = decide(a.guards, st, now, current, None if wish is None else wish.value,
                           None if wish is None else wish.age_s, "" if wish is None else wish.reason)
                decisions[key] = d
                a.last[_key(key)] = {"decision": d.reason, "wish": _plain(None if wish is None else wish.value),
                                     "value": _plain(current if d.value is None else d.value)}
                if d.value is not None:
                    changes[key] = (d, current, wish)
        except Exception as exc:  # noqa: BLE001 - an agent's bug must not stop the graph
            a.counts["errors"] += 1
            if not a.failed:
                a.failed = True
                self.runner.bus.post("ERROR", node=node, agent=a.spec.name,
                                     text=f"agent '{a.spec.name}' ({a.spec.type}) failed: {type(exc).__name__}: {exc}",
                                     traceback=traceback.format_exc())
            return self._hold(a, f"hold: the agent failed ({type(exc).__name__})")
        a.failed = False
        for gone in [k for k in a.states if k not in decisions]:  # a viewer left: its state goes too
            del a.states[gone]
            a.last.pop(_key(gone), None)
        if not changes:
            a.counts["holds"] += 1
            return decisions
        new = a.agent.to_params({k: c[0].value for k, c in changes.items()}, params)  # type: ignore[misc]
        try:
            await self.runner.set_params_async(node, new, by=f"agent {a.spec.name}")
        except (ParamRefused, ControlError) as exc:
            a.counts["refused"] += 1
            self.runner.bus.post("WARNING", node=node, agent=a.spec.name, text=f"agent '{a.spec.name}': {exc}")
            return self._hold(a, f"hold: refused: {exc}")
        for key, (d, current, wish) in changes.items():
            a.counts["actions"] += 1
            a.counts["reversals"] += d.reversal
            action = {"param": param, **({"key": key} if key is not None else {}), "old": _plain(current),
                      "new": _plain(d.value), "reason": d.reason, "inputs": dict(wish.inputs) if wish else {}}
            a.recent = (a.recent + [{**action, "at": round(time.time(), 3)}])[-_RECENT:]
            self.runner.bus.post("AGENT", node=node, agent=a.spec.name, **action, reversal=d.reversal)
        return decisions

    def _hold(self, a: RunningAgent, reason: str) -> dict[str | None, Decision]:
        a.counts["holds"] += 1
        a.last["*"] = {"decision": reason}
        return {None: Decision(None, reason)}


def _key(key: str | None) -> str:
    return "value" if key is None else str(key)


def _plain(x: Any) -> Any:
    if isinstance(x, float):
        return int(x) if x.is_integer() and abs(x) < 2 ** 53 else round(x, 6)
    return x


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None
