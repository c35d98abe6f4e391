"""The keyword arguments each recipe section accepts, read from the libraries themselves.

A recipe section is the kwargs of a library class, so the set of valid keys is that class's
signature in the installed version, not a list kept here.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect

# Keys a section takes that its library class does not: recipe-checks' own additions.
_OWN_KEYS = {
    "training": {"max_seq_length"},
    "quantization": {"quant_method"},
}


def _init_params(cls: type) -> set[str]:
    return {
        name
        for name, p in inspect.signature(cls.__init__).parameters.items()
        if name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    }


@functools.cache
def section_keys(section: str) -> frozenset[str]:
    """Every key the named section accepts in the installed libraries."""
    if section == "training":
        from transformers import TrainingArguments

        keys = {f.name for f in dataclasses.fields(TrainingArguments) if f.init}
    elif section == "lora":
        from peft import LoraConfig

        keys = {f.name for f in dataclasses.fields(LoraConfig) if f.init} - {"peft_type", "auto_mapping"}
    elif section == "quantization":
        from transformers import BitsAndBytesConfig, FineGrainedFP8Config

        keys = _init_params(BitsAndBytesConfig) | _init_params(FineGrainedFP8Config)
    else:
        raise KeyError(section)
    return frozenset(keys | _OWN_KEYS.get(section, set()))


def library_class_name(section: str) -> str:
    return {
        "training": "transformers.TrainingArguments",
        "lora": "peft.LoraConfig",
        "quantization": "transformers.BitsAndBytesConfig",
    }[section]


def lora_config(kwargs: dict):
    """peft.LoraConfig from a lora section's kwargs: the one place recipe-checks builds one (the
    rules, the target analysis and the memory engine); raises what peft raises."""
    from peft import LoraConfig

    return LoraConfig(**kwargs)
