"""RC702: before any update, the adapted model computes exactly what the base model computes."""

from __future__ import annotations

from recipe_checks.rules._step_common import STEP_READS, modules_line, step_report
from recipe_checks.rules.base import Rule


class AdapterNotIdentity(Rule):
    """
    ## What it checks
    On the tiny-random model, before any optimizer step, the logits with the adapters enabled equal
    the logits with them disabled (peft's `disable_adapter()`), within the rounding of the training
    dtype. LoRA starts with B = 0, so its update is exactly zero; DoRA rescales the base weight by its
    own norm, which only rounds.

    ## Why it matters
    Fine-tuning starts from the base model. Adapters that start as something else (random B with
    `init_lora_weights: false`, an init method on weights it was not designed for) throw away what
    the base model knows at step 0: the first loss is far above the base model's, and the run spends
    its steps repairing the damage, or never does.

    ## Example
        lora:
          init_lora_weights: false

    ## Use instead
        lora:
          init_lora_weights: true     # peft's default: Kaiming A, zero B
    """

    id = "RC702"
    name = "adapter-not-identity"
    check = "cpu-step"
    reads = STEP_READS
    needs = frozenset({"model"})
    why = "adapters that do not start as the identity change the base model before training has begun"

    def run(self, ctx):
        report = step_report(ctx)
        if report is None or report.identity_max_diff is None:
            return
        if report.identity_max_diff <= report.identity_tolerance:
            return
        lora = ctx.loaded.data.get("lora") or {}
        key = ("lora", "init_lora_weights") if isinstance(lora, dict) and "init_lora_weights" in lora else ("lora",)
        modules = modules_line(report.not_identity) if report.not_identity else "the adapted modules"
        yield self.finding(
            ctx,
            f"the adapted model's logits differ from the base model's by up to {report.identity_max_diff:.3g} "
            f"before any update (rounding allows {report.identity_tolerance:.2g}): {modules} do not start as the identity",
            key, at_value=len(key) > 1,
            help="let peft initialise the adapters as the identity: remove init_lora_weights or set it to true "
                 "(or an init that preserves the base model, such as 'gaussian' or 'pissa')",
        )
