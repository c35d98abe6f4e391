"""RC118: a DPO recipe caps its sequences with dpo.max_length, which DPOTrainer reads, not training.max_seq_length."""

from __future__ import annotations

from recipe_checks.findings import Severity
from recipe_checks.rules.base import Rule


class DpoSequenceLength(Rule):
    """
    ## What it checks
    A recipe with a `dpo` section that sets `training.max_seq_length` to another value than the
    `dpo.max_length` it trains with (DPOConfig's default: 1024).

    ## Why it matters
    `training.max_seq_length` is recipe-checks' own key for an SFT step's sequence length; DPOTrainer
    never reads it: its collator truncates prompt + completion to `dpo.max_length`. The memory check
    traces the DPO step at `dpo.max_length` too, so the number in `training` says something the run
    does not do.

    ## Example
        training:
          max_seq_length: 4096
        dpo:
          beta: 0.1                # max_length left at 1024

    ## Use instead
        dpo:
          max_length: 4096
    """

    id = "RC118"
    name = "dpo-sequence-length"
    check = "schema"
    severity = Severity.WARNING
    reads = frozenset({"training", "dpo"})
    why = "DPOTrainer truncates to dpo.max_length and never reads training.max_seq_length"

    def run(self, ctx):
        recipe = ctx.state.recipe
        if recipe is None or recipe.dpo is None or "max_seq_length" not in recipe.training.model_fields_set:
            return
        length = recipe.dpo.max_length
        if length == recipe.training.max_seq_length:
            return
        cap = f"dpo.max_length {length}" if length is not None else "no truncation (dpo.max_length: null)"
        yield self.finding(
            ctx,
            f"training.max_seq_length {recipe.training.max_seq_length} is not what DPOTrainer trains with: {cap}",
            ("training", "max_seq_length"),
            help=f"set dpo.max_length: {recipe.training.max_seq_length} and remove training.max_seq_length",
        )
