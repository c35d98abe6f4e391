"""RC110: every key of another tool's config (Axolotl, LLaMA-Factory, TRL) is one the translation understands; the
others are told apart: removed from transformers' TrainingArguments, valid for the tool but not checked, or unknown."""

from __future__ import annotations

from recipe_checks.findings import Severity
from recipe_checks.formats import translation_of
from recipe_checks.formats.known_keys import split_untranslated, tool_keys
from recipe_checks.rules.base import Rule

_SHOWN = 12  # keys named in a message; every one is in the details, with its line


def _listed(keys: list[str]) -> str:
    return ", ".join(keys[:_SHOWN]) + (" ..." if len(keys) > _SHOWN else "")


class UntranslatedKeys(Rule):
    """
    ## What it checks
    A config of another tool, read as a recipe (checks/formats, docs/formats.md), has no key that the
    translation does not understand. Such keys are told apart with the keys each tool accepts (its own
    argument classes at a pinned commit, checks/data/tool_keys.yaml, and the transformers TrainingArguments
    it passes the rest to, read from the installed transformers), in at most three findings, each listing
    its keys with their lines:

    - warning: a key transformers removed from TrainingArguments (`warmup_ratio`, `evaluation_strategy`,
      `no_cuda`, ...: checks/data/training_args_removed.yaml, from transformers' v5 migration guide), in a
      TRL or LLaMA-Factory config, which hands it to TrainingArguments: each with its replacement
      (`warmup_steps: 0.1`). Listed even where the translation reads it as its replacement would.
    - info: a valid key of the tool that the translation does not model (`torch_compile`, a plugin's key):
      not checked, nothing to fix.
    - warning: a key the tool does not know either, most often a typo, with the nearest key it knows.

    Keys with no value (`fsdp:` left empty, as the tools' examples do) set nothing and are not listed.

    ## Why it matters
    A key the translation does not know is a setting that is not checked. A removed TrainingArguments key
    stops TRL ("Unknown arguments from config file") and LLaMA-Factory ("Some keys are not used by the
    HfArgumentParser") on transformers 5; a typo is refused or silently ignored by the tool (`lora_alfa: 32`
    leaves lora_alpha at its default).

    ## Example
        model_name_or_path: Qwen/Qwen2.5-0.5B     # a TRL config
        use_peft: true
        warmup_ratio: 0.1
        lora_alfa: 32

    ## Use instead
        warmup_steps: 0.1  # transformers 5: a float below 1 is a fraction of the run
        lora_alpha: 32
    """

    id = "RC110"
    name = "untranslated-keys"
    check = "schema"
    severity = Severity.WARNING
    why = "a key that is not translated is a setting that is not checked"

    def run(self, ctx):
        translation = translation_of(ctx.state)
        if translation is None:
            return
        split = split_untranslated(translation.format, translation.untranslated, translation.written)
        label = translation.label

        def line(path) -> int:
            return ctx.loaded.location(path, at_value=False).line

        if split.removed:
            keys = [path[-1] for path, _ in split.removed]
            passes_to = tool_keys(translation.format).passes_to
            yield self.finding(
                ctx,
                f"{len(keys)} key(s) of this {label} config were removed from transformers' TrainingArguments: "
                + "; ".join(f"{path[-1]} ({item.says(translation.written.get(path[-1]), note=False)})"
                            for path, item in split.removed[:_SHOWN]) + (" ..." if len(keys) > _SHOWN else ""),
                split.removed[0][0],
                at_value=False,
                why=f"{label} hands these keys to transformers' {passes_to}, which has no such field: on transformers "
                    "5 the run stops on an unknown argument",
                help="write each as its replacement (the details list them with their lines)",
                details=[f"line {line(path)}: {path[-1]}: {item.says(translation.written.get(path[-1]))}"
                         for path, item in split.removed],
            )
        if split.not_modelled:
            keys = [str(path[-1]) for path in split.not_modelled]
            yield self.finding(
                ctx,
                f"{len(keys)} valid {label} key(s) are not modelled by the translation, so not checked: {_listed(keys)}",
                split.not_modelled[0],
                at_value=False,
                severity=Severity.INFO,
                why=f"each is a key {label} accepts ({tool_keys(translation.format).short}) that "
                    "the recipe model has no place for: the checks pass over it",
                help=f"nothing to fix; `recipe-checks convert {ctx.path}` writes the native recipe, where a setting "
                     "can be written in the library's terms (docs/formats.md lists what is translated)",
                details=[f"line {line(path)}: {key}" for path, key in zip(split.not_modelled, keys)],
            )
        if split.unknown:
            keys = [str(path[-1]) for path, _ in split.unknown]
            named = [f"{key} (did you mean '{near[0]}'?)" if near else key
                     for key, (_, near) in zip(keys, split.unknown)]
            yield self.finding(
                ctx,
                f"{len(keys)} key(s) of this {label} config are unknown to {label}, so not checked: {_listed(named)}",
                split.unknown[0][0],
                at_value=False,
                why=f"{label} does not define these keys ({tool_keys(translation.format).short}): a typo is refused "
                    "or silently ignored, and the run trains with a default instead",
                help="fix a misspelt key or remove it; a key of a newer release of the tool is not checked",
                details=[f"line {line(path)}: {key}" for (path, _), key in zip(split.unknown, keys)],
            )
