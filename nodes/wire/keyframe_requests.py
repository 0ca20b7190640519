"""Keyframe requests to one encoder, coalesced: one keyframe per loss, however many ask for it.

Requests for a session come from every sink that serves it (each already rate-limits its own
viewers' asks), and a second one may come while the keyframe that answers the first is on its
way. So a request may say what its sender has seen: ``seen``, the wire seq of the newest packet
of the session it had when it asked. A keyframe made after that seq answers it (it is coming),
so none is made. Otherwise the keyframe is made at the session's next frame, but never sooner
than ``min_gap`` frames after the session's previous keyframe: a request that comes sooner is
held until then and checked again, so a burst of requests without ``seen`` costs one keyframe
per ``min_gap`` frames at most. A request for a session whose next frame is a keyframe anyway
(a new session, one asked for already) is answered by it.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

from .codec import SEQ_MOD
from .encoder import Encoder


def seq_after(a: int, b: int) -> bool:
    """Wire seq ``a`` comes after ``b`` (serial number arithmetic modulo ``SEQ_MOD``)."""
    return 0 < (a - b) % SEQ_MOD < SEQ_MOD // 2


def newest(a: int | None, b: int | None) -> int | None:
    """The later of two ``seen`` seqs; None (the sender saw nothing to say) wins: it asks more."""
    if a is None or b is None:
        return None
    return a if seq_after(a, b) else b


class KeyframeRequests:
    """The requests an encoder holds, and what became of them (``counts``)."""

    def __init__(self, encoder: Encoder, min_gap: int = 0):
        self.encoder, self.min_gap = encoder, min_gap
        self.held: dict[str, int | None] = {}  # session -> the newest seq its askers had seen (None: unknown)
        self.counts = {"made": 0, "answered": 0}  # keyframes made for a request; requests a keyframe answered

    def ask(self, sessions: Iterable[str], seen: Mapping[str, Any] | None = None) -> None:
        """Keyframes of these sessions; ``seen``: per session, the newest wire seq the asker had
        (an int 0 .. SEQ_MOD - 1; anything else counts as not said)."""
        seen = seen or {}
        held = self.held
        for s in sessions:
            n = seen.get(s)
            n = n if isinstance(n, int) and not isinstance(n, bool) and 0 <= n < SEQ_MOD else None
            held[s] = newest(held[s], n) if s in held else n
        self.serve()

    def serve(self) -> None:
        """Decide the held requests: answered already, a keyframe at the next frame, or still held
        (called when requests come and before every batch)."""
        if not self.held:
            return
        enc = self.encoder
        for s, n in list(self.held.items()):
            last = enc.last_keyframe(s)
            if last is None or (n is not None and seq_after(last[0], n)):
                self.counts["answered"] += 1
            elif last[1] + 1 >= self.min_gap:
                enc.request_keyframe((s,))
                self.counts["made"] += 1
            else:
                continue  # too soon after the previous keyframe: held
            del self.held[s]
