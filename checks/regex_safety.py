"""Whether a regular expression from a recipe is safe to match against every module name of a model.

peft treats a string `target_modules`, `exclude_modules`, `layers_pattern` and the keys of
`rank_pattern`/`alpha_pattern` as regexes and matches them with Python's backtracking engine;
nested or overlapping repeats make that exponential, so such patterns are refused before use.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

from recipe_checks.limits import MAX_NESTED_REPEAT_PRODUCT, MAX_PATTERN_CHARS, MAX_UNBOUNDED_REPEATS, shorten

# The one touch of a private stdlib API: the regex parser's tree (re._parser since Python 3.11,
# sre_parse before, which 3.11+ deprecates). Ops are compared by name, which both versions share.
try:
    from re import _parser as _sre_parse  # Python >= 3.11
except ImportError:  # pragma: no cover - Python 3.10
    import sre_parse as _sre_parse  # type: ignore[no-redef]

_MAXREPEAT = _sre_parse.MAXREPEAT
_BACKTRACKING_REPEATS = {"MAX_REPEAT", "MIN_REPEAT"}  # POSSESSIVE_REPEAT (3.11+) never backtracks
_ANY = None  # a first-character set that may hold any character

# Keys of the lora section whose string values peft compiles as regexes.
_REGEX_VALUED = ("target_modules", "exclude_modules", "layers_pattern")
_REGEX_KEYED = ("rank_pattern", "alpha_pattern")
_OVERLAP = (
    "it repeats a group whose alternatives can match the same text or nothing (like `(a|ab)*`), "
    "which splits a name in exponentially many ways"
)


def unsafe_regex_reason(pattern: str) -> str | None:
    """Why `pattern` cannot be matched safely (invalid, too long, or able to backtrack
    catastrophically), or None when it is safe."""
    if len(pattern) > MAX_PATTERN_CHARS:
        return f"it is {len(pattern):,} characters long; at most {MAX_PATTERN_CHARS} are accepted"
    try:
        re.compile(pattern)
        tree = _sre_parse.parse(pattern)
    except re.error as exc:
        return f"it is not a valid regular expression: {exc}"
    except (RecursionError, OverflowError, ValueError) as exc:
        return f"it is not a regular expression Python can compile: {type(exc).__name__}"
    walk = _Walk(ignore_case=bool(re.compile(pattern).flags & re.IGNORECASE))
    walk.items(list(tree), in_star=False)
    if walk.problem:
        return walk.problem
    if walk.unbounded > MAX_UNBOUNDED_REPEATS:
        return (
            f"it has {walk.unbounded} unbounded repeats (`*`, `+`, `{{n,}}`); each one multiplies the "
            f"backtracking over a module name, and at most {MAX_UNBOUNDED_REPEATS} are accepted"
        )
    return None


def lora_patterns(lora: Mapping[str, Any]) -> Iterator[tuple[tuple[Any, ...], str]]:
    """(key path, pattern) of every regex a lora section hands to peft."""
    for key in _REGEX_VALUED:
        value = lora.get(key)
        if key == "target_modules" and isinstance(value, str) and value.lower() == "all-linear":
            continue
        if isinstance(value, str):
            yield ("lora", key), value
        elif key == "layers_pattern" and isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, str):
                    yield ("lora", key, i), item
    for key in _REGEX_KEYED:
        value = lora.get(key)
        if isinstance(value, Mapping):
            for pattern in value:
                if isinstance(pattern, str):
                    yield ("lora", key, pattern), pattern


def lora_pattern_problems(lora: Mapping[str, Any]) -> list[tuple[tuple[Any, ...], str, str]]:
    """(key path, pattern, reason) for each unsafe regex in a lora section."""
    out = []
    for key_path, pattern in lora_patterns(lora):
        reason = unsafe_regex_reason(pattern)
        if reason:
            out.append((key_path, pattern, reason))
    return out


class UnsafePatternError(ValueError):
    """A lora section holding a regex that is not matched (reported by RC103 at its key)."""


def unsafe_pattern_error(lora: Mapping[str, Any]) -> UnsafePatternError | None:
    """The error for the first unsafe regex of a lora section, for code about to match them."""
    problems = lora_pattern_problems(lora)
    return UnsafePatternError(describe_problem(*problems[0])) if problems else None


def describe_problem(key_path: tuple[Any, ...], pattern: str, reason: str) -> str:
    where = ".".join(str(p) for p in key_path[:2])
    return f"{where}: the regex '{shorten(pattern)}' is refused: {reason}"


class _Walk:
    """One pass over the parse tree: nested repeats, overlapping repeated alternatives, and the
    number of unbounded repeats."""

    def __init__(self, ignore_case: bool) -> None:
        self.ignore_case = ignore_case
        self.unbounded = 0
        self.problem: str | None = None

    def items(self, items: list, in_star: bool, multiplicity: int = 1) -> None:
        """`in_star`: inside an unbounded backtracking repeat; `multiplicity`: how many times the
        bounded repeats around these items repeat them."""
        for op, av in items:
            name = str(op)
            if name in _BACKTRACKING_REPEATS:
                low, high, body = av
                choice = low != high  # `{3}` repeats without choosing how often
                if choice and in_star:
                    self._refuse(
                        "it nests a repeat inside an unbounded repeat (like `(a+)*`), which backtracks "
                        "exponentially on a name that almost matches"
                    )
                if high == _MAXREPEAT:
                    self.unbounded += multiplicity
                inner = multiplicity * (high if high != _MAXREPEAT else 1)
                if choice and multiplicity > 1 and inner > MAX_NESTED_REPEAT_PRODUCT:
                    self._refuse(
                        f"its nested repeats try up to {inner:,} ways to split a name; at most "
                        f"{MAX_NESTED_REPEAT_PRODUCT:,} are accepted"
                    )
                if choice and high > 1:
                    self._overlapping_alternatives(list(body))
                self.items(list(body), in_star or high == _MAXREPEAT, inner)
            elif name == "POSSESSIVE_REPEAT":
                self.items(list(av[2]), in_star, multiplicity)
            elif name == "SUBPATTERN":
                self.items(list(av[-1]), in_star, multiplicity)
            elif name == "BRANCH":
                for branch in av[1]:
                    self.items(list(branch), in_star, multiplicity)
            elif name in ("ASSERT", "ASSERT_NOT"):
                self.items(list(av[1]), in_star, multiplicity)
            elif name == "ATOMIC_GROUP":
                self.items(list(av), in_star, multiplicity)
            elif name == "GROUPREF_EXISTS":
                for branch in av[1:]:
                    if branch is not None:
                        self.items(list(branch), in_star, multiplicity)

    def _refuse(self, reason: str) -> None:
        self.problem = self.problem or reason

    def _overlapping_alternatives(self, body: list) -> None:
        """A repeated group whose alternatives can start with the same character (or be empty)
        splits a name in exponentially many ways: `(a|ab)*`, `(\\w|_)+`."""
        for op, av in body:
            name = str(op)
            if name == "SUBPATTERN":
                self._overlapping_alternatives(list(av[-1]))
            elif name == "BRANCH":
                firsts = []
                for branch in av[1]:
                    chars, nullable = self._first(list(branch))
                    if nullable:
                        self._refuse(_OVERLAP)
                        return
                    firsts.append(chars)
                for i, a in enumerate(firsts):
                    for b in firsts[i + 1:]:
                        if a is _ANY or b is _ANY or a & b:
                            self._refuse(_OVERLAP)
                            return

    def _first(self, items: list) -> tuple[frozenset[int] | None, bool]:
        """The characters a sequence can start with (None: any) and whether it can match nothing."""
        chars: set[int] = set()
        for op, av in items:
            name = str(op)
            if name in ("AT", "ASSERT", "ASSERT_NOT"):
                continue  # zero-width
            if name == "LITERAL":
                chars |= self._cased({av})
                return frozenset(chars), False
            if name == "IN":
                if any(str(o) in ("NEGATE", "CATEGORY") for o, _ in av):
                    return _ANY, False
                for o, a in av:
                    if str(o) == "LITERAL":
                        chars |= self._cased({a})
                    elif str(o) == "RANGE":
                        if a[1] - a[0] > 256:
                            return _ANY, False
                        chars |= self._cased(set(range(a[0], a[1] + 1)))
                return frozenset(chars), False
            if name in ("SUBPATTERN", "ATOMIC_GROUP"):
                inner, nullable = self._first(list(av[-1] if name == "SUBPATTERN" else av))
            elif name in _BACKTRACKING_REPEATS or name == "POSSESSIVE_REPEAT":
                inner, nullable = self._first(list(av[2]))
                nullable = nullable or av[0] == 0
            elif name == "BRANCH":
                inner, nullable = frozenset(), False
                for branch in av[1]:
                    b, n = self._first(list(branch))
                    if b is _ANY:
                        return _ANY, False
                    inner, nullable = inner | b, nullable or n
            else:  # ANY, NOT_LITERAL, CATEGORY, GROUPREF...: anything
                return _ANY, False
            if inner is _ANY:
                return _ANY, False
            chars |= inner
            if not nullable:
                return frozenset(chars), False
        return frozenset(chars), True

    def _cased(self, codes: set[int]) -> set[int]:
        if not self.ignore_case:
            return codes
        return codes | {ord(chr(c).swapcase()) for c in codes if len(chr(c).swapcase()) == 1}
