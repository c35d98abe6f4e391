"""RC208: what the LoRA targets expand to and what share of the model they reach (information)."""

from __future__ import annotations

from recipe_checks.findings import Severity
from recipe_checks.rules._targets_common import analysis
from recipe_checks.rules.base import Rule
from recipe_checks.targets import target_name


class LoraCoverage(Rule):
    """
    ## What it checks
    Nothing fails: it reports the modules the targets resolve to (what `all-linear` or peft's
    default expands to), how many modules are wrapped, the share of the model's parameters those
    modules hold, and the number of trainable adapter parameters.

    ## Why it matters
    "Which layers does this recipe train?" should have an answer before the run, in the report
    and in JUnit, not after reading peft's print_trainable_parameters on the GPU.

    ## Example
        lora:
          target_modules: all-linear

    ## Use instead
    Nothing to change; read the report (pytest -rA, or `recipe-checks check`).
    """

    id = "RC208"
    name = "lora-coverage"
    check = "target-modules"
    reads = frozenset({"model", "lora"})
    severity = Severity.INFO
    needs = frozenset({"model"})
    why = "know which layers a recipe trains before the run"

    def run(self, ctx):
        result = analysis(ctx)
        if result is None or not result.matched_modules:
            return
        leaves = sorted({target_name(m) for m in result.matched_modules if m not in result.unsupported})
        share = result.targeted_params / result.total_params if result.total_params else 0.0
        origin = f"{result.expanded_from} expands to" if result.expanded_from else "targets"
        blocks = set().union(*[m.blocks for m in result.matches]) if result.matches else set()
        params = f" and target_parameters {', '.join(ctx.recipe.lora.target_parameters)}" if ctx.recipe.lora.target_parameters else ""
        adapters = (
            f"{result.adapter_params / 1e6:.1f}M trainable adapter parameters (counted by peft)"
            if result.adapter_params is not None else "adapter parameters not counted: peft cannot inject this config"
        )
        yield self.finding(
            ctx,
            f"{origin} {', '.join(leaves)}{params}: {len(result.matched_modules)} modules in {len(blocks)} of "
            f"{result.num_blocks} blocks, holding {share:.1%} of {result.total_params / 1e9:.2f}B parameters; "
            f"{adapters} at {_ranks(result.ranks, ctx.recipe.lora.r)}",
            ("lora", "target_modules") if ctx.recipe.lora.target_modules is not None else ("lora",),
            help="",
        )


def _ranks(ranks: dict[int, int], r: int) -> str:
    """'r=16', or with rank_pattern the ranks peft resolves: 'r=8 (24 modules), r=64 (8 modules)'."""
    if len(ranks) <= 1:
        return f"r={next(iter(ranks), r)}"
    return ", ".join(f"r={rank} ({count} modules)" for rank, count in ranks.items())
