"""RC603: against a baseline (a git REF or an `estimate --json` file), the traced peak did not rise by
more than the threshold, the recipe did not stop fitting, and its throughput ceiling did not fall."""

from __future__ import annotations

from recipe_checks.findings import Severity
from recipe_checks.gpus import GIB
from recipe_checks.rules.base import Rule


class PeakRegression(Rule):
    """
    ## What it checks
    With `--recipes-baseline=REF` (or `=FILE.json`, written by `recipe-checks estimate --json`), the
    recipe as it is now is traced as RC601 traces it and compared with the recipe at REF, traced the
    same way (or with the figures in the file): it fails when the traced peak rose by more than
    `--recipes-baseline-threshold` (default 5%), when a recipe that fitted its budget no longer does,
    or when its throughput ceiling fell by more than the threshold. Without a baseline it does nothing.

    ## Why it matters
    A change that still fits today can eat the headroom that a longer batch, a newer library or a
    smaller card needed, and a change that lowers the throughput ceiling (gradient checkpointing,
    fp32) makes every epoch slower. Reviewers see neither in a YAML diff.

    ## Example
        # at main: per_device_train_batch_size: 2
        training: {per_device_train_batch_size: 8, max_seq_length: 2048}

    ## Use instead
    Keep the batch that fitted and raise `gradient_accumulation_steps` for the same effective batch.
    When the rise is intended, pass it in that pull request's run (a larger
    `--recipes-baseline-threshold`, or no baseline): an ignore in the recipe would outlive the change,
    and RC109 reports it as suppressing nothing once the base branch has the new figures.
    """

    id = "RC603"
    name = "peak-regression"
    check = "vram"
    reads = frozenset({"model", "quantization", "lora", "training", "hardware"})
    needs = frozenset({"gpu", "model"})
    why = "a regression in memory or speed is invisible in the YAML diff a reviewer reads"

    def run(self, ctx):
        options = ctx.state.options
        if not options.baseline:
            return
        from recipe_checks.baseline import baseline_for
        from recipe_checks.memory.errors import TraceError
        from recipe_checks.memory.estimate import estimate
        from recipe_checks.throughput import recipe_ceiling

        gpu = ctx.gpu
        base = baseline_for(ctx.state, gpu, options.baseline)
        if isinstance(base, str):
            yield self.finding(ctx, f"no regression check: {base}", ("training",), at_value=False, help="",
                               severity=Severity.INFO)
            return
        try:
            now = estimate(ctx.recipe, ctx.state.resolved_model(), gpu, with_fixes=False)  # RC601's trace, cached
        except TraceError:
            return  # RC601 reports why the step cannot be traced
        ceiling = recipe_ceiling(ctx.recipe, ctx.model, gpu).tokens_per_second
        threshold = options.baseline_threshold
        rise = now.peak_bytes / base.peak_bytes - 1 if base.peak_bytes else 0.0
        compared = (f"traced peak {now.peak_bytes / GIB:.2f} GiB on {gpu.key}, {base.peak_bytes / GIB:.2f} GiB in "
                    f"{base.source} ({rise:+.1%})")
        at = ("training",)
        found = False
        if rise > threshold:
            found = True
            yield self.finding(
                ctx, f"{compared}: rose by more than the {threshold:.0%} threshold", at, at_value=False,
                help="keep the micro-batch and sequence length that fitted (raise gradient_accumulation_steps for "
                     "the same effective batch), or enable gradient checkpointing; `recipe-checks estimate` ranks "
                     "the fixes",
            )
        if base.fits and not now.fits:
            found = True
            yield self.finding(
                ctx, f"no longer fits the {now.budget_bytes / GIB:.1f} GiB budget on {gpu.key}: {compared}; it "
                     f"fitted {base.budget_bytes / GIB:.1f} GiB before", at, at_value=False,
                help="RC601 lists the traced fixes that bring it back under the budget",
            )
        if base.tokens_per_second and ceiling is not None and ceiling < base.tokens_per_second * (1 - threshold):
            found = True
            yield self.finding(
                ctx, f"throughput ceiling fell to {ceiling:,.0f} tokens/s on {gpu.key} from "
                     f"{base.tokens_per_second:,.0f} in {base.source} "
                     f"({ceiling / base.tokens_per_second - 1:+.1%}, threshold {threshold:.0%})", at, at_value=False,
                help="gradient checkpointing recomputes a forward pass and full fine-tuning trains every weight: "
                     "each costs FLOPs per token; keep them off where the memory allows",
            )
        if not found:
            yield self.finding(ctx, f"no regression: {compared}", at, at_value=False, help="",
                               severity=Severity.INFO)
