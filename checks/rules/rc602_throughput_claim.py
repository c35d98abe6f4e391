"""RC602: a recipe's expected tokens/s is below what its FLOPs allow on the target GPU."""

from __future__ import annotations

from recipe_checks.rules.base import Rule


class ThroughputClaim(Rule):
    """
    ## What it checks
    `expect.tokens_per_second` is at most the ceiling the GPU's dense tensor peak allows for the
    recipe's FLOPs per token (forward, backward, and the recomputation of gradient checkpointing;
    see checks/throughput.py). `recipe-checks estimate` prints the ceiling and hours per epoch.

    ## Why it matters
    A throughput no GPU can reach sets a schedule and a budget that cannot hold: 18,000 tokens/s
    for Llama 3 8B LoRA on an RTX 4090 needs about five times that card's dense bf16 peak.

    ## Example
        model: meta-llama/Llama-3.1-8B
        hardware: {gpu: rtx4090}
        expect: {tokens_per_second: 18000}

    ## Use instead
        expect: {tokens_per_second: 2500}     # a measured figure, below the ceiling
    """

    id = "RC602"
    name = "throughput-claim"
    check = "throughput"
    reads = frozenset({"model", "quantization", "lora", "training", "hardware", "expect"})
    needs = frozenset({"gpu", "model"})
    why = "a throughput above the hardware's ceiling makes a schedule and a budget that cannot hold"

    def run(self, ctx):
        from recipe_checks.throughput import recipe_ceiling

        recipe = ctx.recipe
        claimed = recipe.expect.tokens_per_second
        if claimed is None:
            return
        result = recipe_ceiling(recipe, ctx.model, ctx.gpu)
        if result.tokens_per_second is None or claimed <= result.tokens_per_second:
            return
        yield self.finding(
            ctx,
            f"expect.tokens_per_second {claimed:,.0f} exceeds the ceiling of {result.tokens_per_second:,.0f} tokens/s "
            f"on {ctx.gpu.key}: {result.flops_per_token / 1e9:.1f} GFLOP per token needs "
            f"{claimed * result.flops_per_token / 1e12:,.0f} TFLOP/s, {claimed / result.tokens_per_second:.1f}x the "
            f"card's dense {result.peak_tflops:g} TFLOP/s",
            ("expect", "tokens_per_second"),
            help="use a throughput measured on this GPU, below the ceiling",
        )
