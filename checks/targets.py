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


def _leaf(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def block_index(name: str, block_list: str | None) -> int | None:
    if block_list and name.startswith(block_list + "."):
        head = name[len(block_list) + 1:].split(".", 1)[0]
        return int(head) if head.isdigit() else None
    return None


def find_block_list(model: Any) -> tuple[str | None, int]:
    """The ModuleList holding the repeated blocks: the longest one outside expert lists."""
    import torch

    best: tuple[str | None, int] = (None, 0)
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and "expert" not in name and len(module) > best[1]:
            best = (name, len(module))
    return best


def _ask_peft(lora_config, module, rank: int) -> tuple[bool, str, int | None]:
    """Let peft wrap a meta-device module: whether it can, and how many adapter parameters it adds."""
    from peft.tuners.lora.model import LoraModel

    kwargs = dict(
        r=rank,
        lora_alpha=lora_config.lora_alpha,
        lora_dropout=0.0,
        fan_in_fan_out=lora_config.fan_in_fan_out,
        init_lora_weights=True,
        use_rslora=lora_config.use_rslora,
        use_dora=lora_config.use_dora,
        lora_bias=lora_config.lora_bias,
    )
    try:
        wrapped = LoraModel._create_new_module(lora_config, "default", module, **kwargs)
    except ValueError as exc:
        if "not supported" in str(exc):
            text = str(exc)
            return False, text[text.find("Currently"):] if "Currently" in text else "", None
        return True, "", None
    except Exception:  # dispatch found a LoRA class; a later setup step needing real data failed
        return True, "", None
    return True, "", sum(p.numel() for name, p in wrapped.named_parameters() if "lora_" in name)


def _matches(lora_config, key: str) -> bool:
    from peft.tuners.tuners_utils import check_target_module_exists

    return bool(check_target_module_exists(lora_config, key))


def analyse_targets(lora_config, model: Any, fresh_model: Callable[[], Any] | None = None) -> TargetAnalysis:
    """`fresh_model` builds an unshared meta copy that peft may inject into (for target_parameters)."""
    from peft.tuners.tuners_utils import _maybe_include_all_linear_layers
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    model_type = getattr(model.config, "model_type", "")
    block_list, num_blocks = find_block_list(model)
    modules = dict(model.named_modules())
    output_embeddings = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None

    expanded_from = None
    config = lora_config
    if isinstance(config.target_modules, str) and config.target_modules.lower() == "all-linear":
        config = _maybe_include_all_linear_layers(dataclasses.replace(config), model)
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
    verdicts: dict[tuple, tuple[bool, str, int | None]] = {}
    for name in matched:
        module = modules[name]
        rank = _rank_for(config, name)
        signature = (type(module), rank, tuple(tuple(p.shape) for p in module.parameters(recurse=False)))
        if signature not in verdicts:
            verdicts[signature] = _ask_peft(config, module, rank)
        ok, text, count = verdicts[signature]
        if not ok:
            unsupported[name] = type(module).__name__
            supported_text = supported_text or text
        elif adapters is not None:
            adapters = None if count is None else adapters + count

    wrappable: list[str] = []
    linear_types = _linear_types()
    for name, module in modules.items():
        if isinstance(module, linear_types) and module is not output_embeddings and _leaf(name) not in wrappable:
            wrappable.append(_leaf(name))

    total = sum(p.numel() for p in model.parameters())
    targeted = sum(
        p.numel() for name in matched if name not in unsupported for p in modules[name].parameters(recurse=False)
    )
    if config.target_parameters:
        targeted += sum(
            p.numel() for n, p in model.named_parameters()
            if any(n == t or n.endswith("." + t) for t in config.target_parameters)
        )
    if config.target_parameters and adapters is not None:
        # parameter targets wrap whole modules in nested ParamWrappers: count them by injecting into a copy
        param_adapters = count_adapter_parameters(
            dataclasses.replace(config, target_modules=None), fresh_model() if fresh_model else None
        )
        adapters = None if param_adapters is None else adapters + param_adapters

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
    )


def count_adapter_parameters(lora_config, fresh_model: Any) -> int | None:
    """Inject the adapters with peft into a meta-device copy and count them: peft's own shapes."""
    from peft import inject_adapter_in_model

    if fresh_model is None:
        return None
    try:
        injected = inject_adapter_in_model(lora_config, fresh_model, low_cpu_mem_usage=True)
    except Exception:  # peft refuses the config for this model: the rules report why
        return None
    return sum(p.numel() for name, p in injected.named_parameters() if "lora_" in name)


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
    import warnings
    """The recipe's analysis, computed once per recipe; None when the recipe has no lora section."""
    from checks.rules.rc104_lora_config_rejected import build_lora_config

    memo = ctx.state.memo
    if "targets" not in memo:
        recipe = ctx.recipe
        if recipe.lora is None:
            memo["targets"] = None
        else:
            config = build_lora_config(recipe.lora)
            if isinstance(config, Exception):
                memo["targets"] = config
            else:
                # peft warns about what the rules report (Conv1D fan_in_fan_out, unmatched parameters)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    memo["targets"] = analyse_targets(config, ctx.model, lambda: ctx.state.meta_model(fresh=True))
    return memo["targets"]


def _rank_for(config, name: str) -> int:
    """The rank peft gives this module: the first rank_pattern key matching its name, else r."""
    for pattern, rank in (config.rank_pattern or {}).items():
        if re.search(pattern, name):
            return int(rank)
    return int(config.r)
