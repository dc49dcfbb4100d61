"""YAML with positions: the parsed document plus the line of every key, so errors can say file:line."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from modelyard.schema.errors import ModelyardError

Path = tuple[str | int, ...]


@dataclass
class LineMap:
    """Line numbers (1-based) of YAML paths: where each key is written and where its value's text starts."""

    key_lines: dict[Path, int] = field(default_factory=dict)
    text_lines: dict[Path, int] = field(default_factory=dict)

    def line(self, path: Path) -> int:
        """The line of `path`, or of its nearest ancestor that has one (1 for the document)."""
        for end in range(len(path), -1, -1):
            found = self.key_lines.get(path[:end])
            if found is not None:
                return found
        return 1

    def text_line(self, path: Path) -> int:
        """The line on which the text of a scalar value starts (after a `|` or `>` indicator)."""
        return self.text_lines.get(path, self.line(path))


@dataclass
class Source:
    """A parsed workflow file: data, positions, and the YAML problems found while reading it."""

    name: str
    text: str
    data: Any
    lines: LineMap
    duplicates: list[tuple[Path, int]] = field(default_factory=list)


class YamlSyntaxError(ModelyardError):
    def __init__(self, name: str, line: int, message: str) -> None:
        super().__init__(f"{name}:{line}: {message}")
        self.name = name
        self.line = line
        self.message = message


def load_source(text: str, name: str) -> Source:
    """Parse YAML (safe subset) and record positions; raises YamlSyntaxError with the line."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        raise YamlSyntaxError(name, line, str(exc.problem or exc)) from None
    finally:
        loader.dispose()
    source = Source(name=name, text=text, data=data, lines=LineMap())
    if node is not None:
        _walk(node, (), source)
    return source


def _walk(node: yaml.Node, path: Path, source: Source) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: set[Any] = set()
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else repr(key_node.value)
            child = (*path, key)
            if key in seen:
                source.duplicates.append((child, key_node.start_mark.line + 1))
            seen.add(key)
            source.lines.key_lines[child] = key_node.start_mark.line + 1
            _record_text_line(value_node, child, source)
            _walk(value_node, child, source)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            child = (*path, index)
            source.lines.key_lines[child] = item.start_mark.line + 1
            _record_text_line(item, child, source)
            _walk(item, child, source)


def _record_text_line(node: yaml.Node, path: Path, source: Source) -> None:
    if isinstance(node, yaml.ScalarNode):
        block = node.style in ("|", ">")
        source.lines.text_lines[path] = node.start_mark.line + 1 + (1 if block else 0)
