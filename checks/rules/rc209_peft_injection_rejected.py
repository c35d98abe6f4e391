"""RC209: peft accepts the lora section when it wraps this model's targets, not only as a LoraConfig."""

from __future__ import annotations

import re

from recipe_checks.rules._targets_common import analysis
from recipe_checks.rules.base import Rule
from recipe_checks.rules.rc201_target_matches_nothing import TargetMatchesNothing
from recipe_checks.rules.rc203_layers_out_of_range import LayersOutOfRange
from recipe_checks.rules.rc205_fused_experts import FusedExperts
from recipe_checks.rules.rc206_target_parameter_missing import TargetParameterMissing

# The rules that say statically, at the offending entry, why peft finds nothing to wrap.
NO_MATCH_RULES = (TargetMatchesNothing, LayersOutOfRange, FusedExperts, TargetParameterMissing)


class PeftInjectionRejected(Rule):
    """
    ## What it checks
    peft wraps the matched modules and parameters of the model (on a meta-device copy, as
    `get_peft_model` does at the start of training) without raising. Some arguments are valid in
    `LoraConfig` but refused for a kind of layer: the `ParamWrapper` behind `target_parameters`
    (MoE experts) works without `lora_dropout`, `fan_in_fan_out`, `lora_bias` and DoRA.

    ## Why it matters
    peft raises when the training script calls `get_peft_model`, after the model has been loaded
    onto the GPU; the memory estimate cannot trace such a recipe either.

    ## Example
        model: mistralai/Mixtral-8x7B-v0.1
        lora:
          lora_dropout: 0.05
          target_parameters: [mlp.experts.gate_up_proj, mlp.experts.down_proj]

    ## Use instead
        lora:
          lora_dropout: 0.0
          target_parameters: [mlp.experts.gate_up_proj, mlp.experts.down_proj]
    """

    id = "RC209"
    name = "peft-injection-rejected"
    check = "target-modules"
    reads = frozenset({"model", "lora"})
    needs = frozenset({"model"})
    why = "peft raises this error when the training script wraps the model (get_peft_model)"
    stops_the_step = True

    def run(self, ctx):
        result = analysis(ctx)
        if result is None or result.refusal is None:
            return
        refusal = result.refusal
        # "nothing matched" is what the target rules report at the entry that matches nothing: once
        if refusal.no_match and any(f.is_error for rule in NO_MATCH_RULES for f in rule().run(ctx)):
            return
        written = ctx.loaded.data.get("lora") if isinstance(ctx.loaded.data, dict) else None
        key = named_lora_key(refusal.message, written if isinstance(written, dict) else {})
        where = f" while wrapping '{refusal.module}'" if refusal.module else ""
        yield self.finding(
            ctx,
            f"peft refuses the lora section for {result.model_class}{where}: {_first_line(refusal.message)}",
            ("lora", key) if key else ("lora",),
            at_value=bool(key),
            help=f"change {f'lora.{key}' if key else 'the lora section'} as peft's message says",
        )


def named_lora_key(message: str, lora_section: dict) -> str | None:
    """The first key of the recipe's lora section that peft's message names (`lora_dropout != 0`)."""
    found = [
        (m.start(), key) for key in lora_section if isinstance(key, str)
        for m in [re.search(rf"(?<!\w){re.escape(key)}(?!\w)", message)] if m
    ]
    return min(found)[1] if found else None


def _first_line(message: str) -> str:
    return message.strip().splitlines()[0] if message.strip() else message
