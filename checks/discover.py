"""Find recipe files under paths, as pytest collection does: *.yaml/*.yml with a top-level key."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from checks.recipe.load import looks_like_recipe

SUFFIXES = (".yaml", ".yml")


def discover_recipes(paths: list[str], marker_key: str = "model") -> Iterator[Path]:
    """Files named explicitly are recipes whatever they hold; directories are searched recursively."""
    for raw in paths:
        path = Path(raw)
        if path.is_file():
            yield path
            continue
        for candidate in sorted(p for p in path.rglob("*") if p.suffix in SUFFIXES and p.is_file()):
            if any(part.startswith(".") for part in candidate.relative_to(path).parts):
                continue
            try:
                text = candidate.read_text(encoding="utf-8", errors="replace")
            except OSError:
                continue
            if looks_like_recipe(text, marker_key):
                yield candidate
