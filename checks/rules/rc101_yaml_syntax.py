"""RC101: the recipe file parses as a YAML mapping."""

from __future__ import annotations

from recipe_checks.rules.base import Rule


class YamlSyntax(Rule):
    """
    ## What it checks
    The file is readable UTF-8 and parses, with YAML safe loading, into a mapping.

    ## Why it matters
    A recipe that does not parse cannot be checked, and the training job that reads it fails at once.

    ## Example
        lora:
          r: 16
         lora_alpha: 32      # indentation breaks the mapping

    ## Use instead
        lora:
          r: 16
          lora_alpha: 32
    """

    id = "RC101"
    name = "yaml-syntax"
    check = "schema"
    why = "a recipe that does not parse cannot be checked, and would fail at the start of training"

    def run(self, ctx):
        if ctx.state.load_error is not None and ctx.state.load_error.rule_id == self.id:  # RC112 reports its own
            yield ctx.state.load_error
