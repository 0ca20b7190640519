"""Which hot paths run compiled: the optional C extensions (``nodes/**/*.pyx``) or their pure-Python references.

Every compiled module has a pure-Python reference that stays the specification (tests assert
byte-identical output). A node asks ``load("nodes.wire._encoder")``: the module, or None when it
is not built (no compiler at install time, an unusual platform) or when ``AVATAR_PURE_PYTHON=1``
asks for the reference code, for comparisons. The first call in a process logs one line saying
which path is in use, so a slow box says why it is slow.
"""
from __future__ import annotations

import importlib
import logging
import os
from types import ModuleType

PURE_ENV = "AVATAR_PURE_PYTHON"
# every compiled module, beside the reference it replaces (setup.py builds each .pyx)
MODULES = {
    "nodes.wire._encoder": "nodes.wire.encoder (avatar/packet encoding)",
    "nodes.wire._decoder": "nodes.wire.decoder (avatar/packet decoding)",
    "nodes.livelink._udp": "nodes.livelink (batched UDP receive and Live Link Face parsing)",
    "nodes.face._filters": "nodes.face (One Euro filter, blender layers)",
}

log = logging.getLogger("avatar.compiled")
_loaded: dict[str, ModuleType | None] = {}
_errors: dict[str, str] = {}
_said = False


def pure_python() -> bool:
    """True when the environment asks for the reference code everywhere (``AVATAR_PURE_PYTHON=1``)."""
    return os.environ.get(PURE_ENV, "") not in ("", "0")


def load(name: str) -> ModuleType | None:
    """The compiled module ``name``, or None (the caller runs its reference code)."""
    if name not in _loaded:
        module = None
        if not pure_python():
            try:
                module = importlib.import_module(name)
            except ImportError as exc:
                _errors[name] = str(exc)
        _loaded[name] = module
    _say()
    return _loaded[name]


def status() -> dict[str, str]:
    """For every known compiled module: ``compiled``, ``pure Python (AVATAR_PURE_PYTHON)`` or why it is missing."""
    out = {}
    for name in MODULES:
        module = load(name)
        out[name] = "compiled" if module is not None else (
            f"pure Python ({PURE_ENV}=1)" if pure_python() else f"pure Python: {_errors.get(name, 'not built')}")
    return out


def require() -> None:
    """Raise ImportError unless every compiled module imports (``make`` checks its build with this)."""
    missing = {n: e for n, e in status().items() if e != "compiled"}
    if missing:
        raise ImportError("compiled hot paths missing (build them: make, or python setup.py build_ext --inplace): "
                          + "; ".join(f"{n}: {e}" for n, e in missing.items()))


def _say() -> None:
    """One line per process, on the first load: which path runs."""
    global _said
    if _said:
        return
    _said = True
    if pure_python():
        log.info("hot paths: pure-Python reference code (%s=1)", PURE_ENV)
        return
    missing = []
    for name in MODULES:
        if name not in _loaded:
            try:
                _loaded[name] = importlib.import_module(name)
            except ImportError as exc:
                _loaded[name], _errors[name] = None, str(exc)
        if _loaded[name] is None:
            missing.append(name)
    if missing:
        log.warning("hot paths: pure-Python reference code for %s (the compiled extensions are not built: run "
                    "'make' or 'python setup.py build_ext --inplace' with gcc and Python's headers); slower, "
                    "same results", ", ".join(missing))
    else:
        log.info("hot paths: compiled (%s)", ", ".join(MODULES))
