"""RC201: every LoRA target module matches at least one module of the model."""

from __future__ import annotations

from recipe_checks.rules._targets_common import analysis, names_line, target_key
from recipe_checks.rules.base import Rule
from recipe_checks.targets import families_of, suggest_for


class TargetMatchesNothing(Rule):
    """
    ## What it checks
    Each entry of `lora.target_modules` (or the regex, when it is a string) matches at least one
    module of the model, using peft's own matching (a name matches a module whose full name is the
    name or ends with '.name'). With no target_modules, peft must have a default for the model.

    ## Why it matters
    peft raises when nothing matches, but a list where some names match and others do not trains
    silently with fewer adapters than intended: a list copied from another family (Falcon's
    `query_key_value` on Llama, Llama's `q_proj` on Phi-3's fused `qkv_proj`, `q_proj` on GPT-2's
    `c_attn`) adapts only what happens to share a name.

    ## Example
        model: microsoft/Phi-3-mini-4k-instruct
        lora:
          target_modules: [q_proj, k_proj, v_proj, o_proj]

    ## Use instead
        lora:
          target_modules: [qkv_proj, o_proj]
    """

    id = "RC201"
    name = "target-matches-nothing"
    check = "target-modules"
    reads = frozenset({"model", "lora"})
    needs = frozenset({"model"})
    why = "a target that matches nothing trains fewer adapters than the recipe says, or none at all"
    stops_the_step = True

    def run(self, ctx):
        result = analysis(ctx)
        if result is None:
            return
        fused_names = set(_fused_expert_leaves(result))
        projections = names_line(result.wrappable_names)
        lora = ctx.recipe.lora
        if lora.target_modules is not None and len(lora.target_modules) == 0 and not lora.target_parameters:
            yield self.finding(
                ctx, "target_modules is empty: peft adapts nothing and raises NoMatchingPeftModuleError",
                ("lora", "target_modules"),
                help=f"name the modules to adapt: {result.model_class} has {projections}; or use all-linear",
            )
            return
        if not result.matches and lora.target_modules is None and not lora.target_parameters:
            yield self.finding(
                ctx, f"lora sets no target_modules and peft has no default for model type '{result.model_type}'",
                ("lora",), at_value=False,
                help=f"name the modules to adapt: {result.model_class} has {projections}; or use all-linear",
            )
            return
        for match in result.matches:
            if match.modules or match.target in fused_names:
                continue  # fused experts are RC205's
            suggestion = suggest_for(match.target, result.wrappable_names)
            families = families_of(match.target)
            origin = f" '{match.target}' is the name in {', '.join(families[:3])}." if families else ""
            proposal = f" Did you mean '{', '.join(suggestion)}'?" if suggestion else ""
            yield self.finding(
                ctx,
                f"target module '{match.target}' matches nothing in {result.model_class}",
                target_key(ctx, match.target),
                help=f"{result.model_class} names its projections {projections}.{origin}{proposal}",
            )


def _fused_expert_leaves(result) -> list[str]:
    from recipe_checks.targets import projection_roles

    if not result.fused_expert_params:
        return []
    return list(projection_roles()["fused_expert_names"])
