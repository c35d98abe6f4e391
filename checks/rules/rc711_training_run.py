"""RC711: a short training run of the recipe lowers the loss, stays finite, and trains only what it should."""

from __future__ import annotations

from recipe_checks.findings import Severity
from recipe_checks.fixtures.tiny import FIXTURE_CACHE_HELP
from recipe_checks.library_warnings import SilentlyIncorrect
from recipe_checks.limits import shorten
from recipe_checks.rules._step_common import STEP_READS, modules_line
from recipe_checks.rules.base import CannotJudge, NotRun, Rule


class TrainingRun(Rule):
    """
    ## What it checks
    The recipe trains the tiny-random model of its architecture for 30 optimizer steps through
    transformers' `Trainer` (`--recipes-train-steps` changes the count), on one fixed batch of random
    tokens that a training run can memorise. The loss on that batch must end at least 0.1% below where
    it started, every logged loss must be finite, the trained parameters must have changed and the
    frozen base must not. Sizes are scaled down (one row of 32 tokens a step, no accumulation) and the recipe's warmup is kept as the same fraction of the run; the report says so.

    ## Why it matters
    A recipe can build and take one good step and still not learn: a schedule that decays to 0 at
    once, a learning rate too small to move the weights in their precision, a loss that diverges
    after a few updates. Twenty seconds on a laptop say so before a GPU hour does.

    ## Example
        training:
          learning_rate: 1.0e-9

    ## Use instead
        training:
          learning_rate: 2.0e-4     # LoRA's usual range is 1e-4 to 3e-4
    """

    id = "RC711"
    name = "training-run"
    check = "cpu-train"
    reads = STEP_READS
    needs = frozenset({"model"})
    why = "a recipe that does not lower the loss on data it can memorise will not learn from real data either"

    def run(self, ctx):
        from recipe_checks.run.cpu_train import cpu_train
        from recipe_checks.run.train import MIN_LOSS_DROP

        outcome = cpu_train(ctx.state)
        if outcome.cannot_run:
            raise NotRun(f"not run: {outcome.cannot_run}")
        if outcome.fixture_error:  # this machine's fixture cache (as RC701 reports it): an error, never a skip
            yield self.finding(ctx, outcome.fixture_error, ("model",), at_value=False,
                               why="a check that cannot run must not pass as if it had",
                               help=FIXTURE_CACHE_HELP)
            return
        if outcome.refused is not None:
            error = outcome.refused.library_error
            if isinstance(error, SilentlyIncorrect):  # the library's fault on this machine, not the recipe's
                yield self.finding(ctx, error.finding_message(outcome.refused.stage), ("training",), at_value=False,
                                   help=error.help)
                return
            raise CannotJudge(self.finding(
                ctx, f"the training run cannot be built: {outcome.refused.stage}: {type(error).__name__}: "
                     f"{shorten(str(error), 300)}",
                outcome.refused.key_path, at_value=len(outcome.refused.key_path) > 1,
                help="see the cpu-step check of this recipe (RC701) for the key",
            ))
        report = outcome.report
        key = ("training", "learning_rate")
        where = (f"{report.steps} steps: loss {report.first_loss:.4f} -> {report.last_loss:.4f} on the memorised "
                 f"batch ({report.drop:+.1%})")
        if not report.finite:
            yield self.finding(ctx, f"the training run is not finite after {where}", key,
                               help="lower learning_rate, keep max_grad_norm above 0, check the precision settings")
            return
        if report.drop < MIN_LOSS_DROP:
            yield self.finding(
                ctx, f"the loss did not fall by {MIN_LOSS_DROP:.1%} in {where}", key,
                help="raise learning_rate, or check the schedule: its LR must be above 0 for most of the run",
            )
        if not report.adapters_changed:
            yield self.finding(ctx, f"the trained parameters did not change in {report.steps} steps", key,
                               help="the LR must be above 0 after warmup")
        if report.base_changed and ctx.recipe.lora is not None:
            yield self.finding(ctx, f"the run changed frozen base weights of {modules_line(report.base_changed)}",
                               ("lora",), at_value=False, help="keep the base frozen: train extra modules with "
                                                               "lora.modules_to_save")
        yield self.finding(
            ctx, f"{where}; {report.tokens_per_second:,.0f} tokens/s on this CPU"
                 + "".join(f"; {note}" for note in report.notes),
            ("training",), at_value=False, help="", severity=Severity.INFO,
        )
