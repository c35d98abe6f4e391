"""The regression gate's baseline: a recipe's traced peak and throughput ceiling at a git REF, or as
a `recipe-checks estimate --json` file recorded them, to compare the recipe as it is now against.

A baseline file holds one or more JSON values back to back (so `for f in recipes/*.yaml; do
recipe-checks estimate "$f" --json --no-fixes; done > baseline.json` writes one); each value is an
estimate object, a list of them, or an object mapping recipe paths to them. An estimate object needs
`recipe` (unless keyed by its path), `gpu`, `peak_bytes`, `budget_bytes` and `fits`;
`ceiling_tokens_per_second` is compared when present. Objects with an `error` key are skipped.

The file is read as hostile input: only a regular file of at most MAX_BASELINE_BYTES is opened (a FIFO
or a device would block the run), and each value the gate compares is checked for its exact JSON type
(the string "false" is no boolean, Infinity and 1e400 are no byte counts): a file that does not hold
what `estimate --json` writes is a usage error that says which estimate, which key and how to fix it.
"""

from __future__ import annotations

import json
import math
import os
import stat
import threading
from dataclasses import dataclass, replace
from pathlib import Path

from recipe_checks.changed import ChangedSinceError, git, repository_of, verify_commit
from recipe_checks.limits import MAX_INT, InputRefused, decode_text, read_bounded, shorten
from recipe_checks.shown import shown

# One `estimate --json` object is about 1 KiB: 64 MiB holds the estimates of tens of thousands of recipes.
MAX_BASELINE_BYTES = 64 * 1024 * 1024
# A byte count is at most MAX_INT (19 digits); longer integers are not converted (Python refuses past
# 4,300 digits, and converting is quadratic in the digits below that).
_MAX_DIGITS = 24
# A usage error lists this many of the unusable estimates, then counts the rest.
_PROBLEMS_SHOWN = 5
_HOW_TO_WRITE = "write the file with `recipe-checks estimate RECIPE --json`, one run a recipe appended to it"


class BaselineError(Exception):
    """A baseline that cannot be used at all (no such REF, an unreadable file): a usage error."""


@dataclass(frozen=True)
class Figures:
    """What the gate compares, for one recipe on one GPU."""

    peak_bytes: int
    budget_bytes: int
    fits: bool
    tokens_per_second: float | None
    source: str  # where the figures come from, as shown in a finding: "main:recipes/x.yaml", "base.json"


def is_file_baseline(spec: str) -> bool:
    """Whether `spec` names a baseline file (a name ending in .json, or a regular file) rather than a git REF.
    A path the file system refuses (a NUL byte, too long) names no file."""
    if spec.endswith(".json"):
        return True
    try:
        return stat.S_ISREG(os.stat(spec).st_mode)
    except (OSError, ValueError):
        return False


def check_baseline(spec: str, anchor: Path) -> None:
    """Fail early, saying why, on a baseline that cannot be read, or that names both a file and a commit
    (the plugin and CLI call it once, before any recipe is checked)."""
    if is_file_baseline(spec):
        _refuse_file_and_commit(spec, anchor)
        load_file(Path(spec))
        return
    try:
        verify_commit(repository_of(anchor), spec)
    except ChangedSinceError as exc:
        raise BaselineError(shown(str(exc).replace(f"'{spec}'", f"'{_quoted(spec)}'"))) from None


def _quoted(text: str) -> str:
    """Text from the command line or the file as a message shows it: short, one line, printable."""
    return shown(shorten(text))


def _path_shown(path: Path | str) -> str:
    """A file or folder path as a message shows it: whole unless absurdly long, one line, printable."""
    return shown(shorten(str(path), 400))


