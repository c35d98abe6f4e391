"""The JSON Schema of the recipe format, for editors (yaml-language-server) and other tools.

Generated from the pydantic models, then brought in line with what the loader accepts: the string
forms (`model: org/name`, `gpu: rtx4090`), `x-` extension keys, and each library section's other
kwargs listed by name from the installed libraries. The package ships it generated with the pinned
libraries (checks/schema/recipe.schema.json), so printing it imports neither torch nor transformers.
"""

from __future__ import annotations

import copy
import importlib.metadata
import json
from pathlib import Path
from typing import Any

from recipe_checks import limits

SCHEMA_ID = "https://recipe-checks.dev/schema/recipe.schema.json"
SHIPPED_SCHEMA = Path(__file__).resolve().parent.parent / "schema" / "recipe.schema.json"
_LIBRARY_SECTIONS = (("training", "Training"), ("lora", "Lora"), ("quantization", "Quantization"), ("dpo", "Dpo"))
_GENERATED_WITH = ("pydantic", "transformers", "peft", "trl")  # trl: the dpo section's keys (the trl extra)
_SIMPLE_TYPES = {"bool": "boolean", "int": "integer", "float": "number", "str": "string"}
# What the loader checks that a JSON Schema cannot say; the schema says it in a description instead.
NOT_EXPRESSIBLE = {
    "Lora": "target_modules, exclude_modules, layers_pattern and the rank_pattern/alpha_pattern keys are "
            "regular expressions to peft: one that is invalid or can backtrack without bound is RC103",
    "Training": f"per_device_train_batch_size x max_seq_length is at most {limits.MAX_TRACE_TOKENS:,} tokens",
}
NON_BLANK = r"\S"


def shipped_schema_text() -> str:
    """The schema as shipped with the package: what `recipe-checks schema` prints, without importing
    the libraries it was generated from."""
    return SHIPPED_SCHEMA.read_text(encoding="utf-8")


def schema_text(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2) + "\n"


def _field_types(section: str) -> dict[str, str]:
    """JSON types for the library fields whose annotation is a plain bool/int/float/str."""
    import dataclasses

    if section == "training":
        from transformers import TrainingArguments as cls
    elif section == "lora":
        from peft import LoraConfig as cls
    elif section == "dpo":
        from trl import DPOConfig as cls
    else:
        return {}
    types = {}
    for f in dataclasses.fields(cls):
        annotation = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
        if annotation in _SIMPLE_TYPES:
            types[f.name] = _SIMPLE_TYPES[annotation]
    return types


def _one_or_many(description: str, many: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "anyOf": [{"type": "string"}, many]}


def _branch_bounds(entry: dict[str, Any]) -> None:
    """pydantic leaves ge/le beside an anyOf of number types (not JSON Schema keywords): move them into
    each branch as minimum/maximum."""
    bounds = {"minimum": entry.pop("ge", None), "maximum": entry.pop("le", None)}
    for branch in entry.get("anyOf", []):
        if branch.get("type") in ("integer", "number"):
            branch.update({k: v for k, v in bounds.items() if v is not None})


def _names(entry: dict[str, Any]) -> None:
    """A list (or one) of module names: none of them blank, as the Lora validators require."""
    for branch in entry.get("anyOf", [entry]):
        if branch.get("type") == "string":
            branch["pattern"] = NON_BLANK
        elif branch.get("type") == "array":
            branch["items"] = {"type": "string", "pattern": NON_BLANK}


def _library_extras(definition: dict[str, Any], section: str) -> None:
    """Every other kwarg of the section's library class, by name; unknown names are rejected."""
    from recipe_checks.recipe.library import library_class_name, section_keys

    keys = section_keys(section)
    properties = definition.setdefault("properties", {})
    for typed in [k for k in properties if k not in keys]:  # a typed field the installed library no longer takes
        del properties[typed]
    types = _field_types(section)
    for key in sorted(keys - set(properties)):
        # the loader takes any plain value here (the library class judges it), so the type is a hint only
        hint = f" ({types[key]})" if key in types else ""
        properties[key] = {"description": f"{library_class_name(section)} argument '{key}'{hint}",
                           "maxItems": limits.MAX_LIST_ITEMS}
    definition["additionalProperties"] = False


def recipe_json_schema() -> dict[str, Any]:
    """The schema generated from the models and the installed libraries (imports transformers and peft)."""
    from recipe_checks.recipe.schema import Recipe

    schema = copy.deepcopy(Recipe.model_json_schema())
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = SCHEMA_ID
    schema["title"] = "recipe-checks fine-tuning recipe"
    versions = ", ".join(f"{d} {importlib.metadata.version(d)}" for d in _GENERATED_WITH)
    schema["$comment"] = (f"generated with {versions}: `recipe-checks schema --installed` generates it from the "
                          "libraries installed")
    # validate.py drops top-level x- keys (extension fields, e.g. holders of YAML anchors)
    schema["patternProperties"] = {"^x-": {}}
    schema["properties"]["model"] = {
        "description": "a hub id (org/name), or a mapping with id or config",
        "anyOf": [{"type": "string", "minLength": 1}, {"$ref": "#/$defs/ModelSpec"}],
    }
    defs = schema["$defs"]
    defs["ModelSpec"]["anyOf"] = [
        {"required": ["id"], "properties": {"id": {"type": "string"}}},
        {"required": ["config"], "properties": {"config": {"type": "string"}}},
    ]
    gpu = defs["Hardware"]["properties"]["gpu"]
    defs["Hardware"]["properties"]["gpu"] = _one_or_many(
        gpu["description"], {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": gpu["maxItems"]})
    defs["ChecksSection"]["properties"]["ignore"]["additionalProperties"] = {"type": "string", "pattern": NON_BLANK}
    lora = defs["Lora"]["properties"]
    for key in ("target_modules", "exclude_modules", "layers_pattern", "target_parameters", "modules_to_save"):
        _names(lora[key])
    for branch in lora["layers_to_transform"]["anyOf"]:
        target = branch.get("items", branch)
        if target.get("type") == "integer":
            target.update(minimum=0, maximum=limits.MAX_CONFIG_LAYERS - 1)
    training = defs["Training"]["properties"]
    _branch_bounds(training["warmup_steps"])
    training["max_steps"]["not"] = {"const": 0}
    for def_name, note in NOT_EXPRESSIBLE.items():
        defs[def_name]["description"] = f"{defs[def_name].get('description', '').strip()} Also checked: {note}.".strip()
    for section, def_name in _LIBRARY_SECTIONS:
        _library_extras(defs[def_name], section)
    return schema
