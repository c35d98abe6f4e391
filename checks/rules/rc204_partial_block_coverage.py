"""RC204: a target reaches every block that has the layer, unless the recipe restricts layers on purpose."""

from __future__ import annotations

from recipe_checks.rules._targets_common import analysis, target_key
from recipe_checks.rules.base import Rule


class PartialBlockCoverage(Rule):
    r"""
    ## What it checks
    When a target matches a layer in some blocks but not in other blocks that have the same layer,
    the recipe says so on purpose (`layers_to_transform` or `exclude_modules`). A regex that only
    matches one-digit block numbers is the usual accident.

    ## Why it matters
    Adapting half the blocks by accident changes what the fine-tune can learn, and nothing fails.

    ## Example
        lora:
          target_modules: 'model\.layers\.\d\.self_attn\.(q|v)_proj'   # blocks 0-9 only

    ## Use instead
        lora:
          target_modules: 'model\.layers\.\d+\.self_attn\.(q|v)_proj'
          # or, on purpose: layers_to_transform: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    """

    id = "RC204"
    name = "partial-block-coverage"
    check = "target-modules"
    reads = frozenset({"model", "lora"})
    needs = frozenset({"model"})
    why = "adapting only some blocks by accident changes what the fine-tune can learn, silently"

    def run(self, ctx):
        lora = ctx.recipe.lora
        result = analysis(ctx)
        if (result is None or result.expanded_from or lora.layers_to_transform is not None or lora.exclude_modules
                or not result.block_list):
            return
        module_names = [n for n, _ in ctx.model.named_modules()]
        for match in result.matches:
            if not match.blocks:
                continue
            leaves = {m[len(result.block_list) + 1:].split(".", 1)[-1] for m in match.modules if m.startswith(result.block_list + ".")}
            # blocks that have one of the matched layers but where the target matched nothing
            having = {
                int(n[len(result.block_list) + 1:].split(".", 1)[0])
                for n in module_names
                if n.startswith(result.block_list + ".") and n[len(result.block_list) + 1:].split(".", 1)[-1] in leaves
            }
            missed = sorted(having - match.blocks)
            if missed:
                yield self.finding(
                    ctx,
                    f"target '{match.target}' reaches {len(match.blocks)} of {len(having)} blocks; "
                    f"blocks {_ranges(missed)} have the same layers but are not adapted",
                    target_key(ctx, match.target),
                    help="fix the pattern to cover every block (\\d+ rather than \\d), or restrict layers on "
                    "purpose with layers_to_transform",
                )


def _ranges(indexes: list[int]) -> str:
    parts: list[str] = []
    start = prev = indexes[0]
    for i in indexes[1:] + [None]:
        if i is not None and i == prev + 1:
            prev = i
            continue
        parts.append(f"{start}" if start == prev else f"{start}-{prev}")
        if i is not None:
            start = prev = i
    return ", ".join(parts)
