"""Where a recipe's LoRA targets land in the real module tree, computed with peft's own matching.

One TargetAnalysis per recipe feeds the target-module rules: which modules each target matches,
in which blocks, whether peft can wrap them, and what share of the model the adapters reach.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from recipe_checks.models.blocks import decoder_blocks

_BLOCK_INDEX = re.compile(r"^(?P<prefix>.*?)\.(?P<idx>\d+)(?:\.|$)")


@dataclass
class TargetMatch:
    target: str  # as written in the recipe (a name, or the regex string)
    modules: list[str] = field(default_factory=list)
    blocks: set[int] = field(default_factory=set)


@dataclass
class TargetAnalysis:
    model_class: str
    model_type: str
    block_list: str | None  # e.g. "model.layers"
    num_blocks: int
    matches: list[TargetMatch]  # per target entry (one entry for a regex string)
    matched_modules: list[str]  # what peft would wrap, all targets together
    unsupported: dict[str, str]  # module name -> module class, for matched modules peft cannot wrap
    supported_types_text: str
    wrappable_names: list[str]  # leaf names of modules LoRA can wrap (lm_head excluded), in model order
    expanded_from: str | None  # "all-linear" or "peft default for <model_type>"
    targeted_params: int
    total_params: int
    adapter_params: int | None  # from peft's own injection on a meta copy; None when peft cannot inject
    fused_expert_params: list[str]  # names like "model.layers.0.mlp.experts.gate_up_proj"
    # What peft raised while wrapping the targets (the message), and where; None when it accepted them.
    refusal: PeftRefusal | None = None
    ranks: dict[int, int] = field(default_factory=dict)  # rank peft gives -> wrapped modules with it


@dataclass(frozen=True)
class PeftRefusal:
    """An error peft raises when it injects the adapters: the training script would stop there."""

    message: str
    module: str  # the module (or parameter) peft was wrapping, "" when the error is about the whole model
    no_match: bool  # peft found nothing to wrap: the target rules say why, statically


def _leaf(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def target_name(name: str) -> str:
    """The name a recipe targets a module by: its leaf, or the last two parts where the leaf is an index
    (diffusers' `to_out.0`: peft matches the suffix '.to_out.0', and '0' alone would match every first item)."""
    parts = name.split(".")
    return ".".join(parts[-2:]) if parts[-1].isdigit() and len(parts) > 1 else parts[-1]


def block_index(name: str, block_list: str | None) -> int | None:
    if block_list and name.startswith(block_list + "."):
        head = name[len(block_list) + 1:].split(".", 1)[0]
        return int(head) if head.isdigit() else None
    return None


def find_block_list(model: Any) -> tuple[str | None, int]:
    """The name and length of the ModuleList holding the repeated blocks (recipe_checks.models.blocks)."""
    found = decoder_blocks(model, strict=False)
    return (found[0], len(found[1])) if found is not None else (None, 0)


# how peft's dispatch says it has no LoRA layer for a module type (LoraModel._create_new_module)
_UNSUPPORTED_LAYER = "Currently, only the following modules are supported"


def _ask_peft(lora_config, module, name: str, rank: int, alpha: float) -> tuple[bool, str, int | None, str | None]:
    """Let peft wrap a meta-device module as its injection would: whether the type is supported, how
    many adapter parameters it adds, and the message of any other error peft raises for this config."""
    import torch

    from recipe_checks.compat import CompatError, lora_create_new_module

    # the arguments peft's LoraModel._create_and_replace passes; the rest is read from the config
    kwargs = dict(r=rank, lora_alpha=alpha, target_name=name, loaded_in_8bit=False, loaded_in_4bit=False,
                  parameter_name=None, tied_adapter={})
    try:
        with torch.device("meta"):  # as peft's low_cpu_mem_usage: shapes are what is counted, not values
            wrapped = lora_create_new_module(lora_config, "default", module, **kwargs)
    except CompatError:  # this peft lacks what recipe-checks calls: say so, do not guess a verdict
        raise
    except ValueError as exc:
        text = str(exc)
        if _UNSUPPORTED_LAYER in text:  # no LoRA class for this layer type (not: an option this class lacks)
            return False, text[text.find(_UNSUPPORTED_LAYER):], None, None
        return True, "", None, text
    except (TypeError, NotImplementedError) as exc:  # peft refuses the arguments for this layer
        return True, "", None, str(exc)
    except Exception:  # dispatch found a LoRA class; a later setup step needing real data failed
        return True, "", None, None
    return True, "", sum(p.numel() for name, p in wrapped.named_parameters() if "lora_" in name), None


def _matches(lora_config, key: str) -> bool:
    from peft.tuners.tuners_utils import check_target_module_exists

    return bool(check_target_module_exists(lora_config, key))


def analyse_targets(lora_config, model: Any, fresh_model: Callable[[], Any] | None = None) -> TargetAnalysis:
    """`fresh_model` builds an unshared meta copy that peft may inject into (for target_parameters)."""
    from recipe_checks.compat import include_all_linear_layers
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    model_type = getattr(model.config, "model_type", "")
    block_list, num_blocks = find_block_list(model)
    modules = dict(model.named_modules())
    output_embeddings = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None

    expanded_from = None
    config = lora_config
    if isinstance(config.target_modules, str) and config.target_modules.lower() == "all-linear":
        config = include_all_linear_layers(dataclasses.replace(config), model)
        expanded_from = "all-linear"
    elif config.target_modules is None and not config.target_parameters:
        default = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(model_type)
        if default is not None:
            config = dataclasses.replace(config, target_modules=list(default))
            expanded_from = f"peft's default for {model_type}"

    names = [n for n in modules if n]
    matched = [n for n in names if config.target_modules is not None and _matches(config, n)]

    entries: list[TargetMatch] = []
    if expanded_from == "all-linear":
        # peft expands all-linear to full module names: one entry, judged as a whole
        entries.append(TargetMatch("all-linear", matched, {block_index(n, block_list) for n in matched} - {None}))
    elif isinstance(config.target_modules, str):
        entries.append(TargetMatch(config.target_modules, matched, {block_index(n, block_list) for n in matched} - {None}))
    elif config.target_modules is not None:
        for target in sorted(config.target_modules):
            # Which modules does this name reach at all? Layer restrictions are RC203's concern.
            single = dataclasses.replace(config, target_modules=[target], layers_to_transform=None, layers_pattern=None)
            hit = [n for n in names if _matches(single, n)]
            entries.append(TargetMatch(target, hit, {block_index(n, block_list) for n in hit} - {None}))

    # Blocks repeat: modules of the same type, shapes and rank get one answer from peft, reused.
    unsupported: dict[str, str] = {}
    supported_text = ""
    adapters: int | None = 0
    refusal: PeftRefusal | None = None
    ranks: dict[int, int] = {}
    verdicts: dict[tuple, tuple[bool, str, int | None, str | None]] = {}
    # inits that read the weights (pissa, olora, corda, eva, loftq, ...) cannot run on the meta device
    init_free = config if _init_reads_no_weights(config) else dataclasses.replace(config, init_lora_weights=True)
    for name in matched:
        module = modules[name]
        rank, alpha = rank_and_alpha_for(config, name)
        ranks[rank] = ranks.get(rank, 0) + 1
        signature = (type(module), rank, alpha, tuple(tuple(p.shape) for p in module.parameters(recurse=False)))
        if signature not in verdicts:
            verdicts[signature] = _ask_peft(init_free, module, name, rank, alpha)
        ok, text, count, error = verdicts[signature]
        if not ok:
            unsupported[name] = type(module).__name__
            supported_text = supported_text or text
        elif error is not None:
            refusal = refusal or PeftRefusal(error, name, no_match=False)
            adapters = None
        elif adapters is not None:
            adapters = None if count is None else adapters + count

    wrappable: list[str] = []
    linear_types = _linear_types()
    for name, module in modules.items():
        if isinstance(module, linear_types) and module is not output_embeddings and target_name(name) not in wrappable:
            wrappable.append(target_name(name))

    total = sum(p.numel() for p in model.parameters())
    targeted = sum(
        p.numel() for name in matched if name not in unsupported for p in modules[name].parameters(recurse=False)
    )
    if config.target_parameters:
        targeted += sum(
            p.numel() for n, p in model.named_parameters()
            if any(n == t or n.endswith("." + t) for t in config.target_parameters)
        )
    if config.target_parameters and refusal is None and not unsupported and fresh_model is not None:
        # parameter targets wrap whole modules in nested ParamWrappers, with checks of their own: let peft
        # inject the whole config into an unshared copy (seconds for MoE models only) and count from it
        injected = inject_adapters(init_free, fresh_model())
        if isinstance(injected, PeftRefusal):
            refusal, adapters = injected, None
        else:
            adapters = injected

    fused = [
        f"{mod_name}.{p_name}"
        for mod_name, module in modules.items()
        for p_name, p in module.named_parameters(recurse=False)
        if p.dim() >= 3
    ]
    return TargetAnalysis(
        model_class=type(model).__name__,
        model_type=model_type,
        block_list=block_list,
        num_blocks=num_blocks,
        matches=entries,
        matched_modules=matched,
        unsupported=unsupported,
        supported_types_text=supported_text,
        wrappable_names=wrappable,
        expanded_from=expanded_from,
        targeted_params=targeted,
        total_params=total,
        adapter_params=adapters,
        fused_expert_params=fused,
        refusal=refusal,
        ranks=dict(sorted(ranks.items())),
    )


def inject_adapters(lora_config, fresh_model: Any) -> int | PeftRefusal | None:
    """Inject the adapters with peft into a meta-device copy: the adapter parameters it adds (peft's own
    shapes), what peft refused, or None when the copy cannot be injected for a reason of the meta device."""
    from peft import inject_adapter_in_model

    if fresh_model is None or isinstance(fresh_model, Exception):
        return None
    try:
        injected = inject_adapter_in_model(lora_config, fresh_model, low_cpu_mem_usage=True)
    except (ValueError, TypeError, NotImplementedError) as exc:  # NoMatchingPeftModuleError is a ValueError
        return PeftRefusal(str(exc), "", no_match=_is_no_match(exc))
    except Exception:  # not a verdict on the config: the meta copy lacks what a real model has
        return None
    return sum(p.numel() for name, p in injected.named_parameters() if "lora_" in name)


def _init_reads_no_weights(config) -> bool:
    init = config.init_lora_weights
    return isinstance(init, bool) or init in ("gaussian", "orthogonal")


def _is_no_match(exc: Exception) -> bool:
    from peft.utils.error import NoMatchingPeftModuleError  # compat: peft 0.21 (public since 0.14)

    return isinstance(exc, NoMatchingPeftModuleError) or "not found in the base model" in str(exc)


@functools.cache
def _linear_types() -> tuple[type, ...]:
    import torch
    from transformers.pytorch_utils import Conv1D

    return (torch.nn.Linear, Conv1D)


@functools.cache
def projection_roles() -> dict[str, Any]:
    return yaml.safe_load((Path(__file__).parent / "data" / "projection_roles.yaml").read_text(encoding="utf-8"))


def families_of(name: str) -> list[str]:
    for names in projection_roles()["roles"].values():
        if name in names:
            return list(names[name])
    return []


def suggest_for(target: str, wrappable: list[str]) -> list[str]:
    """The model's own names for the role `target` plays in other families."""
    roles = projection_roles()["roles"]
    target_roles = [role for role, names in roles.items() if target in names]
    out: list[str] = []
    for role in target_roles:
        out.extend(n for n in wrappable if n in roles[role] and n not in out)
    return out


def analysis_for(ctx) -> TargetAnalysis | Exception | None:
    """The recipe's analysis, computed once per recipe; None when the recipe has no lora section."""
    import warnings

    from recipe_checks.recipe.library import lora_config
    from recipe_checks.recipe.validate import library_kwargs
    from recipe_checks.regex_safety import unsafe_pattern_error

    memo = ctx.state.memo
    if "targets" not in memo:
        recipe = ctx.recipe
        if recipe.lora is None:
            memo["targets"] = None
        elif (unsafe := unsafe_pattern_error(recipe.lora.model_dump(exclude_unset=True))) is not None:
            memo["targets"] = unsafe  # matching it against every module could take hours; RC103 reports it
        else:
            try:
                config = lora_config(library_kwargs(recipe.lora))
            except Exception as exc:  # peft refuses the arguments: RC104 reports it
                memo["targets"] = exc
            else:
                # peft warns about what the rules report (Conv1D fan_in_fan_out, unmatched parameters)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    memo["targets"] = analyse_targets(config, ctx.model, lambda: ctx.state.meta_model(fresh=True))
    return memo["targets"]


def rank_and_alpha_for(config, name: str) -> tuple[int, float]:
    """The rank and alpha peft gives the module (or parameter) `name`, resolved as peft resolves them."""
    rank_pattern = config.rank_pattern or {}
    alpha_pattern = config.alpha_pattern or {}
    rank = rank_pattern.get(peft_pattern_key(rank_pattern, name), config.r)
    alpha = alpha_pattern.get(peft_pattern_key(alpha_pattern, name), config.lora_alpha)
    return int(rank), alpha


def peft_pattern_key(patterns, name: str) -> str:
    """The rank_pattern/alpha_pattern key peft picks for `name` (a key must match a whole dotted suffix)."""
    from recipe_checks.compat import pattern_key

    return pattern_key(list(patterns), name)
