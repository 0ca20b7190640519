"""``qos``: when the pipeline behind a lod node falls behind, lower the detail of the sessions
fewest people watch, and give it back when the pipeline has recovered.

Dropping frames at random (what leaky links do when a node cannot keep up) hurts every session
alike, the one a hundred people watch as much as the one nobody does. This agent sheds where it
costs least: it watches the latency of the links behind its lod node (the age of their data as
the receiver takes it, ``Runner.stats()['links'][id]['latency']``) and, when the worst p95 has been
over ``budget_ms`` for ``over_for`` seconds, raises the level of detail (fewer morphs, lower rate:
``graphs/mappings/lod.yaml``) of the least-watched sessions, one rung at a time; when the worst p95
has stayed under ``recover`` of the budget, it takes the rungs back, last first, slowly (the
guards' ``up_after`` and ``dwell``).

Its scale is the number of rungs shed. A rung raises one tier of sessions one level: the
unwatched sessions (no viewer in any sink's ``watchers``) first, through every level up to
``max_level``; then, if ``max_watchers`` allows, the sessions one viewer watches, and so on. The
unwatched tier moves through the lod node's ``level`` (the level of every session not listed,
so a crowd of thousands costs no table); a watched session is listed in ``levels`` at the level
of its tier, so it keeps its detail. Entries the agent did not write (a viewer's own level, asked
through the sink's feedback link, or a person's) are never touched. The ``level`` found before
the first rung is the base it sheds from and returns to.

Watchers change between rungs: a session that gets a viewer while its tier is shed is listed
again at once (the agent reports the node as holding half a rung less than it wrote, and the
guards take the fast way back to it), so a watched session is degraded for at most one look.

``wish`` is small and deterministic over the looks it is shown (the unit tests replay traces); its
memory is what it wrote (to tell its entries from a viewer's), since when the latency has been over
budget, and when it last changed something (``settle``: the latency it watches is over the last
second, so a rung's effect shows a second later).
"""
from __future__ import annotations

import math
from typing import Any, Mapping

from runtime.agents import UP, Agent, StatsView, Wish
from runtime.params import Param

from ..wire import N_LOD_LEVELS

KEY = "shed"  # the agent's one key: the scale it drives (keyed, so it sees the stats before ``current``)
TOP_LEVEL = N_LOD_LEVELS - 1
MAX_TIERS = 4  # unwatched, then watched by 1, 2, 3 viewers


def _link_ids(value: Any) -> str | None:
    if not all(isinstance(x, str) and x for x in value):
        return "a list of link ids (as in avatar stats: 'a.out-b.in')"
    return None


