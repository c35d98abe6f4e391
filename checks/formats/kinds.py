"""Configs that are not training recipes recipe-checks reads (an accelerate or DeepSpeed config, a torchtune,
ai-toolkit or LLaMA-Factory v1 config), named from the keys their tools define, so each is one note, not a recipe.

Recognition is conservative: a file with a native recipe's shape (a top-level `model` that is a hub id or an
`{id: ...}` mapping beside the recipe's own sections) is never one of these kinds, so no recipe is hidden.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

# The key sets the distributed files are read with are the same facts: one place (recipe/distributed_files.py)
from recipe_checks.recipe.distributed_files import _ACCELERATE_KEYS, _DS_TOP_KEYS

# A native recipe's sections (recipe/schema.py Recipe): a file with any of them beside `model` is a recipe
_NATIVE_SECTIONS = frozenset({"quantization", "lora", "unsloth", "training", "dpo", "diffusion", "distributed",
                              "hardware", "expect", "checks"})

# accelerate/commands/config/config_args.py (huggingface/accelerate at 002dd35): every file `accelerate config`
# writes has compute_environment and distributed_type (BaseConfig); ClusterConfig adds the rest. Newer fields
# (tp_config, ipex_config) than recipe/distributed_files.py lists are counted too.
_ACCELERATE_MARKS = frozenset({"compute_environment", "distributed_type"})
_ACCELERATE = _ACCELERATE_KEYS | {"tp_config", "ipex_config"}
_ACCELERATE_TELLING = frozenset({"num_processes", "mixed_precision", "fsdp_config", "deepspeed_config"})  # named first
# DeepSpeed runtime/config.py: the batch parameters and zero_optimization are what a training config sets
_DEEPSPEED_MARKS = frozenset({"zero_optimization", "train_micro_batch_size_per_gpu", "train_batch_size"})
# torchtune/config/_instantiate.py: `_component_` is the dotted path of the object a config node builds
_COMPONENT = "_component_"
# ostris/ai-toolkit toolkit/job.py get_job: config['job'] is one of these; run.py reads config['config']['process']
_AI_TOOLKIT_JOBS = frozenset({"extension", "train", "extract", "generate", "mod"})
# hiyouga/LLaMA-Factory src/llamafactory/v1/config (model_args.py ModelArguments at 1212919, training_args.py
# TrainingArguments at 00577a8) and examples/v1: `model` is the hub id, with plugin configs beside it
_LLAMAFACTORY_V1 = frozenset({"model_class", "peft_config", "kernel_config", "quant_config", "dist_config",
                              "init_config", "train_dataset", "sample_backend"})


@dataclass(frozen=True)
class OtherKind:
    """A kind of config that is not a recipe: what it is, the keys that say so, and how it is checked instead."""

    name: str
    description: str  # "an accelerate config": what the lead's reports list
    evidence: tuple[str, ...]  # the top-level keys (or key paths, dotted) it was recognised by, in the file's order
    verdict: str  # why the file itself is not checked
    help: str
    # info: a launcher's file, checked through the recipe that names it; warning: a training config not checked
    not_checked: bool = False


@dataclass(frozen=True)
class _Kind:
    name: str
    description: str
    might_be: Callable[[str], bool]  # a cheap look at the text: parse it only where this is true
    evidence: Callable[[Mapping[str, Any]], tuple[str, ...]]  # empty: not this kind
    verdict: str
    help: str
    not_checked: bool = False


def _has_native_model(data: Mapping[str, Any]) -> bool:
    """`model` as a recipe writes it: a hub id or path, or a mapping without torchtune's `_component_`."""
    model = data.get("model")
    return isinstance(model, str) or (isinstance(model, Mapping) and _COMPONENT not in model)


def _accelerate(data: Mapping[str, Any]) -> tuple[str, ...]:
    keys = [k for k in data if isinstance(k, str)]
    shared = [k for k in keys if k in _ACCELERATE]
    # accelerate refuses any key it does not define: most of the file is its keys, one of them a mark of its own
    if "model" in data or not set(shared) & _ACCELERATE_MARKS or len(shared) < 3 or len(shared) * 2 < len(keys):
        return ()
    return tuple(sorted(shared, key=lambda k: (k not in _ACCELERATE_MARKS, k not in _ACCELERATE_TELLING)))


def _deepspeed(data: Mapping[str, Any]) -> tuple[str, ...]:
    keys = [k for k in data if isinstance(k, str)]
    shared = [k for k in keys if k in _DS_TOP_KEYS]
    if "model" in data or not set(shared) & _DEEPSPEED_MARKS or len(shared) < 2 or len(shared) * 2 < len(keys):
        return ()
    zero = data.get("zero_optimization")  # None as well where only the keys are known
    if zero is not None and not isinstance(zero, Mapping):
        return ()
    return tuple(sorted(shared, key=lambda k: k not in _DEEPSPEED_MARKS))


def _components(value: Any) -> bool:
    if isinstance(value, Mapping):
        return _COMPONENT in value
    return isinstance(value, list) and any(isinstance(v, Mapping) and _COMPONENT in v for v in value)


