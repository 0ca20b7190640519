"""The animation agent: the blender measures its smoother (jitter at rest, lag in motion, input
noise), and the agent tunes min_cutoff and beta from that, as Casiez's procedure does by hand.

The recorded Live Link Face take (tests/data/llf_dao_take.csv), looped at its 60 fps, is the
capture throughout, with seeded Gaussian noise added where a test needs a worse phone. The
measurements and the wishes are checked on traces of stats from the real blender replaying it
(simulated time, no processes); the agent with its guards in a closed loop over simulated
minutes; and the whole thing live, in a real graph of processes.
"""
from __future__ import annotations

import importlib
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

import nodes.blender as blender_module
import nodes.face.one_euro as one_euro_module
from nodes.agents import AnimationAgent
from nodes.blender import Blender
from nodes.face import SmoothingMeter
from nodes.livelink import read_take
from runtime import Message, Runner, parse_graph
from runtime.agents import DOWN, UP, GuardState, StatsView, decide
from runtime.agents.spec import guards_for
from runtime.errors import GraphError
from runtime.params import check_params
from runtime.testing import NodeHarness
from runtime.validate import validate_graph
from tests.helpers import wait_until

ROOT = Path(__file__).resolve().parent.parent
TAKE_PATH = ROOT / "tests" / "data" / "llf_dao_take.csv"
TAKE = read_take(TAKE_PATH)
WEIGHTS = np.clip(TAKE.weights, 0.0, 1.0).astype(np.float32)
POSE = TAKE.pose.astype(np.float32)
DT = 1.0 / 60.0
QUIET = dict(breath_amount=0.0, gaze_amount=0.0, micro_per_min=0.0)
ARKIT = "arkit/blendshapes"

try:
    _filters = importlib.import_module("nodes.face._filters")
except ImportError:  # not built
    _filters = None


class Replay:
    """The take, looped, into a blender (simulated time), with ``noise`` added (weight units)."""

    def __init__(self, noise: float = 0.0, seed: int = 0, sessions: tuple[str, ...] = ("a",), **params: Any):
        self.h = NodeHarness(Blender, name="face", **{**QUIET, **params})
        self.rngs = [np.random.default_rng((seed, k)) for k in range(len(sessions))]  # a session's own noise
        self.noise, self.sessions, self.i = noise, list(sessions), 0

    def frame(self) -> None:
        n, row = len(self.sessions), self.i % len(WEIGHTS)
        w = np.repeat(WEIGHTS[row][None], n, axis=0)
        if self.noise:
            noise = np.stack([rng.normal(0.0, self.noise, w.shape[1]) for rng in self.rngs])
            w = np.clip(w + noise, 0.0, 1.0).astype(np.float32)
        self.h.feed("capture", Message(ARKIT, {"active": [True] * n},
                                       {"weights": w, "pose": np.repeat(POSE[row][None], n, axis=0)},
                                       session=self.sessions))
        self.h.advance(DT)
        self.i += 1

    def seconds(self, s: float) -> None:
        for _ in range(int(round(s * 60))):
            self.frame()

    def trace(self, seconds: int) -> list[dict[str, Any]]:
        """Runner-like stats snapshots, one per second (what an agent's StatsView sees), after two
        seconds in which the filter settles and the meter's first window, partly without history, closes."""
        self.seconds(2.0)
        out = []
        for _ in range(seconds):
            self.seconds(1.0)
            out.append(self.snapshot())
        return out

    def snapshot(self) -> dict[str, Any]:
        return {"nodes": {"face": {"state": "PLAYING", "node": self.h.node.stats()}}}

    @property
    def smoothing(self) -> dict[str, Any]:
        return self.h.node.stats()["smoothing"]


def settled(trace: list[dict[str, Any]], key: str) -> float:
    """The mean of a measure over a trace."""
    values = [s["nodes"]["face"]["node"]["smoothing"][key] for s in trace]
    assert all(v is not None for v in values), values
    return float(np.mean(values))


def agent(param: str = "min_cutoff", **params: Any) -> AnimationAgent:
    return AnimationAgent("a", "face", param, check_params(AnimationAgent.params, params))


def view(snapshot: dict[str, Any]) -> StatsView:
    return StatsView(snapshot, None, 0.0, at=0.0)


