"""RC503: the 4-bit quantization type is one bitsandbytes has (nf4 or fp4), and is chosen on purpose."""

from __future__ import annotations

from recipe_checks.findings import Severity
from recipe_checks.rules.base import Rule

QUANT_TYPES = ("nf4", "fp4")


class QuantType(Rule):
    """
    ## What it checks
    `bnb_4bit_quant_type` is `nf4` or `fp4`. BitsAndBytesConfig accepts any string (`nf5` passes)
    and the model load fails later. A 4-bit recipe that leaves it unset gets bitsandbytes' default
    `fp4`, not the `nf4` of QLoRA: a warning.

    ## Why it matters
    An unknown type fails when the weights are quantized on the GPU; fp4 by omission trains with a
    data type the QLoRA paper found worse than NF4.

    ## Example
        quantization: {load_in_4bit: true, bnb_4bit_quant_type: nf5}

    ## Use instead
        quantization: {load_in_4bit: true, bnb_4bit_quant_type: nf4}
    """

    id = "RC503"
    name = "quant-type"
    check = "quantization"
    reads = frozenset({"quantization"})
    why = "bitsandbytes has only nf4 and fp4; anything else fails when the weights are quantized"
    stops_the_step = True

    def run(self, ctx):
        q = ctx.recipe.quantization
        if q is None:
            return
        if q.bnb_4bit_quant_type not in QUANT_TYPES:
            yield self.finding(
                ctx,
                f"bnb_4bit_quant_type '{q.bnb_4bit_quant_type}' is not a bitsandbytes 4-bit type",
                ("quantization", "bnb_4bit_quant_type"),
                help="use nf4 (QLoRA's NormalFloat4) or fp4",
            )
        elif q.load_in_4bit and "bnb_4bit_quant_type" not in q.model_fields_set:
            yield self.finding(
                ctx,
                "bnb_4bit_quant_type is not set, so bitsandbytes uses its default fp4, not QLoRA's nf4",
                ("quantization", "load_in_4bit"),
                severity=Severity.WARNING,
                why="the QLoRA paper found NF4 better than FP4 for normally distributed weights",
                help="set bnb_4bit_quant_type: nf4 (or fp4, explicitly, if that is the intent)",
            )
