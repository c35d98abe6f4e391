"""RC607: a tokens/s claim is below the ceiling once Unsloth's gradient checkpointing recomputes the forward."""

from __future__ import annotations

from recipe_checks.rules.base import Rule
from recipe_checks.unsloth import ceiling_for, effective_checkpointing


class UnslothCheckpointingCeiling(Rule):
    """
    ## What it checks
    With Unsloth, `expect.tokens_per_second` is at most the FLOPs ceiling (RC602) counted with the forward pass
    that gradient checkpointing recomputes, whenever Unsloth checkpoints: `unsloth.use_gradient_checkpointing`
    is "unsloth" by default in both from_pretrained and get_peft_model (unsloth/models/loader.py:423,
    llama.py:3079), whatever `training.gradient_checkpointing` says. RC602 counts the recomputation only when
    `training.gradient_checkpointing` is on; this rule reports the claims between the two ceilings.

    ## Why it matters
    Unsloth cannot beat the GPU's peak: its kernels cut the work that is not matmuls, not the matmuls'
    FLOPs, and its checkpointing (offloaded or not) runs each block's forward twice. A claim above the ceiling
    with that second forward cannot be reached on this card, with Unsloth or without.

    ## Example
        model: meta-llama/Llama-3.1-8B
        unsloth: {max_seq_length: 2048}        # use_gradient_checkpointing: "unsloth" by default
        hardware: {gpu: rtx4090}
        expect: {tokens_per_second: 4400}

    ## Use instead
        expect: {tokens_per_second: 2500}       # measured, below the ceiling with the recomputation
    """

    id = "RC607"
    name = "unsloth-checkpointing-ceiling"
    check = "throughput"
    reads = frozenset({"model", "quantization", "lora", "training", "hardware", "expect", "unsloth"})
    needs = frozenset({"gpu", "model"})
    why = "Unsloth checkpoints by default: the recomputed forward lowers the ceiling no kernel can lift"

    def run(self, ctx):
        recipe = ctx.recipe
        claimed = recipe.expect.tokens_per_second
        if recipe.unsloth is None or claimed is None or not effective_checkpointing(recipe):
            return
        if recipe.training.gradient_checkpointing:
            return  # RC602's ceiling already counts the recomputation
        with_recompute = ceiling_for(recipe, ctx.model, ctx.gpu, checkpointing=True)
        without = ceiling_for(recipe, ctx.model, ctx.gpu, checkpointing=False)
        if with_recompute.tokens_per_second is None or claimed <= with_recompute.tokens_per_second:
            return
        if claimed > without.tokens_per_second:
            return  # above even RC602's ceiling: RC602 reports it
        value = recipe.unsloth.use_gradient_checkpointing
        yield self.finding(
            ctx, f"expect.tokens_per_second {claimed:,.0f} exceeds the ceiling of {with_recompute.tokens_per_second:,.0f} "
            f"tokens/s on {ctx.gpu.key} with Unsloth's gradient checkpointing (use_gradient_checkpointing {value!r}), "
            f"which recomputes the forward: {with_recompute.flops_per_token / 1e9:.1f} GFLOP per token against the "
            f"card's dense {with_recompute.peak_tflops:g} TFLOP/s", ("expect", "tokens_per_second"),
            help="use a throughput measured on this GPU, below the ceiling; turning checkpointing off "
            "(unsloth.use_gradient_checkpointing: false) raises the ceiling and the activation memory",
        )
