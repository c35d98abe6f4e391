"""RC302: training.optim is an optimizer name transformers knows."""

from __future__ import annotations

from recipe_checks.rules.base import Rule
from recipe_checks.suggest import nearest


def optimizer_names() -> list[str]:
    from transformers.training_args import OptimizerNames

    return [o.value for o in OptimizerNames]


class UnknownOptimizer(Rule):
    """
    ## What it checks
    `training.optim` is one of transformers' OptimizerNames in the installed version.

    ## Why it matters
    TrainingArguments raises on an unknown name when the job starts, after the model is loaded.

    ## Example
        training:
          optim: paged_adam_8bit

    ## Use instead
        training:
          optim: paged_adamw_8bit
    """

    id = "RC302"
    name = "unknown-optimizer"
    check = "optimizer"
    reads = frozenset({"training"})
    why = "TrainingArguments raises on an unknown optimizer when the job starts"
    stops_the_step = True

    def run(self, ctx):
        optim = ctx.recipe.training.optim
        names = optimizer_names()
        if optim in names:
            return
        near = nearest(optim, names, n=3, cutoff=0.5)
        hint = f"did you mean {' or '.join(repr(n) for n in near)}? " if near else ""
        yield self.finding(
            ctx,
            f"optimizer '{optim}' is not one transformers knows",
            ("training", "optim"),
            help=f"{hint}Valid names: {', '.join(names)}",
        )
