"""Caps: the message type a pad carries, checked when a graph is loaded.

A caps string names a media type such as ``arkit/blendshapes``. A pad may accept several
(a tuple) or a pattern (``arkit/*``); ``any`` matches everything.
"""
from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Union

CapsSpec = Union[str, tuple[str, ...]]

ANY = "any"


def caps_list(spec: CapsSpec) -> tuple[str, ...]:
    return (spec,) if isinstance(spec, str) else tuple(spec)


def caps_compatible(produced: CapsSpec, accepted: CapsSpec) -> bool:
    """True when some caps the output produces is accepted by the input."""
    for out in caps_list(produced):
        for acc in caps_list(accepted):
            if ANY in (out, acc) or fnmatchcase(out, acc) or fnmatchcase(acc, out):
                return True
    return False


def caps_text(spec: CapsSpec) -> str:
    return " | ".join(caps_list(spec))
