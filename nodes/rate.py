"""rate: resamples a batched stream to a target frame rate, so sources and viewers need not agree.

A 30 Hz capture can feed a 60 Hz graph, and a viewer can ask for 15 Hz. Input frames only update
per-session state (rows of arrays indexed by a session slot); a timer (``self.every``) at the
target rate emits one batch of every live session.

``mode=hold`` repeats each session's latest frame. ``mode=interpolate`` blends linearly from the
value shown when the latest frame arrived towards that frame, over one input period (measured
per session from pts): one input period of latency buys smooth motion, and a late or early frame
never makes the output jump. Only float arrays are blended (``pose`` angles too, linearly: fine
for the small steps between frames, not across a wrap at +-pi); others are held. Time between ticks
is counted in output periods, so the node needs no clock of its own and works the same under the
simulated time of ``NodeHarness``.

Data: the latest message's ``data`` is passed on (it describes the stream, e.g. ``names``), except
the per-row ``active`` flags, which are kept per session and re-assembled for the rows emitted.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from runtime import Message, Node, Pad, Param
from runtime.sessions import SessionSlots, batch_sessions, fit


class Rate(Node):
    """Resamples batches to a target rate on a timer, holding or interpolating per session."""

    inputs = {"in": Pad(doc="batches of any caps; float arrays are interpolated")}
    outputs = {"out": Pad(same_as="in", doc="one batch of every live session per tick")}
    params = {
        "rate": Param(float, 60.0, "output frames per second", min=0.1, max=1000.0),
        "mode": Param(str, "interpolate", "hold the latest frame, or interpolate between the two latest",
                      choices=("hold", "interpolate")),
        "session_timeout": Param(float, 5.0, "seconds without a frame before a session is dropped", min=0.01),
    }

    def setup(self) -> None:
        self.slots = SessionSlots()
        self.age = np.zeros(self.slots.capacity)        # seconds since the session's latest frame
        self.period = np.zeros(self.slots.capacity)     # the session's input period (0: unknown yet)
        self.last_pts = np.zeros(self.slots.capacity, dtype=np.int64)
        self.active = np.ones(self.slots.capacity, dtype=bool)
        self.prev: dict[str, np.ndarray] = {}           # value shown when the latest frame came
        self.last: dict[str, np.ndarray] = {}           # the latest frame
        self.caps = "any"
        self.data: dict[str, Any] | Any = None
        self.has_active = False
        self.ticks = self.emitted = self.bad_rows = 0
        self.timer = self.every(1.0 / self.p.rate, self.tick)

    def on_params(self, changed: Mapping[str, Any]) -> None:
        if "rate" in changed:
            self.timer.cancel()
            self.timer = self.every(1.0 / self.p.rate, self.tick)
        if "mode" in changed:  # blend on from the latest frame, which hold was showing
            for name, last in self.last.items():
                self.prev[name][:] = last

    def process(self, pad: str, msg: Message) -> None:
        sessions = batch_sessions(msg)
        slots, new = self.slots.lookup(sessions)
        self._fit()
        if new.any():  # a reused slot must not show its previous session's values
            for state in (*self.prev.values(), *self.last.values()):
                state[slots[new]] = 0
            self.active[slots[new]] = True
        shown = self._shown(slots)
        for name, arr in msg.arrays.items():
            arr = arr.reshape(len(sessions), -1) if arr.ndim == 1 and len(sessions) == 1 else arr
            if arr.shape[0] != len(sessions):
                self.bad_rows += 1
                if self.bad_rows == 1 or self.bad_rows % 1000 == 0:
                    self.warn(f"array '{name}' has {arr.shape[0]} rows for {len(sessions)} sessions; "
                              f"ignored ({self.bad_rows} so far)")
                continue
            cur = None if self._ensure(name, arr) else shown.get(name)
            self.prev[name][slots] = arr if cur is None else np.where(new.reshape(-1, *[1] * (arr.ndim - 1)), arr, cur)
            self.last[name][slots] = arr
        dt = (msg.pts_ns - self.last_pts[slots]) / 1e9
        measured = ~new & (dt > 0)
        self.period[slots] = np.where(measured, dt, np.where(new, 0.0, self.period[slots]))
        self.last_pts[slots] = msg.pts_ns
        self.age[slots] = 0.0
        data = msg.data
        if isinstance(data, dict) and "active" in data:
            if isinstance(data["active"], list) and len(data["active"]) == len(sessions):
                self.active[slots] = np.asarray(data["active"], dtype=bool)
                self.has_active = True
            data = {k: v for k, v in data.items() if k != "active"}
        self.caps, self.data = msg.caps, data

    def tick(self) -> None:
        """Advance every session by one output period, drop quiet sessions, emit the rest."""
        self.ticks += 1
        used = self.slots.used
        if not used.any():
            return
        self.age[used] += 1.0 / self.p.rate
        stale = np.flatnonzero(used & (self.age > self.p.session_timeout))
        if len(stale):
            self.slots.release(stale)
        self._emit(final=False)

    def on_eos(self) -> None:
        """The stream ends: show every session's latest frame once, so the last value is reached."""
        if self.slots.used.any():
            self._emit(final=True)

    def _emit(self, final: bool) -> None:
        rows = np.flatnonzero(self.slots.used)
        if not len(rows):
            return
        arrays = {name: last[rows] for name, last in self.last.items()} if final else self._shown(rows)
        data = self.data
        if self.has_active:
            data = {**(data if isinstance(data, dict) else {}), "active": self.active[rows].tolist()}
        self.emit("out", Message(self.caps, data, arrays, self.now_ns(), [self.slots.ids[r] for r in rows]))
        self.emitted += 1

    def _shown(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """What each of these sessions shows now: the interpolated value (float arrays) or the latest."""
        if self.p.mode == "hold":
            return {name: last[rows] for name, last in self.last.items()}
        period = self.period[rows]
        alpha = np.where(period > 0, np.clip(self.age[rows] / np.where(period > 0, period, 1.0), 0.0, 1.0), 1.0)
        out = {}
        for name, last in self.last.items():
            if np.issubdtype(last.dtype, np.floating):
                a = alpha.reshape(-1, *[1] * (last.ndim - 1)).astype(last.dtype)
                prev = self.prev[name][rows]
                out[name] = prev + a * (last[rows] - prev)
            else:
                out[name] = last[rows]
        return out

    def _ensure(self, name: str, arr: np.ndarray) -> bool:
        """State arrays for ``name`` matching this array's rows and dtype; True if (re)created."""
        have = self.last.get(name)
        if have is not None and have.shape[1:] == arr.shape[1:] and have.dtype == arr.dtype:
            return False
        if have is not None:
            self.warn(f"array '{name}' changed from {have.dtype}{list(have.shape[1:])} to "
                      f"{arr.dtype}{list(arr.shape[1:])}; its state is reset")
        shape = (self.slots.capacity, *arr.shape[1:])
        self.prev[name] = np.zeros(shape, dtype=arr.dtype)
        self.last[name] = np.zeros(shape, dtype=arr.dtype)
        return True

    def _fit(self) -> None:
        cap = self.slots.capacity
        if self.age.shape[0] == cap:
            return
        self.age, self.period, self.last_pts = fit(self.age, cap), fit(self.period, cap), fit(self.last_pts, cap)
        self.active = fit(self.active, cap)
        self.prev = {k: fit(v, cap) for k, v in self.prev.items()}
        self.last = {k: fit(v, cap) for k, v in self.last.items()}

    def stats(self) -> dict:
        return {"sessions": len(self.slots), "ticks": self.ticks, "emitted": self.emitted, "mode": self.p.mode}
