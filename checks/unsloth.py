"""What Unsloth does with a recipe, read from checks/data/unsloth.yaml: whether its speed-up applies to the
model family and settings, and why not; the Unsloth rules and the memory engine share these answers.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

DATA_FILE = Path(__file__).resolve().parent / "data" / "unsloth.yaml"


@functools.cache
def unsloth_data() -> dict[str, Any]:
    return yaml.safe_load(DATA_FILE.read_text(encoding="utf-8"))


def version_label() -> str:
    data = unsloth_data()
    return f"Unsloth {data['unsloth_version']} (commit {data['unsloth_commit'][:8]})"


def patched_families() -> dict[str, dict]:
    return unsloth_data()["patched_families"]


def is_patched(model_type: str | None) -> bool:
    return model_type in patched_families()


def patched_list() -> str:
    return ", ".join(patched_families())


@dataclass(frozen=True)
class Blocker:
    """Why Unsloth's hand-written kernels do not (all) apply: the key that decides it and what happens."""

    key_path: tuple
    reason: str
    whole: bool  # True: none of the kernels apply (baseline or generic path); False: some layers lose them
    short: str = ""  # the reason in a few words, for a message that names the rule with the whole reason


def generic_path_settings(recipe) -> list[str]:
    """The settings that send even a patched family to FastModel, the generic path (loader.py:487)."""
    u = recipe.unsloth
    if u is None:
        return []
    out = []
    for key in unsloth_data()["generic_path_settings"]:
        value = getattr(u, key)
        if value not in (None, False):
            out.append(key)
    return out


def family_reason(model_type: str | None) -> str:
    return (f"FastLanguageModel has no patched implementation of model type '{model_type}' ({version_label()} "
            f"patches {patched_list()}): it hands the model to FastModel, which compiles transformers' own "
            "modeling code with torch.compile, or, for an architecture transformers does not have, patches "
            "nothing; Unsloth's hand-written Triton kernels, where its published speed-ups come from, do not apply")


def fast_lora_off(recipe) -> list[tuple[tuple, str]]:
    """(key, why) for each LoRA setting that keeps Unsloth from fusing the adapters (llama.py:3695-3770)."""
    lora = recipe.lora
    if lora is None:
        return []
    out = []
    if lora.lora_dropout != 0:
        out.append((("lora", "lora_dropout"), f"lora_dropout {lora.lora_dropout:g} (Unsloth fuses only dropout 0)"))
    if lora.bias != "none":
        out.append((("lora", "bias"), f"bias '{lora.bias}' (Unsloth fuses only bias 'none')"))
    if lora.use_dora:
        out.append((("lora", "use_dora"), "use_dora (a DoRA magnitude keeps every group un-fused)"))
    return out


def unfused_groups(recipe, model_type: str | None) -> list[tuple[str, list[str]]]:
    """(group, its projections without an adapter) for each of Unsloth's fused groups (MLP, QKV, O) that
    the lora section covers only in part, so that Unsloth runs it un-fused; a group with no adapter at all
    is not counted (nothing there to fuse). Needs target_modules as a list of names."""
    lora = recipe.lora
    if lora is None or not isinstance(lora.target_modules, list):
        return []
    names = set(lora.target_modules)
    out = []
    for group, projections in unsloth_data()["fast_lora_groups"].items():
        targeted = [p for p in projections if p in names]
        if targeted and len(targeted) < len(projections):
            out.append((group, [p for p in projections if p not in names]))
    return out


