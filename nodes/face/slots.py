"""A batch's session slots: the usual batch, every session known already, without a Python loop."""
from __future__ import annotations

from types import ModuleType
from typing import Hashable

import numpy as np

from runtime.sessions import SessionSlots


def known_slots(slot_of: dict, sessions: list, compiled: ModuleType | None) -> np.ndarray | None:
    """``slot_of[s]`` for every session of the batch, or None if one is new (or not a session id):
    the caller then takes the path that adds it. One dict look-up a row, in ``compiled``'s
    ``slots_of`` loop (``nodes.face._filters``) where given, else ``np.fromiter``; never
    ``SessionSlots.lookup``'s Python loop."""
    n = len(sessions)
    if compiled is not None and type(sessions) is list:
        slots = np.empty(n, dtype=np.intp)
        return slots if compiled.slots_of(slot_of, sessions, slots) else None
    try:
        return np.fromiter(map(slot_of.get, sessions), dtype=np.intp, count=n)
    except TypeError:  # one is new (None), or not a session id
        return None


def batch_slots(table: SessionSlots, sessions: "list | np.ndarray", hint: np.ndarray | None, sender: Hashable,
                compiled: ModuleType | None) -> tuple[np.ndarray, np.ndarray | None]:
    """(slots, new) of a batch's sessions (``runtime.batch_ids``): an id array looked up with the
    sender's rows as hints (``SessionSlots.lookup_ids``), a list through ``known_slots`` first.
    ``new`` marks the sessions given a slot now; None when the list was all known (nothing to grow)."""
    if type(sessions) is np.ndarray:
        return table.lookup_ids(sessions, hint, sender, compiled)
    slots = known_slots(table.slot_of, sessions, compiled)
    if slots is not None:
        return slots, None
    return table.lookup(sessions)
