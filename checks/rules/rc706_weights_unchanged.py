"""RC706: the step changes what the recipe trains."""

from __future__ import annotations

from recipe_checks.findings import Severity
from recipe_checks.rules._step_common import STEP_READS, modules_line, step_report
from recipe_checks.rules.base import Rule


class WeightsUnchanged(Rule):
    """
    ## What it checks
    After one real optimizer step at the LR of the first step past warmup, every trained module that
    received a gradient holds different values (for an adapter pair, either matrix: LoRA's A may not
    move on step 1, while B is zero). In a full fine-tune with bf16 or fp16 weights, modules whose
    update is below the weights' precision (norm weights near 1.0) are named as information.

    ## Why it matters
    An update that changes nothing is a run that trains nothing: a learning rate of 0 after warmup, a
    schedule that ends at its first step, or updates lost to rounding in low-precision weights.

    ## Example
        training:
          lr_scheduler_type: linear
          max_steps: 10
          warmup_steps: 10      # the schedule reaches its end as warmup ends: lr 0

    ## Use instead
        training:
          warmup_steps: 0.03    # a fraction of the run
    """

    id = "RC706"
    name = "weights-unchanged"
    check = "cpu-step"
    reads = STEP_READS
    needs = frozenset({"model"})
    why = "an update that changes nothing is a run that trains nothing"

    def run(self, ctx):
        report = step_report(ctx)
        if report is None or not report.unchanged:
            return
        total_unchanged = len(report.unchanged)
        low_precision_full = ctx.recipe.lora is None and report.learning_rate > 0 and any(
            d in ("bfloat16", "float16") for d in (report.weights_dtype,))
        if low_precision_full and total_unchanged < report.trained_modules:
            yield self.finding(
                ctx,
                f"the update at lr {report.learning_rate:.3g} is below the {report.weights_dtype} precision of "
                f"{modules_line(report.unchanged)}: those weights do not change in this step",
                ("training", "learning_rate"), severity=Severity.INFO,
                help="expected for weights near 1.0 (norms) in a bf16 model; load the weights in float32 to train "
                     "them exactly",
            )
            return
        training = ctx.loaded.data.get("training") or {}
        warmup = report.learning_rate == 0 and isinstance(training, dict) and "warmup_steps" in training
        key = ("training", "warmup_steps") if warmup else ("training", "learning_rate")
        yield self.finding(
            ctx,
            f"the step at lr {report.learning_rate:.3g} (schedule step {report.step_index}) left "
            f"{modules_line(report.unchanged)} unchanged",
            key, help="check learning_rate, warmup_steps and max_steps: the LR past warmup must be above 0",
        )
