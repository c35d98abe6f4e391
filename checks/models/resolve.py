"""Find a recipe's model config.json without downloading weights.

Order: the recipe's `model.config` path, the id as a local path, the huggingface_hub cache, the
configs bundled with this package, and the hub itself only when the user allows network. An adapter
repository named as the model (an adapter_config.json, local or cached) resolves to its base model.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from recipe_checks import limits
from recipe_checks.limits import MAX_CONFIG_BYTES, MAX_CONFIG_DEPTH, InputRefused, decode_text, read_bounded, shorten
from recipe_checks.models.diffusers import class_name_problem, is_diffusers_config
from recipe_checks.suggest import nearest

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
    """`missing`: the config is simply not here offline (the model is not checked, RC106 warns); otherwise
    what was found or written is unusable (a bad path, a URL, a config past the limits: RC106 is an error)."""

    def __init__(self, message: str, help: str, *, missing: bool = False) -> None:
        super().__init__(message)
        self.help = help
        self.missing = missing


@dataclass(frozen=True)
class BundledEntry:
    hub_id: str
    file: str
    source: str
    aliases: tuple[str, ...]
    component: str | None = None  # the diffusers pipeline subfolder the config is of (FLUX.1-dev's transformer)


@functools.cache
def bundled_index() -> dict[str, BundledEntry]:
    """Bundled configs by lower-cased hub id or alias."""
    index_file = BUNDLED_DIR / "index.yaml"
    if not index_file.exists():
        return {}
    raw = yaml.safe_load(index_file.read_text(encoding="utf-8")) or {}
    entries: dict[str, BundledEntry] = {}
    for hub_id, entry in raw.items():
        bundled = BundledEntry(hub_id, entry["file"], entry["source"], tuple(entry.get("aliases") or ()),
                               entry.get("component"))
        for name in (hub_id, *bundled.aliases):
            entries[name.lower()] = bundled
    return entries


def bundled_ids() -> list[str]:
    return sorted({e.hub_id for e in bundled_index().values()})


# config.json keys transformers sizes the model by (several families' names for each), with the
# limit each is held to before transformers builds anything, and the least value that makes sense.
_CONFIG_SIZES: dict[str, tuple[int, int]] = {
    **dict.fromkeys(("num_hidden_layers", "n_layer", "num_layers", "n_layers"), (limits.MAX_CONFIG_LAYERS, 1)),
    "num_single_layers": (limits.MAX_CONFIG_LAYERS, 0),  # FLUX's single-stream blocks (diffusers)
    **dict.fromkeys(("hidden_size", "n_embd", "d_model", "head_dim"), (limits.MAX_CONFIG_HIDDEN, 1)),
    **dict.fromkeys(("intermediate_size", "n_inner", "ffn_dim", "moe_intermediate_size"),
                    (limits.MAX_CONFIG_INTERMEDIATE, 1)),
    "vocab_size": (limits.MAX_CONFIG_VOCAB, 1),
    **dict.fromkeys(("num_attention_heads", "num_key_value_heads", "n_head", "num_heads"), (limits.MAX_CONFIG_HEADS, 1)),
    **dict.fromkeys(("num_local_experts", "num_experts", "n_routed_experts", "num_experts_per_tok"),
                    (limits.MAX_CONFIG_EXPERTS, 0)),
    **dict.fromkeys(("max_position_embeddings", "n_positions", "n_ctx", "sliding_window"),
                    (limits.MAX_CONFIG_POSITIONS, 0)),
}


def _is_dir(path: Path) -> bool:
    """Path.is_dir without its exceptions: a NUL byte, an over-long name or a loop is 'not a directory'."""
    try:
        return stat.S_ISDIR(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def _read_config(path: Path, name: str, source: str, component: str | None = None) -> ResolvedModel:
    if _is_dir(path):
        path = path / component / "config.json" if component else path / "config.json"
    try:
        text = decode_text(read_bounded(path, MAX_CONFIG_BYTES, "model config"), "model config")
    except InputRefused as exc:
        help = exc.help
        if "does not exist" in str(exc):
            help = "point model.config at a config.json or a model directory, relative to the recipe file"
        raise ModelResolutionError(str(exc), help) from None
    try:
        config = json.loads(text)
    except RecursionError:
        raise ModelResolutionError(
            f"model config '{shorten(path)}' nests too deeply to be read", "use the config.json from the model's repository"
        ) from None
    except ValueError as exc:  # JSONDecodeError, and integers of more than 4,300 digits
        raise ModelResolutionError(
            f"model config '{shorten(path)}' is not readable JSON: {shorten(exc, 200)}", "fix or re-download the config.json"
        ) from None
    if not isinstance(config, dict) or ("model_type" not in config and not is_diffusers_config(config)):
        raise ModelResolutionError(
            f"'{shorten(path)}' is not a transformers config.json: it has no 'model_type'",
            "use the config.json from the model's repository",
        )
    problem = config_problem(config)
    if problem:
        raise ModelResolutionError(
            f"model config '{shorten(path)}': {problem} (see 'Limits on input' in the README)",
            "use the config.json published with the model; recipe-checks builds models up to the sizes in its limits",
        )
    return ResolvedModel(name=name, config=config, source=source)


def config_problem(config: dict[str, Any]) -> str | None:
    """What makes a config.json unfit to build, before transformers sees it: a model_type that is
    not a name, a non-finite number, a size that is not a whole number or past the limits."""
    model_type = config.get("model_type")
    if is_diffusers_config(config):  # a diffusers component names its class instead
        found = class_name_problem(config)
        if found:
            return found
    elif not isinstance(model_type, str) or not model_type or len(model_type) > 100:
        return f"'model_type' must be an architecture name such as \"llama\", not {shorten(json.dumps(model_type), 60)}"

    def walk(value: Any, where: str, depth: int) -> str | None:
        if depth > MAX_CONFIG_DEPTH:
            return f"'{where}' nests deeper than {MAX_CONFIG_DEPTH} levels"
        if isinstance(value, float) and not math.isfinite(value):
            return f"'{where}' is {value}; a config holds finite numbers"
        if isinstance(value, dict):
            for key, item in value.items():
                found = _size_problem(key, item, f"{where}.{key}" if where else key) or walk(
                    item, f"{where}.{key}" if where else key, depth + 1)
                if found:
                    return found
        elif isinstance(value, list):
            for i, item in enumerate(value):
                found = walk(item, f"{where}[{i}]", depth + 1)
                if found:
                    return found
        return None

    return walk(config, "", 0)


def _size_problem(key: str, value: Any, where: str) -> str | None:
    if key not in _CONFIG_SIZES or value is None:
        return None
    limit, least = _CONFIG_SIZES[key]
    for item in value if isinstance(value, list) else [value]:  # a few families give one size per layer
        if isinstance(item, bool) or not isinstance(item, int):
            return f"'{where}' must be a whole number, not {shorten(json.dumps(item), 40)}"
        if not least <= item <= limit:
            return f"'{where}' is {item:,}; it must be between {least} and {limit:,}"
    return None


def _from_hub_cache(hub_id: str, revision: str | None, component: str | None = None) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency
        return None
    try:
        filename = f"{component}/config.json" if component else "config.json"
        found = try_to_load_from_cache(repo_id=hub_id, filename=filename, revision=revision)
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
    component: str | None = None,
    follow_adapter: bool = True,
) -> ResolvedModel:
    """`component`: the subfolder of a diffusers pipeline repository whose config.json is the model
    trained (FLUX.1-dev's `transformer`). `follow_adapter`: an id that is a PEFT adapter (an
    adapter_config.json and no config.json) resolves to the base model it names, one step only."""
    name = model_id or config_path or "?"
    if config_path:
        path = Path(config_path)
        path = path if path.is_absolute() else base_dir / path
        return _read_config(path, name, f"{config_path} (model.config)", component)
    assert model_id is not None
    if "\0" in model_id:
        raise ModelResolutionError("the model id contains a NUL byte", "write the hub id (org/name) without it")
    for candidate in local_candidates(model_id, base_dir):
        if _is_dir(candidate) and _is_file(candidate / (component or ".") / "config.json"):
            return _read_config(candidate, name, f"local directory {shorten(candidate)}", component)
    cached = _from_hub_cache(model_id, revision, component)
    if cached is not None:
        return _read_config(cached, name, "huggingface_hub cache")
    entry = bundled_index().get(model_id.lower())
    if entry is not None and component in (None, entry.component):  # a pipeline's bundled component
        return _read_config(BUNDLED_DIR / entry.file, name, f"bundled config of {entry.hub_id} ({entry.source})")
    base = _adapter_base(model_id, revision, base_dir) if component is None and follow_adapter else None
    if base is not None:
        adapter, base_id = base
        try:  # an adapter of an adapter is not followed: one step, no loops
            found = resolve_model_config(base_id, base_dir=adapter.parent, allow_network=allow_network,
                                         follow_adapter=False)
        except ModelResolutionError as exc:
            raise ModelResolutionError(
                f"model '{shorten(model_id)}' is an adapter ({shorten(adapter)}) of '{shorten(base_id)}': {exc}",
                exc.help, missing=exc.missing) from None
        return ResolvedModel(name=name, config=found.config,
                             source=f"base model {base_id} of the adapter {shorten(adapter)}: {found.source}")
    if allow_network:
        try:
            from huggingface_hub import hf_hub_download

            downloaded = hf_hub_download(model_id, "config.json", subfolder=component, revision=revision)
        except Exception as exc:  # network, auth, missing repo: all become one clear finding
            raise ModelResolutionError(
                f"model '{model_id}': downloading its config.json failed: {exc}",
                "check the hub id and your access (gated models need `hf auth login`)",
            ) from None
        return _read_config(Path(downloaded), name, "downloaded from the hub")
    shown = shorten(model_id)
    url = _HUB_URL.match(model_id)
    if url:
        raise ModelResolutionError(
            f"model '{shown}' is a URL; recipe-checks takes a hub id or a local path",
            f"write the hub id: model: {url.group('id')}" if url.group("id") else "write the hub id (org/name)",
        )
    near = nearest(model_id, bundled_ids(), n=3, cutoff=0.5) if len(model_id) <= 200 else []
    hint = f" Did you mean {' or '.join(repr(n) for n in near)}?" if near else ""
    raise ModelResolutionError(
        f"model '{shown}' has no config.json here: not checked (needs the model's config: not a local path, "
        "not in the huggingface_hub cache, not bundled with recipe-checks)",
        f"run `{download_command(model_id, revision, component)}` (huggingface_hub's command line) to cache it, "
        "or rerun with --recipes-allow-network, or set model.config to a config.json (relative to the recipe)."
        f"{hint}",
        missing=True,
    )


def download_command(model_id: str, revision: str | None = None, component: str | None = None) -> str:
    """The huggingface_hub command (its `hf` CLI, huggingface_hub >= 1.0) that caches the config.json
    resolve_model_config reads: `hf download REPO_ID [FILENAMES]... [--revision REV]`."""
    filename = f"{component}/config.json" if component else "config.json"
    command = f"hf download {shorten(model_id)} {filename}"
    return f"{command} --revision {shorten(revision, 60)}" if revision else command


def _adapter_base(model_id: str, revision: str | None, base_dir: Path) -> tuple[Path, str] | None:
    """A PEFT adapter named as the model: its adapter_config.json (a local folder, or the huggingface_hub
    cache; never the network) and the `base_model_name_or_path` it was trained on."""
    found: Path | None = None
    for candidate in local_candidates(model_id, base_dir):
        if _is_file(candidate / "adapter_config.json"):
            found = candidate / "adapter_config.json"
            break
    if found is None:
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(repo_id=model_id, filename="adapter_config.json", revision=revision)
        except Exception:  # not a valid repo id: not cached
            cached = None
        found = Path(cached) if isinstance(cached, str) else None
    if found is None:
        return None
    try:
        adapter = json.loads(decode_text(read_bounded(found, MAX_CONFIG_BYTES, "adapter config"), "adapter config"))
    except (InputRefused, ValueError, RecursionError):
        return None
    base = adapter.get("base_model_name_or_path") if isinstance(adapter, dict) else None
    if not isinstance(base, str) or not base or "\0" in base or base == model_id:
        return None
    return found, base


_HUB_URL = re.compile(r"^[a-z][a-z0-9+.-]*://(?:[^/]*/)?(?P<id>[^/?#]+/[^/?#]+)?", re.IGNORECASE)


def local_candidates(model_id: str, base_dir: Path) -> tuple[Path, ...]:
    """Where a model id is looked for as a local folder, in order: as written (from the working directory),
    then next to the recipe."""
    local = _expand_user(Path(model_id))
    return (local,) if local.is_absolute() else (local, base_dir / local)


def _expand_user(path: Path) -> Path:
    """`~/x` and `~user/x` as the shell expands them; an unknown user leaves the path as written."""
    try:
        return path.expanduser()
    except RuntimeError:  # "Could not determine home directory"
        return path


def _is_file(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False