def blockers(recipe, model_type: str | None) -> list[Blocker]:
    """Every reason this recipe does not get (all of) Unsloth's speed-up, whole ones first; [] when it does."""
    if recipe.unsloth is None:
        return []
    out = []
    if not is_patched(model_type):
        out.append(Blocker(("model",), family_reason(model_type), True,
                           f"Unsloth does not patch model type '{model_type}' (RC121)"))
    for key in generic_path_settings(recipe):
        out.append(Blocker(("unsloth", key), f"unsloth.{key} sends the model to FastModel, the generic path "
                           "(unsloth/models/loader.py:487), without the hand-written kernels", True,
                           f"unsloth.{key} sends it to Unsloth's generic path (RC121)"))
    if out:
        return out
    for key, why in fast_lora_off(recipe):
        out.append(Blocker(key, f"{why}: Unsloth leaves the LoRA layers un-fused, in its words 'causing a "
                           "performance hit'", False))
    return out


def effective_checkpointing(recipe) -> bool | str:
    """Unsloth's use_gradient_checkpointing as the run gets it: False, True, or 'unsloth' (offloaded).
    Below the sequence length in the data file Unsloth uses torch's checkpointing instead (_utils.py:374)."""
    u = recipe.unsloth
    value = u.use_gradient_checkpointing
    if value == "unsloth" and u.max_seq_length < unsloth_data()["gradient_checkpointing_offload"]["min_seq_length"]:
        return True
    return value


def written(section, key: str) -> bool:
    return section is not None and key in section.model_fields_set


_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


def step_checkpointing(recipe, trainer_checkpointing: bool) -> bool:
    """Whether the traced step checkpoints: Unsloth's setting when the recipe trains with Unsloth
    (get_peft_model checkpoints the model by it and the Trainer restores it), else the Trainer's."""
    if recipe.unsloth is None:
        return trainer_checkpointing
    return bool(effective_checkpointing(recipe))


def memory_notes(recipe, config: dict, weights_dtype: str) -> list[str]:
    """What the traced step models of Unsloth and what it does not, in the words the estimate prints."""
    u = recipe.unsloth
    if u is None:
        return []
    data = unsloth_data()
    text = config.get("text_config") or config
    model_type = config.get("model_type")
    notes = []
    checkpointing = effective_checkpointing(recipe)
    offload = data["gradient_checkpointing_offload"]
    if checkpointing == "unsloth":
        hidden = text.get("hidden_size")
        layers = text.get("num_hidden_layers")
        t = recipe.training
        per_block = (t.per_device_train_batch_size * t.max_seq_length * hidden * _BYTES.get(weights_dtype, 2)
                     if hidden else None)
        if per_block is not None and per_block <= offload["minimum_block_input_bytes"]:
            notes.append(f"use_gradient_checkpointing 'unsloth': each decoder block's input is {per_block:,} bytes, "
                         "not above Unsloth's 2 MiB minimum, so Unsloth offloads none; traced as torch's checkpointing")
        else:
            size = f" ({per_block / 2**20:,.1f} MiB each: batch x tokens x hidden x {_BYTES.get(weights_dtype, 2)} bytes)" \
                if per_block else ""
            count = f"{layers - 1} of {layers}" if layers else "all but the last"
            buffers = offload["gpu_buffers"]
            bound = "" if not layers else ", an upper bound" if layers - 1 > buffers else \
                f" (with {layers} blocks not an upper bound: Unsloth's buffers may hold as much as it offloads)"
            notes.append(
                f"use_gradient_checkpointing 'unsloth' is traced as torch's gradient checkpointing{bound}: "
                f"Unsloth copies the input of {count} decoder blocks{size} to host memory after the block's forward "
                f"and back into at most {buffers} GPU buffers of one block input each for its backward "
                "(unsloth_zoo/gradient_checkpointing.py); the trace keeps those inputs on the GPU")
    elif checkpointing is True and u.use_gradient_checkpointing == "unsloth":
        notes.append(f"use_gradient_checkpointing 'unsloth' below {offload['min_seq_length']} tokens "
                     f"(unsloth.max_seq_length {u.max_seq_length}): Unsloth uses torch's checkpointing, as traced")
    if is_patched(model_type) and not generic_path_settings(recipe):
        notes.append(
            f"Unsloth's kernels for {model_type} (fused LoRA MLP/QKV/O, RMSNorm, RoPE) are traced as peft's and "
            "transformers' own modules, and its chunked cross-entropy as the full logits and their loss (more than "
            "Unsloth's chunks keep): what Unsloth's kernels keep for the backward pass is not traced")
    else:
        notes.append(f"Unsloth runs this {model_type} model on its generic path (FastModel): traced as transformers' "
                     "own model; what torch.compile fuses there is not traced")
    q = recipe.quantization
    if recipe.lora is not None and q is not None and (q.load_in_4bit or q.load_in_8bit) and not u.full_finetuning:
        notes.append("the weights that stay unquantized (embeddings, lm_head, norms) are traced in float32, as "
                     "peft's prepare_model_for_kbit_training casts them for TRL; Unsloth's own (unsloth/models/"
                     "_utils.py:2482, unsloth_zoo's prepare_model_for_training) leaves frozen weights in their dtype: "
                     "an upper bound by their size")
    quantized_4bit = u.load_in_4bit or (q is not None and q.load_in_4bit)
    if quantized_4bit and not u.use_exact_model_name and not u.full_finetuning:
        notes.append("unsloth.use_exact_model_name is false: Unsloth loads its own pre-quantized copy where its "
                     "mapper has one (unsloth/models/mapper.py), and its '-unsloth-bnb-4bit' dynamic quants leave "
                     "some layers in 16 bit; traced with the layers the quantization section quantizes; write "
                     "unsloth.use_exact_model_name: true to train exactly that")
    if u.offload_embedding:
        notes.append("unsloth.offload_embedding moves the input embeddings to host memory: traced on the GPU "
                     "(an upper bound by the embedding matrix)")
    if u.unsloth_tiled_mlp:
        notes.append("unsloth.unsloth_tiled_mlp computes each MLP in tiles: traced untiled (an upper bound there)")
    if u.fast_inference:
        notes.append(f"unsloth.fast_inference: vLLM reserves {u.gpu_memory_utilization:.0%} of the GPU's memory "
                     "(gpu_memory_utilization) for generation; neither traced nor taken from the budget: the "
                     "verdict does not cover it")
    if u.dtype is not None and recipe.model.torch_dtype in (None, "auto"):
        notes.append(f"weights load in {u.dtype}, unsloth.dtype")
    return notes


