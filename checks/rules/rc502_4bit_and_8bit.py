"""RC502: a recipe loads the model in 4-bit or in 8-bit, not both."""

from __future__ import annotations

from recipe_checks.rules.base import Rule


class FourAndEightBit(Rule):
    """
    ## What it checks
    `quantization.load_in_4bit` and `quantization.load_in_8bit` are not both true.

    ## Why it matters
    BitsAndBytesConfig raises on the pair; a recipe cannot mean both.

    ## Example
        quantization: {load_in_4bit: true, load_in_8bit: true}

    ## Use instead
        quantization: {load_in_4bit: true, bnb_4bit_quant_type: nf4}
    """

    id = "RC502"
    name = "4bit-and-8bit"
    check = "quantization"
    reads = frozenset({"quantization"})
    why = "BitsAndBytesConfig raises when both are set"
    stops_the_step = True

    def run(self, ctx):
        q = ctx.recipe.quantization
        if q is not None and q.load_in_4bit and q.load_in_8bit:
            yield self.finding(
                ctx,
                "load_in_4bit and load_in_8bit are both true",
                ("quantization", "load_in_8bit"),
                help="keep load_in_4bit (QLoRA) or load_in_8bit (LoRA over LLM.int8), not both",
            )
