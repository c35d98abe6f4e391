"""Find recipe files under paths, as pytest collection does: *.yaml/*.yml with a top-level key.

The walk is iterative and bounded (MAX_DEPTH): a directory tree thousands of levels deep ends in a note, never
in a RecursionError, and the recipes above the cut are still checked. pytest's own collection is bounded the same
way by `collection_cutoff` (the plugin's pytest_ignore_collect).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from recipe_checks.limits import MAX_RECIPE_BYTES
from recipe_checks.recipe.load import RecipeLoadError, looks_like_recipe, read_recipe_text
from recipe_checks.shown import shown

SUFFIXES = (".yaml", ".yml")
# Directory levels searched below a path given to search: far beyond any project's layout, and far below the
# depth at which pytest's collection, which recurses once a directory level, exceeds Python's recursion limit
# (it collects 450 levels, crashes at 1,500), or a path exceeds the system's PATH_MAX.
MAX_DEPTH = 100


def discover_recipes(paths: list[str], marker_key: str = "model",
                     not_searched: list[str] | None = None,
                     not_recipes: list[tuple[Path, str]] | None = None) -> Iterator[Path]:
    """Files named explicitly are recipes whatever they hold; directories are searched recursively, up to
    MAX_DEPTH levels, hidden directories and directory symlinks left out (a link cannot loop the walk). Each
    part of a tree that was not searched (too deep, unreadable) adds a note to `not_searched` when given, and
    each YAML file left out for a reason worth saying (`not_a_recipe`) a (path, reason) to `not_recipes`."""
    for raw in paths:
        path = Path(raw)
        if path.exists() and not path.is_dir():  # a FIFO or a device too: its check says why it is not read
            yield path
            continue
        candidates, notes = recipe_candidates(path)
        if not_searched is not None:
            not_searched.extend(notes)
        for candidate in candidates:
            recipe, reason = classify(candidate, marker_key)
            if recipe:
                yield candidate
            elif reason is not None and not_recipes is not None:
                not_recipes.append((candidate, reason))


def recipe_candidates(root: Path) -> tuple[list[Path], list[str]]:
    """The *.yaml/*.yml files under `root` (sorted), and notes on what was not searched. Iterative, so the depth
    of a tree costs no stack; directories deeper than MAX_DEPTH below `root` are cut off."""
    found: list[Path] = []
    too_deep: list[Path] = []
    unreadable: list[str] = []
    stack: list[tuple[Path, int]] = [(root, 0)]
    while stack:
        directory, depth = stack.pop()
        try:
            with os.scandir(directory) as entries:
                listed = list(entries)
        except (OSError, ValueError) as exc:  # unreadable, vanished, a name too long for the system
            if directory != root:  # the root itself: as before, the command says it holds no recipe
                unreadable.append(f"{shown(str(directory))} ({getattr(exc, 'strerror', None) or exc})")
            continue
        for entry in listed:
            if entry.name.startswith("."):
                continue
            child = directory / entry.name
            try:
                if entry.is_dir(follow_symlinks=False):
                    if depth + 1 > MAX_DEPTH:
                        too_deep.append(child)
                    else:
                        stack.append((child, depth + 1))
                elif child.suffix in SUFFIXES and entry.is_file():  # a link to a file is followed, as before
                    found.append(child)
            except OSError:  # a looping or dangling link: not a regular file, so no recipe
                continue
    notes = []
    if too_deep:
        first = min(too_deep, key=lambda p: (len(p.parts), str(p)))
        notes.append(f"{len(too_deep)} director{'y' if len(too_deep) == 1 else 'ies'} under {shown(str(root))} not "
                     f"searched: more than {MAX_DEPTH} levels deep (the first: {shown(str(first))}); a recipe there "
                     "is not checked: name its file to check it, or move it up the tree")
    if unreadable:
        notes.append(f"{len(unreadable)} director{'y' if len(unreadable) == 1 else 'ies'} under {shown(str(root))} "
                     f"could not be read, so not searched: {', '.join(unreadable[:3])}"
                     + (f" and {len(unreadable) - 3} more" if len(unreadable) > 3 else ""))
    return sorted(found), notes


def collection_cutoff(path: Path, roots: Iterable[Path]) -> str | None:
    """Why pytest must not collect the directory `path` (None: collect it): more than MAX_DEPTH levels below the
    collection root it is under (pytest recurses once a level and would crash), or a directory symlink to its
    own parent or an ancestor (pytest follows it until the system's symlink limit, collecting every recipe above
    it again at each turn). `roots` are the paths pytest was given, absolute and unresolved as pytest holds them."""
    absolute = Path(os.path.abspath(path))
    depths = [len(absolute.parts) - len(root.parts) for root in roots if absolute.is_relative_to(root)]
    depth = min(depths) if depths else len(absolute.parts)
    if depth > MAX_DEPTH:
        return (f"{shown(str(absolute))}: not searched: more than {MAX_DEPTH} directory levels deep; a recipe there is "
                "not checked: name its file to check it, or move it up the tree")
    try:
        if absolute.is_symlink() and absolute.is_dir():
            target = absolute.resolve(strict=True)
            # an ancestor as it resolves: a link to the parent, to '/', or through another link back (a/l1 -> ../b,
            # b/l2 -> ../a) all loop
            if any(target == ancestor.resolve() for ancestor in absolute.parents):
                return (f"{shown(str(absolute))}: not searched: a directory link to {shown(str(target))}, which "
                        "holds it (a loop); the recipes there are searched once, under their own path")
    except (OSError, RuntimeError):  # a link that cannot be resolved (a loop of links): pytest's to report
        return None
    return None


def is_recipe_file(path: Path, marker_key: str = "model") -> bool:
    """Whether a file found in a directory is a recipe: read as a recipe is read (BOMs, UTF-16), or,
    when that is refused (too large, binary), sniffed in its first bytes, so the refusal is reported
    for a file that looks like a recipe instead of the file vanishing from the run."""
    return classify(path, marker_key)[0]


def classify(path: Path, marker_key: str = "model") -> tuple[bool, str | None]:
    """Whether a YAML file found in a directory is a recipe (`is_recipe_file`), and when it is not, why, where that
    is worth a line of the report (None for the project's other YAML files): an empty file, a file that is not
    text, a file that cannot be read."""
    try:
        text = read_recipe_text(path)
    except RecipeLoadError as exc:
        refused = exc.finding.message
    else:
        if looks_like_recipe(text, marker_key):
            return True, None
        return False, not_a_recipe(text)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except (OSError, ValueError) as exc:
        return False, f"cannot be read: {getattr(exc, 'strerror', None) or exc}"
    try:
        head = os.read(fd, MAX_RECIPE_BYTES)
    except OSError as exc:
        return False, f"cannot be read: {exc.strerror or exc}"
    finally:
        os.close(fd)
    if looks_like_recipe(head.decode("utf-8", errors="replace"), marker_key):
        return True, None
    if not head:
        return False, "an empty file"
    return False, f"cannot be read: {refused.removeprefix('the recipe cannot be read: ')}"


def not_a_recipe(text: str) -> str | None:
    """Why readable YAML text is no recipe, where that is worth saying (None: some other YAML of the project):
    empty, comments only, or the config of another kind (an accelerate or torchtune config: formats.kinds)."""
    from recipe_checks.formats.kinds import classify as other_kind

    if not text.strip() or all(not line.strip() or line.lstrip().startswith("#") for line in text.splitlines()):
        return "an empty file" if not text.strip() else "comments only"
    kind = other_kind(text)
    return f"{kind.description}, {kind.verdict}" if kind is not None else None
