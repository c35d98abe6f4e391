"""RC207: targets on transformers' Conv1D layers set fan_in_fan_out: true."""

from __future__ import annotations

from recipe_checks.findings import Severity
from recipe_checks.rules._targets_common import analysis
from recipe_checks.rules.base import Rule


class Conv1dFanInFanOut(Rule):
    """
    ## What it checks
    When the targets include transformers' Conv1D layers (GPT-2's `c_attn`, `c_proj`, `c_fc`),
    `lora.fan_in_fan_out` is true: Conv1D stores its weight transposed.

    ## Why it matters
    peft corrects this itself with a warning, so the recipe does not say what actually runs, and a
    script that merges the adapter by hand with the recipe's value gets the transpose wrong.

    ## Example
        model: openai-community/gpt2
        lora:
          target_modules: [c_attn]

    ## Use instead
        lora:
          target_modules: [c_attn]
          fan_in_fan_out: true
    """

    id = "RC207"
    name = "conv1d-fan-in-fan-out"
    check = "target-modules"
    reads = frozenset({"model", "lora"})
    severity = Severity.WARNING
    needs = frozenset({"model"})
    why = "Conv1D stores weights transposed; peft flips fan_in_fan_out itself, so the recipe misstates the run"

    def run(self, ctx):
        from transformers.pytorch_utils import Conv1D

        lora = ctx.recipe.lora
        result = analysis(ctx)
        if result is None or lora.fan_in_fan_out:
            return
        conv = [n for n in result.matched_modules if isinstance(ctx.model.get_submodule(n), Conv1D)]
        if conv:
            yield self.finding(
                ctx,
                f"{len(conv)} targeted modules are transformers Conv1D (e.g. {conv[0]}) and fan_in_fan_out is false",
                ("lora", "target_modules"),
                help="set lora.fan_in_fan_out: true",
            )
