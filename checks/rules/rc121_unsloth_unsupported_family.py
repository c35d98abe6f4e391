"""RC121: a recipe that trains with Unsloth uses a model family Unsloth has patched."""

from __future__ import annotations

from checks.rules.base import Rule
from checks.unsloth import DATA_FILE, family_reason, is_patched, patched_list


class UnslothUnsupportedFamily(Rule):
    """
    ## What it checks
    A recipe with an `unsloth` section trains a model whose type (transformers' `model_type`) is one of those
    FastLanguageModel dispatches to Unsloth's own patched implementation: llama, mistral, gemma, gemma2, qwen2,
    qwen3 in Unsloth 2026.8.19 (the list, with the file and line of each, is checks/data/unsloth.yaml).

    ## Why it matters
    Unsloth's speed and memory figures (1.7-2x faster, 60-70% less VRAM) come from hand-written Triton kernels
    for those families. Any other model goes to FastModel, which compiles transformers' own code with
    torch.compile, or, for an architecture transformers does not have (remote code), patches nothing at all:
    the run is the baseline, or something not yet measured, and a schedule or a GPU chosen by Unsloth's
    figures does not hold. Having measured the model with Unsloth, say so: `checks.ignore: {RC121: "measured
    ..."}`.

    ## Example
        model: microsoft/Phi-3-mini-4k-instruct
        unsloth: {max_seq_length: 2048}

    ## Use instead
        model: meta-llama/Llama-3.2-3B     # llama: patched by Unsloth
        unsloth: {max_seq_length: 2048}
    """

    id = "RC121"
    name = "unsloth-unsupported-family"
    check = "schema"
    reads = frozenset({"model", "unsloth"})
    why = "Unsloth's speed-up and memory savings hold only for the families it patches; others run the baseline"

    def run(self, ctx):
        if ctx.recipe.unsloth is None:
            return
        model_type = ctx.model_type
        if model_type is None or is_patched(model_type):
            return
        yield self.finding(
            ctx, f"trains with Unsloth on a '{model_type}' model: {family_reason(model_type)}",
            ("model",),
            help=f"use a model of a family Unsloth patches ({patched_list()}; {DATA_FILE.name}), or train without "
            "the unsloth section; having measured this model with Unsloth, ignore RC121 with the measurement as the reason",
        )
