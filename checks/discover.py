"""Find recipe files under paths, as pytest collection does: *.yaml/*.yml with a top-level key."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from recipe_checks.limits import MAX_RECIPE_BYTES
from recipe_checks.recipe.load import RecipeLoadError, looks_like_recipe, read_recipe_text

SUFFIXES = (".yaml", ".yml")


def discover_recipes(paths: list[str], marker_key: str = "model") -> Iterator[Path]:
    """Files named explicitly are recipes whatever they hold; directories are searched recursively."""
    for raw in paths:
        path = Path(raw)
        if path.exists() and not path.is_dir():  # a FIFO or a device too: its check says why it is not read
            yield path
            continue
        for candidate in sorted(p for p in path.rglob("*") if p.suffix in SUFFIXES and p.is_file()):
            if any(part.startswith(".") for part in candidate.relative_to(path).parts):
                continue
            if is_recipe_file(candidate, marker_key):
                yield candidate


def is_recipe_file(path: Path, marker_key: str = "model") -> bool:
    """Whether a file found in a directory is a recipe: read as a recipe is read (BOMs, UTF-16), or,
    when that is refused (too large, binary), sniffed in its first bytes, so the refusal is reported
    for a file that looks like a recipe instead of the file vanishing from the run."""
    try:
        return looks_like_recipe(read_recipe_text(path), marker_key)
    except RecipeLoadError:
        pass
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except (OSError, ValueError):
        return False
    try:
        head = os.read(fd, MAX_RECIPE_BYTES)
    except OSError:
        return False
    finally:
        os.close(fd)
    return looks_like_recipe(head.decode("utf-8", errors="replace"), marker_key)
