"""RC203: layers_to_transform and layers_pattern point at blocks the model has."""

from __future__ import annotations

import re

from recipe_checks.rules._targets_common import analysis
from recipe_checks.rules.base import Rule


class LayersOutOfRange(Rule):
    """
    ## What it checks
    Every index in `lora.layers_to_transform` is below the model's number of blocks, and every
    `lora.layers_pattern` is the name of the module list that holds the blocks ("layers" in Llama,
    "h" in GPT-2 and Falcon).

    ## Why it matters
    peft silently skips indexes that do not exist: a recipe written for a 32-block model and run on
    a 16-block one adapts fewer layers than planned, or none.

    ## Example
        model: meta-llama/Llama-3.2-1B      # 16 blocks
        lora:
          layers_to_transform: [28, 29, 30, 31]

    ## Use instead
        lora:
          layers_to_transform: [12, 13, 14, 15]
    """

    id = "RC203"
    name = "layers-out-of-range"
    check = "target-modules"
    reads = frozenset({"model", "lora"})
    needs = frozenset({"model"})
    why = "peft silently skips blocks that do not exist, so fewer layers are adapted than planned"

    def run(self, ctx):
        lora = ctx.recipe.lora
        result = analysis(ctx)
        if result is None or lora.layers_to_transform is None:
            return
        indexes = [lora.layers_to_transform] if isinstance(lora.layers_to_transform, int) else lora.layers_to_transform
        beyond = [i for i in indexes if i >= result.num_blocks]
        if beyond:
            yield self.finding(
                ctx,
                f"layers_to_transform names block(s) {beyond}, but {result.model_class} has {result.num_blocks} "
                f"blocks (0 to {result.num_blocks - 1})",
                ("lora", "layers_to_transform"),
                help=f"use indexes from 0 to {result.num_blocks - 1}",
            )
        patterns = [lora.layers_pattern] if isinstance(lora.layers_pattern, str) else (lora.layers_pattern or [])
        list_name = (result.block_list or "").rsplit(".", 1)[-1]
        modules = [n for n, _ in ctx.model.named_modules()]
        for pattern in patterns:
            if not any(re.search(rf"(^|\.){re.escape(pattern)}\.\d+(\.|$)", n) for n in modules):
                yield self.finding(
                    ctx,
                    f"layers_pattern '{pattern}' is not the name of {result.model_class}'s block list",
                    ("lora", "layers_pattern"),
                    help=f"its blocks live in '{result.block_list}': use layers_pattern: {list_name}"
                    if list_name else "remove layers_pattern",
                )
