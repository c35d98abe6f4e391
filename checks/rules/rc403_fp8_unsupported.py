"""RC403: fp8 targets a GPU with fp8 tensor cores (compute capability 8.9 or newer)."""

from __future__ import annotations

from recipe_checks.facts import first_source, min_cc
from recipe_checks.rules.base import Rule


class Fp8Unsupported(Rule):
    """
    ## What it checks
    fp8 weights (`model.torch_dtype: float8_e4m3fn` / `float8_e5m2`) or fp8 quantization
    (`quantization.quant_method: fp8`) target a GPU of compute capability 8.9 or newer
    (Ada, Hopper, Blackwell).

    ## Why it matters
    torch's fp8 matmul (_scaled_mm) and Transformer Engine need 8.9+: on an A100 (8.0) the run fails
    or silently falls back to bf16 with none of the intended savings.

    ## Example
        hardware: {gpu: a100-80gb}
        model: {id: meta-llama/Llama-3.1-8B, torch_dtype: float8_e4m3fn}

    ## Use instead
        hardware: {gpu: h100}
    """

    id = "RC403"
    name = "fp8-unsupported"
    check = "precision"
    reads = frozenset({"model", "quantization"})
    needs = frozenset({"gpu"})
    why = "fp8 matmuls need compute capability 8.9+; older GPUs fail or fall back silently"

    def run(self, ctx):
        gpu = ctx.gpu
        recipe = ctx.recipe
        need = min_cc("fp8", "fp8_matmul_and_training")
        if gpu is None or (gpu.supports_fp8 and gpu.cc >= need):
            return
        source = first_source("fp8", "fp8_matmul_and_training")
        uses = []
        if recipe.model.torch_dtype and recipe.model.torch_dtype.startswith("float8"):
            uses.append((("model", "torch_dtype"), f"model.torch_dtype {recipe.model.torch_dtype}"))
        if recipe.quantization is not None and recipe.quantization.quant_method == "fp8":
            uses.append((("quantization", "quant_method"), "fp8 quantization"))
        for key, what in uses:
            yield self.finding(
                ctx,
                f"{what} on {gpu.key} (compute capability {gpu.compute_capability}), which has no fp8 tensor cores",
                key,
                help=f"use bf16 on {gpu.key}, or target an fp8 GPU (rtx4090, l4, l40s, h100, h200); see {source}",
            )
