"""Load a recipe file with YAML safe loading, keeping the line and column of every key and value.

Positions let every finding point at the offending line; duplicate keys, which PyYAML silently
collapses, are reported instead of lost.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from checks.findings import Finding, Location

KeyPath = tuple[Any, ...]

_TOP_LEVEL_KEY = re.compile(r"^(?P<key>[A-Za-z_][\w-]*)\s*:", re.MULTILINE)


@dataclass(frozen=True)
class Span:
    line: int  # 1-based
    column: int  # 1-based
    end_line: int
    end_column: int


@dataclass
class LoadedRecipe:
    """The raw mapping of a recipe file with the source span of each key and value."""

    path: str
    text: str
    data: dict[str, Any]
    key_spans: dict[KeyPath, Span] = field(default_factory=dict)
    value_spans: dict[KeyPath, Span] = field(default_factory=dict)
    duplicate_keys: list[KeyPath] = field(default_factory=list)

    def location(self, key_path: KeyPath = (), *, at_value: bool = True) -> Location:
        """The best position for a key path: the value (or key) itself, else its nearest parent's key."""
        probe = tuple(key_path)
        tables = (self.value_spans, self.key_spans) if at_value else (self.key_spans, self.value_spans)
        while True:
            for table in tables:
                span = table.get(probe)
                if span is not None:
                    end = span.end_column if span.end_line == span.line else span.column + 1
                    return Location(self.path, span.line, span.column, max(end, span.column + 1))
            if not probe:
                return Location(self.path, 1, 1, 1)
            probe = probe[:-1]
            tables = (self.key_spans, self.value_spans)  # a missing key: point at the section it belongs in

    def source_line(self, line: int) -> str:
        lines = self.text.splitlines()
        return lines[line - 1] if 0 < line <= len(lines) else ""


class RecipeLoadError(Exception):
    """The file is not a YAML mapping; carries the finding that says where and why."""

    def __init__(self, finding: Finding) -> None:
        super().__init__(finding.message)
        self.finding = finding


def _span(node: yaml.Node) -> Span:
    start, end = node.start_mark, node.end_mark
    return Span(start.line + 1, start.column + 1, end.line + 1, end.column + 1)


def _index(node: yaml.Node, path: KeyPath, loaded: LoadedRecipe) -> None:
    loaded.value_spans[path] = _span(node)
    if isinstance(node, yaml.MappingNode):
        seen: set[Any] = set()
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node.value)
            child = (*path, key)
            if key in seen:
                loaded.duplicate_keys.append(child)
            seen.add(key)
            loaded.key_spans[child] = _span(key_node)
            _index(value_node, child, loaded)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _index(item, (*path, i), loaded)


def looks_like_recipe(text: str, marker_key: str = "model") -> bool:
    """Whether a YAML text has a top-level ``marker_key``, without trusting it to parse."""
    return any(m.group("key") == marker_key for m in _TOP_LEVEL_KEY.finditer(text))


def load_text(text: str, path: str) -> LoadedRecipe:
    loader = None
    try:
        loader = yaml.SafeLoader(text)  # the reader rejects control characters here already
        node = loader.get_single_node()
        if node is None:
            raise RecipeLoadError(_not_a_mapping(path, "the file is empty"))
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        raise RecipeLoadError(_syntax_finding(path, exc)) from None
    except yaml.YAMLError as exc:  # reader errors (control characters) carry a position, not a mark
        line = text.count("\n", 0, getattr(exc, "position", 0) or 0) + 1
        raise RecipeLoadError(
            Finding("RC101", f"the file is not valid YAML: {str(exc).splitlines()[0]}", Location(path, line, 1, 1),
                    check="schema", help="remove the control character, or save the file as plain UTF-8 text")
        ) from None
    finally:
        if loader is not None:
            loader.dispose()
    if not isinstance(data, dict):
        raise RecipeLoadError(_not_a_mapping(path, f"the top level is a {type(data).__name__}"))
    loaded = LoadedRecipe(path=path, text=text, data=data)
    _index(node, (), loaded)
    return loaded


def load_recipe_file(path: str | Path, display_path: str | None = None) -> LoadedRecipe:
    shown = display_path or str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeLoadError(
            Finding("RC101", f"cannot read the recipe: {exc}", Location(shown), check="schema",
                    help="make the file readable UTF-8 text")
        ) from None
    return load_text(text, shown)


def _syntax_finding(path: str, exc: yaml.MarkedYAMLError) -> Finding:
    mark = exc.problem_mark or exc.context_mark
    line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
    problem = exc.problem or "invalid YAML"
    context = f" ({exc.context})" if exc.context else ""
    hint = "check the indentation and the quoting on this line and the one above it"
    if "\t" in (exc.problem or "") or "tab" in problem:
        hint = "YAML does not allow tabs for indentation: indent with spaces"
    return Finding(
        "RC101",
        f"the file is not valid YAML: {problem}{context}",
        Location(path, line, column, column + 1),
        check="schema",
        why="a recipe that does not parse cannot be checked, and would fail at the start of training",
        help=hint,
    )


def _not_a_mapping(path: str, what: str) -> Finding:
    return Finding(
        "RC101",
        f"the recipe must be a YAML mapping with a top-level 'model' key; {what}",
        Location(path, 1, 1, 1),
        check="schema",
        help="start the file with 'model: <hub id or path>' and the sections quantization/lora/training/hardware",
    )
