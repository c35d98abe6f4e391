"""Validate a loaded recipe into the typed Recipe, keeping every problem with its key path.

Pydantic reports types and ranges; unknown keys are those neither the schema nor the section's
library class accepts. Problems are raw here; the schema rules turn them into findings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from checks.recipe.library import section_keys
from checks.recipe.load import KeyPath, LoadedRecipe
from checks.recipe.schema import Recipe, _LibrarySection

_LIBRARY_SECTIONS = ("training", "lora", "quantization")


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
    recipe: Recipe | None
    unknown_keys: list[UnknownKey] = field(default_factory=list)
    invalid_values: list[InvalidValue] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.recipe is not None and not self.unknown_keys and not self.invalid_values


def _known_at(path: KeyPath) -> tuple[str, ...]:
    model: Any = Recipe
    for part in path:
        field_info = getattr(model, "model_fields", {}).get(part)
        if field_info is None:
            return ()
        model = _section_model(field_info.annotation)
    names = set(getattr(model, "model_fields", {}))
    if path and path[-1] in _LIBRARY_SECTIONS and len(path) == 1:
        names |= section_keys(path[0])
    return tuple(sorted(names))


def _section_model(annotation: Any) -> Any:
    for candidate in (annotation, *getattr(annotation, "__args__", ())):
        if isinstance(candidate, type) and hasattr(candidate, "model_fields"):
            return candidate
    return None


def validate(loaded: LoadedRecipe) -> Validation:
    result = Validation(recipe=None)
    # Top-level `x-...` keys are extension fields (the docker-compose convention), e.g. holders of
    # YAML anchors merged into sections with `<<: *base`; they are not part of the recipe.
    data = {k: v for k, v in loaded.data.items() if not (isinstance(k, str) and k.startswith("x-"))}
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        recipe = None
        for error in exc.errors(include_url=False):
            loc = tuple(error["loc"])
            if error["type"] == "extra_forbidden":
                result.unknown_keys.append(UnknownKey(loc, _known_at(loc[:-1])))
            else:
                message = error["msg"]
                if message.startswith("Value error, "):
                    message = message[len("Value error, "):]
                result.invalid_values.append(InvalidValue(loc, message, error.get("input"), error["type"]))
    result.recipe = recipe
    # Library sections take any kwarg of their class by name: anything else is a typo or a key
    # from another tool, found by the same rule as unknown keys elsewhere.
    for section in _LIBRARY_SECTIONS:
        values = data.get(section)
        if not isinstance(values, dict):
            continue
        model_fields = _section_model(Recipe.model_fields[section].annotation).model_fields
        valid = section_keys(section) | set(model_fields)
        for key in values:
            if key not in valid:
                result.unknown_keys.append(UnknownKey((section, key), tuple(sorted(valid))))
    return result


def library_kwargs(section: _LibrarySection) -> dict[str, Any]:
    """The section as the kwargs its library class takes: what the user wrote, nothing defaulted."""
    return section.model_dump(exclude_unset=True)
