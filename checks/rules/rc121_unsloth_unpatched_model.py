"""RC121: a recipe that trains with Unsloth runs on Unsloth's patched path: a family it patches, settings that keep it."""

from __future__ import annotations

from recipe_checks.findings import Severity
from recipe_checks.rules.base import Rule
from recipe_checks.unsloth import (
    DATA_FILE,
    family_reason,
    generic_path_settings,
    is_patched,
    patched_list,
    version_label,
)


class UnslothUnpatchedModel(Rule):
    """
    ## What it checks
    A recipe with an `unsloth` section trains a model whose type (transformers' `model_type`) is one of those
    FastLanguageModel dispatches to Unsloth's own patched implementation: llama, mistral, gemma, gemma2, qwen2,
    qwen3 in Unsloth 2026.8.19 (the list, with the file and line of each, is checks/data/unsloth.yaml): an
    error otherwise. On such a family, none of `unsloth.full_finetuning`, `unsloth.load_in_8bit` and
    `unsloth.qat_scheme` is set, which send the model to the generic path even so
    (`if load_in_8bit or full_finetuning or qat_scheme is not None:`, unsloth/models/loader.py:487): a warning.

    ## Why it matters
    Unsloth's speed and memory figures ("2x faster with 70% less VRAM" in its README; 1.87-1.94x for Llama 2 7B,
    Mistral 7B and Code Llama 34B in the Hugging Face blog's benchmark) come from hand-written Triton kernels for
    those families. Any other model goes to FastModel, which compiles transformers' own code with
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
    name = "unsloth-unpatched-model"
    check = "schema"
    reads = frozenset({"model", "unsloth"})
    why = "Unsloth's speed-up and memory savings hold only on its patched path; elsewhere the run is the baseline"

    def run(self, ctx):
        recipe = ctx.recipe
        if recipe.unsloth is None:
            return
        model_type = ctx.model_type
        if model_type is None:
            return
        if not is_patched(model_type):
            yield self.finding(
                ctx, f"trains with Unsloth on a '{model_type}' model: {family_reason(model_type)}",
                ("model",),
                help=f"use a model of a family Unsloth patches ({patched_list()}; {DATA_FILE.name}), or train "
                "without the unsloth section; having measured this model with Unsloth, ignore RC121 with the "
                "measurement as the reason",
            )
            return
        for key in generic_path_settings(recipe):
            yield self.finding(
                ctx, f"unsloth.{key} sends this {model_type} model to FastModel, the generic path of {version_label()} "
                "(unsloth/models/loader.py:487): torch.compile of transformers' code, not FastLlamaModel's "
                "hand-written kernels", ("unsloth", key), severity=Severity.WARNING,
                help="measure the run before counting on Unsloth's published speed and memory figures; QLoRA or "
                "16-bit LoRA (load_in_4bit or neither) keeps the patched path")
