"""Per-session state for batched nodes: session ids map to rows ("slots") of numpy arrays.

A message carries a batch (session ids, arrays with one row per session); a node keeps each
session's state in rows of arrays so the hot path stays vectorised, and gives rows back when
sessions leave.

A batch's ids can travel as a fixed-width byte array (``Message.session_ids``) with a ``slot``
array beside them: the sending node's row of each session. ``SessionSlots.lookup_ids`` takes the
sender's row as a hint (its own slot for that sender's row, remembered from before) and checks
it against the id, all in numpy: no Python object and no dict look-up per row while the
sessions are the ones it knew. A row whose hint is missing, stale or wrong takes the dict.
"""
from __future__ import annotations

from typing import Any, Hashable, Iterable

import numpy as np

from .message import Message


class SessionSlots:
    """Session id -> row ("slot") in per-session state arrays; slots given back are reused.

    Callers keep their arrays ``capacity`` rows long (``fit``) and index them with the slots.
    """

    def __init__(self, capacity: int = 8):
        self.slot_of: dict[Hashable, int] = {}
        self.ids: list[Hashable | None] = [None] * capacity
        self.used = np.zeros(capacity, dtype=bool)
        self._free = list(range(capacity - 1, -1, -1))
        self._last: tuple[tuple, np.ndarray] | None = None  # a source sends the same batch again and again
        self.keys = np.zeros(capacity, dtype="S8")  # each slot's id, UTF-8, NUL-padded (b"" when free)
        self._keys64 = self.keys.view(np.uint64).reshape(capacity, 1)
        self._hints: dict[Hashable, np.ndarray] = {}  # per sender: its row -> our slot (-1: none)

    @property
    def capacity(self) -> int:
        return len(self.ids)

    def __len__(self) -> int:
        return len(self.slot_of)

    def lookup(self, sessions: list) -> tuple[np.ndarray, np.ndarray]:
        """Slots for a batch's sessions (first-seen ones get a free slot), and a mask of those new."""
        key = tuple(sessions)
        if self._last is not None and self._last[0] == key:
            return self._last[1], np.zeros(len(sessions), dtype=bool)
        slots = np.empty(len(sessions), dtype=np.intp)
        new = np.zeros(len(sessions), dtype=bool)
        for i, sid in enumerate(sessions):
            slot = self.slot_of.get(sid)
            if slot is None:
                if not self._free:
                    self._grow()
                slot = self._free.pop()
                self.slot_of[sid], self.ids[slot], self.used[slot] = slot, sid, True
                self._set_key(slot, sid)
                new[i] = True
            slots[i] = slot
        self._last = (key, slots)
        return slots, new

    def lookup_ids(self, ids: np.ndarray, hint: np.ndarray | None = None, sender: Hashable = None,
                   compiled: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """``lookup`` for ids as a fixed-width byte array; ``hint``: the sender's row of each session
        (the batch's ``slot`` array), ``sender`` names whose rows they are (an input pad).
        ``compiled``: a module with ``hinted_slots`` (``nodes.face._filters``) for the guess's check
        in one C pass; without it numpy does the same."""
        n = len(ids)
        if ids.dtype.itemsize > self.keys.dtype.itemsize:
            self._widen(ids.dtype.itemsize)
        width = self.keys.dtype.itemsize
        if ids.dtype.itemsize != width or not ids.flags.c_contiguous:
            ids = ids.astype(f"S{width}")
        slots = None
        hinted = hint is not None and len(hint) == n and hint.dtype.kind in "iu"
        known = self._hints.get(sender) if hinted else None
        if known is not None and n:
            assert hint is not None
            if compiled is not None:
                slots = np.empty(n, dtype=np.intp)
                missed = compiled.hinted_slots(known, np.ascontiguousarray(hint, dtype=np.int32),
                                               self.keys.view(np.uint8).reshape(-1, width),
                                               ids.view(np.uint8).reshape(n, width), slots)
                if not missed:
                    return slots, np.zeros(n, dtype=bool)
                miss = np.flatnonzero(slots < 0)
            else:  # the reference
                h = hint.astype(np.intp, copy=False)
                inside = (h >= 0) & (h < len(known))
                slots = np.where(inside, known[np.where(inside, h, 0)], -1)
                ok = (slots >= 0) & (self._keys64[np.maximum(slots, 0)] == ids.view(np.uint64).reshape(n, -1)).all(axis=1)
                if ok.all():
                    return slots, np.zeros(n, dtype=bool)
                miss = np.flatnonzero(~ok)
        else:
            miss = np.arange(n)
        # the rows the hints did not give: through the dict (new sessions get a slot there)
        names = [b.decode("utf-8", "replace") for b in ids[miss].tolist()]
        got, fresh = self.lookup(names)
        if slots is None:
            slots = got
            new = fresh
        else:
            slots[miss] = got
            new = np.zeros(n, dtype=bool)
            new[miss] = fresh
        if hinted:
            assert hint is not None
            h = hint[miss].astype(np.intp, copy=False)
            good = h >= 0
            if good.any():
                top = int(h[good].max()) + 1
                if known is None or len(known) < top:
                    grown = np.full(max(top, 2 * (0 if known is None else len(known))), -1, dtype=np.intp)
                    if known is not None:
                        grown[:len(known)] = known
                    known = self._hints[sender] = grown
                known[h[good]] = got[good]
        return slots, new

    def release(self, slots: Iterable[int]) -> None:
        self._last = None
        for slot in slots:
            sid = self.ids[slot]
            if sid is not None:
                del self.slot_of[sid]
                self.ids[slot], self.used[slot] = None, False
                self.keys[slot] = b""
                self._free.append(int(slot))

    def _set_key(self, slot: int, sid: Hashable) -> None:
        key = str(sid).encode()
        if len(key) > self.keys.dtype.itemsize:
            self._widen(len(key))
        self.keys[slot] = key

    def _widen(self, width: int) -> None:
        """Room for ids of ``width`` bytes."""
        self.keys = self.keys.astype(id_dtype(width))
        width = self.keys.dtype.itemsize
        self._keys64 = self.keys.view(np.uint64).reshape(len(self.keys), width // 8)

    def _grow(self) -> None:
        old = self.capacity
        self.ids.extend([None] * old)
        self.used = fit(self.used, 2 * old)
        self.keys = fit(self.keys, 2 * old)
        self._keys64 = self.keys.view(np.uint64).reshape(2 * old, -1)
        self._free.extend(range(2 * old - 1, old - 1, -1))


def id_dtype(width: int) -> str:
    """The byte-string dtype for session ids of up to ``width`` bytes: rounded up to 8, so rows
    compare as 64-bit words."""
    return f"S{(width + 7) // 8 * 8}"


def fit(arr: np.ndarray, capacity: int) -> np.ndarray:
    """``arr`` with at least ``capacity`` rows (new rows zero)."""
    if arr.shape[0] >= capacity:
        return arr
    out = np.zeros((capacity, *arr.shape[1:]), dtype=arr.dtype)
    out[: arr.shape[0]] = arr
    return out


def batch_ids(msg: Message) -> "np.ndarray | list":
    """A batch's session ids as they travel: the id array when the message carries one (no Python
    object per row; pass it on as ``session=``), else the list (``batch_sessions``)."""
    ids = msg.session_ids if msg.carries_ids else None
    return batch_sessions(msg) if ids is None else ids


def batch_sessions(msg: Message) -> list:
    """A message's session ids as a list (a lone id is a batch of one)."""
    return msg.session if isinstance(msg.session, list) else [msg.session]
