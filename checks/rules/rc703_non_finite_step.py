"""RC703: the loss and, after the update, every weight are finite."""

from __future__ import annotations

import math

from recipe_checks.rules._step_common import STEP_READS, modules_line, step_report
from recipe_checks.rules.base import Rule


class NonFiniteStep(Rule):
    """
    ## What it checks
    One real optimizer step of the recipe on the tiny-random model (every micro-batch of the
    accumulation, gradient clipping, the optimizer at the LR of the first step past warmup): every
    micro-batch's loss is finite, every gradient is finite, and after the update every parameter is.
    When one is not, each training key is reset to its default in turn to find the one it comes from.

    ## Why it matters
    A NaN in the first update spreads through every later step; the loss curve shows `nan` from step
    2 on, and the run is lost. An epsilon of 0 makes Adam's first update 0/0 for every parameter
    whose gradient is still zero (LoRA's A on step 1).

    ## Example
        training:
          adam_epsilon: 0.0

    ## Use instead
        training:
          adam_epsilon: 1.0e-8     # torch's and transformers' default
    """

    id = "RC703"
    name = "non-finite-step"
    check = "cpu-step"
    reads = STEP_READS
    needs = frozenset({"model"})
    why = "a NaN or inf in the first update spreads through every later step: the run is lost"

    def run(self, ctx):
        from recipe_checks.run.cpu_step import cpu_step

        report = step_report(ctx)
        if report is None:
            return
        broken = []
        bad_losses = [f"{x}" for x in report.losses if not math.isfinite(x)]
        if bad_losses:
            broken.append(f"the loss is {bad_losses[0]} in {len(bad_losses)} of {len(report.losses)} micro-batches")
        if report.non_finite_gradients:
            broken.append(f"gradients of {modules_line(report.non_finite_gradients)} are not finite")
        if report.non_finite_parameters:
            broken.append(f"after the update, {modules_line(report.non_finite_parameters)} hold NaN or inf")
        if not broken:
            return
        key = cpu_step(ctx.state).broken_by
        cause = (f"; with training.{key} at its default the step is finite" if key else
                 "; no single training key explains it")
        yield self.finding(
            ctx,
            f"the step at lr {report.learning_rate:.3g} is not finite: {'; '.join(broken)}{cause}",
            ("training", key) if key else ("training",), at_value=key is not None,
            help=(f"use the library's default for training.{key} (or a value near it)" if key else
                  "lower learning_rate, keep max_grad_norm above 0, and check the precision settings"),
        )
