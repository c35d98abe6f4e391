"""RC122: a setting sends a family Unsloth patches to its generic path, without the hand-written kernels."""

from __future__ import annotations

from checks.findings import Severity
from checks.rules.base import Rule
from checks.unsloth import generic_path_settings, is_patched, version_label


class UnslothGenericPath(Rule):
    """
    ## What it checks
    On a family Unsloth patches (RC121), none of `unsloth.full_finetuning`, `unsloth.load_in_8bit` and
    `unsloth.qat_scheme` is set: FastLanguageModel.from_pretrained hands any of them to FastModel
    (`if load_in_8bit or full_finetuning or qat_scheme is not None:`, unsloth/models/loader.py:487).

    ## Why it matters
    FastModel is the generic path: it compiles transformers' modeling code with torch.compile instead of
    using FastLlamaModel's hand-written kernels, so the speed and memory figures Unsloth publishes for the
    family (QLoRA and 16-bit LoRA runs) are not the figures of this run. A warning: the run works, only the
    figures do not carry over; measure it.

    ## Example
        model: meta-llama/Llama-3.1-8B
        unsloth: {load_in_4bit: false, load_in_8bit: true}

    ## Use instead
        unsloth: {load_in_4bit: true}       # QLoRA through FastLlamaModel's kernels
    """

    id = "RC122"
    name = "unsloth-generic-path"
    check = "schema"
    severity = Severity.WARNING
    reads = frozenset({"model", "unsloth"})
    why = "FastModel's generic path does not use the kernels Unsloth's published figures come from"

    def run(self, ctx):
        recipe = ctx.recipe
        if recipe.unsloth is None or not is_patched(ctx.model_type):
            return
        for key in generic_path_settings(recipe):
            yield self.finding(
                ctx, f"unsloth.{key} sends this {ctx.model_type} model to FastModel, the generic path of {version_label()} "
                "(unsloth/models/loader.py:487): torch.compile of transformers' code, not FastLlamaModel's "
                "hand-written kernels", ("unsloth", key),
                help="measure the run before counting on Unsloth's published speed and memory figures; QLoRA or "
                "16-bit LoRA (load_in_4bit or neither) keeps the patched path")