def _refuse_file_and_commit(spec: str, anchor: Path) -> None:
    """A file named like a branch (`main` in the working directory) would silently win over the branch:
    where `spec` is both, neither is guessed; the message says how to name each."""
    if not os.path.lexists(spec):
        return  # a name ending in .json that names no file: reading it says so
    try:
        root = repository_of(anchor)
        verify_commit(root, spec)
    except ChangedSinceError:
        return  # no repository, or no such commit: the file it is
    try:
        names = [n for n in git(root, "rev-parse", "--symbolic-full-name", "--end-of-options", spec).split()
                 if n != "--end-of-options"]  # git 2.39 echoes the separator
    except ChangedSinceError:
        names = []
    commit = f"the {'tag' if names[0].startswith('refs/tags/') else 'ref'} {names[0]}" if names else "a commit"
    path = Path(spec)
    as_file = spec if path.is_absolute() or spec.startswith(("./", "../")) else f"./{spec}"
    raise BaselineError(
        f"'{_quoted(spec)}' names both the baseline file {_path_shown(path.absolute())} and {commit} of the "
        f"repository at {_path_shown(root)}, and it is not guessed which is meant; write {_quoted(as_file)} to "
        f"compare with the file, or {_quoted(spec)}^{{commit}} to compare with the commit")


_LOCK = threading.Lock()
_FILES: dict[Path, dict[tuple[str, str], Figures]] = {}


def load_file(path: Path) -> dict[tuple[str, str], Figures]:
    """A baseline file as (resolved recipe path, GPU key) -> figures; BaselineError when unreadable."""
    try:
        raw = read_bounded(path, MAX_BASELINE_BYTES, "baseline")
    except InputRefused as exc:  # says which file and what it is (a FIFO, a directory, too large, missing)
        raise BaselineError(f"{shown(str(exc))}; {exc.help}") from None
    try:
        text = decode_text(raw, "baseline file")
    except InputRefused as exc:
        line = f":{exc.line}" if exc.line else ""
        raise BaselineError(f"{_path_shown(path)}{line}: {shown(str(exc))}; {exc.help}") from None
    try:
        key = path.resolve()
    except (OSError, ValueError) as exc:  # a path the read accepted: not expected, never a traceback
        raise BaselineError(f"cannot read the baseline file {_path_shown(path)}: {shown(str(exc))}") from None
    with _LOCK:
        if key in _FILES:
            return _FILES[key]
    figures: dict[tuple[str, str], Figures] = {}
    problems: list[str] = []
    for number, (recipe_key, entry) in enumerate(_entries(_values(text, path)), 1):
        if isinstance(entry, dict) and "error" in entry and "peak_bytes" not in entry:
            continue  # `estimate --json` could not trace that recipe: nothing to compare it with
        try:
            (recipe, gpu), found = _figures(recipe_key, entry, path)
        except _Unusable as exc:
            problems.append(f"estimate #{number} {exc}{exc.recipe}")
            continue
        figures[(recipe, gpu)] = found
    if problems:
        more = len(problems) - _PROBLEMS_SHOWN
        raise BaselineError(
            f"{_path_shown(path)}: " + "; ".join(problems[:_PROBLEMS_SHOWN]) + (f"; and {more} more" if more > 0 else "")
            + ". Each estimate needs recipe, gpu, peak_bytes, budget_bytes and fits of the types `recipe-checks "
              f"estimate --json` writes: fix the values, or {_HOW_TO_WRITE}")
    with _LOCK:
        _FILES[key] = figures
    return figures


class _Unreadable:
    """A JSON number no figure can be: a NaN or Infinity literal (Python's json reads them; JSON has none),
    a float beyond the largest double (1e400), an integer of more digits than any byte count (left
    unconverted: Python refuses past 4,300 digits, and converting is quadratic below that)."""

    def __init__(self, description: str) -> None:
        self.description = description


def _parse_int(text: str) -> int | _Unreadable:
    return int(text) if len(text) <= _MAX_DIGITS else _Unreadable(f"a {len(text.lstrip('-')):,}-digit number")


def _parse_float(text: str) -> float | _Unreadable:
    value = float(text)
    return value if math.isfinite(value) else _Unreadable(f"{shorten(text, 40)} (beyond the largest float)")


def _parse_constant(text: str) -> _Unreadable:
    return _Unreadable(f"{text} (not a JSON number)")


