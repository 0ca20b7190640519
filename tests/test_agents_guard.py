"""The agents' guards (runtime.agents.guard.decide): the limits hold for any sequence of wishes."""
from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.agents import DOWN, UP, Guards, GuardState, decide


def run(g: Guards, trace: list[tuple[float, float | None]], start: float, age: float = 0.0) -> list[tuple[float, float]]:
    """Replay (time, wish) through decide; the changes made, as (time, new value)."""
    state, value, changes = GuardState(), start, []
    for t, wish in trace:
        d = decide(g, state, t, value, wish, None if wish is None else age)
        if d.value is not None:
            value = d.value
            changes.append((t, value))
    return changes


def test_the_fast_direction_acts_at_once_and_the_slow_one_waits_for_its_wish_to_hold():
    g = Guards(min=0, max=10, dwell_s=2, up_after_s=3, max_per_min=100)
    # down at t=0 (at once); then up wished from t=1: acted on only once it held 3 s (t=4)
    changes = run(g, [(0, 2), (1, 8), (2, 8), (3, 8), (4, 8), (5, 8)], start=5)
    assert changes == [(0, 2), (4, 8)]


def test_a_slow_wish_that_does_not_hold_starts_its_wait_again():
    g = Guards(min=0, max=10, dwell_s=0, up_after_s=2, max_per_min=100)
    changes = run(g, [(0, 8), (1, 8), (1.5, 5), (2, 8), (3, 8), (4, 8)], start=5)  # 1.5: back inside -> reset
    assert changes == [(4, 8)]


def test_fast_up_when_configured_so():
    g = Guards(min=0, max=10, fast=UP, up_after_s=5, max_per_min=100)
    assert run(g, [(0, 9)], start=1) == [(0, 9)]
    assert run(g, [(0, 0), (1, 0)], start=1) == []  # down is the slow one now


def test_the_band_ignores_small_wishes_and_the_bounds_clamp():
    g = Guards(min=2, max=6, band=0.5, up_after_s=0, dwell_s=0, max_per_min=100)
    assert run(g, [(0, 4.4), (1, 3.6)], start=4) == []
    assert run(g, [(0, -100)], start=4) == [(0, 2)]
    assert run(g, [(0, 100), (1, 100)], start=4) == [(0, 6)]


def test_max_step_moves_a_little_at_a_time_and_an_int_param_stays_whole():
    g = Guards(min=0, max=100, max_step=10, integer=True, max_per_min=100)
    changes = run(g, [(t, 0.0) for t in range(5)], start=37)
    assert [v for _, v in changes] == [27, 17, 7, 0]
    g = Guards(min=0, max=100, max_step=0.25, integer=True, max_per_min=100)
    assert run(g, [(0, 0.0)], start=37) == [(0, 36)]  # a step rounded to nothing still moves one


def test_stale_or_missing_data_holds_and_resets_the_slow_wait():
    g = Guards(min=0, max=10, up_after_s=2, stale_s=3, dwell_s=0, max_per_min=100)
    state = GuardState()
    assert decide(g, state, 0, 5, 9, 0.1).reason.startswith("wait")
    d = decide(g, state, 1, 5, 9, 10.0)  # stale
    assert d.value is None and "stale" in d.reason
    assert decide(g, state, 2, 5, None, None).reason == "hold: no data"
    assert decide(g, state, 3, 5, 9, 0.1).value is None  # the wait started again at 3
    assert decide(g, state, 5, 5, 9, 0.1).value == 9
    assert decide(g, GuardState(), 0, 5, math.nan, 0.0).value is None


def test_reversals_are_flagged():
    g = Guards(min=0, max=10, up_after_s=0, dwell_s=0, max_per_min=100)
    state = GuardState()
    assert decide(g, state, 0, 5, 3, 0).reversal is False
    assert decide(g, state, 1, 3, 2, 0).reversal is False
    assert decide(g, state, 2, 2, 6, 0).reversal is True


@settings(max_examples=300, deadline=None)
@given(
    wishes=st.lists(st.one_of(st.none(), st.floats(-1e3, 1e3)), min_size=1, max_size=400),
    lo=st.floats(-50, 0), span=st.floats(1, 100), band=st.floats(0, 5), dwell=st.floats(0, 10),
    step=st.floats(0.5, 50), per_min=st.integers(1, 20), up_after=st.floats(0, 10),
    fast=st.sampled_from([DOWN, UP]), integer=st.booleans(), dt=st.floats(0.05, 2.0),
)
def test_no_sequence_of_wishes_breaks_a_guard(wishes, lo, span, band, dwell, step, per_min, up_after, fast, integer, dt):
    hi = lo + span
    g = Guards(min=lo, max=hi, band=band, dwell_s=dwell, max_step=step, max_per_min=per_min, up_after_s=up_after,
               fast=fast, integer=integer)
    start = g.clamp((lo + hi) / 2)
    state, value = GuardState(), start
    times: list[float] = []
    last_change = -math.inf
    for i, wish in enumerate(wishes):
        now = i * dt
        d = decide(g, state, now, value, wish, None if wish is None else 0.0)
        if d.value is None:
            continue
        new = d.value
        assert lo <= new <= hi
        assert abs(new - value) <= (max(1, math.floor(step)) if integer else step) + 1e-9
        assert wish is not None and abs(g.clamp(wish) - value) > band
        times.append(now)
        assert sum(1 for t in times if now - t < 60.0) <= per_min
        slow = (new > value) == (fast == DOWN)
        if slow:
            assert now - last_change >= dwell
        last_change = now
        value = new
