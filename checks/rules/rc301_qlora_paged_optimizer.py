"""RC301: a QLoRA recipe uses a paged optimizer."""

from __future__ import annotations

from recipe_checks.facts import first_source
from recipe_checks.recipe.schema import Method
from recipe_checks.rules.base import Rule


class QloraPagedOptimizer(Rule):
    """
    ## What it checks
    A recipe that loads the base model in 4 bits and trains LoRA adapters (QLoRA) sets
    `training.optim` to a paged optimizer (paged_adamw_8bit, paged_adamw_32bit, paged_lion_8bit, ...).
    LoRA on an 8-bit (LLM.int8) base is not QLoRA and is not held to it.

    ## Why it matters
    QLoRA fits a large model in a small GPU with little margin; gradient checkpointing makes memory
    spike on long sequences, and without paging the spike is an out-of-memory crash mid-run. Paged
    optimizers move optimizer state to CPU memory under pressure (QLoRA paper, Dettmers et al. 2023,
    "Paged Optimizers to manage memory spikes").

    ## Example
        quantization: {load_in_4bit: true, bnb_4bit_quant_type: nf4}
        training:
          optim: adamw_torch

    ## Use instead
        training:
          optim: paged_adamw_8bit
    Or, for a recipe that is an exception: `checks: {ignore: {RC301: "why"}}`, or for a whole
    project the pytest ini option `recipe_checks_ignore = RC301: why`.
    """

    id = "RC301"
    name = "qlora-paged-optimizer"
    check = "optimizer"
    reads = frozenset({"training", "quantization", "lora"})
    why = "QLoRA runs close to the memory limit; without paging, a memory spike is an OOM crash mid-run"

    def run(self, ctx):
        recipe = ctx.recipe
        quantization = recipe.quantization
        if recipe.method not in (Method.QLORA, Method.QDORA) or quantization is None or not quantization.load_in_4bit:
            return  # QLoRA's rule: a 4-bit base (an 8-bit one is LoRA on LLM.int8, which the QLoRA paper does not cover)
        optim = recipe.training.optim
        if optim.startswith("paged_"):
            return
        source = first_source("paged_optimizers")
        yield self.finding(
            ctx,
            f"{recipe.method.label} recipe uses optimizer '{optim}', which is not paged",
            ("training", "optim") if ("training", "optim") in ctx.loaded.value_spans else ("training",),
            help="set training.optim: paged_adamw_8bit (or paged_adamw_32bit to keep 32-bit states)"
            + (f"; see {source}" if source else ""),
        )

