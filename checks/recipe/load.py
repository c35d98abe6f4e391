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

from recipe_checks.findings import Finding, Location
from recipe_checks.limits import (
    FREE_TEXT_KEYS,
    MAX_KEY_CHARS,
    MAX_RECIPE_BYTES,
    MAX_STRING_CHARS,
    MAX_TEXT_CHARS,
    MAX_YAML_DEPTH,
    MAX_YAML_NODES,
    InputRefused,
    decode_text,
    read_bounded,
    shorten,
)

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
    duplicate_of: dict[KeyPath, str] = field(default_factory=dict)  # a duplicate -> the key it repeats, as written
    translation: Any = None  # recipe_checks.formats.Translation: another tool's config, read as this native recipe
    # recipe_checks.recipe.distributed_files.DistributedFiles: what the distributed section's DeepSpeed and accelerate
    # files say (None: it names no file)
    distributed_files: Any = None

    def written_key(self, key_path: KeyPath) -> str | None:
        """The key as the file writes it, where the file is another tool's config (`lora_r` for lora.r)."""
        return self.translation.written_key(tuple(key_path)) if self.translation is not None else None

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


class _InputLimit(Exception):
    """A recipe past one of the limits on input (recipe_checks.limits), at a node of the YAML."""

    def __init__(self, message: str, help: str, mark: yaml.Mark | None) -> None:
        super().__init__(message)
        self.help = help
        self.mark = mark


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that stops composing past MAX_YAML_DEPTH levels: the composer recurses per level,
    so a deeply nested file would otherwise end in a RecursionError."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise _InputLimit(*_too_deep(), self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


# How a tool's YAML loader reads a plain scalar; recipe_checks.formats names the one each format's tool uses.
# PyYAML's safe loading follows YAML 1.1, where `2e-5` (no dot) is a string: recipes, TRL (yaml.safe_load), Axolotl.
PYYAML = "pyyaml"
# OmegaConf.load (LLaMA-Factory's read_args): SafeLoader plus YAML 1.2's floats (`2e-5`, `1E+3`, `.5e-3`) and no
# timestamps (omegaconf/_utils.py get_yaml_loader, 2.3). Safe loading all the same: only the resolver differs.
OMEGACONF = "omegaconf"
_YAML_1_2_FLOAT = re.compile(r"""^(?:
     [-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+][0-9]+)?
    |[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X)


class _OmegaConfLoader(_BoundedLoader):
    """_BoundedLoader resolving plain scalars as OmegaConf.load does."""


_OmegaConfLoader.add_implicit_resolver("tag:yaml.org,2002:float", _YAML_1_2_FLOAT, list("-+0123456789."))
_OmegaConfLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in _OmegaConfLoader.yaml_implicit_resolvers.items()
}
_LOADERS = {PYYAML: _BoundedLoader, OMEGACONF: _OmegaConfLoader}


def _too_deep() -> tuple[str, str]:
    return (
        f"the recipe nests deeper than {MAX_YAML_DEPTH} levels",
        "a recipe nests a few levels (section, key, value); flatten the structure",
    )


def _measure(root: yaml.Node) -> None:
    """Refuse, before anything is constructed, a document that expands past the limits: aliases and
    merge keys are counted as often as they are used (a "billion laughs" file is 1 KiB of text and
    10^9 nodes), an alias inside its own anchor is a recursive structure, and over-long keys and
    strings are refused at their line. Free text no check reads (FREE_TEXT_KEYS: chat templates, system
    prompts) may be longer, and past MAX_TEXT_CHARS is cut instead of refusing the file."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()

    def size(node: yaml.Node, depth: int, is_key: bool = False, free_text: bool = False) -> int:
        if depth > MAX_YAML_DEPTH:
            raise _InputLimit(*_too_deep(), node.start_mark)
        if isinstance(node, yaml.ScalarNode):  # checked at each use: an alias may put it under another key
            if free_text and len(node.value) > MAX_TEXT_CHARS:
                node.value = node.value[:MAX_TEXT_CHARS]  # never read: cut, so that no value holds more
            limit, what = (MAX_KEY_CHARS, "key") if is_key else (MAX_TEXT_CHARS if free_text else MAX_STRING_CHARS, "value")
            if len(node.value) > limit:
                raise _InputLimit(
                    f"a {what} of {len(node.value):,} characters ('{shorten(node.value, 40)}'), more than the {limit:,} "
                    f"a recipe {what} may have",
                    "recipe keys are argument names and values are short ids, paths and numbers: shorten it "
                    f"(free text under {', '.join(sorted(FREE_TEXT_KEYS))} may run to {MAX_TEXT_CHARS:,} characters)",
                    node.start_mark,
                )
            return 1
        ident = id(node)
        if ident in sizes:
            return sizes[ident]
        if ident in on_path:
            raise _InputLimit(
                "an alias refers to the collection it is part of: the recipe is a recursive structure",
                "replace the alias (*name) inside its own anchor (&name) with the values themselves",
                node.start_mark,
            )
        on_path.add(ident)
        total = 1
        children = node.value if isinstance(node, yaml.SequenceNode) else [c for pair in node.value for c in pair]
        mapping = isinstance(node, yaml.MappingNode)
        for i, child in enumerate(children):
            text_value = (mapping and i % 2 == 1 and isinstance(children[i - 1], yaml.ScalarNode)
                          and children[i - 1].value in FREE_TEXT_KEYS)
            total += size(child, depth + 1, is_key=mapping and i % 2 == 0, free_text=text_value)
            if total > MAX_YAML_NODES:
                raise _InputLimit(
                    f"the recipe expands to more than {MAX_YAML_NODES:,} YAML nodes once its aliases (*name) "
                    "and merge keys (<<) are expanded",
                    "a recipe has a few hundred values; write the values out instead of repeating aliases of aliases",
                    node.start_mark,
                )
        on_path.discard(ident)
        sizes[ident] = total
        return total

    size(root, 1)


def _span(node: yaml.Node) -> Span:
    start, end = node.start_mark, node.end_mark
    return Span(start.line + 1, start.column + 1, end.line + 1, end.column + 1)


def _index(node: yaml.Node, path: KeyPath, loaded: LoadedRecipe) -> None:
    loaded.value_spans[path] = _span(node)
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, str] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node.value)
            child = (*path, key)
            # The same key once loaded (1, 1.0, 0x1 and true are one dict key in Python) or once
            # written as a string (1 and '1'): either way one of the values is not the one read.
            identities = (("text", key), ("value", _key_value(key_node)))
            first = next((seen[i] for i in identities if i in seen), None)
            if first is not None:
                loaded.duplicate_keys.append(child)
                loaded.duplicate_of[child] = first
            for identity in identities:
                seen.setdefault(identity, key)
            loaded.key_spans[child] = _span(key_node)
            _index(value_node, child, loaded)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _index(item, (*path, i), loaded)