def _values(text: str, path: Path) -> list[object]:
    """The JSON values of the file, back to back (what a shell loop of `estimate --json` appends)."""
    decoder = json.JSONDecoder(parse_int=_parse_int, parse_float=_parse_float, parse_constant=_parse_constant)
    values, at = [], 0
    while True:
        while at < len(text) and text[at].isspace():
            at += 1
        if at >= len(text):
            return values
        try:
            value, at = decoder.raw_decode(text, at)
        except json.JSONDecodeError as exc:
            raise BaselineError(f"{_path_shown(path)}:{exc.lineno}:{exc.colno}: not JSON ({exc.msg}); "
                                f"{_HOW_TO_WRITE}") from None
        except RecursionError:
            line = text.count("\n", 0, at) + 1
            raise BaselineError(f"{_path_shown(path)}:{line}: the JSON value there nests arrays or objects too deeply "
                                "to be read (an `estimate --json` object nests three levels at most); "
                                f"{_HOW_TO_WRITE}") from None
        values.append(value)


def _entries(values: list[object]) -> list[tuple[str | None, object]]:
    """(the recipe path a mapping keys it by, or None; the estimate) for each estimate of the values."""
    entries: list[tuple[str | None, object]] = []
    for value in values:
        if isinstance(value, list):
            entries += [(None, v) for v in value]
        elif isinstance(value, dict) and "peak_bytes" not in value and "error" not in value:
            entries += list(value.items())
        else:
            entries.append((None, value))
    return entries


class _Unusable(Exception):
    """One estimate of a baseline file that cannot be compared with: what is wrong with it."""

    def __init__(self, message: str, recipe: object = None) -> None:
        super().__init__(message)
        self.recipe = f" (recipe {_quoted(recipe)})" if isinstance(recipe, str) else ""


def _figures(recipe_key: str | None, entry: object, path: Path) -> tuple[tuple[str, str], Figures]:
    """The (resolved recipe path, GPU key) and figures of one estimate, each value of its exact JSON type."""
    if not isinstance(entry, dict):
        raise _Unusable(f"is {_described(entry)}, not an estimate object", recipe_key)
    recipe = recipe_key if recipe_key is not None else entry.get("recipe")

    def lacks(key: str, why: str) -> _Unusable:
        return _Unusable(f"lacks a readable {key}: {why}", recipe)

    if recipe_key is None and "recipe" not in entry:
        raise lacks("recipe", "the key is missing (or key the estimate by its recipe path)")
    if not isinstance(recipe, str) or not recipe:
        raise lacks("recipe", f"{_described(recipe)} is not a path to a recipe file")
    resolved = _resolved_recipe(recipe, path, lacks)
    gpu = entry.get("gpu")
    if not isinstance(gpu, str) or not gpu:
        raise lacks("gpu", "the key is missing" if "gpu" not in entry else
                    f"{_described(gpu)} is not a GPU key such as \"rtx4090\"")
    peak, budget = (_byte_count(entry, key, lacks) for key in ("peak_bytes", "budget_bytes"))
    fits = entry.get("fits")
    if not isinstance(fits, bool):
        raise lacks("fits", "the key is missing" if "fits" not in entry else
                    f"{_described(fits)} is not true or false (write the JSON literal, without quotes)")
    ceiling = entry.get("ceiling_tokens_per_second")
    if ceiling is not None and (isinstance(ceiling, bool) or not isinstance(ceiling, (int, float)) or ceiling < 0):
        raise lacks("ceiling_tokens_per_second", f"{_described(ceiling)} is not a finite number of tokens a second "
                    "at least 0 (or null: no ceiling to compare)")
    return (resolved, gpu), Figures(peak, budget, fits, None if ceiling is None else float(ceiling), str(path))


def _byte_count(entry: dict, key: str, lacks) -> int:
    value = entry.get(key)
    if key not in entry:
        raise lacks(key, "the key is missing")
    if isinstance(value, bool) or not isinstance(value, int):
        raise lacks(key, f"{_described(value)} is not a whole number of bytes")
    if not 0 <= value <= MAX_INT:
        raise lacks(key, f"{value:,} is not a byte count from 0 to {MAX_INT:,}")
    return value


