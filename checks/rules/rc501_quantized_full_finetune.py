"""RC501: a quantized base model is trained through adapters, never fully fine-tuned."""

from __future__ import annotations

from recipe_checks.recipe.schema import Method
from recipe_checks.formats import translation_of
from recipe_checks.rules.base import Rule


class QuantizedFullFinetune(Rule):
    """
    ## What it checks
    A recipe that loads the model in 4 or 8 bits also has a `lora` section.

    ## Why it matters
    Quantized weights cannot be trained directly; transformers' Trainer refuses a purely quantized
    model ("You cannot perform fine-tuning on purely quantized models").

    ## Example
        quantization: {load_in_4bit: true}
        # no lora section: a full fine-tune

    ## Use instead
        quantization: {load_in_4bit: true, bnb_4bit_quant_type: nf4}
        lora: {r: 16, lora_alpha: 32, target_modules: all-linear}
    """

    id = "RC501"
    name = "quantized-full-finetune"
    check = "quantization"
    reads = frozenset({"quantization", "lora"})
    why = "quantized weights cannot be trained; the Trainer refuses a purely quantized model"
    stops_the_step = True

    def run(self, ctx):
        recipe = ctx.recipe
        q = recipe.quantization
        if q is None or recipe.method is not Method.FULL or not (q.load_in_4bit or q.load_in_8bit):
            return
        translation = translation_of(ctx.state)
        if translation is not None and translation.other_adapter:  # adapters of another kind (OFT): not a full FT
            return
        bits = "4" if q.load_in_4bit else "8"
        yield self.finding(
            ctx,
            f"the model is loaded in {bits}-bit but the recipe has no lora section (a full fine-tune)",
            ("quantization", f"load_in_{bits}bit"),
            help="add a lora section to train adapters (QLoRA), or drop quantization for a full fine-tune",
        )
