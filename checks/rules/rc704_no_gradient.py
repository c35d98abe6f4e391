"""RC704: every trained module receives a gradient."""

from __future__ import annotations

from recipe_checks.rules._step_common import STEP_READS, modules_line, step_report
from recipe_checks.rules.base import Rule


class NoGradient(Rule):
    """
    ## What it checks
    Every module the recipe trains (each targeted module's adapter pair, or each weight of a full
    fine-tune) receives a non-zero gradient on the tiny-random model. LoRA's zero-initialised B keeps
    A's gradient at exactly zero on the first step, so the pair is judged over the step and one more
    backward pass after it.

    ## Why it matters
    An adapter that never gets a gradient never trains: its parameters and its optimizer state are
    paid for, and the run reports a trainable-parameter count that is not what is learning. Causes:
    targets on a part of the model the training data never runs (a vision tower trained on text),
    reentrant checkpointing over frozen inputs, a detached branch.

    ## Example
        model: google/gemma-3-4b-pt          # a vision tower and a text decoder
        lora:
          target_modules: [q_proj, v_proj]  # matches the vision tower's too; text batches never run it

    ## Use instead
        lora:
          target_modules: 'model\\.language_model.*\\.(q_proj|v_proj)'
    """

    id = "RC704"
    name = "no-gradient"
    check = "cpu-step"
    reads = STEP_READS
    needs = frozenset({"model"})
    why = "a module that gets no gradient never trains, while its memory is paid for"

    def run(self, ctx):
        report = step_report(ctx)
        if report is None or not report.no_gradient:
            return
        lora = ctx.loaded.data.get("lora") if isinstance(ctx.loaded.data, dict) else None
        key = ("lora", "target_modules") if isinstance(lora, dict) and "target_modules" in lora else (
            ("lora",) if lora else ("training",))
        yield self.finding(
            ctx,
            f"{len(report.no_gradient)} trained module(s) got no gradient in the step and the backward pass "
            f"after it: {modules_line(report.no_gradient)}",
            key, at_value=len(key) > 1,
            help="target only modules the training forward pass runs (exclude_modules, or a regex target "
                 "limited to the text decoder); with reentrant checkpointing, let the inputs require grad",
        )
