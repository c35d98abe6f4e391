"""RC206: every lora.target_parameters entry names a parameter of the model."""

from __future__ import annotations

from recipe_checks.rules._targets_common import analysis
from recipe_checks.rules.base import Rule


class TargetParameterMissing(Rule):
    """
    ## What it checks
    Each entry of `lora.target_parameters` matches a parameter of the model (peft matches the end of
    the full parameter name, e.g. `mlp.experts.gate_up_proj`).

    ## Why it matters
    An entry that matches nothing leaves those weights untrained, or makes peft raise at start-up.

    ## Example
        lora:
          target_parameters: [mlp.experts.w1]

    ## Use instead
        lora:
          target_parameters: [mlp.experts.gate_up_proj, mlp.experts.down_proj]
    """

    id = "RC206"
    name = "target-parameter-missing"
    check = "target-modules"
    reads = frozenset({"model", "lora"})
    needs = frozenset({"model"})
    why = "a target parameter that matches nothing leaves those weights untrained"
    stops_the_step = True

    def run(self, ctx):
        lora = ctx.recipe.lora
        result = analysis(ctx)
        if result is None or not lora.target_parameters:
            return
        names = [n for n, _ in ctx.model.named_parameters()]
        for i, entry in enumerate(lora.target_parameters):
            if not any(n == entry or n.endswith("." + entry) for n in names):
                candidates = sorted({".".join(p.split(".")[-3:]) for p in result.fused_expert_params})
                hint = f"the model's 3-D parameters are {', '.join(candidates)}" if candidates else (
                    "this model has no fused 3-D parameters: use target_modules")
                yield self.finding(
                    ctx,
                    f"target parameter '{entry}' matches no parameter of {result.model_class}",
                    ("lora", "target_parameters", i),
                    help=hint,
                )