# --- the measurements -------------------------------------------------------------------------
def test_the_blender_measures_capture_noise_jitter_at_rest_and_lag_in_motion() -> None:
    noisy = Replay(noise=0.01, min_cutoff=1.0, beta=0.0).trace(4)
    s = noisy[-1]["nodes"]["face"]["node"]["smoothing"]
    assert s["windows"] >= 5 and s["rest"] >= 100 and s["motion"] >= 30 and s["sessions"] == 4
    # white noise of sigma 0.01: a second difference of RMS sigma * sqrt(6), 0.0245 (less where clipped at 0)
    assert 0.015 < settled(noisy, "noise") < 0.03
    assert settled(noisy, "jitter") < settled(noisy, "noise") / 5  # the smoother cuts it
    assert settled(Replay().trace(4), "noise") < 0.005  # the phone's own capture: far quieter
    # jitter at rest grows with min_cutoff; lag in motion shrinks as beta grows
    jitter = [settled(Replay(noise=0.01, min_cutoff=mc, beta=0.0).trace(4), "jitter") for mc in (0.3, 1.0, 3.0)]
    assert jitter[0] < jitter[1] < jitter[2]
    lag = [settled(Replay(min_cutoff=1.0, beta=b).trace(4), "lag_ms") for b in (0.0, 0.2, 0.7, 1.5)]
    assert lag[0] > 50 and lag[-1] < 20 and lag == sorted(lag, reverse=True)
    # a first-order low-pass at 1 Hz lags by up to 1 / (2 pi) s, 159 ms; in motion it shows less
    assert lag[0] < 159
    # frames made as the capture comes (tick_on_capture) measure the same as frames on the timer
    timed = Replay(noise=0.01, min_cutoff=1.0, beta=0.0, tick_on_capture=True).trace(4)
    assert timed[-1]["nodes"]["face"]["node"]["capture_ticks"] > 200
    for key in ("noise", "jitter", "lag_ms"):
        assert settled(timed, key) == pytest.approx(settled(noisy, key), rel=0.05)


def test_the_measure_is_only_of_clean_frames_of_the_sampled_sessions() -> None:
    idle = NodeHarness(Blender, sessions=["a"])  # no capture: idle motion, nothing to measure
    idle.advance(3.0)
    s = idle.node.stats()["smoothing"]
    assert s["windows"] >= 2 and s["rest"] == 0 and s["jitter"] is None and s["lag_ms"] is None
    assert Replay(smoothing_sessions=0).trace(2)[-1]["nodes"]["face"]["node"]["smoothing"]["windows"] == 0

    one = Replay(noise=0.01, smoothing_sessions=1)
    two = Replay(noise=0.01, smoothing_sessions=1, sessions=("a", "b"))
    one.seconds(3.0)
    two.seconds(3.0)
    assert one.smoothing["rest"] == two.smoothing["rest"] > 0  # only the first session's frames count

    talking = Replay(noise=0.01)
    mouth = np.zeros((1, 52), np.float32)
    for _ in range(120):  # speech: the visemes own the mouth after the smoother, so nothing is clean
        talking.h.feed("visemes", Message(ARKIT, {"speaking": [True]}, {"weights": mouth}, session=["a"]))
        talking.frame()
    assert talking.smoothing["rest"] == 0 and talking.smoothing["motion"] == 0


@pytest.mark.skipif(_filters is None, reason="nodes.face._filters is not built (run make)")
def test_the_compiled_and_reference_blenders_measure_the_same() -> None:
    out = []
    for compiled in (True, False):
        with path(compiled):
            r = Replay(noise=0.01, seed=3, sessions=("a", "b", "c"), emotion="happy")
        assert (r.h.node.core is not None) == compiled
        out.append(r.trace(3))
    assert out[0] == out[1]
    assert out[0][-1]["nodes"]["face"]["node"]["smoothing"]["jitter"] is not None


@contextmanager
def path(compiled: bool) -> Iterator[None]:
    """Blenders made inside use the compiled passes, or the numpy reference."""
    saved = [m._c for m in (blender_module, one_euro_module)]
    for m in (blender_module, one_euro_module):
        m._c = _filters if compiled else None
    try:
        yield
    finally:
        blender_module._c, one_euro_module._c = saved


def test_the_meter_survives_gaps_and_values_that_are_not_numbers() -> None:
    m = SmoothingMeter(2, 8, window_s=0.5)
    t = 0.0
    for i in range(200):
        t += DT if i != 100 else 1.0  # a gap: the history starts again
        x = np.full((2, 8), 0.5 + 0.001 * (i % 2))
        if i == 50:
            x[0, 0] = np.nan
        if i == 60:
            x[1, 1] = np.inf
        m.observe(np.array([0, 1]), t, x, x.copy(), np.array([True, i % 7 != 0]))
    s = m.stats(t)
    assert s["windows"] >= 5 and s["jitter"] is not None and np.isfinite(s["jitter"])


# --- the wishes, on recorded traces ----------------------------------------------------------------
NOISY = dict(noise=0.01, min_cutoff=1.5, beta=2.0)  # the blender's defaults on a noisy phone
CLEAN = dict(noise=0.0, min_cutoff=0.3, beta=0.4)  # smooth, a little lag


