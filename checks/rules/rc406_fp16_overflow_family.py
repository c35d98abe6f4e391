"""RC406: fp16 is not used on a model family documented to overflow in fp16."""

from __future__ import annotations

from recipe_checks.facts import precision_facts
from recipe_checks.findings import Severity
from recipe_checks.rules.base import Rule


class Fp16OverflowFamily(Rule):
    """
    ## What it checks
    fp16 training (`training.fp16`, a float16 4-bit compute dtype, or `model.torch_dtype: float16`)
    on a model family whose fp16 problems are documented. Where NaN/inf is the documented outcome
    (T5, Gemma 2 and 3, ...) it is an error; where the family was trained in bf16 and fp16 is
    documented as risky (Llama, Qwen2, ...) it is a warning. Each family's reason and sources are in
    checks/data/precision_facts.yaml.

    ## Why it matters
    Activations beyond fp16's 65504 become inf, then NaN; the loss goes NaN hours into the run.

    ## Example
        model: google/gemma-2-9b
        training: {fp16: true}

    ## Use instead
        training: {bf16: true}      # on an Ampere or newer GPU
    """

    id = "RC406"
    name = "fp16-overflow-family"
    check = "precision"
    reads = frozenset({"model", "quantization", "training"})
    why = "activations beyond fp16's range become inf, then NaN, hours into the run"

    def run(self, ctx):
        recipe = ctx.recipe
        model_type = ctx.model_type
        if model_type is None:
            return
        fact = (precision_facts().get("fp16_overflow") or {}).get(model_type)
        if fact is None:
            return
        q = recipe.quantization
        uses = []
        if recipe.training.fp16:
            uses.append((("training", "fp16"), "fp16 training"))
        if q is not None and q.load_in_4bit and (q.bnb_4bit_compute_dtype or "") == "float16":
            uses.append((("quantization", "bnb_4bit_compute_dtype"), "float16 4-bit compute"))
        if recipe.model.torch_dtype == "float16":
            uses.append((("model", "torch_dtype"), "float16 weights"))
        if not uses:
            return
        key, what = uses[0]
        severity = Severity.ERROR if fact.get("severity") == "error" else Severity.WARNING
        gpu = ctx.gpu
        fix = "use bf16" + (f" ({gpu.key} supports it)" if gpu is not None and gpu.supports_bf16 else
                            " on an Ampere or newer GPU, or fp32")
        yield self.finding(
            ctx,
            f"{what} on a {model_type} model: {fact['reason']}",
            key,
            severity=severity,
            help=f"{fix}; sources: {', '.join((fact.get('sources') or [])[:2])}",
        )
