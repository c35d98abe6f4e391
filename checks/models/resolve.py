"""Find a recipe's model config.json without downloading weights.

Order: the recipe's `model.config` path, the id as a local path, the huggingface_hub cache, the
configs bundled with this package, and the hub itself only when the user allows network.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from checks.suggest import nearest

BUNDLED_DIR = Path(__file__).with_name("configs")


@dataclass(frozen=True)
class ResolvedModel:
    name: str
    config: dict[str, Any]
    source: str  # where the config came from, for the report

    @property
    def model_type(self) -> str:
        return str(self.config.get("model_type", ""))


class ModelResolutionError(LookupError):
    def __init__(self, message: str, help: str) -> None:
        super().__init__(message)
        self.help = help


@dataclass(frozen=True)
class BundledEntry:
    hub_id: str
    file: str
    source: str
    aliases: tuple[str, ...]


@functools.cache
def bundled_index() -> dict[str, BundledEntry]:
    """Bundled configs by lower-cased hub id or alias."""
    index_file = BUNDLED_DIR / "index.yaml"
    if not index_file.exists():
        return {}
    raw = yaml.safe_load(index_file.read_text(encoding="utf-8")) or {}
    entries: dict[str, BundledEntry] = {}
    for hub_id, entry in raw.items():
        bundled = BundledEntry(hub_id, entry["file"], entry["source"], tuple(entry.get("aliases") or ()))
        for name in (hub_id, *bundled.aliases):
            entries[name.lower()] = bundled
    return entries


def bundled_ids() -> list[str]:
    return sorted({e.hub_id for e in bundled_index().values()})


def _read_config(path: Path, name: str, source: str) -> ResolvedModel:
    if path.is_dir():
        path = path / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelResolutionError(
            f"model config '{path}' does not exist",
            "point model.config at a config.json or a model directory, relative to the recipe file",
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelResolutionError(
            f"model config '{path}' is not readable JSON: {exc}", "fix or re-download the config.json"
        ) from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise ModelResolutionError(
            f"'{path}' is not a transformers config.json: it has no 'model_type'",
            "use the config.json from the model's repository",
        )
    return ResolvedModel(name=name, config=config, source=source)


def _from_hub_cache(hub_id: str, revision: str | None) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency
        return None
    try:
        found = try_to_load_from_cache(repo_id=hub_id, filename="config.json", revision=revision)
    except Exception:  # an id that is not a valid repo id is simply not cached
        return None
    return Path(found) if isinstance(found, str) else None


def resolve_model_config(
    model_id: str | None,
    config_path: str | None = None,
    *,
    revision: str | None = None,
    base_dir: Path = Path("."),
    allow_network: bool = False,
) -> ResolvedModel:
    name = model_id or config_path or "?"
    if config_path:
        path = Path(config_path)
        path = path if path.is_absolute() else base_dir / path
        return _read_config(path, name, f"{config_path} (model.config)")
    assert model_id is not None
    local = Path(model_id).expanduser()
    for candidate in (local, base_dir / local) if not local.is_absolute() else (local,):
        if candidate.is_dir() and (candidate / "config.json").exists():
            return _read_config(candidate, name, f"local directory {candidate}")
    cached = _from_hub_cache(model_id, revision)
    if cached is not None:
        return _read_config(cached, name, "huggingface_hub cache")
    entry = bundled_index().get(model_id.lower())
    if entry is not None:
        return _read_config(BUNDLED_DIR / entry.file, name, f"bundled config of {entry.hub_id} ({entry.source})")
    if allow_network:
        try:
            from huggingface_hub import hf_hub_download

            downloaded = hf_hub_download(model_id, "config.json", revision=revision)
        except Exception as exc:  # network, auth, missing repo: all become one clear finding
            raise ModelResolutionError(
                f"model '{model_id}': downloading its config.json failed: {exc}",
                "check the hub id and your access (gated models need `huggingface-cli login`)",
            ) from None
        return _read_config(Path(downloaded), name, "downloaded from the hub")
    near = nearest(model_id, bundled_ids(), n=3, cutoff=0.5)
    hint = f" Did you mean {' or '.join(repr(n) for n in near)}?" if near else ""
    raise ModelResolutionError(
        f"model '{model_id}' has no config.json here: not a local path, not in the huggingface_hub cache, "
        "and not bundled with recipe-checks",
        "set model.config to a config.json (relative to the recipe), or run "
        f"`huggingface-cli download {model_id} config.json` to cache it, or allow the hub with "
        f"--recipes-allow-network.{hint}",
    )
