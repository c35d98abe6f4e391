"""What rules see: one recipe file loaded and validated once, then viewed against each target GPU.

The model config and meta-device skeleton are resolved lazily and at most once per recipe, so a
check that does not need the model never pays for building it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recipe_checks.findings import Finding, Location
from recipe_checks.formats import read_as_native
from recipe_checks.gpus import GpuCatalog, GpuFamily, GpuProfile, UnknownGpuError
from recipe_checks.limits import MAX_ERROR_CHARS, shorten
from recipe_checks.models.resolve import ModelResolutionError, ResolvedModel, resolve_model_config
from recipe_checks.models.skeleton import ModelBuildError, build_meta_model
from recipe_checks.options import Options
from recipe_checks.recipe.distributed_files import attach as attach_distributed_files
from recipe_checks.recipe.load import LoadedRecipe, RecipeLoadError, load_recipe_file, read_recipe_text
from recipe_checks.recipe.schema import Recipe
from recipe_checks.recipe.validate import InvalidValue, Validation, validate

_UNSET: Any = object()


@dataclass
class RecipeState:
    """A recipe file, loaded and validated; shared by all its checks and target GPUs."""

    path: str  # as shown to the user
    fs_path: Path
    options: Options
    catalog: GpuCatalog
    loaded: LoadedRecipe | None = None
    load_error: Finding | None = None
    _validation: Any = field(default=_UNSET, repr=False)
    _resolved: Any = field(default=_UNSET, repr=False)
    _model: Any = field(default=_UNSET, repr=False)
    results: dict[tuple[str, str | None], Any] = field(default_factory=dict, repr=False)
    memo: dict[str, Any] = field(default_factory=dict, repr=False)  # analyses shared by several rules

    @classmethod
    def from_file(cls, fs_path: Path, display_path: str, options: Options, catalog: GpuCatalog) -> RecipeState:
        state = cls(path=display_path, fs_path=fs_path, options=options, catalog=catalog)
        try:
            state.loaded = load_recipe_file(fs_path, display_path)
            # another tool's config becomes the native recipe it means (recipe_checks.formats), or RC112 says why not
            state.loaded, state.load_error = read_as_native(state.loaded, options.format)
            if state.loaded is not None:  # the DeepSpeed / accelerate files a distributed section names
                state.loaded = attach_distributed_files(state.loaded, fs_path.parent)
        except RecipeLoadError as exc:
            state.load_error = exc.finding
        except Exception as exc:  # never a crash of the session: the file is reported, the others still run
            state.load_error = Finding(
                "RC101", f"cannot read the recipe: {_error_text(exc)}", Location(display_path),
                check="schema", help="make the file a readable UTF-8 YAML mapping",
            )
        return state

    @property
    def validation(self) -> Validation | None:
        """Validated on first use, not at collection: validating imports the libraries."""
        if self._validation is _UNSET:
            try:
                self._validation = validate(self.loaded) if self.loaded is not None else None
            except Exception as exc:  # e.g. a structure too deep for pydantic: reported, not raised
                self._validation = Validation(recipe=None, invalid_values=[InvalidValue(
                    (), f"the recipe cannot be validated: {_error_text(exc)}", None, "unreadable",
                )])
        return self._validation

    @property
    def recipe(self) -> Recipe | None:
        return self.validation.recipe if self.validation else None

    def source_line(self, line: int) -> str:
        if self.loaded is not None:
            return self.loaded.source_line(line)
        if line < 1:
            return ""
        try:  # the same bounded read as loading: never hangs on a FIFO or reads /dev/zero without end
            lines = read_recipe_text(self.fs_path).splitlines()
        except RecipeLoadError:
            return ""
        return lines[line - 1] if 0 < line <= len(lines) else ""

    @property
    def schema_ok(self) -> bool:
        return self.validation is not None and self.validation.ok

    def declared_gpus(self) -> list[str]:
        """The GPU names the recipe declares, as written; read from the raw file, so collection stays cheap."""
        hardware = (self.loaded.data.get("hardware") if self.loaded else None) or {}
        gpu = hardware.get("gpu") if isinstance(hardware, dict) else None
        if isinstance(gpu, str):
            return [gpu]
        if isinstance(gpu, list):
            return [g for g in gpu if isinstance(g, str)]
        return []

    def gpu_profile(self, name: str) -> GpuProfile | GpuFamily | UnknownGpuError:
        """The profile a GPU name means, the family of profiles an ambiguous name matches ('a100'),
        or the error that says it is no known GPU."""
        try:
            return self.catalog.resolve(name)
        except UnknownGpuError as exc:
            return exc

    def resolved_model(self) -> ResolvedModel | ModelResolutionError:
        if self._resolved is _UNSET:
            recipe = self.recipe
            assert recipe is not None
            try:
                self._resolved = resolve_model_config(
                    recipe.model.id,
                    recipe.model.config,
                    revision=recipe.model.revision,
                    base_dir=self.fs_path.parent,
                    allow_network=self.options.allow_network,
                    component=recipe.model.component,
                )
            except ModelResolutionError as exc:
                self._resolved = exc
            except Exception as exc:  # whatever the input makes the resolver raise is a finding, not a crash
                self._resolved = ModelResolutionError(
                    f"cannot resolve model '{shorten(recipe.model.name)}': {_error_text(exc)}",
                    "check model.id / model.config: a hub id (org/name), or a config.json or model directory",
                )
        return self._resolved

    def meta_model(self, fresh: bool = False) -> Any | ModelBuildError | ModelResolutionError:
        """The recipe's model on the meta device; `fresh`: an unshared copy that may be modified."""
        if fresh:
            shared = self.meta_model()
            if isinstance(shared, Exception):
                return shared
            recipe = self.recipe
            task = recipe.lora.task_type if recipe.lora else "CAUSAL_LM"
            trust = recipe.model.trust_remote_code and self.options.trust_remote_code
            try:
                return build_meta_model(self.resolved_model(), task, trust_remote_code=trust, fresh=True)
            except Exception as exc:  # built once already: a failure now is the same input's, reported alike
                return ModelBuildError(f"transformers cannot build a fresh copy: {_error_text(exc)}",
                                       "fix the config.json values the message names")
        if self._model is _UNSET:
            resolved = self.resolved_model()
            if isinstance(resolved, ModelResolutionError):
                self._model = resolved
                return resolved
            recipe = self.recipe
            assert recipe is not None
            trust = recipe.model.trust_remote_code and self.options.trust_remote_code
            try:
                task = recipe.lora.task_type if recipe.lora else "CAUSAL_LM"
                self._model = build_meta_model(resolved, task, trust_remote_code=trust)
            except ModelBuildError as exc:
                self._model = exc
            except Exception as exc:  # transformers refusing an absurd config is a finding, not a crash
                self._model = ModelBuildError(
                    f"transformers cannot build '{shorten(recipe.model.name)}' from its config: "
                    f"{_error_text(exc)}",
                    "fix the config.json values the message names, or point model.config at the model's real config",
                )
        return self._model


