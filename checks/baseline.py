"""The regression gate's baseline: a recipe's traced peak and throughput ceiling at a git REF, or as
a `recipe-checks estimate --json` file recorded them, to compare the recipe as it is now against.

A baseline file holds one or more JSON values back to back (so `for f in recipes/*.yaml; do
recipe-checks estimate "$f" --json --no-fixes; done > baseline.json` writes one); each value is an
estimate object, a list of them, or an object mapping recipe paths to them. An estimate object needs
`recipe` (unless keyed by its path), `gpu`, `peak_bytes`, `budget_bytes` and `fits`;
`ceiling_tokens_per_second` is compared when present. Objects with an `error` key are skipped.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path

from recipe_checks.changed import ChangedSinceError, git, repository_of, verify_commit


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
    return spec.endswith(".json") or Path(spec).is_file()


def check_baseline(spec: str, anchor: Path) -> None:
    """Fail early, saying why, on a baseline that cannot be read (the plugin and CLI call it once)."""
    if is_file_baseline(spec):
        load_file(Path(spec))
        return
    try:
        verify_commit(repository_of(anchor), spec)
    except ChangedSinceError as exc:
        raise BaselineError(str(exc)) from None


_LOCK = threading.Lock()
_FILES: dict[Path, dict[tuple[str, str], Figures]] = {}


def load_file(path: Path) -> dict[tuple[str, str], Figures]:
    """A baseline file as (resolved recipe path, GPU key) -> figures; BaselineError when unreadable."""
    key = path.resolve()
    with _LOCK:
        if key in _FILES:
            return _FILES[key]
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BaselineError(f"cannot read the baseline file {path}: {exc}") from None
    decoder = json.JSONDecoder()
    values, at = [], 0
    while True:
        while at < len(text) and text[at].isspace():
            at += 1
        if at >= len(text):
            break
        try:
            value, at = decoder.raw_decode(text, at)
        except json.JSONDecodeError as exc:
            raise BaselineError(f"{path}:{exc.lineno}:{exc.colno}: not JSON ({exc.msg}); write the file with "
                                "`recipe-checks estimate RECIPE --json`") from None
        values.append(value)
    entries: list[tuple[str | None, object]] = []
    for value in values:
        if isinstance(value, list):
            entries += [(None, v) for v in value]
        elif isinstance(value, dict) and "peak_bytes" not in value and "error" not in value:
            entries += list(value.items())
        else:
            entries.append((None, value))
    figures: dict[tuple[str, str], Figures] = {}
    for number, (recipe_key, entry) in enumerate(entries, 1):
        if isinstance(entry, dict) and "error" in entry and "peak_bytes" not in entry:
            continue  # `estimate --json` could not trace that recipe: nothing to compare it with
        try:
            recipe = recipe_key if recipe_key is not None else entry["recipe"]
            gpu = entry["gpu"]
            ceiling = entry.get("ceiling_tokens_per_second")
            found = Figures(int(entry["peak_bytes"]), int(entry["budget_bytes"]), bool(entry["fits"]),
                            float(ceiling) if ceiling is not None else None, str(path))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise BaselineError(
                f"{path}: estimate #{number} lacks a readable {exc} (each needs recipe, gpu, peak_bytes, "
                "budget_bytes, fits: the keys `recipe-checks estimate --json` writes)") from None
        recipe_path = Path(str(recipe))
        base = path.resolve().parent if not recipe_path.is_absolute() and not recipe_path.exists() else Path.cwd()
        figures[((base / recipe_path).resolve().as_posix(), str(gpu))] = found
    with _LOCK:
        _FILES[key] = figures
    return figures


def baseline_for(state, gpu, spec: str) -> Figures | str:
    """The recipe's figures in the baseline, or a sentence saying why there are none to compare."""
    if is_file_baseline(spec):
        found = load_file(Path(spec)).get((state.fs_path.resolve().as_posix(), gpu.key))
        return found or f"{spec} has no estimate of {state.path} on {gpu.key}"
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
