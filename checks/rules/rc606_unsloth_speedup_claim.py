"""RC606: a tokens/s claim does not count on Unsloth's speed-up where Unsloth's kernels do not apply."""

from __future__ import annotations

from recipe_checks.rules.base import Rule
from recipe_checks.unsloth import blockers, ceiling_for, effective_checkpointing


class UnslothSpeedupClaim(Rule):
    """
    ## What it checks
    A recipe that trains with Unsloth and states `expect.tokens_per_second`, where Unsloth's hand-written kernels
    do not apply: a model family Unsloth does not patch (RC121), or a setting that sends the model to Unsloth's
    generic path (RC121). The check cannot tell a figure measured on this setup from one scaled by Unsloth's
    published speed-ups (about 2x, for the families it patches): without a measurement nothing bounds the
    baseline's throughput below the FLOPs ceiling (RC602), so the claim is reported with what it asks of the GPU
    (the share of the card's dense tensor peak), and stays reported until the recipe says it was measured.

    ## Why it matters
    "Custom architectures fall back to baseline": a schedule or a budget that multiplies a baseline by 1.8 for a
    model Unsloth does not patch is off by that factor, and nothing fails until the run is late.

    ## Example
        model: microsoft/Phi-3-mini-4k-instruct
        unsloth: {max_seq_length: 2048}
        expect: {tokens_per_second: 6000}

    ## Use instead
        expect: {tokens_per_second: 3300}
        checks:
          ignore: {RC606: "measured on an RTX 4090 with Unsloth 2026.8.19, this recipe, steps 50-100"}
    """

    id = "RC606"
    name = "unsloth-speedup-claim"
    check = "throughput"
    reads = frozenset({"model", "quantization", "lora", "training", "hardware", "expect", "unsloth"})
    needs = frozenset({"gpu", "model"})
    why = "a throughput that counts on a speed-up the model does not get sets a schedule that cannot hold"

    def run(self, ctx):
        recipe = ctx.recipe
        claimed = recipe.expect.tokens_per_second
        if recipe.unsloth is None or claimed is None:
            return
        whole = [b for b in blockers(recipe, ctx.model_type) if b.whole]
        if not whole:
            return
        result = ceiling_for(recipe, ctx.model, ctx.gpu, checkpointing=bool(effective_checkpointing(recipe)))
        demand = ""
        if result.tokens_per_second:
            demand = (f"; it needs {claimed / result.tokens_per_second:.0%} of {ctx.gpu.key}'s dense "
                      f"{result.peak_tflops:g} TFLOP/s ({result.flops_per_token / 1e9:.1f} GFLOP per token)")
        yield self.finding(
            ctx, f"expect.tokens_per_second {claimed:,.0f} with Unsloth where its kernels do not apply "
            f"({'; '.join(b.short for b in whole)}): without a measurement nothing tells this figure from a baseline "
            f"scaled by Unsloth's published speed-up, nor bounds the baseline below the FLOPs ceiling{demand}",
            ("expect", "tokens_per_second"),
            help="state a throughput measured on this GPU with this recipe, and record where it was measured: "
            "checks.ignore: {RC606: \"measured ...\"}; a baseline figure times Unsloth's published speed-up is "
            "not one", details=[b.reason for b in whole],
        )
