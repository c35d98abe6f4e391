"""RC119: a DPO step's chosen and rejected rows fit the tokens a training step is checked for."""

from __future__ import annotations

from recipe_checks import limits
from recipe_checks.rules.base import Rule


class DpoStepTooLarge(Rule):
    """
    ## What it checks
    A DPO step runs 2 x `per_device_train_batch_size` rows of up to `dpo.max_length` tokens (the chosen
    and the rejected sequence of each pair) in one forward: at most 134,217,728 tokens, the most a
    training step is checked for (the limit `training` applies to an SFT step's batch x max_seq_length).

    ## Why it matters
    A step that large is no recipe anyone trains (a 70B model's activations at that size take terabytes);
    it is a typo (an extra zero or two in max_length), and tracing it would take minutes of the check run.

    ## Example
        training: {per_device_train_batch_size: 64}
        dpo:
          max_length: 2000000

    ## Use instead
        dpo:
          max_length: 2048
    """

    id = "RC119"
    name = "dpo-step-too-large"
    check = "schema"
    reads = frozenset({"training", "dpo"})
    why = "a step beyond the traced limit is a typo, and tracing it would stall the check run"

    def run(self, ctx):
        recipe = ctx.state.recipe
        if recipe is None or recipe.dpo is None or recipe.dpo.max_length is None:
            return
        tokens = 2 * recipe.training.per_device_train_batch_size * recipe.dpo.max_length
        if tokens <= limits.MAX_TRACE_TOKENS:
            return
        yield self.finding(
            ctx,
            f"2 x per_device_train_batch_size x dpo.max_length is {tokens:,} tokens per DPO step, more than the "
            f"{limits.MAX_TRACE_TOKENS:,} a training step is checked for",
            ("dpo", "max_length"),
            help="give dpo.max_length the longest prompt + completion the data has (e.g. 2048)",
        )
