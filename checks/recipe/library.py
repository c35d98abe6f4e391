"""The keyword arguments each recipe section accepts, read from the libraries themselves.

A recipe section is the kwargs of a library class, so the set of valid keys is that class's
signature in the installed version, not a list kept here.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import re
from pathlib import Path
from typing import Any

import yaml

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


# -- mappings a section's library passes on as keyword arguments to another function ----------------------
@dataclasses.dataclass(frozen=True)
class Keyword:
    """One keyword argument of a passed-on mapping: the YAML values it takes, read from the library."""

    receiver: str  # the function it reaches, e.g. torch.utils.checkpoint.checkpoint
    takes: str  # its type as the library writes it ('bool | None'), or '' where it says none
    types: tuple[type, ...] | None  # None: the library does not say, any plain value passes
    function_only: bool = False  # a Python callable: no value a recipe file can hold fits


# The annotations that name a type YAML gives; anything else (a tensor, a module) is left unchecked.
_YAML_TYPES = {"bool": bool, "int": int, "float": float, "str": str, "None": type(None)}
_OPTIONAL = re.compile(r"^Optional\[(.*)\]$")


def _keyword(receiver: str, annotation: Any) -> Keyword:
    if annotation is inspect.Parameter.empty or annotation is None or annotation == "":
        return Keyword(receiver, "", None)
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", None) or str(annotation)
    text = text.replace("typing.", "").strip()
    optional = _OPTIONAL.match(text)
    if optional:
        text = f"{optional.group(1)} | None"
    if text.startswith("Callable"):
        return Keyword(receiver, text, None, function_only=True)
    parts = [part.strip() for part in text.split("|")]
    if all(part in _YAML_TYPES for part in parts):
        return Keyword(receiver, text, tuple(_YAML_TYPES[part] for part in parts))
    return Keyword(receiver, text, None)


def _documented_keywords(function) -> dict[str, str]:
    """name -> type of each entry under 'Keyword args:' in a torch docstring, e.g. 'preserve_rng_state(bool,
    optional):' -> bool: the keyword arguments a function takes through **kwargs and documents."""
    _, found, rest = (inspect.getdoc(function) or "").partition("Keyword args:")
    if not found:
        return {}
    entries: dict[str, str] = {}
    indent = None
    for line in rest.splitlines()[1:]:
        if line.strip() and not line[:1].isspace():
            break  # the next section (Returns:)
        match = re.match(r"^(\s+)(\w+)\s*\(([^)]*)\)\s*:", line)
        if match and indent in (None, match.group(1)):
            indent = match.group(1)
            entries[match.group(2)] = match.group(3).split(",")[0].strip()
    return entries


@functools.cache
def checkpoint_keywords() -> dict[str, Keyword]:
    """The keys `training.gradient_checkpointing_kwargs` (and activation_checkpointing_kwargs) may hold in the
    installed libraries: transformers passes the mapping to torch.utils.checkpoint.checkpoint, whose keyword
    arguments are read from its signature and its documented **kwargs (preserve_rng_state); transformers 5.24
    first takes out the arguments of its own activation_checkpointing_enable (every_n_layers, offload)."""
    from torch.utils.checkpoint import checkpoint
    from transformers import PreTrainedModel

    receiver = "torch.utils.checkpoint.checkpoint"
    keywords = {name: _keyword(receiver, kind) for name, kind in _documented_keywords(checkpoint).items()}
    for name, p in inspect.signature(checkpoint).parameters.items():
        if p.kind == p.KEYWORD_ONLY and (p.annotation is not p.empty or name not in keywords):
            keywords[name] = _keyword(receiver, p.annotation)
    enable = getattr(PreTrainedModel, "activation_checkpointing_enable", None)  # transformers 5.24 on
    if enable is not None:
        for name, p in inspect.signature(enable).parameters.items():
            if name != "self" and not name.endswith("_kwargs") and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                keywords[name] = _keyword("transformers' activation_checkpointing_enable", p.annotation)
    return keywords


LIGER_DATA = Path(__file__).resolve().parent.parent / "data" / "liger_kernel.yaml"


@functools.cache
def liger_keywords() -> dict[str, Keyword]:
    """The flags `training.liger_kernel_config` may set: the keyword arguments of Liger's apply_liger_kernel_to_*
    functions, each a bool (checks/data/liger_kernel.yaml: Liger needs Triton and is not a dependency)."""
    flags = yaml.safe_load(LIGER_DATA.read_text(encoding="utf-8"))["kernel_flags"]
    return {flag: Keyword("Liger's apply_liger_kernel_to_* functions", "bool", (bool,)) for flag in flags}


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