_KEY_CONSTRUCTOR = yaml.constructor.SafeConstructor()


def _key_value(key_node: yaml.Node) -> Any:
    """The Python value a scalar key loads as (True for `true`, 1 for `0x1`)."""
    if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
        return ("node", key_node.tag, str(key_node.value))
    try:
        value = _KEY_CONSTRUCTOR.construct_object(key_node)
        hash(value)
    except Exception:  # a key the constructor cannot make was refused when the document was built
        return ("node", key_node.tag, key_node.value)
    finally:
        _KEY_CONSTRUCTOR.constructed_objects.clear()
    if isinstance(value, float) and value != value:  # NaN equals nothing, not even itself
        return ("nan",)
    return value


def looks_like_recipe(text: str, marker_key: str = "model") -> bool:
    """Whether a YAML text has a top-level ``marker_key``, or the top-level keys of a config of another
    tool recipe-checks reads (recipe_checks.formats), without trusting it to parse; and is no config of a
    kind that is not a recipe (a torchtune config's `model:` builds a `_component_`: recipe_checks.formats.kinds)."""
    from recipe_checks.formats import FORMATS, detect
    from recipe_checks.formats.kinds import other_kind

    keys = [m.group("key") for m in _TOP_LEVEL_KEY.finditer(text)]
    return (marker_key in keys or detect(keys) in FORMATS) and other_kind(text) is None


def load_text(text: str, path: str, yaml_reading: str = PYYAML) -> LoadedRecipe:
    """The file's text loaded with safe loading, bounded; `yaml_reading` (PYYAML, OMEGACONF): how plain
    scalars are read, as the tool that reads the file does."""
    loader = None
    try:
        loader = _LOADERS[yaml_reading](text)  # the reader rejects control characters here already
        node = loader.get_single_node()
        if node is None:
            raise RecipeLoadError(_not_a_mapping(path, "the file is empty"))
        _measure(node)
        data = loader.construct_document(node)
    except _InputLimit as exc:
        line, column = (exc.mark.line + 1, exc.mark.column + 1) if exc.mark else (1, 1)
        raise RecipeLoadError(
            Finding("RC101", f"{exc} (see 'Limits on input' in the README)", Location(path, line, column, column + 1),
                    check="schema", why="recipe-checks bounds what it reads so that one file cannot exhaust "
                    "the time or memory of the session", help=exc.help)
        ) from None
    except RecursionError:  # cannot happen below MAX_YAML_DEPTH; kept so that no input ends in a traceback
        raise RecipeLoadError(
            Finding("RC101", f"the file nests too deeply to be read: {_too_deep()[0]}", Location(path, 1, 1, 1),
                    check="schema", help=_too_deep()[1])
        ) from None
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


def read_recipe_text(path: str | Path, display_path: str | None = None) -> str:
    """A recipe file's text: a regular file of at most MAX_RECIPE_BYTES, decoded as UTF-8 (UTF-16 and
    UTF-32 by their byte-order mark). Anything else raises RecipeLoadError with an RC101 finding."""
    shown = display_path or str(path)
    try:
        return decode_text(read_bounded(path, MAX_RECIPE_BYTES, "recipe"), "recipe")
    except InputRefused as exc:
        line = exc.line
        raise RecipeLoadError(
            Finding("RC101", str(exc), Location(shown, line, 1 if line else 0, 2 if line else 0),
                    check="schema", why="a recipe that cannot be read cannot be checked", help=exc.help)
        ) from None


def load_recipe_file(path: str | Path, display_path: str | None = None) -> LoadedRecipe:
    shown = display_path or str(path)
    return load_text(read_recipe_text(path, shown), shown)


def _syntax_finding(path: str, exc: yaml.MarkedYAMLError) -> Finding:
    mark = exc.problem_mark or exc.context_mark
    line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
    problem = exc.problem or "invalid YAML"
    context = f" ({exc.context})" if exc.context else ""
    hint = "check the indentation and the quoting on this line and the one above it"
    if "\t" in (exc.problem or "") or "tab" in problem:
        hint = "YAML does not allow tabs for indentation: indent with spaces"
    if "constructor for the tag" in problem:
        hint = ("recipes are loaded with YAML safe loading, which never builds Python objects: remove the tag "
                "and write the plain value")
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
