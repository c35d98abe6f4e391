"""RC802: the precision a DeepSpeed or accelerate config sets is the recipe's training precision."""

from __future__ import annotations

from recipe_checks.findings import Severity
from recipe_checks.rules.base import Rule

_ACCELERATE = {"bf16": "bf16", "fp16": "fp16", "no": None, "fp8": "fp8"}


class DistributedPrecisionMismatch(Rule):
    """
    ## What it checks
    A DeepSpeed config's `bf16.enabled` and `fp16.enabled` (where not "auto") equal the recipe's
    `training.bf16` and `training.fp16`; an accelerate config's `mixed_precision` is the recipe's.

    ## Why it matters
    transformers' DeepSpeed integration fills "auto" from TrainingArguments and refuses any other value
    that differs ("Please correct the following DeepSpeed config values that mismatch TrainingArguments
    values: ds bf16.enabled=True vs hf bf16|bf16_full_eval=False"). accelerate's `mixed_precision` is
    passed to the run through ACCELERATE_MIXED_PRECISION, which TrainingArguments keeps where the
    recipe sets neither bf16 nor fp16: the run then trains in a precision the recipe does not say.

    ## Example
        # ds.json: {"bf16": {"enabled": true}, "zero_optimization": {"stage": 2}}
        training: {bf16: false, fp16: true}
        distributed: {deepspeed: ds.json, world_size: 4}

    ## Use instead
        # ds.json: {"bf16": {"enabled": "auto"}, ...}: the Trainer fills it from training.bf16
        training: {bf16: true}
    """

    id = "RC802"
    name = "distributed-precision-mismatch"
    check = "schema"
    reads = frozenset({"distributed", "training"})
    why = ("the precision a DeepSpeed or accelerate config sets is what the run trains in; the Trainer refuses a "
           "DeepSpeed config that differs from TrainingArguments")

    def run(self, ctx):
        files = ctx.loaded.distributed_files
        if files is None or ctx.recipe.distributed is None:
            return
        training = ctx.recipe.training
        for name in ("bf16", "fp16"):
            setting = files.precision.get(name)
            if setting is not None and setting.value != getattr(training, name):
                yield self.finding(
                    ctx, f"{setting.place} is {str(setting.value).lower()} but training.{name} is "
                    f"{str(getattr(training, name)).lower()}: the Trainer refuses the mismatch",
                    ("training", name) if f"{name}" in (ctx.loaded.data.get("training") or {}) else ("distributed", "deepspeed"),
                    help=f'write "{name}": {{"enabled": "auto"}} in the DeepSpeed config (the Trainer fills it from '
                         f"training.{name}), or make the two agree",
                )
        mixed = files.precision.get("mixed_precision")
        if mixed is None:
            return
        recipe = "bf16" if training.bf16 else "fp16" if training.fp16 else None
        launcher = _ACCELERATE[mixed.value]
        if launcher == recipe or launcher == "fp8":
            return
        wins = ("the recipe's bf16/fp16 wins (TrainingArguments overrides the launcher)" if recipe else
                f"the launcher's {mixed.value} wins: the run trains in it, not in float32")
        yield self.finding(
            ctx, f"{mixed.place} is '{mixed.value}' but the recipe trains in {recipe or 'float32 (neither bf16 nor fp16)'}: {wins}",
            ("distributed", "accelerate_config"), severity=Severity.WARNING,
            help=f"set mixed_precision: {recipe or 'no'} in the accelerate config, or training.{launcher}: true",
        )
