"""RC505: the quantization method is one transformers can train adapters on."""

from __future__ import annotations

from recipe_checks.rules.base import Rule


class QuantNotTrainable(Rule):
    """
    ## What it checks
    A recipe with `quant_method: fp8` (transformers' FineGrainedFP8Config) does not train: that
    quantizer reports itself as not trainable in every transformers version we read.

    ## Why it matters
    The Trainer refuses the model at start-up, after the download and the load.

    ## Example
        quantization: {quant_method: fp8}
        lora: {r: 16, target_modules: all-linear}

    ## Use instead
        quantization: {load_in_4bit: true, bnb_4bit_quant_type: nf4}   # QLoRA
        # or bf16 LoRA with no quantization
    """

    id = "RC505"
    name = "quant-not-trainable"
    check = "quantization"
    reads = frozenset({"quantization"})
    why = "transformers marks fp8-quantized models as not trainable; the Trainer refuses them"
    stops_the_step = True

    def run(self, ctx):
        q = ctx.recipe.quantization
        if q is None or q.quant_method != "fp8":
            return
        from recipe_checks.facts import first_source

        yield self.finding(
            ctx,
            "quant_method fp8 (FineGrainedFP8Config) loads a model that transformers cannot train",
            ("quantization", "quant_method"),
            help="for training, use bitsandbytes 4-bit (QLoRA) or an unquantized bf16 model; see "
            + first_source("fp8", "transformers_finegrained_fp8"),
        )
