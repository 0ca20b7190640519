"""YAML loading that remembers line numbers and refuses duplicate keys, so errors name a line."""
from __future__ import annotations

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


class DuplicateKeyError(yaml.MarkedYAMLError):
    pass


class _Loader(yaml.SafeLoader):
    pass


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> LineDict:
    loader.flatten_mapping(node)
    out = LineDict()
    out.line = node.start_mark.line + 1
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in out:
            raise DuplicateKeyError(
                "while constructing a mapping", node.start_mark,
                f"duplicate key '{key}' (first at line {out.lines[key]})", key_node.start_mark,
            )
        out[key] = loader.construct_object(value_node, deep=True)
        out.lines[key] = key_node.start_mark.line + 1
    return out


def _construct_sequence(loader: _Loader, node: yaml.SequenceNode) -> LineList:
    out = LineList(loader.construct_object(child, deep=True) for child in node.value)
    out.line = node.start_mark.line + 1
    out.lines = [child.start_mark.line + 1 for child in node.value]
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


def load_yaml(text: str) -> Any:
    """Parse YAML into LineDict/LineList; raises yaml.MarkedYAMLError with the line on error."""
    return yaml.load(text, Loader=_Loader)
