"""RC215: the adapters are set up so that Unsloth can fuse them into its LoRA kernels."""

from __future__ import annotations

from recipe_checks.findings import Severity
from recipe_checks.rules.base import Rule
from recipe_checks.unsloth import fast_lora_off, is_patched, unfused_groups, unsloth_data


class UnslothLoraUnfused(Rule):
    """
    ## What it checks
    On a family Unsloth patches, with LoRA: `lora.lora_dropout` is 0, `lora.bias` is "none", `use_dora` is off,
    and each of Unsloth's fused groups (MLP: gate_proj, up_proj, down_proj; attention: q_proj, k_proj, v_proj;
    o_proj) has an adapter on all of its projections or on none. Those are the conditions under which
    patch_peft_model replaces the layers' forward with its fused LoRA kernels (unsloth/models/llama.py:3695-3770,
    Unsloth 2026.8.19).

    ## Why it matters
    Otherwise Unsloth "will patch all other layers, except LoRA matrices, causing a performance hit" (its own
    warning, llama.py:3242-3252): the LoRA layers run through peft's unfused modules, and the speed-up the
    recipe was chosen for shrinks, without an error. A warning: the run trains correctly.

    ## Example
        unsloth: {max_seq_length: 2048}
        lora: {r: 16, lora_alpha: 16, lora_dropout: 0.05, target_modules: [q_proj, v_proj]}

    ## Use instead
        lora: {r: 16, lora_alpha: 16, lora_dropout: 0.0,
               target_modules: [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]}
    """

    id = "RC215"
    name = "unsloth-lora-unfused"
    check = "target-modules"
    severity = Severity.WARNING
    reads = frozenset({"model", "lora", "unsloth"})
    why = "LoRA layers Unsloth cannot fuse run unfused: the speed-up shrinks without an error"

    def run(self, ctx):
        recipe = ctx.recipe
        u = recipe.unsloth
        if u is None or u.full_finetuning or recipe.lora is None or not is_patched(ctx.model_type):
            return
        for key, why in fast_lora_off(recipe):
            yield self.finding(
                ctx, f"{why}: Unsloth fuses no LoRA layer of this model and runs every adapter through peft's modules",
                key, help="use lora_dropout: 0.0, bias: none and plain LoRA to keep Unsloth's fused LoRA kernels")
        groups = unsloth_data()["fast_lora_groups"]
        for group, missing in unfused_groups(recipe, ctx.model_type):
            yield self.finding(
                ctx, f"lora.target_modules covers Unsloth's {group.upper()} group ({', '.join(groups[group])}) only "
                f"in part, without {', '.join(missing)}: Unsloth fuses a group only when every projection of it has "
                "an adapter, so this one runs unfused", ("lora", "target_modules"),
                help=f"add {', '.join(missing)} to target_modules, or leave the whole group out")
