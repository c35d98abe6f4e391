"""RC303: 8-bit and paged optimizers run only where bitsandbytes supports the target GPU."""

from __future__ import annotations

from recipe_checks.facts import first_source, min_cc
from recipe_checks.rules.base import Rule

# transformers optimizer names that build a bitsandbytes optimizer (transformers'
# Trainer.get_optimizer_cls_and_kwargs imports bitsandbytes for exactly these). The torchao ones
# (adamw_torch_8bit, adamw_torch_4bit) are not bitsandbytes.
BNB_OPTIMIZERS = frozenset({
    "adamw_bnb_8bit", "adamw_8bit", "ademamix", "ademamix_8bit", "lion_8bit", "lion_32bit",
    "paged_adamw_32bit", "paged_adamw_8bit", "paged_ademamix_32bit", "paged_ademamix_8bit",
    "paged_lion_32bit", "paged_lion_8bit", "rmsprop_bnb", "rmsprop_bnb_8bit", "rmsprop_bnb_32bit",
    "galore_adamw_8bit", "galore_adamw_8bit_layerwise",
})


class BnbOptimizerGpu(Rule):
    """
    ## What it checks
    A bitsandbytes optimizer (the 8-bit, paged, Lion and AdEMAMix ones in transformers'
    OptimizerNames) targets an NVIDIA GPU of compute capability 6.0 (Pascal) or newer, the
    minimum bitsandbytes documents for its optimizers.

    ## Why it matters
    bitsandbytes has no kernels for older GPUs (it dropped Kepler in 0.45 and Maxwell in 0.48):
    the optimizer step fails on the first batch.

    ## Example
        hardware: {gpu: k80}
        training: {optim: paged_adamw_8bit}

    ## Use instead
        training: {optim: adamw_torch}    # or a newer GPU
    """

    id = "RC303"
    name = "bnb-optimizer-gpu"
    check = "optimizer"
    reads = frozenset({"training"})
    needs = frozenset({"gpu"})
    why = "bitsandbytes has no optimizer kernels for GPUs below its minimum compute capability"

    def run(self, ctx):
        optim = ctx.recipe.training.optim
        gpu = ctx.gpu
        if optim not in BNB_OPTIMIZERS or gpu is None:
            return
        need = min_cc("bitsandbytes", "optim_8bit_and_paged")
        if gpu.vendor == "nvidia" and gpu.cc >= need:
            return
        yield self.finding(
            ctx,
            f"optimizer '{optim}' needs bitsandbytes, which supports compute capability {need[0]}.{need[1]}+; "
            f"{gpu.key} is {gpu.compute_capability}",
            ("training", "optim"),
            help=f"use adamw_torch (or adafactor to save memory) on {gpu.key}; "
            f"see {first_source('bitsandbytes', 'optim_8bit_and_paged')}",
        )
