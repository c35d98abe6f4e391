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
    elif section == "dpo":
        keys = dpo_own_keys()
    else:
        raise KeyError(section)
    return frozenset(keys | _OWN_KEYS.get(section, set()))


def library_class_name(section: str) -> str:
    return {
        "training": "transformers.TrainingArguments",
        "lora": "peft.LoraConfig",
        "quantization": "transformers.BitsAndBytesConfig",
        "dpo": "trl.DPOConfig",
    }[section]


class MissingExtra(ImportError):
    """An optional library a recipe section needs is not installed; the message names the extra."""


TRL_EXTRA = "recipe-checks[trl]"


def require_trl():
    """The installed trl module, or MissingExtra naming the extra that installs it."""
    try:
        import trl
    except ImportError:
        raise MissingExtra(f"the dpo section needs TRL: pip install '{TRL_EXTRA}'") from None
    return trl


@functools.cache
def dpo_own_keys() -> frozenset[str]:
    """DPOConfig's own fields: those it adds to TrainingArguments (the `training` section keeps those).
    MissingExtra without TRL."""
    require_trl()
    from transformers import TrainingArguments
    from trl import DPOConfig

    inherited = {f.name for f in dataclasses.fields(TrainingArguments)}
    return frozenset(f.name for f in dataclasses.fields(DPOConfig) if f.init and f.name not in inherited)


def dpo_config(training_kwargs: dict, dpo_kwargs: dict, **machine):
    """trl.DPOConfig from the training and dpo sections' kwargs (plus the machine's: output_dir, ...): the
    one place recipe-checks builds one; raises what TRL (or TrainingArguments) raises."""
    require_trl()
    from trl import DPOConfig

    return DPOConfig(**machine, **training_kwargs, **dpo_kwargs)


def lora_config(kwargs: dict):
    """peft.LoraConfig from a lora section's kwargs: the one place recipe-checks builds one (the
    rules, the target analysis and the memory engine); raises what peft raises."""
    from peft import LoraConfig

    return LoraConfig(**kwargs)
