"""RC504: the 4-bit compute and storage dtypes are dtypes bitsandbytes takes."""

from __future__ import annotations

from recipe_checks.rules.base import Rule

COMPUTE_DTYPES = ("float32", "float16", "bfloat16")
STORAGE_DTYPES = ("uint8", "float16", "bfloat16", "float32")


class QuantDtype(Rule):
    """
    ## What it checks
    `bnb_4bit_compute_dtype` is float32, float16 or bfloat16, and `bnb_4bit_quant_storage` is
    uint8, float16, bfloat16 or float32, spelt as attribute names of the torch module (`bfloat16`,
    not `bf16` nor `torch.bfloat16`).

    ## Why it matters
    transformers turns the string into a torch dtype with getattr(torch, ...): `bf16` or `int4`
    fails when the model is loaded, on the GPU.

    ## Example
        quantization: {load_in_4bit: true, bnb_4bit_compute_dtype: bf16}

    ## Use instead
        quantization: {load_in_4bit: true, bnb_4bit_compute_dtype: bfloat16}
    """

    id = "RC504"
    name = "quant-dtype"
    check = "quantization"
    reads = frozenset({"quantization"})
    why = "transformers resolves these with getattr(torch, name); a wrong name fails at model load"
    stops_the_step = True

    def run(self, ctx):
        q = ctx.recipe.quantization
        if q is None:
            return
        aliases = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32"}
        for key, value, valid in (
            ("bnb_4bit_compute_dtype", q.bnb_4bit_compute_dtype, COMPUTE_DTYPES),
            ("bnb_4bit_quant_storage", q.bnb_4bit_quant_storage, STORAGE_DTYPES),
        ):
            if value is None:
                continue
            if value in valid:
                continue
            name = value.removeprefix("torch.")
            if name in valid:
                hint = f"write '{name}': transformers looks the name up on the torch module, so 'torch.' fails. "
            else:
                hint = f"did you mean '{aliases[name]}'? " if aliases.get(name) in valid else ""
            yield self.finding(
                ctx,
                f"{key} '{value}' is not a dtype bitsandbytes takes here",
                ("quantization", key),
                help=f"{hint}use one of {', '.join(valid)}",
            )
