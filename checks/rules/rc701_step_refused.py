"""RC701: the libraries build the recipe's training run: model, adapters, checkpointing, optimizer, scheduler."""

from __future__ import annotations

from recipe_checks.findings import Severity
from recipe_checks.fixtures.tiny import FIXTURE_CACHE_HELP
from recipe_checks.library_warnings import SilentlyIncorrect
from recipe_checks.limits import shorten
from recipe_checks.rules._step_common import STEP_READS, step_report
from recipe_checks.rules.base import CannotJudge, Rule


class StepRefused(Rule):
    """
    ## What it checks
    The recipe's run is built for real on the tiny-random model of its architecture, through the
    code path a training script takes: `TrainingArguments` from the `training` section,
    `from_pretrained` with the `quantization` section as a `BitsAndBytesConfig`, TRL's k-bit
    preparation, peft's `get_peft_model` with the `lora` section, activation checkpointing as the
    Trainer enables it, and the optimizer and LR scheduler the Trainer builds. None of them may refuse.
    A step in which a library warns that a result may be silently incorrect (torch's "an autograd kernel
    was not registered") is refused too, with the library's message: no verdict rests on it.

    ## Why it matters
    A setting that torch, peft or transformers refuse (an Adam beta of 1.5, a negative epsilon, a key
    the installed transformers no longer takes) passes every static check and fails the real run
    when its optimizer is built: after the model download and the data preparation.

    ## Example
        training:
          optim: adamw_torch
          adam_beta1: 1.5

    ## Use instead
        training:
          adam_beta1: 0.9
    The finding quotes the library's own message and points at the key that, reset to the
    library's default, lets the run build.
    """

    id = "RC701"
    name = "step-refused"
    check = "cpu-step"
    reads = STEP_READS
    needs = frozenset({"model"})
    why = "a setting the libraries refuse fails the real run when it is built, after the download and data preparation"

    def run(self, ctx):
        from recipe_checks.run.cpu_step import cpu_step

        report = step_report(ctx)  # NotRun when there is nothing to run on
        outcome = cpu_step(ctx.state)
        if outcome.fixture_error:  # this machine's fixture cache: an error with its fix, never a skip that passes CI
            return [self.finding(ctx, outcome.fixture_error, ("model",), at_value=False,
                                 why="a check that cannot run must not pass as if it had",
                                 help=FIXTURE_CACHE_HELP)]
        refused = outcome.refused
        if refused is None:
            return [self.finding(ctx, _summary(report, outcome), ("training",), at_value=False, help="",
                                 severity=Severity.INFO)]
        key = refused.key_path
        where = ".".join(str(k) for k in key) if key else "the recipe"
        error = refused.library_error
        if isinstance(error, SilentlyIncorrect):  # the library's fault on this machine, not the recipe's
            return [self.finding(ctx, error.finding_message(refused.stage), ("training",), at_value=False,
                                 help=error.help)]
        finding = self.finding(
            ctx,
            f"{refused.stage} refuses {where}: {type(error).__name__}: {shorten(str(error), 300)}",
            key, at_value=len(key) > 1,
            help=f"change {where} to a value {refused.stage} accepts (the message above is the library's own)",
        )
        # peft refusing the targets is what the static checks (RC201, RC104, ...) already explain
        raise CannotJudge(finding)


def _summary(report, outcome) -> str:
    """What ran, for the report: the model, the sizes, the schedule step, the loss."""
    fixture = outcome.fixture
    losses = ", ".join(f"{x:.3f}" for x in report.losses[:3]) + (", ..." if len(report.losses) > 3 else "")
    parts = [f"one real step of {report.method} on {fixture.repo_id} ({report.trainable:,} trainable parameters)",
             f"{len(report.losses)} micro-batch(es), loss {losses}",
             f"lr {report.learning_rate:.3g} at schedule step {report.step_index}", *report.notes]
    return "; ".join(parts)