def ceiling_for(recipe, model, gpu, *, checkpointing: bool):
    """The FLOPs ceiling (recipe_checks.throughput) for the recipe's own settings, with this checkpointing."""
    from recipe_checks.recipe.schema import Method
    from recipe_checks.throughput import ceiling

    return ceiling(model, recipe.training.max_seq_length, trains_weights=recipe.method is Method.FULL,
                   checkpointing=checkpointing, gpu=gpu, precision=recipe.training_dtype)


_LIGER = "use_liger_kernel"


def as_unsloth_fixes(fixes: list) -> list:
    """The vram check's fixes as an Unsloth recipe writes them: checkpointing, 4-bit loading and the sequence
    length in the unsloth section too (else RC120 reports the fix as a contradiction); Liger's chunked loss
    left out, since on its patched path Unsloth computes the loss in chunks itself (llama.py:1497)."""
    import dataclasses
    import re

    out = []
    for fix in fixes:
        if _LIGER in fix.change:
            continue
        change = fix.change.replace(
            "training.gradient_checkpointing: true",
            "unsloth.use_gradient_checkpointing: unsloth (traced as torch's checkpointing) and "
            "training.gradient_checkpointing: true or unset")
        change = change.replace("quantization: {load_in_4bit: true", "unsloth.load_in_4bit: true, "
                                "quantization: {load_in_4bit: true")
        change = re.sub(r"training\.max_seq_length: (\d+)", r"training.max_seq_length and unsloth.max_seq_length: \1",
                        change)
        out.append(dataclasses.replace(fix, change=change))
    return out
