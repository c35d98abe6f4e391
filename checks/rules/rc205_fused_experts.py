"""RC205: MoE expert projections fused into 3-D parameters are targeted with target_parameters."""

from __future__ import annotations

from recipe_checks.rules._targets_common import analysis, target_key
from recipe_checks.rules.base import Rule
from recipe_checks.targets import projection_roles


class FusedExperts(Rule):
    """
    ## What it checks
    A target naming per-expert projections (`w1`, `w2`, `w3`, `gate_proj`, `up_proj`, `down_proj`)
    on a mixture-of-experts model whose transformers implementation fuses the experts into 3-D
    parameters (Mixtral, Qwen MoE, ... in transformers 5) instead of per-expert Linear layers.

    ## Why it matters
    The names match nothing, so only attention is adapted and the experts, most of the model's
    parameters, are left out; recipes written for older transformers break this way silently.

    ## Example
        model: mistralai/Mixtral-8x7B-v0.1
        lora:
          target_modules: [q_proj, v_proj, w1, w2, w3]

    ## Use instead
        lora:
          lora_dropout: 0.0
          target_modules: [q_proj, v_proj]
          target_parameters: [mlp.experts.gate_up_proj, mlp.experts.down_proj]
    peft's ParamWrapper adapts each 3-D parameter with one low-rank pair per expert and refuses
    `lora_dropout` (RC209). On every forward it adds the update to the whole expert tensor (W + BA),
    a copy of the block's experts that the backward keeps: train with gradient checkpointing.
    """

    id = "RC205"
    name = "fused-experts"
    check = "target-modules"
    reads = frozenset({"model", "lora"})
    needs = frozenset({"model"})
    why = "the experts hold most of an MoE model's parameters; names that miss them leave them untrained"

    def run(self, ctx):
        result = analysis(ctx)
        if result is None or not result.fused_expert_params:
            return
        expert_names = set(projection_roles()["fused_expert_names"])
        suggestion = sorted({".".join(p.split(".")[-3:]) for p in result.fused_expert_params})
        for match in result.matches:
            if match.modules or match.target not in expert_names:
                continue
            yield self.finding(
                ctx,
                f"target '{match.target}' matches nothing: {result.model_class} fuses its experts into 3-D "
                "parameters, with no per-expert Linear layers to target",
                target_key(ctx, match.target),
                help=f"remove '{match.target}' from target_modules and add "
                f"target_parameters: [{', '.join(suggestion)}], with lora_dropout: 0.0 (peft's ParamWrapper, "
                "which adapts 3-D parameters, refuses dropout)",
            )
