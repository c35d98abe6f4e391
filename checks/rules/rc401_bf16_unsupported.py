"""RC401: bf16 training targets a GPU with bf16 tensor cores."""

from __future__ import annotations

from recipe_checks.facts import first_source
from recipe_checks.rules.base import Rule


class Bf16Unsupported(Rule):
    """
    ## What it checks
    `training.bf16: true` (or `model.torch_dtype: bfloat16`) targets a GPU with native bf16: compute
    capability 8.0 (Ampere) or newer. T4 (7.5) and V100 (7.0) have none.

    ## Why it matters
    On older GPUs bf16 either fails at start-up or, where torch emulates it, runs many times slower;
    torch.cuda.is_bf16_supported() can even answer True there, so the local check is no guide.

    ## Example
        hardware: {gpu: t4}
        training: {bf16: true}

    ## Use instead
        training: {fp16: true}
    """

    id = "RC401"
    name = "bf16-unsupported"
    check = "precision"
    reads = frozenset({"model", "training"})
    needs = frozenset({"gpu"})
    why = "GPUs before Ampere have no bf16 tensor cores: the run fails or crawls"

    def run(self, ctx):
        gpu = ctx.gpu
        recipe = ctx.recipe
        if gpu is None or gpu.supports_bf16:
            return
        source = first_source("bf16")
        if recipe.training.bf16:
            yield self.finding(
                ctx,
                f"bf16 training on {gpu.key}, which has no bf16 support (compute capability {gpu.compute_capability} < 8.0)",
                ("training", "bf16"),
                help=f"use fp16: true on {gpu.key} (with a family that is safe in fp16), or target an Ampere "
                f"or newer GPU; see {source}",
            )
        if recipe.model.torch_dtype == "bfloat16":
            yield self.finding(
                ctx,
                f"model.torch_dtype bfloat16 on {gpu.key}, which has no bf16 support",
                ("model", "torch_dtype"),
                help=f"load in float16 on {gpu.key}; see {source}",
            )

