"""RC506: a quantization section actually quantizes something."""

from __future__ import annotations

from recipe_checks.findings import Severity
from recipe_checks.rules.base import Rule


class QuantizesNothing(Rule):
    """
    ## What it checks
    A bitsandbytes `quantization` section sets `load_in_4bit` or `load_in_8bit`.

    ## Why it matters
    Without either, BitsAndBytesConfig quantizes nothing: the model loads in full precision and the
    "QLoRA" recipe is a plain LoRA that needs several times the memory.

    ## Example
        quantization:
          bnb_4bit_quant_type: nf4
          bnb_4bit_compute_dtype: bfloat16

    ## Use instead
        quantization:
          load_in_4bit: true
          bnb_4bit_quant_type: nf4
          bnb_4bit_compute_dtype: bfloat16
    """

    id = "RC506"
    name = "quantizes-nothing"
    check = "quantization"
    reads = frozenset({"quantization"})
    severity = Severity.WARNING
    why = "a section with neither load_in_4bit nor load_in_8bit loads the model unquantized"

    def run(self, ctx):
        q = ctx.recipe.quantization
        if q is None or q.quant_method != "bitsandbytes" or q.load_in_4bit or q.load_in_8bit:
            return
        yield self.finding(
            ctx,
            "the quantization section sets neither load_in_4bit nor load_in_8bit: the model loads unquantized",
            ("quantization",),
            at_value=False,
            help="add load_in_4bit: true (QLoRA), or remove the section",
        )
