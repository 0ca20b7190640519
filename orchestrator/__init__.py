"""The orchestrator: judges a graph on recordings and tunes it (``avatar check``, ``avatar tune``).

It runs a graph headless on recordings (real captures, speech) under network profiles and
measures what its viewers get (``evaluate``), compares that with a stored baseline (``check``),
searches the params node types declare tunable (``tune``, with Optuna) and tries a candidate on a
running graph (``canary``). It knows the avatar side (node types, the wire format, the viewers);
``runtime`` knows nothing of it, and reaches its commands through the ``avatar.commands``
entry points. The names below load their module on first use, so ``python -m orchestrator.X``
runs a module that is not imported yet.
"""
from __future__ import annotations

import importlib as _importlib
from typing import Any as _Any

# (``evaluate`` the function is ``orchestrator.evaluate.evaluate``: a name a module has is not lent to a function)
_HOME = {"PROFILES": "evaluate", "Profile": "evaluate", "parse_profiles": "evaluate",
         "Recording": "recordings", "default_recordings": "recordings", "load_recording": "recordings",
         "load_recordings": "recordings", "compare": "check", "Knob": "tunable", "knobs": "tunable"}

__all__ = sorted(_HOME)


def __getattr__(name: str) -> _Any:
    if name in _HOME:
        return getattr(_importlib.import_module(f".{_HOME[name]}", __name__), name)
    raise AttributeError(f"module 'orchestrator' has no attribute '{name}'")
