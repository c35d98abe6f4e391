"""RC705: an adapter recipe keeps the base weights frozen and unchanged."""

from __future__ import annotations

from recipe_checks.rules._step_common import STEP_READS, modules_line, step_report
from recipe_checks.rules.base import Rule


class BaseNotFrozen(Rule):
    """
    ## What it checks
    In a LoRA, DoRA or QLoRA recipe, the optimizer trains adapter parameters only (and what the recipe
    asks for besides: `modules_to_save`, biases with `bias: all` or `lora_only`), and after a real
    step every frozen base weight holds exactly the values it was loaded with.

    ## Why it matters
    A base weight that trains turns an adapter run into a partial full fine-tune: its gradients and
    optimizer states take memory the estimate did not count, the saved adapter does not reproduce the
    trained model, and merging it into the base gives a different model.

    ## Example
    A training script that calls `model.requires_grad_(True)` after `get_peft_model`, or a kernel that
    writes into a weight it should only read.

    ## Use instead
    Train through peft's wrapper as it is built, and list extra trained modules in `modules_to_save`.
    """

    id = "RC705"
    name = "base-not-frozen"
    check = "cpu-step"
    reads = STEP_READS
    needs = frozenset({"model"})
    why = "a base weight that trains makes the adapter run a partial full fine-tune the saved adapter cannot reproduce"

    def run(self, ctx):
        report = step_report(ctx)
        if report is None or ctx.recipe.lora is None:
            return
        bias = ctx.recipe.lora.bias
        trained = [m for m in report.not_frozen if bias == "none" or not m.endswith("bias")]
        if trained:
            yield self.finding(
                ctx, f"the optimizer trains base weights of {modules_line(trained)}", ("lora",), at_value=False,
                help="keep the base frozen: list modules to train fully in lora.modules_to_save",
            )
        if report.base_changed:
            yield self.finding(
                ctx, f"the step changed frozen base weights of {modules_line(report.base_changed)}",
                ("lora",), at_value=False,
                help="nothing in the recipe should write to frozen weights: report it with the recipe",
            )
