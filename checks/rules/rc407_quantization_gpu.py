"""RC407: bitsandbytes quantization targets a GPU bitsandbytes supports for it."""

from __future__ import annotations

from recipe_checks.facts import first_source, min_cc
from recipe_checks.rules.base import Rule


class QuantizationGpu(Rule):
    """
    ## What it checks
    `load_in_4bit` targets compute capability 6.0+ and `load_in_8bit` (LLM.int8) 7.5+, the minimums
    the bitsandbytes documentation gives. A V100 (7.0) cannot run LLM.int8.

    ## Why it matters
    The load or the first matmul fails on the GPU, after the download.

    ## Example
        hardware: {gpu: v100-16gb}
        quantization: {load_in_8bit: true}

    ## Use instead
        quantization: {load_in_4bit: true, bnb_4bit_quant_type: nf4, bnb_4bit_compute_dtype: float16}
    """

    id = "RC407"
    name = "quantization-gpu"
    check = "precision"
    reads = frozenset({"quantization"})
    needs = frozenset({"gpu"})
    why = "bitsandbytes has no kernels for the quantization below its minimum compute capability"

    def run(self, ctx):
        gpu = ctx.gpu
        q = ctx.recipe.quantization
        if gpu is None or q is None or q.quant_method != "bitsandbytes":
            return
        for flag, entry, what in (
            ("load_in_4bit", "nf4_fp4_4bit", "4-bit NF4/FP4"),
            ("load_in_8bit", "llm_int8_matmul", "8-bit LLM.int8"),
        ):
            if not getattr(q, flag):
                continue
            need = min_cc("bitsandbytes", entry)
            if gpu.vendor == "nvidia" and gpu.cc >= need:
                continue
            alternative = "load_in_4bit" if flag == "load_in_8bit" and gpu.cc >= min_cc("bitsandbytes", "nf4_fp4_4bit") else "no quantization"
            yield self.finding(
                ctx,
                f"{what} quantization needs compute capability {need[0]}.{need[1]}+; {gpu.key} is {gpu.compute_capability}",
                ("quantization", flag),
                help=f"use {alternative} on {gpu.key}; see {first_source('bitsandbytes', entry)}",
            )