class QosAgent(Agent):
    doc = ("sheds the detail of the least-watched sessions (a lod node's level and levels) while the links behind it "
           "are over a latency budget; restores it when they recover")
    params = {
        "budget_ms": Param(float, 16.7, "the p95 latency (data age) a watched link may have", min=0.1, max=10_000.0),
        "links": Param(list, [], "link ids to watch; empty: every forward link from the lod node on",
                       check=_link_ids),
        "recover": Param(float, 0.5, "give detail back once the worst p95 is under this fraction of the budget",
                         min=0.0, max=1.0),
        "over_for": Param(float, 1.0, "seconds the worst p95 must stay over the budget before a rung is shed",
                          min=0.0, max=600.0),
        "settle": Param(float, 2.0, "seconds after a change before the next rung is shed (the latency window is "
                                    "1 s: let it show the change)", min=0.0, max=600.0),
        "max_level": Param(int, TOP_LEVEL, "the coarsest level it sheds a session to", min=1, max=TOP_LEVEL),
        "max_watchers": Param(int, 0, "sessions with at most this many viewers may be shed (0: unwatched only)",
                              min=0, max=MAX_TIERS - 1),
        "min_samples": Param(int, 5, "messages a link must have taken in the last second to count", min=1,
                             max=100_000),
    }
    default_param = "levels"
    fast = UP  # shedding is the safe way: at once; giving back waits
    scale = (0, MAX_TIERS * TOP_LEVEL)  # rungs; the ones a graph's base and max_level allow are fewer
    keyed = True

    def __init__(self, name: str, node: str, param: str, params: Mapping[str, Any]):
        super().__init__(name, node, param, params)
        self.shed = 0  # rungs the node holds, as far as the agent knows
        self.base: int | None = None  # the default level before the first rung
        self.wrote_level: int | None = None  # the default level it last wrote
        self.wrote: dict[str, int] = {}  # the entries of the table it last wrote
        self.pending: tuple[int, int, dict[str, int], float] | None = None  # written, not yet seen held
        self.changed_at = -math.inf
        self.over_since: float | None = None
        self.view: StatsView | None = None
        self.watchers: dict[str, int] = {}
        self.stale = ""  # why the node holds less than was written, if it does

    # --- what the agent sees -------------------------------------------------------------------
    def keys(self, view: StatsView, node_params: Mapping[str, Any]) -> list[str]:
        self.view = view
        self.watchers = watchers(view.now)
        return [KEY]

    def current(self, node_params: Mapping[str, Any], key: str | None = None) -> float:
        """The rungs the node holds: what the agent wrote, or half a rung less when a watched
        session is below the level its tier should have (watchers changed, a person moved ``level``)."""
        table, level = self._node(node_params)
        self._reconcile(table, level)
        self.stale = ""
        if self.shed == 0:
            self.base = level
            return 0.0
        if level != self.wrote_level:  # a person set the default level: it is the base now
            self.base = level
            self.stale = f"the default level was set to {level}: shedding from there"
            return self.shed - 0.5
        want = self.tier_levels(self.shed)
        below = [sid for sid, n in self.watchers.items()
                 if (sid not in table or self._ours(sid, table))  # not a viewer's (or a person's) own level
                 and table.get(sid, level) > self._level_for(n, want)]
        if below:
            names = ", ".join(sorted(below)[:3]) + (", ..." if len(below) > 3 else "")
            self.stale = f"{len(below)} newly watched session(s) to their level ({names})"
            return self.shed - 0.5
        return float(self.shed)

    def wish(self, view: StatsView, current: float, key: str | None = None) -> Wish | None:
        ids = self.watched_links(view.now)
        worst, link = None, None
        for lid in ids:
            lat = (view.now.get("links", {}).get(lid) or {}).get("latency") or {}
            p95, n = lat.get("p95_us"), lat.get("n") or 0
            if isinstance(p95, (int, float)) and n >= self.p["min_samples"] and (worst is None or p95 > worst):
                worst, link = float(p95), lid
        if worst is None:
            self.over_since = None
            return None  # nothing flows: no grounds to shed or to give back
        budget = self.p["budget_ms"]
        p95_ms = worst / 1000.0
        over = p95_ms > budget
        if over and self.over_since is None:
            self.over_since = view.at
        elif not over:
            self.over_since = None
        applied = self.shed
        top = len(self.rungs())
        inputs = {"link": link, "p95_ms": round(p95_ms, 2), "budget_ms": budget, "watched": len(self.watchers)}
        if over:
            held = view.at - (self.over_since or view.at)
            since = view.at - self.changed_at
            if applied >= top:
                want, why = applied, f"p95 {p95_ms:.1f} ms on {link} over {budget:g} ms, all {top} rungs shed"
            elif held < self.p["over_for"]:
                want, why = applied, f"p95 {p95_ms:.1f} ms on {link} over {budget:g} ms for {held:.1f} s"
            elif since < self.p["settle"]:
                want, why = applied, f"p95 {p95_ms:.1f} ms on {link} over {budget:g} ms; settling ({since:.1f} s)"
            else:
                want, why = applied + 1, f"p95 {p95_ms:.1f} ms on {link} over {budget:g} ms: {self.describe(applied + 1)}"
        elif p95_ms < budget * self.p["recover"] and applied > 0:
            want, why = applied - 1, (f"p95 {p95_ms:.1f} ms under {budget * self.p['recover']:g} ms: "
                                      f"{self.describe(applied - 1)}")
        else:
            want, why = applied, f"p95 {p95_ms:.1f} ms on {link} (budget {budget:g} ms)"
        if current < applied:  # the node holds less than was written: write it again first
            want, why = max(want, applied), f"{why}; {self.stale}"
        return Wish(float(want), why, inputs)

    # --- what the agent writes ------------------------------------------------------------------
    def to_params(self, values: Mapping[str | None, float], node_params: Mapping[str, Any]) -> dict[str, Any]:
        """Both the default ``level`` (the unwatched tier) and the table (the watched sessions)."""
        table, level = self._node(node_params)
        base = level if self.base is None else self.base
        shed = min(int(round(values[KEY])), len(self.rungs(base)))
        want = self.tier_levels(shed, base)
        foreign = {sid: lv for sid, lv in table.items() if not self._ours(sid, table)}
        ours: dict[str, int] = {}
        if shed > 0:
            for sid, n in self.watchers.items():
                if sid not in foreign:
                    ours[sid] = self._level_for(n, want, base)
        new_level = want[0] if shed > 0 else base
        self.pending = (shed, new_level, ours, self.view.at if self.view is not None else 0.0)
        return {self.param: {**foreign, **ours}, "level": new_level}

    # --- the ladder ---------------------------------------------------------------------------------
    def rungs(self, base: int | None = None) -> list[tuple[int, int]]:
        """(tier, level) in the order they are shed: tier 0 (unwatched) through every level, then tier 1..."""
        base = (self.base or 0) if base is None else base
        top = max(base, self.p["max_level"])
        return [(tier, lv) for tier in range(self.p["max_watchers"] + 1) for lv in range(base + 1, top + 1)]

    def tier_levels(self, shed: int, base: int | None = None) -> list[int]:
        """The level of each tier (unwatched, 1 viewer, ...) with ``shed`` rungs taken."""
        base = (self.base or 0) if base is None else base
        out = [base] * (self.p["max_watchers"] + 1)
        for tier, lv in self.rungs(base)[:shed]:
            out[tier] = lv
        return out

    def describe(self, shed: int) -> str:
        if shed == 0:
            return "every session at its level"
        levels = self.tier_levels(shed)
        parts = [f"{'unwatched' if t == 0 else f'{t}-viewer'} sessions at level {lv}"
                 for t, lv in enumerate(levels) if lv != (self.base or 0)]
        return ", ".join(parts)

    def _level_for(self, viewers: int, want: list[int], base: int | None = None) -> int:
        base = (self.base or 0) if base is None else base
        return want[viewers] if viewers < len(want) else base

    # --- links to watch ------------------------------------------------------------------------
    def watched_links(self, stats: Mapping[str, Any]) -> list[str]:
        """The ``links`` param's, or every forward link from the node on (those shedding relieves)."""
        links = stats.get("links") or {}
        if self.p["links"]:
            unknown = [lid for lid in self.p["links"] if lid not in links]
            if unknown:
                raise ValueError(f"qos agent '{self.name}': param 'links' names no link of the graph: "
                                 f"{', '.join(unknown)} (links: {', '.join(sorted(links))})")
            return list(self.p["links"])
        return downstream_links(links, self.node)

    # --- bookkeeping ---------------------------------------------------------------------------
    def _node(self, node_params: Mapping[str, Any]) -> tuple[dict[str, int], int]:
        table, level = node_params.get(self.param), node_params.get("level")
        if not isinstance(table, Mapping) or not isinstance(level, int):
            raise ValueError(f"qos agent '{self.name}' drives a lod node's 'level' and '{self.param}' (a table); "
                             f"node '{self.node}' has {sorted(node_params)}")
        return {str(k): v for k, v in table.items()}, level

    def _ours(self, sid: str, table: Mapping[str, int]) -> bool:
        return sid in self.wrote and table.get(sid) == self.wrote[sid]

    def _reconcile(self, table: Mapping[str, int], level: int) -> None:
        """A write the node holds now becomes what the agent knows; one it never took is forgotten."""
        if self.pending is not None:
            shed, new_level, ours, at = self.pending
            self.pending = None
            if level == new_level and all(table.get(sid) == lv for sid, lv in ours.items()):
                self.shed, self.wrote_level, self.wrote, self.changed_at = shed, new_level, ours, at
        # entries someone else removed or changed are theirs now (or gone)
        self.wrote = {sid: lv for sid, lv in self.wrote.items() if table.get(sid) == lv}


def watchers(stats: Mapping[str, Any]) -> dict[str, int]:
    """Viewers per watched session, summed over every node that reports ``watchers`` (the sinks)."""
    out: dict[str, int] = {}
    for node in (stats.get("nodes") or {}).values():
        w = (node.get("node") or {}).get("watchers") if isinstance(node, Mapping) else None
        if isinstance(w, Mapping):
            for sid, n in w.items():
                if isinstance(n, int) and n > 0:
                    out[str(sid)] = out.get(str(sid), 0) + n
    return out


def downstream_links(links: Mapping[str, Mapping[str, Any]], node: str) -> list[str]:
    """The forward links whose sender is ``node`` or a node it feeds, directly or not."""
    reached, ids, grew = {node}, [], True
    while grew:
        grew = False
        for lid, l in links.items():
            if l.get("feedback") or lid in ids:
                continue
            src, dst = str(l.get("from", "")).split(".")[0], str(l.get("to", "")).split(".")[0]
            if src in reached:
                ids.append(lid)
                if dst not in reached:
                    reached.add(dst)
                grew = True
    return sorted(ids)
