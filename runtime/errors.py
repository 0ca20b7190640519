"""Exceptions the runtime raises; each names the place of the problem."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One problem found in a graph, located in its source file."""

    message: str
    file: str = "<graph>"
    line: int | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: error: {self.message}"


class GraphError(Exception):
    """A graph that cannot run; carries every problem found, not just the first."""

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class ParamError(ValueError):
    """A param value that the node type does not accept."""


class NodeTypeError(LookupError):
    """A node type name that no registry entry or import path resolves."""


class ControlError(RuntimeError):
    """A control request the runner or a node refused, with the reason."""


class ParamRefused(ControlError):
    """A param change refused (by its type, its range, its own check, its state, or the node):
    nothing changed anywhere, and the message says why."""


class CallRefused(ControlError):
    """A call into a node's interface (``Runner.call``) refused, by the runner (the node's type
    declares no such interface) or by the node (``Node.on_call`` raised ``ParamError``): the
    message says why."""
