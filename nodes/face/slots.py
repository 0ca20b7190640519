"""A batch's session slots when every session in it is known already: the usual batch."""
from __future__ import annotations

from types import ModuleType

import numpy as np


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
