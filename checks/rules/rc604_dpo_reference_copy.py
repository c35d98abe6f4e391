"""RC604: a full-parameter DPO recipe does not hold a second full model where the two cannot fit."""

from __future__ import annotations

from recipe_checks.gpus import GIB
from recipe_checks.rules.base import Rule


class DpoReferenceCopy(Rule):
    """
    ## What it checks
    A full-parameter DPO recipe (a `dpo` section, no `lora`) without `dpo.precompute_ref_log_probs`:
    DPOTrainer then loads the model a second time as its frozen reference model and keeps both on
    the GPU. The rule fails when the two copies of the weights alone exceed the budget (before a
    single gradient, optimizer state or activation), counted from the model's parameters in the
    dtype it loads in. TRL 1.16 has no reference-free loss type: every loss_type reads reference
    log-probabilities, so precomputing them (or training adapters) is the only way not to hold it.

    ## Why it matters
    The out-of-memory error comes when DPOTrainer builds the reference model, after the policy and
    the dataset are loaded; the traced estimate (RC601) says the same with its fixes, this rule says
    why in one line.

    ## Example
        model: Qwen/Qwen2.5-7B           # 15 GB of bf16 weights
        training: {bf16: true}
        dpo: {beta: 0.1}                 # a second 15 GB copy as the reference
        hardware: {gpu: rtx4090}

    ## Use instead
        dpo:
          precompute_ref_log_probs: true # reference log-probs computed once before training, no copy held
    or train LoRA adapters: the reference is then the base model with the adapters disabled.
    """

    id = "RC604"
    name = "dpo-reference-copy"
    check = "vram"
    reads = frozenset({"model", "quantization", "lora", "training", "dpo", "hardware"})
    needs = frozenset({"gpu", "model"})
    why = "DPOTrainer runs out of memory loading its reference model, after the policy and the data are loaded"

    def run(self, ctx):
        import torch

        from recipe_checks.memory.estimate import budget_for
        from recipe_checks.memory.preference import REFERENCE_MODEL, reference_strategy
        from recipe_checks.memory.settings import settings_from_recipe

        recipe = ctx.recipe
        if recipe.dpo is None or reference_strategy(recipe.lora is not None, recipe.dpo.precompute_ref_log_probs) \
                != REFERENCE_MODEL:
            return
        model = ctx.state.meta_model()
        if isinstance(model, Exception):
            return  # RC106 reports a model that cannot be built
        settings = settings_from_recipe(recipe, ctx.state.resolved_model().config)
        size = getattr(torch, settings.weights_dtype).itemsize
        weights = sum(p.numel() for p in model.parameters()) * size
        budget, source = budget_for(recipe, ctx.gpu)
        if 2 * weights <= budget:
            return
        yield self.finding(
            ctx,
            f"full-parameter DPO holds the model twice (the policy and DPOTrainer's reference model, "
            f"{weights / GIB:.1f} GiB each in {settings.weights_dtype}): {2 * weights / GIB:.1f} GiB, more than the "
            f"{budget / GIB:.1f} GiB budget ({source}) before any gradient, optimizer state or activation",
            ("dpo",), at_value=False,
            help="set dpo.precompute_ref_log_probs: true (the reference log-probs are computed once before training "
                 "and no reference model is held), or train LoRA adapters (the reference is the base model with "
                 "the adapters disabled)",
        )
