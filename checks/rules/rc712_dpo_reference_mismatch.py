"""RC712: before any update, a DPO recipe's policy computes the reference's log-probabilities."""

from __future__ import annotations

from recipe_checks.findings import Severity
from recipe_checks.rules._step_common import STEP_READS, step_report
from recipe_checks.rules.base import Rule


class DpoReferenceMismatch(Rule):
    """
    ## What it checks
    The first micro-batch of the real DPO step on the tiny-random model (TRL's DPOTrainer, its own
    `compute_loss`), before any optimizer step: the implicit rewards beta * (log p_policy - log p_ref)
    of the chosen and the rejected completions are 0, within 1e-3. They are when the policy starts as
    its reference: LoRA's adapters start as the identity and the reference is the model with them
    disabled; a full fine-tune's reference is the same checkpoint loaded again; DPOConfig's
    `disable_dropout` (default true) makes both forwards deterministic.

    ## Why it matters
    DPO's loss measures how far the policy moved from the reference. A policy that differs from it at
    step 0 (the model's dropout left on in the policy's forward, which the reference model runs in eval
    mode; adapters that do not start as the identity) gives every pair a random margin before training: the sigmoid loss starts away
    from log 2 and the gradient pushes on noise.

    ## Example
        model: openai-community/gpt2     # dropout 0.1 in its attention, residual and embedding layers
        dpo:
          disable_dropout: false         # the policy's forward drops units, the reference's (eval mode) does not

    ## Use instead
        dpo:
          disable_dropout: true        # DPOConfig's default
    """

    id = "RC712"
    name = "dpo-reference-mismatch"
    check = "cpu-step"
    severity = Severity.WARNING
    reads = STEP_READS
    needs = frozenset({"model"})
    why = "DPO's implicit reward is the policy's distance from its reference; at step 0 it must be 0"

    def run(self, ctx):
        from recipe_checks.run.cpu_step import cpu_step

        if ctx.recipe.dpo is None:
            return
        report = step_report(ctx)
        start = cpu_step(ctx.state).preference
        if report is None or start is None or start.reference_matches:
            return
        dpo = ctx.loaded.data.get("dpo") or {}
        key = ("dpo", "disable_dropout") if isinstance(dpo, dict) and "disable_dropout" in dpo else ("dpo",)
        yield self.finding(
            ctx,
            f"before any update the policy is not its reference: rewards {start.rewards_chosen:.3g} (chosen) and "
            f"{start.rewards_rejected:.3g} (rejected) on the first micro-batch, not 0 "
            f"(loss {start.loss:.4f} with loss_type {', '.join(start.loss_types)})",
            key, at_value=len(key) > 1,
            help="let the policy start as its reference: keep dpo.disable_dropout true (DPOConfig's default) and the "
                 "adapters' initialisation the identity (RC702)",
        )
