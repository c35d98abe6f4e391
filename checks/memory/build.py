"""Build the model a recipe trains, as the training script builds it: transformers' architecture, four
of its identical blocks, bitsandbytes' quantized layers, peft's adapters, checkpointing, the chunked loss.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from recipe_checks import compat
from recipe_checks.library_warnings import quiet
from recipe_checks.memory.blocks import TRACED_BLOCKS, decoder_blocks, first_different_block, keep_blocks
from recipe_checks.memory.settings import StepSettings, thaw


@dataclass
class StepModel:
    """The model a recipe trains, ready for run_step."""

    model: Any
    fake: Any  # the FakeTensorMode its tensors belong to; None for real tensors
    quantized: int  # 4-bit or 8-bit layers in the built model
    blocks: Any = None  # the decoder blocks' ModuleList, when found
    copies: int = 0  # how many more blocks like block 1 the full-size model has than the built one
    notes: list[str] = field(default_factory=list)
    # One micro-batch's forward and loss, (model, settings, tracker) -> (loss, batch), run under autocast
    # in the tracker's forward phase; it sets tracker.segment = None once the blocks are done and lets go
    # of everything but the loss and the batch: the tensors the training loop still holds during the
    # backward (the Trainer's `inputs`, a diffusers script's latents and embeddings), which run_step keeps
    # until the optimizer step. None: a causal LM's (causal_lm_loss); a diffusion transformer's or a
    # preference trainer's step brings its own.
    loss: Callable[[Any, Any, Any], Any] | None = None


def causal_lm_loss(model, settings: StepSettings, tracker):
    """The causal-LM step's forward and loss, as the Trainer runs it: one unpadded sequence of
    seq_len tokens per row, labels given to the model (its own shifted cross-entropy); the batch (input
    ids and labels) is the Trainer's `inputs`, held by its training_step through the backward."""
    import torch

    input_ids = torch.zeros((settings.micro_batch, settings.seq_len), dtype=torch.long)
    labels = torch.zeros((settings.micro_batch, settings.seq_len), dtype=torch.long)
    output = model(input_ids=input_ids, labels=labels)
    tracker.segment = None  # before autocast's cache of cast weights and the output die
    loss = output.loss
    del output  # with use_cache, its past_key_values hold every block's keys and values
    return loss, (input_ids, labels)


@dataclass
class _QuantSettings:
    bnb_4bit_quant_type: str
    bnb_4bit_use_double_quant: bool
    bnb_4bit_quant_storage: str
    llm_int8_skip_modules: list


def lora_config(settings: StepSettings):
    """peft's LoraConfig for the settings' adapters (the recipe's lora section, as peft takes it)."""
    from recipe_checks.recipe.library import lora_config as from_kwargs

    return from_kwargs(thaw(settings.lora))


def build_step_model(resolved, settings: StepSettings, task_type: str = "CAUSAL_LM", *, real: bool = False,
                     replicate_blocks: bool = False, device: str = "cpu") -> StepModel:
    """The model a recipe trains, as the training script builds it.

    Fake (the default): built on the meta device (module conversions such as peft's .to() cannot
    swap fake parameters), then every parameter and buffer becomes a fake CPU tensor. Real: built
    with real CPU tensors and really quantized, to validate the fake trace on small models.
    `replicate_blocks`: when every decoder block is identical, keep only TRACED_BLOCKS of them.
    `device`: where a real model is built (gpu-step builds the full-size model on the GPU).
    """
    if settings.diffusion:  # a diffusers transformer (FLUX): its own build and flow-matching loss
        from recipe_checks.memory.diffusion import build_diffusion_step_model

        return build_diffusion_step_model(resolved, settings, real=real, device=device)
    import torch
    import transformers

    from recipe_checks.memory.experts import step_notes as expert_notes
    from recipe_checks.memory.materialize import materialize_fake
    from recipe_checks.memory.quantize import quantize_model_4bit, quantize_model_8bit
    from recipe_checks.models.skeleton import _AUTO_CLASS_BY_TASK, build_config

    config = build_config(resolved)
    auto_class = getattr(transformers, _AUTO_CLASS_BY_TASK.get(task_type, "AutoModelForCausalLM"))
    weights_dtype = getattr(torch, settings.weights_dtype)
    quantized = 0
    notes = []
    if settings.attn_implementation == compat.FLASH_STAND_IN:
        compat.register_flash_stand_in()
    with quiet(), torch.device(device if real else "meta"):
        model = auto_class.from_config(config, dtype=weights_dtype, attn_implementation=settings.attn_implementation)
        attention = compat.attn_implementation(model.config)
        if settings.attn_implementation is None and attention != "sdpa":
            notes.append(f"{attention} attention traced: transformers' default for "
                         f"{type(model).__name__}, which has no sdpa implementation")
        blocks = decoder_blocks(model)
        copies = 0
        if replicate_blocks and blocks is not None and len(blocks) > TRACED_BLOCKS + 1:
            different = first_different_block(blocks, model.config)
            if different is None:
                copies = len(blocks) - TRACED_BLOCKS
                keep_blocks(blocks, TRACED_BLOCKS)
            else:
                notes.append(f"all {len(blocks)} decoder blocks traced: block {different} differs from block 0")
        if settings.quant_4bit:
            quant = thaw(settings.quant_4bit)
            q = _QuantSettings(quant["quant_type"], quant["double_quant"], quant["quant_storage"], list(quant["skip"] or []))
            quantized = quantize_model_4bit(model, q, getattr(torch, quant["compute_dtype"]), real=real, device=device)
        if settings.quant_8bit:
            quant = dict(settings.quant_8bit)
            quantized = quantize_model_8bit(model, quant["threshold"], list(quant["skip"]), real=real, device=device)
            if quant["threshold"] > 0:
                notes.append("LLM.int8() outlier columns depend on the data: the trace takes none (their "
                             "fp16 input slice, tokens x outlier columns, is not counted)")
        if settings.lora:
            from peft import get_peft_model, prepare_model_for_kbit_training

            # TRL 1.16's DPOTrainer does not: it casts the adapters to bf16 instead (preference_step)
            if quantized and not settings.preference:
                # TRL's SFTTrainer prepares quantized models this way: non-quantized weights to fp32
                model = prepare_model_for_kbit_training(
                    model, use_gradient_checkpointing=settings.gradient_checkpointing,
                    gradient_checkpointing_kwargs=thaw(settings.gradient_checkpointing_kwargs) or None,
                )
            model = get_peft_model(model, lora_config(settings))
        if settings.gradient_checkpointing:
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs=thaw(settings.gradient_checkpointing_kwargs) or None
            )
            if settings.lora:
                model.enable_input_require_grads()
        if settings.chunked_loss:
            from recipe_checks.memory.chunked_loss import use_chunked_loss

            # the Trainer patches the model under the peft wrapper (_apply_liger_kernel_to_instance)
            use_chunked_loss(model.get_base_model() if hasattr(model, "get_base_model") else model)
        model.train()
        notes.extend(expert_notes(model, blocks, copies, settings, real))
    fake = None
    if not real:
        fake = compat.fake_tensor_mode()(allow_non_fake_inputs=True)
        materialize_fake(model, fake)
    step = StepModel(model, fake, quantized, blocks, copies, notes)
    if settings.preference:  # a preference trainer's step (TRL's DPOTrainer): its own loss, its reference model
        from recipe_checks.memory.preference import preference_step

        return preference_step(step, resolved, settings, real=real, device=device)
    return step
