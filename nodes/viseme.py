"""viseme: ARPAbet phoneme timelines -> co-articulated ARKit mouth shapes, one frame per tick.

Co-articulation follows Cohen & Massaro (1993): every phoneme is a segment whose viseme has a
*dominance* that ramps in ``lead_ms`` before the phoneme starts, is full while it sounds, and
is released over ``release_ms`` after it ends (raised-cosine or exponential ramps). The frame
is the dominance-weighted average of the overlapping visemes' key poses, with silence filling
in where the summed dominance falls short of one. Bilabials and labiodentals are not
negotiable in speech, so visemes with a ``hold`` (PP, FF) are also enforced as a hard
constraint around their phoneme's centre: PP closes the lips fully whatever the neighbours.

Timing: phoneme times are on the pts clock. The node keeps a frame clock that starts at
the node's ``now_ns`` when playing begins and advances one frame period per tick, so all
its timing is counted ticks (simulated time in ``NodeHarness`` tests is exact). Timers only
ever run late, so if lost ticks leave the frame clock more than ``max_lag_ms`` behind the real
clock it jumps forward (0 disables this: pure frame-count time for tests and offline renders).
Each tick emits the frame for ``pts = clock - lookahead``, where the lookahead is the latency
of the path that feeds this node (the runner's latency query, ``on_latency``: a recognizer's
decision delay and the lead-in room, ``LEAD_ROOM_MS``, or a live source's acoustic delay alone)
plus ``lookahead_ms``, this node's own extra latency (0: phoneme sources leave the room for
lead-ins themselves: a recognizer declares it, text-to-speech schedules its speech that far
ahead). A table or ``lead_ms`` with longer lead-ins needs ``lookahead_ms`` for the difference
(the node warns). Nothing is hand-tuned to the recognizer's delay.
Downstream, audio played at its own pts stays in sync; the frames leave this node lookahead late.

A phoneme that still comes later than that (its start already drawn) is not dropped: it is
drawn from the next frame on, shortened to what is left of it but at least ``_LATE_MIN_MS``,
after any late one before it, and counted (``late`` in the stats).

A new phoneme batch for a session replaces that session's scheduled phonemes from the batch's
first start onwards, so a recogniser may revise its hypothesis.

Acoustic articulation (jaw, lips, rounding, voice activity per 10 ms) that comes with the phones
(``audio_phoneme``, ``text_phoneme``: ``nodes.speech.articulation_msg``) is fused with them
(``nodes.face.fusion``): the voice sets how far and when the mouth opens, the phones the shapes,
and the mouth closes where the voice is silent. A session without it is drawn from its phones alone.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from runtime import Message, Pad, Param, ParamError
from runtime.sessions import SessionSlots, batch_sessions, fit

from .face import (
    FRAME_CLOCK_PARAMS,
    LEAD_ROOM_MS,
    SIL,
    TABLE_RULE,
    VISEMES,
    FrameClockNode,
    hold_bump,
    load_viseme_tables,
    ramp,
    strip_stress,
)
from .face.articulation_track import ArticulationTrack
from .face.fusion import Fusion
from .speech.articulation_msg import read_articulation

_EARLY_NS = 200_000_000  # a frame this little past a session's newest articulation was drawn too early (more: it went quiet)
_LATE_MIN_MS = 60.0  # a late phoneme is drawn at least this long (the jaw needs a few frames to show it)


class Viseme(FrameClockNode):
    """Turns ARPAbet phoneme timelines into co-articulated ARKit mouth frames at a fixed rate."""

    inputs = {"in": Pad("phonemes/arpabet", "phoneme timelines per session, times on the pts clock",
                        policy="block")}  # a lost message is a word the mouth never says
    outputs = {"out": Pad("arkit/blendshapes", "mouth/jaw weights for every known session, "
                          "data {'speaking': [bool]*S}")}
    params = {
        **FRAME_CLOCK_PARAMS,
        "lookahead_ms": Param(float, 0.0, "this node's own latency: frames are for pts = now - (the latency "
                              "of what feeds it, from the runner's latency query, + this). Phoneme sources leave "
                              f"{LEAD_ROOM_MS:.0f} ms for lead-ins; raise this for longer ones",
                              min=0.0, max=5000.0),
        "articulation": Param(bool, True, "fuse the acoustic articulation that comes with the phones (jaw and lip "
                              "amounts, voice activity); false: phones alone"),
        "lead_ms": Param(float, 80.0, "dominance ramps in this long before a phoneme starts", min=1.0, max=1000.0),
        "release_ms": Param(float, 100.0, "dominance is released over this long after a phoneme ends",
                            min=1.0, max=1000.0),
        "ramp": Param(str, "cosine", "shape of the dominance ramps", choices=("cosine", "exp")),
        "phoneme_table": Param(str, "mappings/phoneme_viseme.yaml", f"ARPAbet -> OVR viseme table ({TABLE_RULE})"),
        "viseme_table": Param(str, "mappings/viseme_arkit.yaml", f"OVR viseme -> ARKit weights table ({TABLE_RULE})"),
        "session_timeout_s": Param(float, 30.0, "a session with no phonemes for this long is forgotten",
                                   min=0.1, max=86400.0),
    }

    def setup(self) -> None:
        self.tables = load_viseme_tables(self.p.phoneme_table, self.p.viseme_table)
        self._check_lead_room()
        self.fusion = Fusion()
        self.tracks: dict[int, ArticulationTrack] = {}  # slot -> its acoustic articulation
        self.start_clock()
        self.frames = self.ticks = 0
        self.upstream_ns = 0  # the latency of the path into this node (on_latency)
        self.late = 0
        self.articulation_early = 0
        self.late_max_ns = 0
        self.warned: set[str] = set()
        self.slots = SessionSlots()
        self.last_msg_ns = np.zeros(self.slots.capacity, dtype=np.int64)
        # phoneme segments of every session, one row each
        self.seg_slot = np.zeros(0, dtype=np.intp)
        self.seg_vis = np.zeros(0, dtype=np.intp)
        self.seg_start = np.zeros(0, dtype=np.int64)
        self.seg_end = np.zeros(0, dtype=np.int64)
        self.seg_late = np.zeros(0, dtype=bool)  # drawn after their time (shortened)

    def on_params(self, changed: dict) -> None:
        if "phoneme_table" in changed or "viseme_table" in changed:
            try:
                self.tables = load_viseme_tables(self.p.phoneme_table, self.p.viseme_table)
            except FileNotFoundError as exc:  # a ParamError goes as it is; the runtime restores the params
                raise ParamError(str(exc)) from exc
        if {"phoneme_table", "viseme_table", "lead_ms", "lookahead_ms"} & set(changed):
            self._check_lead_room()
        if "rate" in changed:
            self.retime()

    @classmethod
    def latency_ns(cls, params: Mapping[str, Any]) -> int:
        """Frames run lookahead_ms behind what feeds them: the lead-in's room."""
        return int(round(float(params["lookahead_ms"]) * 1e6))

    def on_latency(self, upstream_ns: int, pads: Mapping[str, int]) -> None:
        self.upstream_ns = max(0, upstream_ns)

    def _check_lead_room(self) -> None:
        longest = self.p.lead_ms * float(self.tables.lead_scale.max())
        if longest > LEAD_ROOM_MS + self.p.lookahead_ms + 1e-6:
            self.warn(f"viseme: lead-ins up to {longest:.0f} ms, but phoneme sources leave {LEAD_ROOM_MS:.0f} ms "
                      f"and lookahead_ms adds {self.p.lookahead_ms:.0f}: lead-ins of on-time phonemes are cut "
                      f"(lookahead_ms={longest - LEAD_ROOM_MS:.0f} gives the room)")

    @property
    def lookahead_ns(self) -> int:
        """How far frames run behind the clock: the path's latency into this node plus our own."""
        return self.upstream_ns + int(round(self.p.lookahead_ms * 1e6))

    # --- input -------------------------------------------------------------------------------
    def process(self, pad: str, msg: Message) -> None:
        sessions = batch_sessions(msg)
        if sessions and not isinstance(sessions[0], str):
            sessions = [str(s) for s in sessions]
        rows, fresh = self.slots.lookup(sessions)
        for slot in rows[fresh].tolist():
            self.tracks.pop(slot, None)  # a slot reused by a new session starts without articulation
        self.last_msg_ns = fit(self.last_msg_ns, self.slots.capacity)
        self.last_msg_ns[rows] = self.clock_ns
        if self.p.articulation:
            for row, pts, frames in read_articulation(msg.data, msg.arrays):
                if 0 <= row < len(rows):
                    self.tracks.setdefault(int(rows[row]), ArticulationTrack()).add(pts, frames)
        slot, vis, start, end = [], [], [], []
        for row, phone, s_ns, e_ns in (msg.data or {}).get("phonemes") or []:
            v = self._viseme_of(str(phone))
            if v < 0 or e_ns <= s_ns or not 0 <= row < len(rows):
                continue
            slot.append(rows[row])
            vis.append(v)
            start.append(s_ns)
            end.append(e_ns)
        if slot:
            self._schedule(np.array(slot, np.intp), np.array(vis, np.intp),
                           np.array(start, np.int64), np.array(end, np.int64))

    def _shorten_late(self, slot: np.ndarray, vis: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
        """Phonemes whose start was already drawn are drawn from the next frame on (in place), in
        order, each at least _LATE_MIN_MS, and counted: late, never silently dropped. The mask of them."""
        t = self.clock_ns + self.period_ns - self.lookahead_ns  # pts of the next frame
        mask = (start < t) & (vis != SIL)
        late = np.flatnonzero(mask)
        if not late.size:
            return mask
        self.late += int(late.size)
        self.late_max_ns = max(self.late_max_ns, int((t - start[late]).max()))
        shortest = int(_LATE_MIN_MS * 1e6)
        cursor: dict[int, int] = {}
        for j in late[np.argsort(start[late], kind="stable")].tolist():
            s = max(int(start[j]), cursor.get(int(slot[j]), t))
            start[j], end[j] = s, max(int(end[j]), s + shortest)
            cursor[int(slot[j])] = int(end[j])
        return mask

    def _viseme_of(self, phone: str) -> int:
        key = strip_stress(phone)
        v = self.tables.phone_to_viseme.get(key)
        if v is None:
            if key not in self.warned:
                self.warned.add(key)
                self.warn(f"viseme: unknown phoneme '{phone}', shown as silence")
            return SIL
        return v

    def _schedule(self, slot: np.ndarray, vis: np.ndarray, start: np.ndarray, end: np.ndarray) -> None:
        """Add segments; they replace the session's segments from the batch's first start on."""
        first = np.full(self.slots.capacity, np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(first, slot, start)
        keep = self.seg_start < first[self.seg_slot]
        late = self._shorten_late(slot, vis, start, end)
        self.seg_late = np.concatenate([self.seg_late[keep], late])
        self.seg_slot = np.concatenate([self.seg_slot[keep], slot])
        self.seg_vis = np.concatenate([self.seg_vis[keep], vis])
        self.seg_start = np.concatenate([self.seg_start[keep], start])
        self.seg_end = np.concatenate([self.seg_end[keep], end])

    # --- output ------------------------------------------------------------------------------
    def tick(self) -> None:
        """One frame for every known session at pts = clock - lookahead."""
        self.step_clock()
        self.ticks += 1
        t = self.clock_ns - self.lookahead_ns
        live = np.flatnonzero(self.slots.used)
        if live.size:
            weights, speaking = self.frame(t)
            ids = self.slots.ids
            self.emit("out", Message(
                "arkit/blendshapes", {"speaking": speaking[live].tolist()},
                {"weights": weights[live].astype(np.float32)}, pts_ns=t, session=[ids[i] for i in live.tolist()]))
            self.frames += 1
        self._expire(t)

    def frame(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        """Blended weights (slots, 52) and speaking flags (slots,) at pts t, for every slot at once."""
        tb = self.tables
        n_slots, V = self.slots.capacity, len(VISEMES)
        lead = self.p.lead_ms * 1e6 * tb.lead_scale[self.seg_vis]
        release = self.p.release_ms * 1e6 * tb.release_scale[self.seg_vis]
        near = (self.seg_start - lead <= t) & (t <= self.seg_end + release)
        slot, vis = self.seg_slot[near], self.seg_vis[near]
        start, end = self.seg_start[near].astype(np.float64), self.seg_end[near].astype(np.float64)
        dist = np.maximum((start - t) / lead[near], (t - end) / release[near])
        dom = ramp(np.maximum(dist, 0.0), self.p.ramp)

        mix = np.zeros((n_slots, V))
        np.add.at(mix, (slot, vis), dom * tb.dominance[vis])
        raw = np.zeros(n_slots)
        np.add.at(raw, slot, dom)
        mix[:, SIL] += np.clip(1.0 - raw, 0.0, 1.0) * tb.dominance[SIL]  # silence fills the gaps
        weights = (mix @ tb.weights) / mix.sum(axis=1, keepdims=True)
        speaking = np.zeros(n_slots, dtype=bool)
        speaking[slot[(vis != SIL) & (dom > 0)]] = True
        if self.tracks and self.p.articulation:
            weights = self._fuse(t, weights, slot, vis, dom, speaking)

        held = tb.hold[vis] > 0
        if self.tracks and self.p.articulation:  # a late closure, where the voice is heard, would land on
            voiced = np.zeros(n_slots, dtype=bool)  # another sound: its shape is drawn, not the constraint
            voiced[list(self.tracks)] = True
            held &= ~(self.seg_late[near] & voiced[slot])
        if held.any():  # hard constraints (PP closure, FF contact) around the phoneme's centre
            u = (t - start[held]) / (end[held] - start[held])
            strength = tb.hold[vis[held]] * hold_bump(u)
            c = np.zeros(n_slots)
            np.maximum.at(c, slot[held], strength)
            win = (strength > 0) & (strength >= c[slot[held]])
            target = np.zeros((n_slots, tb.weights.shape[1]))
            target[slot[held][win]] = tb.weights[vis[held][win]]
            weights += c[:, None] * (target - weights)
        return np.clip(weights, 0.0, 1.0), speaking

    def _fuse(self, t: int, weights: np.ndarray, slot: np.ndarray, vis: np.ndarray, dom: np.ndarray,
              speaking: np.ndarray) -> np.ndarray:
        """The sessions with articulation at t: fused (``nodes.face.fusion``); speaking while voiced."""
        rows, arts = [], []
        for s, track in self.tracks.items():
            if t > track.newest_ns() and t - track.newest_ns() < _EARLY_NS:
                self.articulation_early += 1  # drawn before its voice came (a path declaring too little)
            a = track.at(t)
            if a is not None and s < len(weights):
                rows.append(s)
                arts.append(a)
        if not rows:
            return weights
        cover = np.zeros(len(weights))
        phone = vis != SIL
        np.add.at(cover, slot[phone], dom[phone])
        idx = np.array(rows, np.intp)
        art = np.array(arts, np.float64)
        weights = weights.copy()
        weights[idx] = self.fusion.fuse(weights[idx], cover[idx], art)
        speaking[idx] |= art[:, 3] >= 1.0
        return weights

    def _expire(self, t: int) -> None:
        """Drop finished segments, and sessions idle longer than session_timeout_s (once a second)."""
        if self.ticks % 16 == 0:
            for track in self.tracks.values():
                track.trim(t)
        if self.seg_end.size and self.ticks % 16 == 0:
            done = self.seg_end + self.p.release_ms * 1e6 * self.tables.release_scale[self.seg_vis] < t
            if done.any():
                keep = ~done
                self.seg_slot, self.seg_vis = self.seg_slot[keep], self.seg_vis[keep]
                self.seg_start, self.seg_end = self.seg_start[keep], self.seg_end[keep]
                self.seg_late = self.seg_late[keep]
        every = max(1, int(self.p.rate))
        if self.ticks % every:
            return
        busy = np.zeros(self.slots.capacity, dtype=bool)
        busy[self.seg_slot] = True
        idle = self.slots.used & (self.clock_ns - self.last_msg_ns > self.p.session_timeout_s * 1e9) & ~busy
        gone = np.flatnonzero(idle).tolist()
        self.slots.release(gone)
        for slot in gone:
            self.tracks.pop(slot, None)

    def on_eos(self) -> None:
        """Input ended: emit the frames still scheduled (to the end of the last release or the last
        articulation frame), at once."""
        ends = [int(t.newest_ns()) for t in self.tracks.values() if len(t.times)]
        if self.seg_end.size:
            ends.append(int(self.seg_end.max() + self.p.release_ms * 1e6 * self.tables.release_scale.max()))
        if not ends:
            return
        last = max(ends)
        limit = int(600 * self.p.rate)  # never more than ten minutes of frames
        lookahead = self.lookahead_ns
        while self.clock_ns - lookahead <= last + self.period_ns and limit > 0:
            self.tick()
            limit -= 1

    def stats(self) -> dict:
        return {"frames": self.frames, "sessions": len(self.slots), "segments": int(self.seg_end.size),
                "lookahead_ms": self.lookahead_ns / 1e6, "upstream_latency_ms": self.upstream_ns / 1e6,
                "late": self.late, "late_max_ms": round(self.late_max_ns / 1e6, 1),
                "articulation_early": self.articulation_early}
