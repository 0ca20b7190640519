"""blender: merges capture, visemes and emotion into one ARKit frame per session, on a timer.

Why a timer rather than reacting to input: a session's face must keep living (blinks, breath,
gaze) when its capture stops, and emotion transitions run at the output rate whatever
arrives. Layers, per session slot, all vectorised over slots:

1. base: live capture, cross-faded (``capture_fade_ms``) with procedural idle motion when no
   capture is active (capture says ``active: false`` or is silent for ``capture_timeout_ms``):
   blinks at gamma-distributed intervals, breathing, small gaze saccades.
2. mouth: while visemes say ``speaking``, the viseme table's mouth/jaw channels come from the
   visemes instead of the base, cross-faded over ``speech_fade_ms``.
3. emotion and micro-expressions: added on top; on channels visemes articulate they fade out
   while speaking, so an emotion never holds the lips open through a /p/.
4. a One Euro filter smooths the result, all but the visemes' mouth, which is mixed in after it:
   visemes are smooth by construction, and the filter's lag (up to 1 / (2 pi min_cutoff), 106 ms)
   would put the mouth behind the voice. So the latency the blender declares is per input pad:
   the smoother's lag for capture, half a frame for visemes (``input_latency_ns``).

How well the smoother does is measured as it runs, per second, on the frames of the first
``smoothing_sessions`` sessions: jitter at rest, lag in fast motion and the capture's own noise
(``nodes.face.SmoothingMeter``, stats ``smoothing``), from which the ``animation`` agent
(``nodes.agents.animation``) tunes ``min_cutoff`` and ``beta`` as Casiez's procedure does.

All internal time is simulated seconds advanced by one period per tick, and random numbers
come from one seeded generator, so the same inputs give the same frames. Output pts follow a
frame clock that starts at the node's ``now_ns`` and counts frame periods, jumping forward
only when lost timer ticks leave it ``max_lag_ms`` behind (``nodes.face.FrameClockNode``, shared with ``viseme``).

With ``tick_on_capture``, frames follow the capture instead: a session's frame is made as soon
as its capture arrives, on the phase of its own device, so a capture packet never waits for a
shared tick (phones are not in step with each other, and a shared 60 Hz tick alone would add up
to 16.7 ms). Each output batch then holds the sessions whose capture just came; the timer makes
the frames of the sessions without live capture. Internal time follows the node's ``now_ns`` and
each session advances by the time since its own last frame.

Cost: with ``nodes/face/_filters.pyx`` built, a batch is two compiled passes over its rows
(``BlendCore``: the capture in, every layer above and the One Euro filter in one pass, the
state rows shared with the numpy code) plus a fixed cost of a few microseconds; the random
schedules (blinks, saccades, micro-expressions) stay in numpy, the same generator calls in the
same order. ``frame`` and ``_capture`` are the numpy reference, run when the extension is not
built (or AVATAR_PURE_PYTHON=1) and for the odd batch the passes do not take (a session twice
in one batch, weights not float32); both give the same bits (tests/test_face_compiled.py).
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from runtime import Message, Pad, Param, ParamError
from runtime.sessions import SessionSlots, batch_ids, fit
from runtime.states import READY

from .compiled import load
from .face import (
    FRAME_CLOCK_PARAMS,
    TABLE_RULE,
    FrameClockNode,
    OneEuro,
    SmoothingMeter,
    approach,
    arkit_names,
    arkit_pose_names,
    batch_slots,
    blink_curve,
    load_mapping,
    load_viseme_tables,
    smoothstep,
    weight_table,
)

_NAMES = arkit_names()
_COL = {n: i for i, n in enumerate(_NAMES)}
_POSE = {n: i for i, n in enumerate(arkit_pose_names())}
N_W, N_P = len(_NAMES), len(_POSE)
_EYE_FULL_RAD = 0.6  # gaze angle at which an eyeLook* shape reaches 1
_SACCADE_TAU_S = 0.02
_BLINK_SHAPE_K = 6.0  # gamma shape of blink intervals: regular but not metronomic
_NEVER = -1e18
_ARKIT = "arkit/blendshapes"
# the fused compiled passes (capture, idle, emotion, micro, clamps, One Euro in one pass over the
# rows), or None: the numpy reference below (``frame``)
_c = load("nodes.face._filters")

# per-slot state: name -> (columns, dtype, value of a fresh slot)
_STATE: dict[str, tuple[int, Any, Any]] = {
    "seen": (0, float, 0.0), "pinned": (0, bool, False),
    "cap_w": (N_W, float, 0.0), "cap_pose": (N_P, float, 0.0), "cap_t": (0, float, _NEVER),
    "cap_flag": (0, bool, False), "cap_mix": (0, float, 0.0),
    "cap_arrival": (0, np.int64, 0), "cap_fresh": (0, bool, False), "out_t": (0, float, _NEVER),
    "vis_w": (N_W, float, 0.0), "vis_t": (0, float, _NEVER), "vis_flag": (0, bool, False),
    "speak_mix": (0, float, 0.0),
    "emo_from": (N_W, float, 0.0), "emo_to": (N_W, float, 0.0), "emo_t0": (0, float, 0.0),
    "emo_dur": (0, float, 0.0),
    "blink_next": (0, float, 0.0), "blink_t0": (0, float, _NEVER), "blink_len": (0, float, 0.13),
    "breath_hz": (0, float, 0.25), "breath_phase": (0, float, 0.0),
    "gaze": (2, float, 0.0), "gaze_goal": (2, float, 0.0), "gaze_next": (0, float, 0.0),
    "micro_next": (0, float, 0.0), "micro_t0": (0, float, _NEVER), "micro_len": (0, float, 0.3),
    "micro_amp": (0, float, 0.0), "micro_idx": (0, int, 0),
}


class Blender(FrameClockNode):
    """Merges capture, visemes and emotion per session into ARKit frames at a fixed rate, with idle motion."""

    interfaces = frozenset({"emotion"})  # params emotion, intensity, transition_ms: set by POST /emotion
    inputs = {
        "capture": Pad("arkit/blendshapes", "live capture; data {'active': [bool]*S} optional", required=False),
        "visemes": Pad("arkit/blendshapes", "viseme mouth shapes; data {'speaking': [bool]*S}", required=False),
    }
    outputs = {"out": Pad("arkit/blendshapes", "one frame per known session, with pose and "
                          "data {'active', 'speaking'}")}
    params = {
        **FRAME_CLOCK_PARAMS,
        "emotion": Param(str, "neutral", "emotion preset of every session without its own (see emotion_table)"),
        "intensity": Param(float, 1.0, "strength of that emotion", min=0.0, max=1.0),
        "emotions": Param(dict, {}, "per-session emotion: {session: [emotion, intensity]}"),
        "transition_ms": Param(float, 400.0, "eased transition time when an emotion changes", min=0.0, max=60000.0),
        "emotion_table": Param(str, "mappings/emotions.yaml", f"emotion presets and micro-expressions ({TABLE_RULE})"),
        "viseme_table": Param(str, "mappings/viseme_arkit.yaml",
                              f"which channels visemes own and articulate ({TABLE_RULE})"),
        "sessions": Param(list, [], "sessions always animated, even before any input names them"),
        "session_timeout_s": Param(float, 60.0, "forget a session with no input for this long", min=0.1),
        "capture_timeout_ms": Param(float, 500.0, "capture counts as gone after this long without a frame", min=1.0),
        "capture_fade_ms": Param(float, 300.0, "cross-fade between capture and idle motion", min=0.0),
        "viseme_timeout_ms": Param(float, 250.0, "speech counts as over after this long without viseme frames",
                                   min=1.0),
        "speech_fade_ms": Param(float, 100.0, "cross-fade of the mouth between visemes and capture", min=0.0),
        "blink_interval_s": Param(float, 3.5, "mean time between idle blinks", min=0.5, max=60.0),
        "blink_ms": Param(float, 130.0, "mean blink duration", min=40.0, max=1000.0),
        "breath_hz": Param(float, 0.25, "mean breathing rate (each session varies by +-20%)", min=0.01, max=2.0),
        "breath_amount": Param(float, 1.0, "scale of the breathing motion; 0 = off", min=0.0, max=10.0),
        "saccade_min_s": Param(float, 0.5, "shortest gaze fixation", min=0.05),
        "saccade_max_s": Param(float, 3.0, "longest gaze fixation", min=0.05),
        "gaze_amount": Param(float, 1.0, "scale of idle gaze wander; 0 = off", min=0.0, max=5.0),
        "micro_per_min": Param(float, 6.0, "micro-expressions per minute per session; 0 = off", min=0.0, max=600.0),
        "micro_amount": Param(float, 1.0, "scale of micro-expressions", min=0.0, max=5.0),
        "min_cutoff": Param(float, 1.5, "One Euro: cutoff (Hz) when still; lower = smoother", min=0.01,
                            tune=(0.1, 10.0, "log"), per_session=True),
        "beta": Param(float, 2.0, "One Euro: cutoff growth with speed; higher = less lag", min=0.0,
                      tune=(0.01, 20.0, "log"), per_session=True),
        "d_cutoff": Param(float, 2.0, "One Euro: cutoff (Hz) of the speed estimate", min=0.01,
                          tune=(0.2, 10.0, "log"), per_session=True),
        "smoothing_sessions": Param(int, 4, "sessions (the first slots) whose frames measure the smoother: jitter "
                                            "at rest, lag in motion, input noise, per second (stats 'smoothing'); "
                                            "0 = off", min=0, max=64),
        "seed": Param(int, 0, "seed of the random generator (blinks, gaze, micro-expressions)", mutable=READY),
        "tick_on_capture": Param(bool, False, "frames follow the capture: a session's frame is made as soon as its "
                                              "capture arrives (at most one per half period), so it never waits for "
                                              "the next tick; the timer makes the frames of sessions without live "
                                              "capture (none for 1.5 periods). Time then follows the clock"),
    }

    @classmethod
    def latency_ns(cls, params: Mapping[str, Any]) -> int:
        """The One Euro smoother's lag when still: a first-order low-pass at min_cutoff, 1 / (2 pi fc)."""
        return int(round(1e9 / (2.0 * math.pi * float(params["min_cutoff"]))))

    @classmethod
    def input_latency_ns(cls, params: Mapping[str, Any], pad: str) -> int:
        """Capture goes through the smoother; the visemes' mouth is mixed in after it, and a viseme
        frame waits for the next tick: half a period on average (none with tick_on_capture's clock)."""
        if pad == "visemes":
            return int(round(0.5e9 / float(params["rate"])))
        return cls.latency_ns(params)

    def setup(self) -> None:
        self.presets, self.micro, self.mouth, self.articulated = self._load_tables()
        self._check_emotions(self.presets, self.p.emotion, self.p.emotions)
        self.rng = np.random.default_rng(self.p.seed)
        self.t = 0.0
        self.start_clock()
        self.frames = self.capture_ticks = self.ticks = self.rows = 0
        self.t_ns = self.now_ns()  # with tick_on_capture: when self.t was last brought to the clock
        self.slots = SessionSlots()
        for name, (cols, dtype, _) in _STATE.items():
            setattr(self, name, np.zeros((self.slots.capacity, cols) if cols else self.slots.capacity, dtype=dtype))
        self.layout: tuple[np.ndarray, list[str]] | None = None  # live slots and their ids, until one joins or leaves
        self.euro = OneEuro(N_W + N_P, self.p.min_cutoff, self.p.beta, self.p.d_cutoff)
        self.meter = SmoothingMeter(self.p.smoothing_sessions, N_W)
        self.own: dict[str, dict[str, float]] = {}  # sessions with their own One Euro params (session_params)
        self.own_meters: dict[str, SmoothingMeter] = {}  # ... each measured on its own as well
        self._c = _c  # this node's path, fixed at setup
        self.core = _c.BlendCore(_COL, _POSE) if _c is not None else None
        self._bind()
        self._own_params()
        self._pin_params()

    def _bind(self) -> None:
        """Hand the state arrays to the compiled passes again (after they were replaced)."""
        if self.core is not None:
            self.euro.ensure(self.slots.capacity)
            self.core.bind(self)

    def _load_tables(self) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
        """Presets, micro-expressions, mouth channels and articulated channels from the tables.
        Raises ParamError naming the file (FileNotFoundError if there is none): never anything
        else, so a bad table given live is refused and the node keeps the tables it has."""
        where = self.p.emotion_table
        doc = load_mapping(where, "an emotion table (presets, micro_expressions)")
        names, table = weight_table(doc.get("presets") or {}, f"{where}: presets")
        _, micro = weight_table(doc.get("micro_expressions") or {}, f"{where}: micro_expressions")
        load_mapping(self.p.viseme_table, "a viseme table (visemes, channels)")
        try:
            vt = load_viseme_tables("mappings/phoneme_viseme.yaml", self.p.viseme_table)
        except (AttributeError, TypeError, ValueError, KeyError, IndexError) as exc:
            if isinstance(exc, ParamError):
                raise
            raise ParamError(f"{self.p.viseme_table}: not a viseme table: {type(exc).__name__}: {exc}") from None
        return dict(zip(names, table)), micro, vt.channels, (vt.weights > 0).any(axis=0)

    # --- params ------------------------------------------------------------------------------
    def _check_emotions(self, presets: Mapping[str, np.ndarray], emotion: str, emotions: Mapping[str, Any]) -> None:
        known = ", ".join(presets)
        if emotion not in presets:
            raise ParamError(f"unknown emotion '{emotion}'; presets: {known}")
        for sid, value in emotions.items():
            name, level = self._parse_emotion(value)
            if name not in presets:
                raise ParamError(f"emotions['{sid}']: unknown emotion '{name}'; presets: {known}")
            if not 0.0 <= level <= 1.0:
                raise ParamError(f"emotions['{sid}']: intensity must be in 0 .. 1, got {level}")

    @staticmethod
    def _parse_emotion(value: Any) -> tuple[str, float]:
        """``"happy"`` or ``["happy", 0.5]`` -> (name, intensity)."""
        if isinstance(value, str):
            return value, 1.0
        if isinstance(value, (list, tuple)) and len(value) == 2 and isinstance(value[1], (int, float)):
            return str(value[0]), float(value[1])
        raise ParamError(f"an emotion is a name or [name, intensity], got {value!r}")

    def on_params(self, changed: Mapping[str, Any]) -> None:
        try:  # check everything before changing anything
            tables = self._load_tables() if {"emotion_table", "viseme_table"} & set(changed) else None
            self._check_emotions(tables[0] if tables else self.presets, self.p.emotion, self.p.emotions)
        except FileNotFoundError as exc:  # the runtime puts the old values back
            raise ParamError(str(exc)) from exc
        if tables:
            self.presets, self.micro, self.mouth, self.articulated = tables
            self._bind()
        for k in ("min_cutoff", "beta", "d_cutoff"):
            setattr(self.euro, k, float(getattr(self.p, k)))
        if "smoothing_sessions" in changed:
            self.meter = SmoothingMeter(self.p.smoothing_sessions, N_W)
        if "session_params" in changed:
            self._own_params()
        if "rate" in changed:
            self.retime()
        self._pin_params()
        if {"emotion", "intensity", "emotions", "emotion_table"} & set(changed):
            live = self._live()
            self._start_emotion(live, self.p.transition_ms / 1000.0)

    def _own_params(self) -> None:
        """Sessions with their own One Euro params (a canary on one session): their slots' filter
        params, and a smoothing meter of their own, so their jitter and lag are seen apart."""
        was, self.own = self.own, self.session_values()
        for sid in set(was) | set(self.own):
            slot = self.slots.slot_of.get(sid)
            if slot is not None:
                self.euro.own(slot, **self.own.get(sid, {}))
            if sid not in self.own:
                self.own_meters.pop(sid, None)
            elif sid not in was or was[sid] != self.own[sid]:
                self.own_meters[sid] = SmoothingMeter(1, N_W)  # what it measures now is of these params

    def _pin_params(self) -> None:
        """Sessions named in params are animated until the params stop naming them."""
        named = list(dict.fromkeys([str(s) for s in self.p.sessions] + [str(s) for s in self.p.emotions]))
        self.pinned[:] = False
        if named:
            self.pinned[self._lookup(named)] = True

    def _target(self, slot: int) -> np.ndarray:
        own = {str(k): v for k, v in self.p.emotions.items()}.get(self.slots.ids[slot])
        name, level = self._parse_emotion(own) if own is not None else (self.p.emotion, self.p.intensity)
        return self.presets[name] * level

    def _emotion_now(self, slots: np.ndarray) -> np.ndarray:
        dur = self.emo_dur[slots]
        x = np.where(dur > 0, (self.t - self.emo_t0[slots]) / np.maximum(dur, 1e-9), 1.0)
        if x.size and x.min() >= 1.0:  # no transition under way (the usual case)
            return self.emo_to.take(slots, axis=0)
        return self.emo_from[slots] + (self.emo_to[slots] - self.emo_from[slots]) * smoothstep(x)[:, None]

    def _start_emotion(self, slots: np.ndarray, duration_s: float) -> None:
        """Eased transition from the current emotion to each slot's target (a no-op if already there)."""
        if not slots.size:
            return
        targets = np.stack([self._target(int(s)) for s in slots])
        moving = np.abs(targets - self.emo_to[slots]).max(axis=1) > 1e-9
        slots, targets = slots[moving], targets[moving]
        self.emo_from[slots] = self._emotion_now(slots)
        self.emo_to[slots] = targets
        self.emo_t0[slots] = self.t
        self.emo_dur[slots] = duration_s

    # --- sessions ----------------------------------------------------------------------------
    def _lookup(self, sessions: "list[str] | np.ndarray", hint: np.ndarray | None = None, pad: str = "") -> np.ndarray:
        """Slots of these sessions (first-seen ones get a fresh state); marks them seen now. Ids as
        an array are looked up with the sender's rows (``hint``) first (``SessionSlots.lookup_ids``)."""
        slots, new = batch_slots(self.slots, sessions, hint, pad, self._c)
        if new is not None:
            grown = self.cap_w.shape[0] != self.slots.capacity
            if grown:
                cap = self.slots.capacity
                for name in _STATE:
                    setattr(self, name, fit(getattr(self, name), cap))
            if new.any():
                fresh = slots[new]
                for name, (_, _, fill) in _STATE.items():
                    getattr(self, name)[fresh] = fill
                self._init_slots(fresh)
                self.layout = None
            if grown or new.any():
                self._bind()
        self.seen[slots] = self.t
        return slots

    def _init_slots(self, slots: np.ndarray) -> None:
        """New sessions: their own random rhythms, their emotion already in place, a fresh smoother."""
        rng, t, n = self.rng, self.t, len(slots)
        self.blink_next[slots] = t + rng.uniform(0.3, 1.0, n) * self.p.blink_interval_s
        self.breath_hz[slots] = self.p.breath_hz * rng.uniform(0.8, 1.2, n)
        self.breath_phase[slots] = rng.uniform(0, 2 * np.pi, n)
        self.gaze_next[slots] = t + rng.uniform(self.p.saccade_min_s, max(self.p.saccade_min_s, self.p.saccade_max_s), n)
        self.micro_next[slots] = t + self._micro_wait(n)
        if self.p.emotions:
            targets = np.stack([self._target(int(s)) for s in slots])
        else:
            targets = self.presets[self.p.emotion] * self.p.intensity
        self.emo_to[slots] = self.emo_from[slots] = targets
        self.euro.reset(slots)
        if self.own or self.euro.mine:  # a slot given back and taken again: the new session's params
            for slot in slots.tolist():
                sid = str(self.slots.ids[slot])
                if sid in self.own or slot in self.euro.mine:
                    self.euro.own(slot, **self.own.get(sid, {}))
                if sid in self.own_meters:
                    self.own_meters[sid].reset(np.zeros(1, np.intp))
        self.meter.reset(slots)

    def _micro_wait(self, n: int) -> np.ndarray:
        rate = self.p.micro_per_min / 60.0
        return self.rng.exponential(1.0 / rate, n) if rate > 0 else np.full(n, np.inf)

    def _live(self) -> np.ndarray:
        return np.flatnonzero(self.slots.used)

    def _live_layout(self) -> tuple[np.ndarray, list[str]]:
        """Live slots and their session ids (recomputed only after a join or leave)."""
        if self.layout is None:
            live = self._live()
            self.layout = (live, [self.slots.ids[i] for i in live.tolist()])
        return self.layout

    def _expire(self) -> None:
        old = np.flatnonzero(self.slots.used & (self.t - self.seen > self.p.session_timeout_s) & ~self.pinned)
        if len(old):
            self.slots.release(old)
            self.layout = None

    # --- input -------------------------------------------------------------------------------
    def process(self, pad: str, msg: Message) -> None:
        sessions = batch_ids(msg)
        w = msg.arrays.get("weights")
        if w is None or not len(sessions):
            return
        w = np.asarray(w).reshape(len(sessions), -1)[:, :N_W]
        if type(sessions) is list and not isinstance(sessions[0], str):
            sessions = [str(s) for s in sessions]
        slots = self._lookup(sessions, msg.arrays.get("slot"), pad)
        data = msg.data if isinstance(msg.data, dict) else {}
        if pad == "capture":
            if self.core is None or not self._capture_compiled(slots, sessions, w, msg, data):
                self._capture(slots, sessions, w, msg, data)
        else:
            self.vis_w[slots, :w.shape[1]] = w
            speaking = data.get("speaking")
            if speaking is None:  # no flag: speaking when the mouth moves
                speaking = (w[:, self.mouth[:w.shape[1]]] > 0.02).any(axis=1)
            self.vis_flag[slots] = np.asarray(speaking, dtype=bool)
            self.vis_t[slots] = self.t

    def _capture(self, slots: np.ndarray, sessions: list[str], w: np.ndarray, msg: Message, data: dict) -> None:
        """A capture batch into the slots (the reference; ``_capture_compiled`` is the same in one pass)."""
        self.cap_w[slots, :w.shape[1]] = w
        pose = msg.arrays.get("pose")
        if pose is not None:
            pose = np.asarray(pose).reshape(len(sessions), -1)[:, :N_P]
            if pose.shape[1] == N_P:
                self.cap_pose[slots] = pose
            else:
                self.cap_pose[slots] = 0.0
                self.cap_pose[slots, :pose.shape[1]] = pose
        else:
            self.cap_pose[slots] = 0.0
        active = data.get("active")
        active = np.ones(len(sessions), dtype=bool) if active is None else np.asarray(active, dtype=bool)
        if self.p.tick_on_capture:
            self._follow_clock()
        self.cap_flag[slots] = active
        self.cap_t[slots] = self.t
        arrival = msg.arrays.get("arrival_ns")
        if arrival is not None and arrival.shape == (len(sessions),):
            self.cap_arrival[slots] = arrival
            self.cap_fresh[slots] |= active
        if self.p.tick_on_capture and self.timer is not None:
            self._capture_frames(slots[active])

    def _capture_compiled(self, slots: np.ndarray, sessions: list[str], w: np.ndarray, msg: Message,
                          data: dict) -> bool:
        """``_capture`` in one compiled pass, for the usual batch (float32 weights (S, 52) and pose
        (S, 9), int64 arrival times, a list of bools); False for anything else (nothing was changed:
        the reference runs)."""
        n = len(sessions)
        if w.dtype != np.float32 or w.shape[1] != N_W or not w.flags.c_contiguous:
            return False
        pose = msg.arrays.get("pose")
        if pose is not None and (pose.dtype != np.float32 or pose.shape != (n, N_P) or not pose.flags.c_contiguous):
            return False
        active = data.get("active")
        if active is not None and (type(active) is not list or len(active) != n):
            return False
        arrival = msg.arrays.get("arrival_ns")
        if arrival is not None and arrival.shape != (n,):
            arrival = None  # the reference ignores it too
        if arrival is not None and (arrival.dtype != np.int64 or not arrival.flags.c_contiguous):
            return False
        follow = self.p.tick_on_capture
        if follow:
            self._follow_clock()  # (idempotent: the reference may call it again)
        made = self.core.ingest(slots, w, pose, active, arrival, self.t, follow and self.timer is not None,
                                0.5 / self.p.rate)
        if made < 0:
            return False
        if made:
            self.capture_ticks += 1
            self._emit_frames(self.core.sel_array[:made], self.t_ns, sessions if made == n else None)
        return True

    # --- output ------------------------------------------------------------------------------
    def on_play(self) -> None:
        self.t_ns = self.now_ns()  # a pause is not time that passed for the faces
        super().on_play()

    def on_eos(self) -> None:
        """The inputs ended (a file played out, a drain): show what arrived since the last tick,
        then let speech and capture fade out as they would live, so the last word is not cut."""
        fade_ms = max(self.p.speech_fade_ms, self.p.capture_fade_ms)
        for _ in range(1 + int(np.ceil(fade_ms / 1000.0 * self.p.rate))):
            if self.p.tick_on_capture:  # no time passes here: step it, one period per frame
                self.t += 1.0 / self.p.rate
                self.t_ns += self.period_ns
                live, ids = self._live_layout()
                self._emit_frames(live, self.t_ns, ids)
            else:
                self.tick()

    def tick(self) -> None:
        """Timer: advance time one period and emit one frame for every known session (with
        ``tick_on_capture``: for the sessions whose frames the capture is not making)."""
        self.ticks += 1
        if self.p.tick_on_capture:
            pts = self._follow_clock()
        else:
            self.t += 1.0 / self.p.rate
            self.step_clock()
            pts = self.clock_ns
        if self.ticks % max(1, int(self.p.rate)) == 0:
            self._expire()
        live, ids = self._live_layout()
        if self.p.tick_on_capture:  # leave out the sessions whose frames the capture makes
            late, t = 1.5 / self.p.rate, self.t
            driven = self.cap_flag[live] & (t - self.cap_t[live] <= late) & (t - self.out_t[live] < late)
            live, ids = live[~driven], None
        self._emit_frames(live, pts, ids)

    def _follow_clock(self) -> int:
        """``tick_on_capture``: bring internal time to the clock."""
        now = self.now_ns()
        if now > self.t_ns:
            self.t += (now - self.t_ns) / 1e9
            self.t_ns = now
        return now

    def _capture_frames(self, slots: np.ndarray) -> None:
        """Frames now for the sessions whose capture just came (but not twice in half a period)."""
        slots = slots[self.t - self.out_t[slots] >= 0.5 / self.p.rate]
        if slots.size:
            self.capture_ticks += 1
            self._emit_frames(slots, self.t_ns)

    def _emit_frames(self, slots: np.ndarray, pts_ns: int, ids: list[str] | None = None) -> None:
        """One batch: a frame for each of these slots, each advanced by the time since its last one."""
        if not slots.size:
            return
        if self.core is not None and self._emit_compiled(slots, pts_ns, ids):
            return
        period = 1.0 / self.p.rate
        if self.p.tick_on_capture:
            last = self.out_t[slots]
            dt = np.where(last == _NEVER, period, np.clip(self.t - last, 1e-3, 4 * period))
        else:
            dt = period
        self.out_t[slots] = self.t
        weights, pose, active, speaking = self.frame(slots, dt)
        # when the capture packet each row shows arrived, for rows showing it for the first time (else 0)
        arrival = np.where(self.cap_fresh[slots], self.cap_arrival[slots], 0)
        self.cap_fresh[slots] = False
        self._send(slots, pts_ns, ids, weights.astype(np.float32), pose.astype(np.float32), arrival,
                   active.tolist(), speaking.tolist())

    def _send(self, slots: np.ndarray, pts_ns: int, ids: list[str] | None, weights: np.ndarray, pose: np.ndarray,
              arrival: np.ndarray, active: list[bool], speaking: list[bool]) -> None:
        if (self.meter.k and slots.size and slots.min() < self.meter.k) or self.own_meters:
            self._measure(slots, weights)
        self.frames += 1
        self.rows += len(slots)
        # the ids as an array (Message.session_ids), and our rows for the next node's look-up
        self.emit("out", Message(_ARKIT, {"active": active, "speaking": speaking},
                                 {"weights": weights, "pose": pose, "arrival_ns": arrival,
                                  "slot": slots.astype(np.int32)}, pts_ns=pts_ns, session=self.slots.keys[slots]))

    def _measure(self, slots: np.ndarray, weights: np.ndarray) -> None:
        """The sampled sessions' frames to the smoothing meter. A row is clean (the smoother's input
        is then the capture plus the emotion in place, clipped) when the capture is fully in and
        nothing else moves it: not speaking, no emotion transition nor micro-expression under way.
        The same state arrays on both paths, so compiled and reference measure the same."""
        sampled = slots < self.meter.k
        own = [(meter, slot) for sid, meter in self.own_meters.items()  # sessions with their own params: apart too
               if (slot := self.slots.slot_of.get(sid)) is not None]
        for _, slot in own:
            sampled |= slots == slot
        s, t = slots[sampled], self.t
        clean = ((self.cap_mix[s] >= 1.0) & (self.speak_mix[s] <= 0.0) & (t - self.micro_t0[s] >= self.micro_len[s])
                 & ((self.emo_dur[s] <= 0.0) | (t - self.emo_t0[s] >= self.emo_dur[s])))
        x = np.clip(self.cap_w[s] + self.emo_to[s], 0.0, 1.0)
        y = weights[sampled]
        if self.meter.k:
            self.meter.observe(s, t, x, y, clean)
        for meter, slot in own:
            row = np.flatnonzero(s == slot)
            if row.size:
                meter.observe(np.zeros(1, np.intp), t, x[row[:1]], y[row[:1]], clean[row[:1]])

    def _emit_compiled(self, slots: np.ndarray, pts_ns: int, ids: list[str] | None) -> bool:
        """``_emit_frames`` with the compiled passes: ``prepare`` (steps, flags, cross-fades), the
        random schedules here (the same generator calls, in the same order, as the reference), then
        ``blend`` (every layer and the One Euro filter, row by row). False if a slot is in the batch
        twice (nothing was changed: the reference runs)."""
        core, p, t, n, c = self.core, self.p, self.t, len(slots), self._c
        flags = core.prepare(slots, t, 1.0 / p.rate, p.tick_on_capture, p.capture_timeout_ms / 1000.0,
                             p.viseme_timeout_ms / 1000.0, p.capture_fade_ms, p.speech_fade_ms)
        if flags < 0:
            return False
        gaze_step = None
        if flags & c.NEED_IDLE:  # as frame() -> _idle()
            if flags & c.BLINK_DUE:
                self._schedule_blinks(slots)
            if flags & c.GAZE_DUE:
                self._schedule_gaze(slots)
            gaze_step = 1.0 - np.exp(-core.dt_array[:n] / _SACCADE_TAU_S)
        if flags & c.MICRO_DUE and len(self.micro):  # as _micro()
            self._schedule_micro(slots)
        weights, pose, arrival = np.empty((n, N_W), np.float32), np.empty((n, N_P), np.float32), np.empty(n, np.int64)
        active, speaking = core.blend(slots, t, flags, p.breath_amount, gaze_step, weights, pose, arrival)
        self._send(slots, pts_ns, ids, weights, pose, arrival, active, speaking)
        return True

    def frame(self, s: np.ndarray, dt: float | np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Weights (L, 52), pose (L, 9), capture-active and speaking flags for slots ``s`` at time t;
        ``dt``: the step since their last frame, one for all or one per slot."""
        t, p = self.t, self.p
        col = dt[:, None] if isinstance(dt, np.ndarray) else dt
        active = self.cap_flag[s] & (t - self.cap_t[s] <= p.capture_timeout_ms / 1000.0)
        speaking = self.vis_flag[s] & (t - self.vis_t[s] <= p.viseme_timeout_ms / 1000.0)
        self.cap_mix[s] = approach(self.cap_mix[s], active, dt, p.capture_fade_ms)
        self.speak_mix[s] = approach(self.speak_mix[s], speaking, dt, p.speech_fade_ms)
        cap, spk = smoothstep(self.cap_mix[s])[:, None], smoothstep(self.speak_mix[s])[:, None]

        if len(s) and cap.min() >= 1.0:  # every row fully on capture (the usual batch): idle motion would weigh 0
            w, pose = self.cap_w.take(s, axis=0), self.cap_pose.take(s, axis=0)
        else:
            idle_w, idle_pose = self._idle(s, col)
            w = cap * self.cap_w[s] + (1 - cap) * idle_w
            pose = cap * self.cap_pose[s] + (1 - cap) * idle_pose
        expressive = self._emotion_now(s)
        expressive += self._micro(s)
        talking = bool(len(s) and spk.max() > 0.0)
        if talking:
            expressive *= 1.0 - spk * self.articulated[None, :]
        w += expressive

        x = np.empty((len(s), N_W + N_P))
        np.clip(w, 0.0, 1.0, out=x[:, :N_W])
        x[:, N_W:] = pose
        out = self.euro(x, col, s)
        w = out[:, :N_W]
        if talking:  # after the smoother: visemes are smooth already, and its lag would put the mouth behind the voice
            m = self.mouth
            w[:, m] += spk * (self.vis_w[s][:, m] - w[:, m])
        return np.clip(w, 0.0, 1.0), out[:, N_W:], active, speaking

    def _idle(self, s: np.ndarray, dt: float | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Blinks, breathing and gaze saccades for slots ``s`` (advances their schedules)."""
        t, p = self.t, self.p
        w, pose = np.zeros((len(s), N_W)), np.zeros((len(s), N_P))
        self._schedule_blinks(s)
        lid = blink_curve((t - self.blink_t0[s]) / self.blink_len[s])
        w[:, _COL["eyeBlinkLeft"]] = w[:, _COL["eyeBlinkRight"]] = lid
        # breathing: a slow sinusoid on jaw, nostrils, brows and head pitch
        b = np.sin(2 * np.pi * self.breath_hz[s] * t + self.breath_phase[s])
        up = p.breath_amount * (0.5 + 0.5 * b)
        w[:, _COL["jawOpen"]] += 0.015 * up
        w[:, _COL["noseSneerLeft"]] += 0.02 * up
        w[:, _COL["noseSneerRight"]] += 0.02 * up
        w[:, _COL["browInnerUp"]] += 0.012 * up
        pose[:, _POSE["headPitch"]] = 0.01 * p.breath_amount * b
        self._schedule_gaze(s)
        self.gaze[s] += (self.gaze_goal[s] - self.gaze[s]) * (1.0 - np.exp(-dt / _SACCADE_TAU_S))
        yaw, pitch = self.gaze[s, 0], self.gaze[s, 1]
        left, right = np.clip(yaw, 0, None) / _EYE_FULL_RAD, np.clip(-yaw, 0, None) / _EYE_FULL_RAD
        up_, down = np.clip(pitch, 0, None) / _EYE_FULL_RAD, np.clip(-pitch, 0, None) / _EYE_FULL_RAD
        for name, v in (("eyeLookOutLeft", left), ("eyeLookInRight", left), ("eyeLookInLeft", right),
                        ("eyeLookOutRight", right), ("eyeLookUpLeft", up_), ("eyeLookUpRight", up_),
                        ("eyeLookDownLeft", down), ("eyeLookDownRight", down)):
            w[:, _COL[name]] += v
        for eye in ("left", "right"):
            pose[:, _POSE[f"{eye}EyeYaw"]] = yaw
            pose[:, _POSE[f"{eye}EyePitch"]] = pitch
        return np.clip(w, 0.0, 1.0), pose

    def _schedule_blinks(self, s: np.ndarray) -> None:
        """Blinks due among slots ``s``: gamma-distributed intervals, from the end of the last blink."""
        t, p, rng = self.t, self.p, self.rng
        due = s[self.blink_next[s] <= t]
        if due.size:
            self.blink_t0[due] = t
            self.blink_len[due] = p.blink_ms / 1000.0 * rng.uniform(0.8, 1.15, due.size)
            gaps = rng.gamma(_BLINK_SHAPE_K, p.blink_interval_s / _BLINK_SHAPE_K, due.size)
            self.blink_next[due] = t + self.blink_len[due] + np.maximum(gaps, 0.6)

    def _schedule_gaze(self, s: np.ndarray) -> None:
        """Gaze: a new small fixation target every saccade_min_s .. saccade_max_s, reached quickly."""
        t, p, rng = self.t, self.p, self.rng
        due = s[self.gaze_next[s] <= t]
        if due.size:
            goal = rng.normal(0.0, [0.08, 0.04], (due.size, 2)) * p.gaze_amount
            self.gaze_goal[due] = np.clip(goal, [-0.25, -0.12], [0.25, 0.12])
            self.gaze_next[due] = t + rng.uniform(p.saccade_min_s, max(p.saccade_min_s, p.saccade_max_s), due.size)

    def _schedule_micro(self, s: np.ndarray) -> None:
        """Micro-expressions due among slots ``s``: which, how strong, how long, and the next one."""
        t = self.t
        due = s[self.micro_next[s] <= t]
        if due.size:
            self.micro_idx[due] = self.rng.integers(0, len(self.micro), due.size)
            self.micro_amp[due] = self.rng.uniform(0.5, 1.0, due.size) * self.p.micro_amount
            self.micro_len[due] = self.rng.uniform(0.25, 0.6, due.size)
            self.micro_t0[due] = t
            self.micro_next[due] = t + self.micro_len[due] + self._micro_wait(due.size)

    def _micro(self, s: np.ndarray) -> np.ndarray:
        """Brief, small random activations (Poisson-timed), one at a time per session."""
        t, out = self.t, np.zeros((len(s), N_W))
        if not len(self.micro):
            return out
        self._schedule_micro(s)
        phase = np.clip((t - self.micro_t0[s]) / self.micro_len[s], 0.0, 1.0)
        bump = np.sin(np.pi * phase) ** 2 * self.micro_amp[s]
        return self.micro[self.micro_idx[s]] * bump[:, None]

    def stats(self) -> dict:
        return {"frames": self.frames, "rows": self.rows, "sessions": len(self.slots),
                "capture_ticks": self.capture_ticks, "smoothing": self.meter.stats(self.t),
                **({"smoothing_by_session": {sid: {**m.stats(self.t), "params": self.own[sid]}
                                             for sid, m in self.own_meters.items()}} if self.own_meters else {})}

