"""RC122: the vram check says what it traces of Unsloth and what it does not."""

from __future__ import annotations

from recipe_checks.findings import Severity
from recipe_checks.rules.base import Rule


class UnslothTracedAs(Rule):
    """
    ## What it checks
    Informational, in the vram check of a recipe with an `unsloth` section: how the traced step stands for
    Unsloth's. It checkpoints by `unsloth.use_gradient_checkpointing` (Unsloth's setting decides, below 512
    tokens torch's checkpointing as Unsloth uses); Unsloth's offloaded checkpointing is traced as torch's, which
    keeps on the GPU the block inputs Unsloth copies to host memory (an upper bound, with the bytes per block);
    its fused LoRA, RMSNorm and RoPE kernels are traced as peft's and transformers' modules, its chunked
    cross-entropy as the full logits; `offload_embedding`, `unsloth_tiled_mlp`, vLLM's reservation under
    `fast_inference` and Unsloth's pre-quantized model copies are named where the recipe has them.

    ## Why it matters
    The verdict of the vram check is a trace of transformers and peft; where Unsloth's run differs, the
    reader must see how, not find out on the GPU. Nothing to fix: it is the statement that goes with the figure.

    ## Example
        unsloth: {use_gradient_checkpointing: unsloth, max_seq_length: 2048}

    ## Use instead
        Nothing to change; read it with the vram verdict (pytest -rA, or `recipe-checks estimate`).
    """

    id = "RC122"
    name = "unsloth-traced-as"
    check = "vram"
    severity = Severity.INFO
    reads = frozenset({"model", "unsloth", "quantization", "lora", "training"})
    why = "the vram verdict is a trace of transformers and peft: where Unsloth's run differs, it says how"

    def run(self, ctx):
        from recipe_checks.memory.settings import settings_from_recipe
        from recipe_checks.unsloth import memory_notes

        recipe = ctx.recipe
        if recipe.unsloth is None:
            return
        resolved = ctx.state.resolved_model()
        if isinstance(resolved, Exception):
            return
        weights_dtype = settings_from_recipe(recipe, resolved.config).weights_dtype
        notes = memory_notes(recipe, resolved.config, weights_dtype)
        yield self.finding(
            ctx, "the traced step stands for Unsloth's as follows: " + "; ".join(notes), ("unsloth",),
            at_value=False, help="", details=notes,
        )
