"""Per-session state for batched nodes: session ids map to rows ("slots") of numpy arrays.

A message carries a batch (a list of session ids, arrays with one row per session); a node keeps
each session's state in rows of arrays so the hot path stays vectorised, and gives rows back
when sessions leave.
"""
from __future__ import annotations

from typing import Hashable, Iterable

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
                new[i] = True
            slots[i] = slot
        self._last = (key, slots)
        return slots, new

    def release(self, slots: Iterable[int]) -> None:
        self._last = None
        for slot in slots:
            sid = self.ids[slot]
            if sid is not None:
                del self.slot_of[sid]
                self.ids[slot], self.used[slot] = None, False
                self._free.append(int(slot))

    def _grow(self) -> None:
        old = self.capacity
        self.ids.extend([None] * old)
        self.used = fit(self.used, 2 * old)
        self._free.extend(range(2 * old - 1, old - 1, -1))


def fit(arr: np.ndarray, capacity: int) -> np.ndarray:
    """``arr`` with at least ``capacity`` rows (new rows zero)."""
    if arr.shape[0] >= capacity:
        return arr
    out = np.zeros((capacity, *arr.shape[1:]), dtype=arr.dtype)
    out[: arr.shape[0]] = arr
    return out


def batch_sessions(msg: Message) -> list:
    """A message's session ids as a list (a lone id is a batch of one)."""
    return msg.session if isinstance(msg.session, list) else [msg.session]
