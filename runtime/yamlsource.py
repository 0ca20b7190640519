"""YAML loading that remembers line numbers and refuses duplicate keys, so errors name a line.

It also refuses what would crash the loader or its callers instead of naming a line: a key that is
a list or mapping (``? [a]``) and nesting deeper than ``MAX_DEPTH`` (PyYAML composes and constructs
recursively: 2000 brackets were a RecursionError).
"""
from __future__ import annotations

import bisect
import re
from typing import Any

import yaml


class LineDict(dict):
    """A mapping that knows the line of each key (1-based) and its own line."""

    line: int | None = None

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.lines: dict[Any, int] = {}

    def line_of(self, key: Any) -> int | None:
        return self.lines.get(key, self.line)


class LineList(list):
    line: int | None = None

    def __init__(self, *args: Any):
        super().__init__(*args)
        self.lines: list[int] = []

    def line_of(self, index: int) -> int | None:
        return self.lines[index] if index < len(self.lines) else self.line


MAX_DEPTH = 100  # levels of nested lists and mappings; a graph needs a handful


class DuplicateKeyError(yaml.MarkedYAMLError):
    pass


class NestingError(yaml.MarkedYAMLError):
    pass


def _too_deep(mark: yaml.Mark | None) -> NestingError:
    return NestingError(None, None, f"nested too deeply (more than {MAX_DEPTH} levels of lists and mappings)", mark)


def line_at(text: str, index: int) -> int:
    """The 1-based line of a character index, counting '\\n' only, as editors and grep do (PyYAML's
    marks also count '\\x85', '\\u2028', '\\u2029' and a lone '\\r': a line past the file's end)."""
    return text.count("\n", 0, index) + 1


class _Loader(yaml.SafeLoader):
    def __init__(self, stream: Any):
        super().__init__(stream)
        self._compose_depth = 0
        self._construct_depth = 0
        self._breaks = [m.start() for m in re.finditer("\n", stream)] if isinstance(stream, str) else None

    def line_of(self, mark: yaml.Mark) -> int:
        """What ``line_at`` says of a mark of this loader's text."""
        if self._breaks is None:
            return mark.line + 1
        return bisect.bisect_left(self._breaks, mark.index) + 1

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._compose_depth += 1
        try:
            if self._compose_depth > MAX_DEPTH:
                raise _too_deep(self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._compose_depth -= 1

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        # aliases can nest deeper than the text does (a1: [*a0], a2: [*a1], ...): count here too
        self._construct_depth += 1
        try:
            if self._construct_depth > MAX_DEPTH:
                raise _too_deep(node.start_mark)
            return super().construct_object(node, deep)
        finally:
            self._construct_depth -= 1


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> LineDict:
    loader.flatten_mapping(node)
    out = LineDict()
    out.line = loader.line_of(node.start_mark)
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark,
                f"a key must be a name or other scalar, not a {_KINDS.get(type(key).__name__, type(key).__name__)}",
                key_node.start_mark,
            ) from None
        if key in out:
            raise DuplicateKeyError(
                "while constructing a mapping", node.start_mark,
                f"duplicate key '{key}' (first at line {out.lines[key]})", key_node.start_mark,
            )
        out[key] = loader.construct_object(value_node, deep=True)
        out.lines[key] = loader.line_of(key_node.start_mark)
    return out


_KINDS = {LineDict.__name__: "mapping", LineList.__name__: "list"}


def _construct_sequence(loader: _Loader, node: yaml.SequenceNode) -> LineList:
    out = LineList(loader.construct_object(child, deep=True) for child in node.value)
    out.line = loader.line_of(node.start_mark)
    out.lines = [loader.line_of(child.start_mark) for child in node.value]
    return out


def _construct_int(loader: _Loader, node: yaml.ScalarNode) -> int:
    try:
        return loader.construct_yaml_int(node)
    except ValueError:  # more digits than int() converts (sys.get_int_max_str_digits)
        raise yaml.constructor.ConstructorError(None, None, "integer too large", node.start_mark) from None


_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


def load_yaml(text: str) -> Any:
    """Parse YAML into LineDict/LineList; raises yaml.MarkedYAMLError with the line on error."""
    loader = _Loader(text)
    try:
        return loader.get_single_data()
    except RecursionError:  # not expected below MAX_DEPTH: still a located error, never a crash
        raise _too_deep(loader.get_mark()) from None
    finally:
        loader.dispose()
