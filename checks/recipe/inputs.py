"""The files a recipe reads: the recipe itself, the DeepSpeed and accelerate configs its `distributed` section
names (and the DeepSpeed config an accelerate config names), its `model.config`, and a local model directory
given as the model id. Another tool's config is read as the native recipe it means first (recipe_checks.formats), so
Axolotl's and LLaMA-Factory's `deepspeed` and a local `base_model` count the same way.

A changed-only run (checks/changed.py) checks a recipe when any of them changed, not only the recipe's own file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def recipe_inputs(fs_path: Path, loaded: Any) -> tuple[Path, ...]:
    """Absolute paths (not resolved through links: git names files by the path in the tree) of the files and
    folders the recipe at `fs_path` reads, itself first. `loaded`: its LoadedRecipe, read as native and with its
    distributed files attached (None where it could not be read: the recipe alone)."""
    base = fs_path.parent
    paths: list[Path] = [fs_path]
    if loaded is not None:
        files = getattr(loaded, "distributed_files", None)
        paths.extend(Path(p) for p in (getattr(files, "read", None) or ()))
        paths.extend(_model_inputs(loaded.data.get("model"), base))
    return tuple(dict.fromkeys(Path(os.path.abspath(p)) for p in paths))


def _model_inputs(model: Any, base: Path) -> list[Path]:
    """model.config (a config.json or a folder holding one), else the model id where it names a local folder, as
    recipe_checks.models.resolve looks for one: as written (from the working directory), then next to the recipe."""
    config = model.get("config") if isinstance(model, dict) else None
    model_id = model.get("id") if isinstance(model, dict) else model
    if isinstance(config, str) and config and "\0" not in config:
        path = Path(config)
        return [path if path.is_absolute() else base / path]
    if not isinstance(model_id, str) or not model_id or "\0" in model_id:
        return []
    from recipe_checks.models.resolve import local_candidates

    candidates = local_candidates(model_id, base)
    found = []
    for candidate in candidates:
        try:
            if candidate.is_dir():
                found.append(candidate)
        except (OSError, ValueError):  # a name too long for the file system, or not one at all
            continue
    return found
