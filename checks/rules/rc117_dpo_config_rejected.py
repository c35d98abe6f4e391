"""RC117: TRL itself accepts the training and dpo sections as one DPOConfig."""

from __future__ import annotations

from recipe_checks.limits import shorten
from recipe_checks.findings import Severity
from recipe_checks.rules.base import Rule


class DpoConfigRejected(Rule):
    """
    ## What it checks
    `trl.DPOConfig(**training, **dpo)` succeeds in the installed TRL: DPOConfig extends
    TrainingArguments, so the `training` section's TrainingArguments keys and the `dpo` section's own
    keys (beta, loss_type, loss_weights, max_length, precompute_ref_log_probs, ...) are given to it
    together, as a DPO training script gives them. The finding names the key that, left out, lets
    DPOConfig build. Needs TRL (`pip install 'recipe-checks[trl]'`); without it the rule says so (information) and the
    memory and cpu-step checks of the recipe skip, naming the extra.
    What DPOTrainer refuses once it sees the model (an adapter on lm_head, sync_ref_model with
    peft, an unknown loss_type) is found by running it: the cpu-step check (RC701).

    ## Why it matters
    DPOConfig raises when the training script starts, after the environment is set up and the
    dataset is downloaded; the recipe should fail here instead.

    ## Example
        dpo:
          loss_type: [sigmoid, sft]
          loss_weights: [1.0]          # one weight for two losses

    ## Use instead
        dpo:
          loss_type: [sigmoid, sft]
          loss_weights: [0.8, 0.2]
    """

    id = "RC117"
    name = "dpo-config-rejected"
    check = "schema"
    reads = frozenset({"training", "dpo"})
    why = "TRL raises this error when the training script builds its DPOConfig, before the first step"

    def run(self, ctx):
        from recipe_checks.memory.preference import dpo_arguments
        from recipe_checks.recipe.library import MissingExtra, require_trl
        from recipe_checks.recipe.validate import library_kwargs
        from recipe_checks.run.setup import blame_key

        recipe = ctx.state.recipe
        if recipe is None or recipe.dpo is None:
            return
        try:
            require_trl()
        except MissingExtra as exc:  # said, not skipped: the schema check's other rules still judge the recipe
            yield self.finding(ctx, f"DPOConfig not checked: {exc}", ("dpo",), at_value=False, help="",
                               severity=Severity.INFO)
            return
        try:
            dpo_arguments(recipe)
        except Exception as exc:  # noqa: BLE001  whatever DPOConfig raises for the recipe is the finding
            error = exc
        else:
            return
        written = ({("dpo", k): v for k, v in library_kwargs(recipe.dpo).items()}
                   | {("training", k): v for k, v in library_kwargs(recipe.training).items()})

        def refuses(kept: dict) -> bool:
            section = {name: {k: v for (s, k), v in kept.items() if s == name} for name in ("dpo", "training")}
            trial = recipe.model_copy(update={"dpo": type(recipe.dpo).model_validate(section["dpo"]),
                                              "training": type(recipe.training).model_validate(section["training"])})
            try:
                dpo_arguments(trial)
            except Exception:  # noqa: BLE001  any refusal counts: blame_key compares with and without a key
                return True
            return False

        key = blame_key(written, refuses)
        where = ".".join(key) if key else "the training and dpo sections"
        yield self.finding(
            ctx, f"DPOConfig refuses {where}: {type(error).__name__}: {shorten(str(error), 300)}",
            key or ("dpo",), at_value=key is not None,
            help=f"change {where} to a value DPOConfig accepts (the message above is TRL's own)",
        )
