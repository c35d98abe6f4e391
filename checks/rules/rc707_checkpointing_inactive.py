"""RC707: activation checkpointing is really active when the recipe asks for it, and only then."""

from __future__ import annotations

from recipe_checks.rules._step_common import STEP_READS, step_report
from recipe_checks.rules.base import Rule


class CheckpointingInactive(Rule):
    """
    ## What it checks
    With `training.gradient_checkpointing: true`, the first decoder block's forward runs again during
    the backward pass of the real step (the recompute that trades compute for memory); without it,
    it does not.

    ## Why it matters
    The memory estimate counts on checkpointing when the recipe asks for it. Checkpointing that
    silently does nothing (a model class without support, a wrapper that swallows the call, the
    model left in eval mode) keeps every block's activations: the run that fits on paper runs out
    of memory at step 1.

    ## Example
        training:
          gradient_checkpointing: true     # on a model whose blocks transformers cannot checkpoint

    ## Use instead
    A model class that supports it (`supports_gradient_checkpointing`), or the memory of
    `gradient_checkpointing: false` (see `recipe-checks estimate`).
    """

    id = "RC707"
    name = "checkpointing-inactive"
    check = "cpu-step"
    reads = STEP_READS
    needs = frozenset({"model"})
    why = "the memory estimate counts on checkpointing the recipe asks for; if it does nothing, step 1 runs out of memory"

    def run(self, ctx):
        report = step_report(ctx)
        if report is None or report.block_forwards == 0:
            return  # no decoder block found to watch
        key = ("training", "gradient_checkpointing")
        if report.checkpointing_asked and report.block_recomputes == 0:
            yield self.finding(
                ctx,
                f"gradient_checkpointing is set, but the first decoder block ran {report.block_forwards} time(s) in the "
                "forward passes and never again in the backward: nothing was recomputed",
                key, help="use a model class whose blocks support checkpointing, or budget for it off "
                          "(recipe-checks estimate shows both)",
            )
        elif not report.checkpointing_asked and report.block_recomputes:
            yield self.finding(
                ctx,
                f"gradient_checkpointing is off, but the first decoder block re-ran {report.block_recomputes} time(s) "
                "in the backward: something else enables checkpointing",
                key, at_value=False, help="set training.gradient_checkpointing to what the run really does",
            )