def _error_text(exc: BaseException) -> str:
    """An exception as a finding quotes it: its type and its (bounded) message."""
    return f"{type(exc).__name__}: {shorten(str(exc), MAX_ERROR_CHARS)}"


@dataclass
class RecipeContext:
    """A recipe seen against one target GPU (or none, for checks that do not depend on the GPU)."""

    state: RecipeState
    gpu_name: str | None = None

    @property
    def path(self) -> str:
        return self.state.path

    @property
    def loaded(self) -> LoadedRecipe:
        assert self.state.loaded is not None
        return self.state.loaded

    @property
    def recipe(self) -> Recipe:
        recipe = self.state.recipe
        assert recipe is not None
        translation = self.state.loaded.translation if self.state.loaded is not None else None
        return translation.for_gpu(recipe, self.gpu) if translation is not None else recipe  # bf16: auto

    @property
    def gpu(self) -> GpuProfile | GpuFamily | None:
        """The target's profile; a GpuFamily only in the checks that run on what a family shares."""
        if self.gpu_name is None:
            return None
        profile = self.state.gpu_profile(self.gpu_name)
        return profile if isinstance(profile, (GpuProfile, GpuFamily)) else None

    @property
    def model(self) -> Any:
        model = self.state.meta_model()
        return None if isinstance(model, Exception) else model

    @property
    def model_type(self) -> str | None:
        resolved = self.state.resolved_model()
        return None if isinstance(resolved, Exception) else resolved.model_type
