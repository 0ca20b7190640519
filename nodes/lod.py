"""lod: level of detail per session, so a crowd of distant or unwatched avatars costs little.

Levels (which morphs, how often) live in ``graphs/mappings/lod.yaml``: L0 everything at full rate,
L1 the most significant morphs at full rate, L2 mouth + eyes + brows at half rate, L3 jaw and
blinks at quarter rate. Param ``level`` is the default; ``levels`` maps session id -> level. Both
can be set live; a session whose level changes gets its next frame at once, at the new level.

Wire size, and why the output looks the way it does:

- A session not due this frame (rate decimation) is left out of the batch; if no session is due,
  nothing is emitted. Skipped frames cost nothing anywhere downstream.
- Emitted arrays keep the full (S, M) width and column order; the morphs a level drops are held at
  0, and ``data["lod"]`` gives each row's level. Sending only the kept columns would shrink this one
  ZeroMQ hop, but rows at different levels would then need different layouts (one batch, one
  array shape is the batch convention), and the compressor behind us sends only values that
  change: a morph held at 0 costs one update when the level drops and nothing after. Holding it at
  its last value would cost the same bytes but freeze a half smile on the face; 0 is the neutral
  face. ``data["lod"]`` lets the compressor skip the dropped columns outright (no per-frame
  "unchanged" bits) and lets a client know a zero means "not sent" rather than "relaxed".
- Decimation counts each session's own frames, so it stays right when sessions come and go or
  arrive in separate messages.

Cost per batch: one dict look-up per row for the slots, one pass for the frame counts (compiled
in ``nodes.face._filters.lod_step`` when built), one multiply by the level's mask; a batch whose
rows are all due passes its session list and other arrays on as they are, and the scan for
sessions to forget runs only once one can have timed out.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from runtime import Message, Node, Pad, Param, ParamError
from runtime.sessions import SessionSlots, batch_ids, fit

from .compiled import load
from .face import TABLE_RULE, arkit_names, batch_slots, level_masks, load_lod_table
from .wire import N_LOD_LEVELS

_c = load("nodes.face._filters")  # slots_of: a batch's slots in one compiled loop (else np.fromiter)


def check_levels(levels: Any) -> dict[str, int]:
    """The ``levels`` param as {session id (str): level}; raises ValueError naming the bad entry."""
    for sid, lv in levels.items():
        if isinstance(lv, bool) or not isinstance(lv, int) or not 0 <= lv < N_LOD_LEVELS:
            raise ValueError(f"param 'levels': session {sid!r} has level {lv!r}; levels are 0..{N_LOD_LEVELS - 1}")
    return {str(sid): lv for sid, lv in levels.items()}  # YAML may read a session id as a number


class Lod(Node):
    """Per-session level of detail: drops morphs (held at 0) and decimates frames per level."""

    inputs = {
        "in": Pad(("morphs/cc4", "arkit/blendshapes"), doc="batches with 'weights' (S, M)"),
        "requests": Pad("avatar/request", "viewers' wishes: data {'lod': {session id: level, or null to "
                                          "return to 'level'}} (a sink's requests, on a feedback link)",
                        required=False),
    }
    outputs = {"out": Pad(same_as="in", doc="the due sessions only; data 'lod' = level per row")}
    params = {
        "level": Param(int, 0, "level of sessions not named in 'levels'", min=0, max=N_LOD_LEVELS - 1),
        "levels": Param(dict, {}, "session id -> level, overriding 'level'"),
        "table": Param(str, "mappings/lod.yaml", f"YAML table of the levels ({TABLE_RULE})"),
        "session_timeout": Param(float, 5.0, "seconds (pts) without a frame before a session is forgotten", min=0.01),
    }

    def setup(self) -> None:
        self.every, self.patterns = load_lod_table(self.p.table)
        self.table = self.p.table
        self.session_levels = check_levels(self.p.levels)
        self.default_level = self.p.level
        self.slots = SessionSlots()
        self._c = _c  # this node's path, fixed at setup
        self.level = np.zeros(self.slots.capacity, dtype=np.int64)
        self.count = np.zeros(self.slots.capacity, dtype=np.int64)  # frames seen at the current level
        self.last_pts = np.zeros(self.slots.capacity, dtype=np.int64)
        self.masks: dict[tuple[str, ...], np.ndarray] = {}
        self.arkit = arkit_names()  # the columns of arkit/blendshapes, which carries no names
        self._last_mask: tuple[list[str], np.ndarray] | None = None  # the names of the last batch, their mask
        self._rows: dict[int, np.ndarray] = {}  # level -> its mask row repeated, for _rows_of
        self._rows_of: np.ndarray | None = None
        self.oldest_pts: float = np.inf  # at most every live session's last pts: no expiry before it times out
        self.rows_in = self.rows_out = self.dropped = self.requests = 0

    def on_params(self, changed: Mapping[str, Any]) -> None:
        try:  # everything that may refuse first: a refusal changes nothing (the runtime restores the params)
            levels = check_levels(self.p.levels) if "levels" in changed else self.session_levels
            table = load_lod_table(self.p.table) if "table" in changed else None
        except ValueError as exc:  # LodTableError is one too
            raise ParamError(str(exc)) from None
        self.session_levels = levels
        self.default_level = self.p.level
        if table is not None:
            self.every, self.patterns = table
            self.table = self.p.table
            self.masks.clear()
            self._last_mask = None
        self._relevel()

    def _relevel(self) -> None:
        """Sessions whose level changed are due at once at the new one."""
        rows = np.flatnonzero(self.slots.used)
        want = np.array([self.session_levels.get(str(self.slots.ids[r]), self.default_level) for r in rows], dtype=np.int64)
        moved = rows[want != self.level[rows]]
        self.level[rows] = want
        self.count[moved] = 0  # due at once at the new level

    def process(self, pad: str, msg: Message) -> Message | None:
        if pad == "requests":
            self._request(msg)
            return None
        weights = msg.arrays.get("weights")
        sessions = batch_ids(msg)
        names = self._names(msg)
        if weights is None or weights.ndim != 2 or weights.shape != (len(sessions), len(names)):
            self._drop(msg, weights, names, sessions)
            return None
        n = len(sessions)
        slots, new = batch_slots(self.slots, sessions, msg.arrays.get("slot"), pad, self._c)
        if new is not None:
            self._fit()
            if new.any():
                fresh = slots[new]
                self.level[fresh] = [self.session_levels.get(str(self.slots.ids[r]), self.default_level)
                                     for r in fresh.tolist()]
                self.count[fresh] = 0
        pts = msg.pts_ns
        made = -1
        if self._c is not None and type(pts) is int:
            due = np.empty(n, dtype=np.uint8)
            made = self._c.lod_step(slots, self.count, self.last_pts, pts, self.level, self.every, due)
        if made < 0:  # the reference
            self.last_pts[slots] = pts
        self.oldest_pts = min(self.oldest_pts, pts)
        self._expire(pts)  # (after the frame counts here: it only releases other sessions, and looks at last_pts)

        self.rows_in += n
        # every session at the default level (_relevel keeps it so) or each at its own
        uniform = self.default_level if not self.session_levels else None
        if made < 0:
            level = self.level[slots]
            due = self.count[slots] % self.every[level] == 0
            self.count[slots] += 1
            made = int(np.count_nonzero(due))
        if made == 0:
            return None
        rows = None if made == n else np.flatnonzero(due)  # None: every row is due
        if uniform is None:
            level = self.level[slots]
        # the due rows (rows None: all of them; then the batch's lists and arrays pass as they are)
        kept = n if rows is None else len(rows)
        self.rows_out += kept
        if uniform is not None:
            lv = None
            w = weights if rows is None else weights[rows]
            w = w * self._mask_rows(names, uniform, len(w))
        else:
            mask = self._mask(names)
            lv = level if rows is None else level[rows]
            w = (weights if rows is None else weights[rows]) * mask[lv]
        arrays = {"weights": w}
        for name, arr in msg.arrays.items():
            if name != "weights" and arr.shape[:1] == (n,):
                arrays[name] = arr if rows is None else arr[rows]
        data = dict(msg.data) if isinstance(msg.data, dict) else {}
        if rows is not None and isinstance(data.get("active"), list) and len(data["active"]) == n:
            data["active"] = [data["active"][i] for i in rows]
        data["lod"] = [uniform] * kept if lv is None else lv.tolist()
        if rows is None:
            out_ids = sessions
        else:
            out_ids = sessions[rows] if type(sessions) is np.ndarray else [sessions[i] for i in rows]
        return Message(msg.caps, data, arrays, msg.pts_ns, out_ids, msg.trace)

    def _request(self, msg: Message) -> None:
        wish = msg.data.get("lod") if isinstance(msg.data, dict) else None
        if not isinstance(wish, dict):
            return  # other requests (keyframes) are not ours
        try:
            merged = check_levels({**self.session_levels, **{k: v for k, v in wish.items() if v is not None}})
        except ValueError as exc:
            self.warn(f"ignored an lod request: {exc}")
            return
        for sid in (str(k) for k, v in wish.items() if v is None):
            merged.pop(sid, None)
        self.session_levels = merged
        self.p.levels = merged
        self.keep("levels")  # a restarted lod node serves the viewers' levels still
        self.requests += 1
        self._relevel()

    def _names(self, msg: Message) -> list[str]:
        if isinstance(msg.data, dict) and isinstance(msg.data.get("names"), list):
            return msg.data["names"]
        return self.arkit

    def _mask(self, names: list[str]) -> np.ndarray:
        """(levels, M) float32: 1 where a level keeps the morph (cached per name list)."""
        last = self._last_mask
        if last is not None and (last[0] is names or last[0] == names):  # the same names as the last batch
            return last[1]
        mask = self._mask_of(names)
        self._last_mask = (list(names), mask)
        return mask

    def _mask_rows(self, names: list[str], level: int, n: int) -> np.ndarray:
        """(n, M) float32: the mask of this level on every row (a full array multiplies faster than
        a broadcast row), cached per level until the names change."""
        mask = self._mask(names)
        rows = self._rows.get(level) if self._rows_of is mask else None
        if self._rows_of is not mask:
            self._rows, self._rows_of = {}, mask
        if rows is None or len(rows) < n:
            rows = np.tile(mask[level], (max(n, 2 * len(rows) if rows is not None else n), 1))
            self._rows[level] = rows
        return rows[:n]

    def _mask_of(self, names: list[str]) -> np.ndarray:
        key = tuple(names)
        mask = self.masks.get(key)
        if mask is None:
            mask = level_masks(self.patterns, names)
            self.masks[key] = mask
        return mask

    def _expire(self, pts_ns: int) -> None:
        timeout = self.p.session_timeout * 1e9
        if pts_ns - self.oldest_pts <= timeout:  # no session's last frame is older than oldest_pts
            return
        stale = np.flatnonzero(self.slots.used & (pts_ns - self.last_pts > timeout))
        if len(stale):
            self.slots.release(stale)
        live = self.last_pts[self.slots.used]
        self.oldest_pts = int(live.min()) if len(live) else np.inf

    def _drop(self, msg: Message, weights: Any, names: list[str], sessions: list) -> None:
        self.dropped += 1
        if self.dropped == 1 or self.dropped % 1000 == 0:
            shape = None if weights is None else tuple(weights.shape)
            self.warn(f"dropped {self.dropped} message(s): expected 'weights' of shape "
                      f"({len(sessions)}, {len(names)}) for {msg.caps}, got {shape}")

    def _fit(self) -> None:
        cap = self.slots.capacity
        if self.level.shape[0] != cap:
            self.level, self.count, self.last_pts = fit(self.level, cap), fit(self.count, cap), fit(self.last_pts, cap)

    def stats(self) -> dict:
        levels = np.bincount(self.level[self.slots.used], minlength=N_LOD_LEVELS).tolist()
        return {"sessions": len(self.slots), "per_level": levels, "rows_in": self.rows_in,
                "rows_out": self.rows_out, "dropped": self.dropped, "requests": self.requests}
