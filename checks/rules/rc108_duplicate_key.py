"""RC108: no key appears twice in the same mapping."""

from __future__ import annotations

from checks.rules.base import Rule


class DuplicateKey(Rule):
    """
    ## What it checks
    No mapping in the recipe repeats a key.

    ## Why it matters
    YAML loaders keep the last value and drop the first without a word: the recipe you read is not
    the recipe that runs.

    ## Example
        training:
          learning_rate: 2.0e-4
          learning_rate: 1.0e-3

    ## Use instead
    Keep one of them.
    """

    id = "RC108"
    name = "duplicate-key"
    check = "schema"
    why = "YAML keeps the last value silently, so the recipe you read is not the one that runs"

    def run(self, ctx):
        if ctx.state.loaded is None:
            return
        for key_path in ctx.loaded.duplicate_keys:
            yield self.finding(
                ctx,
                f"key '{'.'.join(str(p) for p in key_path)}' appears more than once; the last one wins",
                key_path,
                at_value=False,
                help="keep one of them",
            )