@pytest.fixture(scope="module")
def traces() -> dict[str, list[dict[str, Any]]]:
    return {"noisy": Replay(**NOISY).trace(4), "clean": Replay(**CLEAN).trace(4),
            "laggy": Replay(min_cutoff=1.0, beta=0.0).trace(4), "eager": Replay(min_cutoff=1.0, beta=3.0).trace(4)}


def test_too_much_jitter_lowers_min_cutoff_and_room_to_spare_raises_it_slowly(traces) -> None:
    a = agent(jitter=0.001)
    for snap in traces["noisy"]:
        w = a.wish(view(snap), 1.5)
        assert w is not None and 0.75 <= w.value < 1.5, w  # down, by at most half at once
        assert w.reason.startswith("jitter at rest") and "over 0.001" in w.reason
        assert w.inputs["jitter"] > 0.001 and w.inputs["noise"] > 0.01 and w.age_s < 1.0
    for snap in traces["clean"]:
        w = a.wish(view(snap), 0.3)
        assert w is not None and 0.3 < w.value <= 0.3 * 1.25 and "room to spare" in w.reason
    jitter = traces["clean"][-1]["nodes"]["face"]["node"]["smoothing"]["jitter"]
    w = agent(jitter=jitter * 1.5).wish(view(traces["clean"][-1]), 0.3)  # within room x target .. target
    assert w is not None and w.value == 0.3 and "within" in w.reason


def test_lag_raises_beta_even_from_zero_and_no_lag_lowers_it_slowly(traces) -> None:
    a = agent("beta", lag_ms=30.0)
    for snap in traces["laggy"]:
        w = a.wish(view(snap), 0.0)
        assert w is not None and w.value > 0.0 and "over 30 ms" in w.reason and w.inputs["lag_ms"] > 50
    for snap in traces["eager"]:
        w = a.wish(view(snap), 3.0)
        assert w is not None and (3.0 + 0.2) / 1.25 - 0.2 <= w.value < 3.0 and "room to spare" in w.reason
    lag = traces["clean"][-1]["nodes"]["face"]["node"]["smoothing"]["lag_ms"]
    w = agent("beta", lag_ms=lag * 1.5).wish(view(traces["clean"][-1]), 0.4)
    assert w is not None and w.value == 0.4 and "within" in w.reason


def test_no_measure_no_wish(traces) -> None:
    snap = traces["noisy"][-1]
    assert agent().wish(view({"nodes": {}}), 1.0) is None  # no such node
    assert agent(stats="other").wish(view(snap), 1.0) is None  # not a blender's stats
    quiet = {"nodes": {"face": {"node": {"smoothing": {**snap["nodes"]["face"]["node"]["smoothing"],
                                                       "jitter": None, "lag_ms": None}}}}}
    assert agent().wish(view(quiet), 1.0) is None and agent("beta").wish(view(quiet), 1.0) is None
    fresh = {"nodes": {"face": {"node": NodeHarness(Blender).node.stats()}}}  # no window closed yet
    assert agent().wish(view(fresh), 1.0) is None


# --- the graph's agents: section --------------------------------------------------------------------
GRAPH = f"""
name: anim
nodes:
  take: {{type: arkit_replay, params: {{path: "{TAKE_PATH}", loop: true}}}}
  noise: {{type: "tests.noise_node:AddNoise", params: {{sigma: 0.01}}}}
  face:
    type: blender
    params: {{rate: 60, min_cutoff: 3.0, beta: 0.0, breath_amount: 0, gaze_amount: 0, micro_per_min: 0}}
  sink: fakesink
links: [take -> noise -> face.capture, face -> sink]
agents:
  still: {{type: animation, node: face, min: 0.1, max: 4, params: {{jitter: 0.002}}}}
  moving: {{type: animation, node: face, param: beta, min: 0, max: 3, params: {{lag_ms: 30}}}}
"""


def test_the_agent_drives_min_cutoff_or_beta_each_cured_at_once() -> None:
    g = parse_graph(GRAPH)
    types = validate_graph(g)
    fast = {name: guards_for(s, types[s.node].params[s.param], AnimationAgent).fast for name, s in g.agents.items()}
    assert fast == {"still": DOWN, "moving": UP} and g.agents["still"].param == "min_cutoff"
    bad = parse_graph(GRAPH.replace("param: beta", "param: d_cutoff"))
    with pytest.raises(GraphError, match=r"agent 'moving' \(animation\): drives 'min_cutoff' or 'beta', not 'd_cutoff'"):
        validate_graph(bad)


