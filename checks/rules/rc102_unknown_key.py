"""RC102: every key is one the recipe format, or the section's library class, accepts."""

from __future__ import annotations

from recipe_checks.formats.known_keys import removed_training_argument
from recipe_checks.recipe.library import library_class_name
from recipe_checks.rules.base import Rule
from recipe_checks.suggest import did_you_mean


class UnknownKey(Rule):
    """
    ## What it checks
    Every key is known: the top-level sections (model, quantization, lora, training, hardware, expect,
    checks), and inside `lora`, `training` and `quantization` the keyword arguments of
    peft.LoraConfig, transformers.TrainingArguments and transformers.BitsAndBytesConfig in the
    installed versions; inside `training.gradient_checkpointing_kwargs` the arguments of
    torch.utils.checkpoint.checkpoint, inside `training.liger_kernel_config` Liger's kernel flags.
    A `training` key that transformers removed (`warmup_ratio`, `evaluation_strategy`, `no_cuda`, ...:
    checks/data/training_args_removed.yaml) is named so, with its replacement (`warmup_steps: 0.1`).

    ## Why it matters
    A misspelt key is silently dropped by many loaders: `lora_alfa: 32` leaves lora_alpha at its
    default of 8, and the run trains with a quarter of the intended scaling.

    ## Example
        lora:
          lora_alfa: 32

    ## Use instead
        lora:
          lora_alpha: 32
    """

    id = "RC102"
    name = "unknown-key"
    check = "schema"
    why = "a misspelt key is silently dropped by many loaders, so the run trains with a default instead"

    def run(self, ctx):
        validation = ctx.state.validation
        if validation is None:
            return
        for unknown in validation.unknown_keys:
            *parent, key = unknown.key_path
            where = ".".join(str(p) for p in parent) or "the top level"
            removed = removed_training_argument(str(key)) if tuple(parent) == ("training",) else None
            if removed is not None:  # not a typo: a field transformers dropped, with its replacement
                section = ctx.loaded.data.get("training")
                value = section.get(key) if isinstance(section, dict) else None
                yield self.finding(
                    ctx,
                    f"'{key}' in training was {removed.says(value, note=False)}",
                    unknown.key_path,
                    at_value=False,
                    why="the installed transformers' TrainingArguments has no such field: the run fails on it",
                    help=f"{removed.advice(value)}; training takes the arguments of {library_class_name('training')}",
                )
                continue
            hint = did_you_mean(str(key), unknown.known, cutoff=0.7)
            if len(parent) == 1 and parent[0] in ("lora", "training", "quantization"):
                takes = f"{parent[0]} takes the arguments of {library_class_name(parent[0])}"
            else:
                takes = f"{where} takes: {', '.join(unknown.known)}"
            yield self.finding(
                ctx,
                f"unknown key '{key}' in {where}",
                unknown.key_path,
                at_value=False,
                help=f"{hint} {takes}".strip() if hint else f"remove it or fix its name; {takes}",
            )