def _resolved_recipe(recipe: str, path: Path, lacks) -> str:
    """The recipe path as the gate looks it up: a relative path that exists here is relative to the working
    directory, else to the baseline file's folder."""
    if "\0" in recipe:
        raise lacks("recipe", "the path holds a NUL character, which no file name can")
    recipe_path = Path(recipe)
    try:
        base = path.resolve().parent if not recipe_path.is_absolute() and not recipe_path.exists() else Path.cwd()
        return (base / recipe_path).resolve().as_posix()
    except (OSError, ValueError) as exc:  # ENAMETOOLONG, ELOOP: no recipe has this path
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise lacks("recipe", f"a path of {len(recipe):,} characters that cannot name a file here ({shown(why)})") from None


def _described(value: object) -> str:
    """A JSON value as a message quotes it: short, one line, its type plain (no nesting walked)."""
    if isinstance(value, _Unreadable):
        return value.description
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return f"the string {json.dumps(shorten(value, 60))}"  # json.dumps escapes controls and line separators
    return "an object" if isinstance(value, dict) else "a list" if isinstance(value, list) else type(value).__name__


def baseline_for(state, gpu, spec: str) -> Figures | str:
    """The recipe's figures in the baseline, or a sentence saying why there are none to compare."""
    if is_file_baseline(spec):
        found = load_file(Path(spec)).get((state.fs_path.resolve().as_posix(), gpu.key))
        if found is None:
            return f"{spec} has no estimate of {state.path} on {gpu.key}"
        return replace(found, source=spec)  # as the run names it: `./main` is the file, `main` would read as the branch
    return _at_ref(state, gpu, spec)


_REF_CACHE: dict[tuple[str, str, str, str | None], Figures | str] = {}


def _at_ref(state, gpu, ref: str) -> Figures | str:
    """The recipe's text at REF (`git show REF:path`), traced as the recipe is now. Cached by the recipe's
    current text too: whether it is unchanged since REF depends on it (one process may check it twice)."""
    now = state.loaded.text if state.loaded is not None else None
    key = (ref, state.fs_path.resolve().as_posix(), gpu.key, now)
    if key in _REF_CACHE:
        return _REF_CACHE[key]
    _REF_CACHE[key] = result = _trace_at_ref(state, gpu, ref)
    return result


def _trace_at_ref(state, gpu, ref: str) -> Figures | str:
    from recipe_checks.context import RecipeState
    from recipe_checks.memory.errors import TraceError
    from recipe_checks.memory.estimate import estimate
    from recipe_checks.recipe.load import RecipeLoadError, load_text
    from recipe_checks.throughput import recipe_ceiling

    path = state.fs_path.resolve()
    try:
        root = repository_of(path)
        relative = path.relative_to(root).as_posix()
        tracked = git(root, "ls-tree", "--name-only", "--end-of-options", ref, "--", relative).strip()
        if not tracked:
            return f"{state.path} is new since {ref}: nothing to compare with"
        text = git(root, "show", "--end-of-options", f"{ref}:{relative}")
    except (ChangedSinceError, ValueError) as exc:
        return f"cannot read {state.path} at {ref}: {exc}"
    if state.loaded is not None and text == state.loaded.text:
        return f"{state.path} is unchanged since {ref}"
    source = f"{ref}:{relative}"
    try:
        loaded = load_text(text, source)
    except RecipeLoadError as exc:
        return f"{source} cannot be read ({exc.finding.message}): nothing to compare with"
    # a local model directory or config the recipe names is read from the working tree, as it is now
    old = RecipeState(path=source, fs_path=state.fs_path, options=state.options, catalog=state.catalog, loaded=loaded)
    recipe = old.recipe
    if recipe is None or not old.schema_ok:
        return f"{source} does not validate: nothing to compare with"
    resolved = old.resolved_model()
    model = old.meta_model()
    if isinstance(resolved, Exception) or isinstance(model, Exception):
        return f"{source}: its model cannot be built ({resolved if isinstance(resolved, Exception) else model})"
    try:
        traced = estimate(recipe, resolved, gpu, with_fixes=False)
    except TraceError as exc:
        return f"{source} cannot be traced ({exc}): nothing to compare with"
    return Figures(traced.peak_bytes, traced.budget_bytes, traced.fits,
                   recipe_ceiling(recipe, model, gpu).tokens_per_second, source)
