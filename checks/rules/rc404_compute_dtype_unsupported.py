"""RC404: the 4-bit compute dtype is one the target GPU computes in."""

from __future__ import annotations

from recipe_checks.rules.base import Rule


class ComputeDtypeUnsupported(Rule):
    """
    ## What it checks
    `quantization.bnb_4bit_compute_dtype: bfloat16` targets a GPU with bf16 (Ampere or newer).

    ## Why it matters
    Every 4-bit matmul is dequantized to the compute dtype; on a T4 or V100, bf16 compute fails or
    is emulated, many times slower.

    ## Example
        hardware: {gpu: t4}
        quantization: {load_in_4bit: true, bnb_4bit_compute_dtype: bfloat16}

    ## Use instead
        quantization: {load_in_4bit: true, bnb_4bit_compute_dtype: float16}
    """

    id = "RC404"
    name = "compute-dtype-unsupported"
    check = "precision"
    reads = frozenset({"quantization"})
    needs = frozenset({"gpu"})
    why = "every 4-bit matmul runs in the compute dtype; bf16 has no hardware support before Ampere"

    def run(self, ctx):
        gpu = ctx.gpu
        q = ctx.recipe.quantization
        if gpu is None or q is None or not q.load_in_4bit or gpu.supports_bf16:
            return
        if (q.bnb_4bit_compute_dtype or "") == "bfloat16":
            yield self.finding(
                ctx,
                f"bnb_4bit_compute_dtype bfloat16 on {gpu.key}, which has no bf16 support "
                f"(compute capability {gpu.compute_capability})",
                ("quantization", "bnb_4bit_compute_dtype"),
                help="use bnb_4bit_compute_dtype: float16 with training.fp16: true",
            )
