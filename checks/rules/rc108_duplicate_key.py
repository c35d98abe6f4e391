"""RC108: no key appears twice in the same mapping."""

from __future__ import annotations

from recipe_checks.limits import shorten
from recipe_checks.rules.base import Rule


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

    Keys that differ as written but load as one Python key count too: `1`, `1.0`, `0x1` and `true`
    are the same dict key, and `1` and `'1'` read the same once stringified.

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
            dotted = shorten(".".join(str(p) for p in key_path))
            first = ctx.loaded.duplicate_of.get(key_path, str(key_path[-1]))
            same = "" if first == str(key_path[-1]) else f" (as '{shorten(first)}': YAML loads both as the same key)"
            yield self.finding(
                ctx,
                f"key '{dotted}' appears more than once{same}; the last one wins",
                key_path,
                at_value=False,
                help="keep one of them",
            )