# --- closed loop, simulated time: the agents with their guards on the real blender -------------------
def closed_loop(replay: Replay, seconds: int, log: list[tuple[float, str, float, float]], **targets: Any) -> None:
    """Both agents, as the host runs them (a look a second, the guards of the graph above), on ``replay``."""
    g = parse_graph(GRAPH.replace("jitter: 0.002", f"jitter: {targets.get('jitter', 0.002)}"))
    types = validate_graph(g)
    agents = [(AnimationAgent(n, s.node, s.param, s.params), guards_for(s, types[s.node].params[s.param], AnimationAgent),
               GuardState()) for n, s in g.agents.items()]
    before = None
    for _ in range(seconds):
        replay.seconds(1.0)
        snap = replay.snapshot()
        v = StatsView(snap, before, 1.0, at=replay.h.now)
        before = snap
        for a, guards, st in agents:
            current = float(getattr(replay.h.node.p, a.param))
            w = a.wish(v, current)
            d = decide(guards, st, replay.h.now, current, None if w is None else w.value,
                       None if w is None else w.age_s, "" if w is None else w.reason)
            if d.value is not None:
                replay.h.set_params(**{a.param: d.value})
                log.append((replay.h.now, a.param, current, d.value))


def changes(log: list[tuple[float, str, float, float]], param: str, start: float, end: float) -> int:
    return sum(1 for t, p, *_ in log if p == param and start <= t < end)


def test_closed_loop_cuts_jitter_and_lag_then_holds_and_gives_smoothness_back_slowly() -> None:
    replay = Replay(noise=0.01, min_cutoff=3.0, beta=0.0)
    log: list[tuple[float, str, float, float]] = []
    closed_loop(replay, 240, log)
    first = {p: next(e for e in log if e[1] == p) for p in ("min_cutoff", "beta")}
    assert first["min_cutoff"][3] < 3.0 and first["min_cutoff"][0] <= 3.0  # jitter: down, at once
    assert first["beta"][3] > 0.0 and first["beta"][0] <= 3.0  # lag: up, at once
    assert all(0.1 <= new <= 4 for _, p, _, new in log if p == "min_cutoff")
    assert all(0.0 <= new <= 3 for _, p, _, new in log if p == "beta")
    s = replay.smoothing
    assert s["jitter"] <= 0.002 and s["lag_ms"] <= 30
    for minute in range(1, 4):  # steady: fewer than 2 changes a minute, each
        for p in ("min_cutoff", "beta"):
            assert changes(log, p, 60 * minute, 60 * minute + 60) < 2, log
    # the phone gets better: room to spare, so min_cutoff rises, slowly (by at most 1.25x a change)
    replay.noise = 0.0
    start, mc = replay.h.now, replay.h.node.p.min_cutoff
    closed_loop(replay, 60, log)
    ups = [(t, old, new) for t, p, old, new in log if p == "min_cutoff" and t > start]
    assert ups and all(new > old and new <= old * 1.25 + 1e-9 for _, old, new in ups)
    assert replay.h.node.p.min_cutoff > mc and np.all(np.diff([t for t, *_ in ups]) >= 5.0)  # the dwell


# --- live, in a real graph -----------------------------------------------------------------------
def test_live_noisy_capture_cuts_min_cutoff_lag_raises_beta_then_both_hold() -> None:
    with Runner(parse_graph(GRAPH), control=None) as r:
        params = r.graph.nodes["face"].params

        def smoothing() -> dict[str, Any]:
            return r.stats()["nodes"]["face"]["node"]["smoothing"]

        wait_until(lambda: params["min_cutoff"] < 3.0 and params["beta"] > 0.0, timeout=30, interval=0.25,
                   what=lambda: f"the agents to move: {r.stats()['agents']}")
        actions = [m for m in r.bus.messages() if m.get("type") == "AGENT"]
        still = next(m for m in actions if m["agent"] == "still")
        moving = next(m for m in actions if m["agent"] == "moving")
        assert still["param"] == "min_cutoff" and still["new"] < still["old"] and "jitter at rest" in still["reason"]
        assert moving["param"] == "beta" and moving["new"] > moving["old"] and "lag in motion" in moving["reason"]

        def in_targets() -> bool:
            s = smoothing()
            return s["jitter"] is not None and s["jitter"] <= 0.002 and s["lag_ms"] is not None and s["lag_ms"] <= 30
        wait_until(in_targets, timeout=40, interval=0.25, what=lambda: f"jitter <= 0.002 and lag <= 30 ms: {smoothing()}")
        assert 0.1 <= params["min_cutoff"] < 3.0 and 0.0 < params["beta"] <= 3.0

        # steady conditions (fewer than 2 changes a minute): over the next 20 s, at most one change each
        counts = {n: a["actions"] for n, a in r.stats()["agents"].items()}
        windows = smoothing()["windows"]
        wait_until(lambda: smoothing()["windows"] >= windows + 20, timeout=60, interval=0.5,
                   what="20 more seconds of measurements")
        after = r.stats()["agents"]
        assert all(after[n]["actions"] - counts[n] <= 1 for n in counts), after
        assert after["still"]["errors"] == after["moving"]["errors"] == 0
        assert after["moving"]["fast"] == "up" and after["still"]["fast"] == "down"
