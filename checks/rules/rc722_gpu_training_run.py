"""RC722: a short training run at the recipe's real sizes, on a real GPU, learns and fits."""

from __future__ import annotations

from recipe_checks.findings import Severity
from recipe_checks.rules._gpu_common import GPU_READS, run_on_gpu
from recipe_checks.rules.base import Rule


class GpuTrainingRun(Rule):
    """
    ## What it checks
    On a machine with a CUDA GPU, the full-size model with random weights trains through transformers'
    `Trainer` for 30 optimizer steps (`--recipes-train-steps`) with every recipe setting, at the
    recipe's sequence length and batch, on one fixed batch it can memorise, limited to the target's
    memory as gpu-step is. The loss must fall by 0.1%, stay finite, and the peak must fit the budget.
    Tokens/s is measured and compared with `expect.tokens_per_second` when the recipe states it (a
    warning below half of it).

    ## Why it matters
    The last thing between a recipe and a rented node: a run that learns, fits and runs at the speed
    the plan assumed.

    ## Example
        expect:
          tokens_per_second: 9000     # measured 3,100 on the target: the plan's hours are off 3x

    ## Use instead
    The measured figure, or the settings that reach the stated one.
    """

    id = "RC722"
    name = "gpu-training-run"
    check = "gpu-train"
    reads = GPU_READS | frozenset({"expect"})
    needs = frozenset({"gpu", "model"})
    why = "a run that does not learn, fit or reach its planned speed on the GPU wastes the node it is booked on"

    def run(self, ctx):
        from recipe_checks.run.gpu import gpu_train
        from recipe_checks.run.train import MIN_LOSS_DROP

        steps = ctx.state.options.train_steps
        device, outcome, failed = run_on_gpu(
            self, ctx, "gpu-train",
            lambda device: gpu_train(ctx.recipe, ctx.state.resolved_model(), ctx.gpu, device, steps=steps))
        if failed:
            yield from failed
            return
        report = outcome.train
        where = f"{report.steps} steps: loss {report.first_loss:.4f} -> {report.last_loss:.4f} ({report.drop:+.1%})"
        if not report.finite or report.drop < MIN_LOSS_DROP:
            yield self.finding(ctx, f"the run did not learn on {device.name}: {where}", ("training", "learning_rate"),
                               help="check learning_rate and the schedule; cpu-train runs the same code path on CPU")
        if not outcome.comparison.fits:
            yield self.finding(ctx, "over budget during the run: " + "; ".join(outcome.comparison.lines()),
                               ("training",), at_value=False, help="apply the fixes `recipe-checks estimate` ranks")
        expected = ctx.recipe.expect.tokens_per_second
        speed = f"{report.tokens_per_second:,.0f} tokens/s"
        if expected and report.tokens_per_second < 0.5 * expected:
            yield self.finding(ctx, f"{speed} measured, under half the {expected:,.0f} the recipe expects",
                               ("expect", "tokens_per_second"), severity=Severity.WARNING,
                               help="write the measured figure, or change the settings that limit throughput")
        yield self.finding(ctx, f"{where}; {speed} on {device.name}; " + "; ".join(outcome.notes),
                           ("training",), at_value=False, help="", severity=Severity.INFO)
