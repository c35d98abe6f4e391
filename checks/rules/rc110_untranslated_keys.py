"""RC110: every key of another tool's config (Axolotl, LLaMA-Factory, TRL) is one the translation understands."""

from __future__ import annotations

from recipe_checks.findings import Severity
from recipe_checks.formats import translation_of
from recipe_checks.rules.base import Rule


class UntranslatedKeys(Rule):
    """
    ## What it checks
    A config of another tool, read as a recipe (checks/formats, docs/formats.md), has no key that the
    translation does not understand. Every such key is listed in one finding, each with its line; keys
    with no value (`fsdp:` left empty, as the tools' examples do) set nothing and are not listed.

    ## Why it matters
    A key the translation does not know is a setting that is not checked: a new option of the tool, a
    plugin's key, or a typo the tool itself may reject or silently ignore (`lora_alfa: 32`).

    ## Example
        base_model: meta-llama/Meta-Llama-3-8B
        adapter: lora
        lora_alfa: 32

    ## Use instead
        lora_alpha: 32     # or, for a key the translation lacks: convert the file (recipe-checks convert)
                           # and check the native recipe, where the key is written in the library's terms
    """

    id = "RC110"
    name = "untranslated-keys"
    check = "schema"
    severity = Severity.WARNING
    why = "a key that is not translated is a setting that is not checked"

    def run(self, ctx):
        translation = translation_of(ctx.state)
        if translation is None or not translation.untranslated:
            return
        paths = translation.untranslated
        keys = [str(path[-1]) for path in paths]
        yield self.finding(
            ctx,
            f"{len(keys)} key(s) of this {translation.label} config are not translated, so not checked: "
            f"{', '.join(keys[:12])}{' ...' if len(keys) > 12 else ''}",
            paths[0],  # an original key: its own span is kept beside the native ones
            at_value=False,
            help=f"fix a misspelt key; otherwise `recipe-checks convert {ctx.path}` writes the native recipe, where "
            "the setting can be written in the library's terms (docs/formats.md lists what is translated)",
            details=[f"line {ctx.loaded.location(path, at_value=False).line}: {key}" for path, key in zip(paths, keys)],
        )
