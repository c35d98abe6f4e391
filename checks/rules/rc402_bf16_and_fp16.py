"""RC402: a recipe trains in bf16 or in fp16, not both."""

from __future__ import annotations

from recipe_checks.rules.base import Rule


class Bf16AndFp16(Rule):
    """
    ## What it checks
    `training.bf16` and `training.fp16` are not both true.

    ## Why it matters
    TrainingArguments raises on the pair; the recipe cannot mean both.

    ## Example
        training: {bf16: true, fp16: true}

    ## Use instead
        training: {bf16: true}     # fp16 only on GPUs without bf16 (T4, V100)
    """

    id = "RC402"
    name = "bf16-and-fp16"
    check = "precision"
    reads = frozenset({"training"})
    why = "TrainingArguments raises when both are set"
    stops_the_step = True

    def run(self, ctx):
        training = ctx.recipe.training
        if training.bf16 and training.fp16:
            yield self.finding(
                ctx,
                "training sets both bf16 and fp16",
                ("training", "fp16"),
                help="keep bf16 on Ampere or newer GPUs, fp16 on older ones",
            )