def _torchtune(data: Mapping[str, Any]) -> tuple[str, ...]:
    if _has_native_model(data):
        return ()
    built = [k for k, v in data.items() if isinstance(k, str) and _components(v)]
    # its model (and usually tokenizer, optimizer, loss) are built from `_component_`: two such nodes at least
    if len(built) < 2 and "model" not in built:
        return ()
    return tuple(f"{k}.{_COMPONENT}" for k in built)


def _ai_toolkit(data: Mapping[str, Any]) -> tuple[str, ...]:
    config = data.get("config")
    job = data.get("job")
    if "model" in data or not isinstance(job, str) or job not in _AI_TOOLKIT_JOBS or not isinstance(config, Mapping):
        return ()
    if not isinstance(config.get("process"), list):
        return ()
    return ("job", "config.process")


def _llamafactory_v1(data: Mapping[str, Any]) -> tuple[str, ...]:
    if not isinstance(data.get("model"), str) or set(data) & _NATIVE_SECTIONS:
        return ()
    shared = [k for k in data if isinstance(k, str) and k in _LLAMAFACTORY_V1]
    # two of v1's own keys, or one beside `model` and nothing else (examples/v1/train_lora/export_lora.yaml: model and
    # peft_config only): a native recipe has neither
    return ("model", *shared) if len(shared) >= 2 or (shared and set(data) <= {"model", *shared}) else ()


def _mentions(*words: str) -> Callable[[str], bool]:
    """Whether the text has one of the words as a whole name (`train_batch_size`, not `per_device_train_batch_size`)."""
    pattern = re.compile(r"(?<![\w-])(?:" + "|".join(sorted(map(re.escape, words))) + r")(?![\w-])")
    return lambda text: pattern.search(text) is not None


_HOW_TO_WRITE_A_RECIPE = ("to check this run, write it as a recipe: `model:` with the hub id, and the `lora`, "
                          "`quantization` and `training` sections it uses (README, 'The recipe format')")

KINDS = (
    _Kind("accelerate", "an accelerate config", _mentions(*_ACCELERATE_MARKS), _accelerate,
          "not a training recipe: `accelerate launch --config_file` reads it beside the training script's own config",
          "check it through the recipe it launches: name this file there as `distributed: {accelerate_config: "
          "<this file>}` (docs/distributed-configs.md)"),
    _Kind("deepspeed", "a DeepSpeed config", _mentions(*_DEEPSPEED_MARKS), _deepspeed,
          "not a training recipe: DeepSpeed reads it beside the training config that names it",
          "check it through the recipe that uses it: name this file there as `distributed: {deepspeed: <this file>}`, "
          "or as `deepspeed:` in an Axolotl or LLaMA-Factory config (docs/distributed-configs.md)"),
    _Kind("torchtune", "a torchtune config", _mentions(_COMPONENT), _torchtune,
          "torchtune configs are not read by recipe-checks yet: not checked",
          _HOW_TO_WRITE_A_RECIPE, not_checked=True),
    _Kind("ai-toolkit", "an ai-toolkit config", _mentions("process"), _ai_toolkit,
          "ai-toolkit (ostris) job configs are not read by recipe-checks yet: not checked",
          _HOW_TO_WRITE_A_RECIPE, not_checked=True),
    _Kind("llamafactory-v1", "a LLaMA-Factory v1 config", _mentions(*_LLAMAFACTORY_V1), _llamafactory_v1,
          "LLaMA-Factory's v1 format (examples/v1: `model` with `peft_config`, `dist_config`, ...) is not read by "
          "recipe-checks yet (read support pending): not checked",
          "to check this run, write it in LLaMA-Factory's current format (`model_name_or_path`, `finetuning_type`, "
          "`lora_rank`, `cutoff_len`, ...: docs/formats.md), or as a native recipe", not_checked=True),
)


def classify(source: str | Mapping[str, Any] | Iterable[str]) -> OtherKind | None:
    """The kind of config `source` is, where it is none that recipe-checks reads as a recipe. `source` is the file's
    text (parsed only where a kind's words are in it; a text that does not parse is no kind), its loaded mapping,
    or its top-level keys (then only the kinds told by their keys alone: accelerate, DeepSpeed)."""
    if isinstance(source, str):
        candidates = [kind for kind in KINDS if kind.might_be(source)]
        if not candidates:
            return None
        data = _parse(source)
        if data is None:
            return None
    elif isinstance(source, Mapping):
        candidates, data = list(KINDS), source
    else:
        candidates, data = list(KINDS), dict.fromkeys(k for k in source if isinstance(k, str))
    from recipe_checks.formats import (
        detect,  # a config a tool's translation reads is that tool's, never a kind here
    )

    if detect(data) not in (None, "native"):
        return None
    for kind in candidates:
        evidence = kind.evidence(data)
        if evidence:
            return OtherKind(kind.name, kind.description, evidence, kind.verdict, kind.help, kind.not_checked)
    return None


def other_kind(source: str | Mapping[str, Any] | Iterable[str]) -> str | None:
    """What a config that is not a recipe is, in a few words ("an accelerate config"), or None (see classify)."""
    kind = classify(source)
    return kind.description if kind is not None else None


def _parse(text: str) -> Mapping[str, Any] | None:
    from recipe_checks.recipe.load import RecipeLoadError, load_text

    try:
        return load_text(text, "<config>").data  # the same bounded safe loading as any recipe
    except RecipeLoadError:
        return None
