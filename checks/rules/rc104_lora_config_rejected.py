"""RC104: peft itself accepts the lora section as LoraConfig arguments."""

from __future__ import annotations

from recipe_checks.recipe.library import lora_config
from recipe_checks.recipe.validate import library_kwargs
from recipe_checks.rules.base import Rule


def build_lora_config(lora):
    """The peft.LoraConfig for a recipe's lora section, or the exception peft raises for it."""
    try:
        return lora_config(library_kwargs(lora))
    except Exception as exc:  # peft raises ValueError/TypeError for inconsistent arguments
        return exc


class LoraConfigRejected(Rule):
    """
    ## What it checks
    `peft.LoraConfig(**lora)` succeeds in the installed peft: the arguments are consistent with
    each other (e.g. `layers_pattern` needs `layers_to_transform`; DoRA cannot be combined with
    some options).

    ## Why it matters
    peft raises these errors when the training script starts; the recipe should fail here instead.

    ## Example
        lora:
          layers_pattern: layers      # without layers_to_transform

    ## Use instead
        lora:
          layers_to_transform: [0, 1, 2, 3]
          layers_pattern: layers
    """

    id = "RC104"
    name = "lora-config-rejected"
    check = "schema"
    reads = frozenset({"lora"})
    why = "peft raises this error when the training script builds its LoraConfig"

    def run(self, ctx):
        recipe = ctx.state.recipe
        if recipe is None or recipe.lora is None:
            return
        config = build_lora_config(recipe.lora)
        if isinstance(config, Exception):
            yield self.finding(
                ctx,
                f"peft rejects the lora section: {config}",
                ("lora",),
                at_value=False,
                help="change the lora arguments as peft's message says",
            )
