"""Pads: the named inputs and outputs of a node type, with the caps they carry."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from .caps import ANY, CapsSpec, caps_text


@dataclass(frozen=True)
class Pad:
    """A declared pad.

    Output caps may be fixed (``caps``), taken from a param (``caps_param``, as ``testsrc caps=...``)
    or the same as what arrives on an input pad (``same_as``, as ``identity``).
    """

    caps: CapsSpec = ANY
    doc: str = ""
    required: bool = True
    caps_param: str | None = None
    same_as: str | None = None
    # the queue policy a link into this input gets when it names none (a launch line): 'block' where
    # a lost message is a hole (audio, phonemes, a file); None: the line's default (leaky)
    policy: str | None = None

    def describe(self) -> str:
        if self.caps_param:
            return f"from param '{self.caps_param}'"
        if self.same_as:
            return f"same as input '{self.same_as}'"
        return caps_text(self.caps)

    def static_caps(self, params: Mapping[str, Any]) -> CapsSpec | None:
        """Caps known without looking upstream (None when it follows an input)."""
        if self.caps_param:
            return params.get(self.caps_param, ANY)
        if self.same_as:
            return None
        return self.caps
