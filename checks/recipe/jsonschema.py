"""The JSON Schema of the recipe format, for editors (yaml-language-server) and other tools.

Generated from the pydantic models, with each library section's remaining kwargs listed by name
from the installed libraries, so editors complete and flag exactly what the checks accept.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from checks.recipe.library import library_class_name, section_keys
from checks.recipe.schema import Recipe

SCHEMA_ID = "https://recipe-checks.dev/schema/recipe.schema.json"
_SIMPLE_TYPES = {"bool": "boolean", "int": "integer", "float": "number", "str": "string"}


def _field_types(section: str) -> dict[str, str]:
    """JSON types for the library fields whose annotation is a plain bool/int/float/str."""
    if section == "training":
        from transformers import TrainingArguments as cls
    elif section == "lora":
        from peft import LoraConfig as cls
    else:
        return {}
    types = {}
    for f in dataclasses.fields(cls):
        annotation = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
        if annotation in _SIMPLE_TYPES:
            types[f.name] = _SIMPLE_TYPES[annotation]
    return types


def recipe_json_schema() -> dict[str, Any]:
    schema = Recipe.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = SCHEMA_ID
    schema["title"] = "recipe-checks fine-tuning recipe"
    defs = schema.get("$defs", {})
    for section, def_name in (("training", "Training"), ("lora", "Lora"), ("quantization", "Quantization")):
        definition = defs.get(def_name)
        if definition is None:
            continue
        properties = definition.setdefault("properties", {})
        types = _field_types(section)
        for key in sorted(section_keys(section)):
            if key not in properties:
                entry: dict[str, Any] = {"description": f"{library_class_name(section)} argument '{key}'"}
                if key in types:
                    entry["type"] = types[key]
                properties[key] = entry
        definition["additionalProperties"] = False
    return schema
