"""Validate a loaded recipe into the typed Recipe, keeping every problem with its key path.

Pydantic reports types and ranges; unknown keys are those neither the schema nor the section's
library class accepts. Problems are raw here; the schema rules turn them into findings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from recipe_checks.recipe.library import MissingExtra, section_keys
from recipe_checks.recipe.load import KeyPath, LoadedRecipe
from recipe_checks.recipe.schema import PASSED_ON, Recipe, _LibrarySection, kwargs_model
from recipe_checks.suggest import nearest

_LIBRARY_SECTIONS = ("training", "lora", "quantization", "dpo")


@dataclass(frozen=True)
class UnknownKey:
    key_path: KeyPath
    known: tuple[str, ...]  # the names valid at that place, for did-you-mean


@dataclass(frozen=True)
class InvalidValue:
    key_path: KeyPath
    message: str
    value: Any
    error_type: str


@dataclass
class Validation:
    """What the recipe file says, checked: every problem, and the recipe with the broken parts left out.

    `recipe` is built from what validates: unknown keys are dropped (they reach no library class),
    an invalid value is dropped with its key, and the section it sits in is `broken`, so the rules
    that read that section wait for the fix while every other rule still runs. `recipe` is None
    only when not even that validates (no usable `model`).
    """

    recipe: Recipe | None
    unknown_keys: list[UnknownKey] = field(default_factory=list)
    invalid_values: list[InvalidValue] = field(default_factory=list)
    broken: dict[str, str] = field(default_factory=dict)  # section -> why the rules reading it wait

    @property
    def ok(self) -> bool:
        return self.recipe is not None and not self.unknown_keys and not self.invalid_values

    def blocked(self, sections: frozenset[str]) -> str | None:
        """Why a rule that reads these sections cannot run (None: it can)."""
        if self.recipe is None:
            return "the recipe has no usable 'model'"
        reasons = [f"{name} {self.broken[name]}" for name in sorted(sections) if name in self.broken]
        return "; ".join(reasons) or None


def _passed_on(path: KeyPath) -> bool:
    """Whether the path is inside a mapping the training section's library passes on as keyword arguments."""
    return len(path) >= 2 and path[0] == "training" and path[1] in PASSED_ON


def _known_at(path: KeyPath) -> tuple[str, ...]:
    if len(path) == 2 and _passed_on(path):
        return tuple(sorted(kwargs_model(path[1]).model_fields))
    model: Any = Recipe
    for part in path:
        field_info = getattr(model, "model_fields", {}).get(part)
        if field_info is None:
            return ()
        model = _section_model(field_info.annotation)
    names = set(getattr(model, "model_fields", {}))
    if path and path[-1] in _LIBRARY_SECTIONS and len(path) == 1:
        try:
            names |= section_keys(path[0])
        except MissingExtra:  # the library is not installed: its checks skip, naming the extra
            pass
    return tuple(sorted(names))


def _section_model(annotation: Any) -> Any:
    for candidate in (annotation, *getattr(annotation, "__args__", ())):
        if isinstance(candidate, type) and hasattr(candidate, "model_fields"):
            return candidate
    return None


def _drop(data: dict[str, Any], loc: KeyPath) -> str | None:
    """Remove what an error points at: the key inside its section, else the section. Returns the section."""
    section = loc[0] if loc and isinstance(loc[0], str) else None
    if section is None or section not in data:
        return None
    values = data[section]
    inner = values.get(loc[1]) if isinstance(values, dict) and _passed_on(loc) else None
    if len(loc) >= 3 and isinstance(inner, dict) and loc[2] in inner:
        # one key of a passed-on mapping: the rest of it still reaches the library (use_reentrant stays)
        data[section] = {**values, loc[1]: {k: v for k, v in inner.items() if k != loc[2]}}
    elif len(loc) >= 2 and isinstance(values, dict) and loc[1] in values:
        data[section] = {k: v for k, v in values.items() if k != loc[1]}
    else:
        del data[section]
    return section


def validate(loaded: LoadedRecipe) -> Validation:
    result = Validation(recipe=None)
    # Top-level `x-...` keys are extension fields (the docker-compose convention), e.g. holders of
    # YAML anchors merged into sections with `<<: *base`; they are not part of the recipe.
    data = {k: v for k, v in loaded.data.items() if not (isinstance(k, str) and k.startswith("x-"))}
    # Library sections take any kwarg of their class by name: anything else is a typo or a key
    # from another tool, found by the same rule as unknown keys elsewhere. Dropped before pydantic
    # sees them, so the library class is never handed a key it does not take.
    for section in _LIBRARY_SECTIONS:
        values = data.get(section)
        if not isinstance(values, dict):
            continue
        # the installed class decides: a typed field the library no longer takes (transformers 5.24 dropped
        # warmup_ratio) is an unknown key, not a value that reaches TrainingArguments and fails there
        try:
            valid = section_keys(section)
        except MissingExtra:  # e.g. dpo without TRL: the keys reach no library here, the DPO checks skip
            continue
        unknown = [key for key in values if key not in valid]
        for key in unknown:
            result.unknown_keys.append(UnknownKey((section, key), tuple(sorted(valid))))
        if unknown:
            data[section] = {k: v for k, v in values.items() if k in valid}
    files = loaded.distributed_files
    if files is not None and files.blocked and isinstance(data.get("distributed"), dict):
        # a DeepSpeed or accelerate file that cannot be read: the section means nothing yet (RC801 says why)
        del data["distributed"]
        result.broken["distributed"] = files.blocked
    # another tool's config does not state the number of GPUs (its launcher is told): the section may lack it
    context = {"world_size_optional": loaded.translation is not None}
    sections = tuple(Recipe.model_fields)
    # Each pass drops at least one key or section, so this ends after at most as many passes as keys.
    for _ in range(1 + sum(len(v) if isinstance(v, dict) else 1 for v in data.values())):
        try:
            result.recipe = Recipe.model_validate(data, context=context)
            break
        except ValidationError as exc:
            dropped = False
            for error in exc.errors(include_url=False):
                loc = tuple(error["loc"])
                if error["type"] == "extra_forbidden":
                    if not any(u.key_path == loc for u in result.unknown_keys):
                        result.unknown_keys.append(UnknownKey(loc, _known_at(loc[:-1])))
                    if len(loc) == 1:
                        close = nearest(str(loc[0]), sections, n=1, cutoff=0.75)
                        if close and close[0] not in data:
                            result.broken.setdefault(close[0], f"is spelt '{loc[0]}'")
                else:
                    message = error["msg"]
                    if message.startswith("Value error, "):
                        message = message[len("Value error, "):]
                    if not any(v.key_path == loc for v in result.invalid_values):
                        result.invalid_values.append(InvalidValue(loc, message, error.get("input"), error["type"]))
                    if loc and isinstance(loc[0], str):
                        result.broken.setdefault(loc[0], "has an invalid value")
                dropped = (_drop(data, loc) is not None) or dropped
            if not dropped:
                break
    return result


def library_kwargs(section: _LibrarySection) -> dict[str, Any]:
    """The section as the kwargs its library class takes: what the user wrote, nothing defaulted."""
    return section.model_dump(exclude_unset=True)
