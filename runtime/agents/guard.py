"""The guards every agent's decisions pass through: one pure function over a small state.

Kubernetes' HPA and WebRTC's rate control learned the same lessons: act at once in the safe
direction (``fast``: shed load, lower a rate), move back only after the wish has held for a while
(``up_after_s``), never inside a band around the current value (hysteresis), never twice within a
dwell time, never more than ``max_step`` at a time nor more than ``max_per_min`` changes a minute,
and hold, changing nothing, while the data is missing or stale. Recorded traces replay through
``decide`` in the unit tests exactly as they do live.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

DOWN, UP = "down", "up"


@dataclass(frozen=True)
class Guards:
    """An agent's limits; every field is settable in the graph YAML (``runtime.agents.spec``)."""

    min: float = -math.inf
    max: float = math.inf
    band: float = 0.0  # a wish within this of the current value changes nothing
    dwell_s: float = 5.0  # the least time between two changes in the slow direction
    max_step: float = math.inf  # the most one change moves the value
    max_per_min: float = 6.0  # changes in any 60 s, either direction
    up_after_s: float = 3.0  # a wish in the slow direction must hold this long before it is acted on
    stale_s: float = 5.0  # data older than this: hold
    fast: str = DOWN  # the direction applied at once (the safe one); the other is slow
    integer: bool = False  # the param is an int: values are rounded

    def clamp(self, value: float) -> float:
        if self.integer:  # whole values within the bounds
            return float(min(math.floor(self.max), max(math.ceil(self.min), round(value))))
        return min(self.max, max(self.min, value))


@dataclass
class GuardState:
    """What ``decide`` remembers between observations."""

    last_change: float = -math.inf
    changes: deque = field(default_factory=deque)  # times of the changes in the last minute
    slow_since: float | None = None  # since when a wish in the slow direction has held
    last_direction: int = 0  # +1 / -1: the direction of the previous change (reversals are counted)


@dataclass(frozen=True)
class Decision:
    """``value`` is the new value, or None to change nothing; ``reason`` says why either way."""

    value: float | None
    reason: str
    reversal: bool = False


def decide(g: Guards, st: GuardState, now: float, current: float, wish: float | None, age_s: float | None,
           why: str = "") -> Decision:
    """Pure apart from ``st``: the change to make now, if any, toward ``wish`` from ``current``.

    ``age_s``: how old the data behind the wish is (None: there is none). ``why``: the agent's own
    reason for its wish, carried into the decision's reason.
    """
    while st.changes and now - st.changes[0] >= 60.0:
        st.changes.popleft()
    if wish is None or age_s is None:
        st.slow_since = None
        return Decision(None, "hold: no data")
    if age_s > g.stale_s:
        st.slow_since = None
        return Decision(None, f"hold: data {age_s:.1f} s old (stale after {g.stale_s:g} s)")
    if isinstance(wish, float) and math.isnan(wish):
        st.slow_since = None
        return Decision(None, "hold: the wish is not a number")
    target = g.clamp(wish)
    delta = target - current
    if delta == 0 or abs(delta) <= g.band:
        st.slow_since = None
        return Decision(None, f"hold: {why + '; ' if why else ''}within the band ({_num(target)} vs {_num(current)})")
    direction = 1 if delta > 0 else -1
    fast = (direction < 0) == (g.fast == DOWN)
    if not fast:
        if st.slow_since is None:
            st.slow_since = now
        held = now - st.slow_since
        if held < g.up_after_s:
            return Decision(None, f"wait: {why + '; ' if why else ''}{_word(direction)} wished for "
                                  f"{held:.1f} of {g.up_after_s:g} s")
        if now - st.last_change < g.dwell_s:
            return Decision(None, f"wait: dwell, {now - st.last_change:.1f} of {g.dwell_s:g} s since the last change")
    else:
        st.slow_since = None
    if len(st.changes) >= g.max_per_min:
        return Decision(None, f"hold: {len(st.changes)} changes in the last minute (at most {g.max_per_min:g})")
    step = max(-g.max_step, min(g.max_step, delta))
    if g.integer:  # whole steps, never more than max_step, at least one
        step = direction * max(1, math.floor(abs(step)))
    value = g.clamp(current + step)
    if (value - target) * direction > 0:  # never past the wish
        value = target
    reversal = st.last_direction != 0 and direction != st.last_direction
    st.last_change, st.last_direction, st.slow_since = now, direction, None
    st.changes.append(now)
    return Decision(value, f"{_word(direction)}{' at once' if fast else ''}: {why}" if why else _word(direction),
                    reversal)


def _word(direction: int) -> str:
    return "up" if direction > 0 else "down"


def _num(value: float) -> str:
    return f"{value:g}"
