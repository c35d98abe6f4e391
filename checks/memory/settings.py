"""What of a recipe decides the memory of a training step: StepSettings, with transformers' defaults.

Frozen and hashable (nested values as sorted tuples), so that traces are cached per settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

_DTYPES = ("float32", "float16", "bfloat16")


@dataclass(frozen=True)
class StepSettings:
    """Everything of a recipe that decides the memory of a training step."""

    micro_batch: int
    seq_len: int
    gradient_accumulation: int = 1
    gradient_checkpointing: bool = False
    gradient_checkpointing_kwargs: tuple = ()
    precision: str = "float32"  # training autocast dtype: bfloat16, float16 or float32
    weights_dtype: str = "float32"
    attn_implementation: str | None = "sdpa"  # None: transformers' default for the model
    optim: str = "adamw_torch"
    max_grad_norm: float = 1.0
    learning_rate: float = 5e-5
    weight_decay: float = 0.0
    lora: tuple = ()  # sorted (key, value) of the LoraConfig kwargs; empty: full fine-tune
    quant_4bit: tuple = ()  # sorted (key, value) of the 4-bit settings; empty: not quantized
    quant_8bit: tuple = ()  # sorted (key, value) of the LLM.int8() settings; empty: not 8-bit
    chunked_loss: bool = False  # Liger's fused linear cross-entropy (use_liger_kernel)
    # sorted (key, value) of a diffusion transformer's step (diffusion_settings, recipe_checks.memory.diffusion.step_inputs):
    # image size, text length, what is precomputed; empty: a causal LM's step
    diffusion: tuple = ()
    # sorted (key, value) of a preference trainer's step (checks/memory/preference.py); empty: a causal-LM step
    preference: tuple = ()
    # several GPUs (checks/memory/sharding.py ShardPlan): the strategy, world size and options; None: one GPU
    distributed: Any = None
    notes: tuple[str, ...] = ()


def settings_from_recipe(recipe, config: dict) -> StepSettings:
    """The memory-relevant settings of a recipe, with the defaults transformers would apply."""
    t = recipe.training
    notes = []
    precision = recipe.training_dtype
    q = recipe.quantization
    quantized = q is not None and (q.load_in_4bit or q.load_in_8bit)
    dtype = recipe.model.torch_dtype
    if dtype in (None, "auto") and getattr(recipe, "unsloth", None) is not None and recipe.unsloth.dtype is not None:
        dtype = recipe.unsloth.dtype  # FastLanguageModel's `dtype` (noted in recipe_checks.unsloth.memory_notes)
    if dtype in (None, "auto"):
        config_dtype = config.get("torch_dtype") or config.get("dtype")
        if config_dtype in _DTYPES:
            dtype = config_dtype
            notes.append(f"weights load in {dtype}, the dtype in the model's config.json")
        elif quantized:
            dtype = "float16"
            notes.append("weights load in float16: the config names no dtype and bitsandbytes loading defaults to it")
        else:
            dtype = "float32"
            notes.append("weights load in float32: neither model.torch_dtype nor the config names a dtype")
    attn = recipe.model.attn_implementation
    if attn in ("flash_attention_2", "flash_attention_3"):
        from recipe_checks import compat

        if compat.supports_sdpa(config.get("model_type", ""), config.get("architectures")):
            notes.append(f"{attn} is traced as sdpa: both keep no attention matrix, only the output and log-sum-exp")
            attn = "sdpa"
        else:  # Gemma 2: transformers has no sdpa path for it; sdpa's kernel stands in under a name of its own
            notes.append(f"{attn} is traced as a fused kernel that keeps no attention matrix, only the output and "
                         "log-sum-exp (sdpa's, standing in: transformers has no sdpa path for this model)")
            attn = compat.FLASH_STAND_IN
    lora = ()
    if recipe.lora is not None:
        from recipe_checks.recipe.validate import library_kwargs

        lora = tuple(sorted((k, freeze(v)) for k, v in library_kwargs(recipe.lora).items()))
    quant = ()
    if q is not None and q.load_in_4bit:
        compute = q.bnb_4bit_compute_dtype or "float32"
        quant = tuple(sorted({
            "quant_type": q.bnb_4bit_quant_type,
            "double_quant": q.bnb_4bit_use_double_quant,
            "compute_dtype": compute,
            "skip": tuple(q.llm_int8_skip_modules or ()),
            "quant_storage": q.bnb_4bit_quant_storage or "uint8",
        }.items()))
    chunked = _liger_chunked_loss(t, config.get("model_type"), notes)
    # transformers 5.24 names it activation_checkpointing(_kwargs); gradient_checkpointing is its deprecated alias
    extra = t.model_extra or {}
    checkpointing = bool(extra.get("activation_checkpointing", t.gradient_checkpointing))
    checkpoint_kwargs = extra.get("activation_checkpointing_kwargs", t.gradient_checkpointing_kwargs)
    if getattr(recipe, "unsloth", None) is not None:  # Unsloth checkpoints the model by its own setting (noted)
        from recipe_checks.unsloth import memory_notes, step_checkpointing

        checkpointing = step_checkpointing(recipe, checkpointing)
        notes.extend(memory_notes(recipe, config, dtype))
    settings = StepSettings(
        micro_batch=t.per_device_train_batch_size,
        seq_len=t.max_seq_length,
        gradient_accumulation=t.gradient_accumulation_steps,
        gradient_checkpointing=checkpointing,
        gradient_checkpointing_kwargs=tuple(sorted((checkpoint_kwargs or {}).items())),
        precision=precision,
        weights_dtype=dtype,
        attn_implementation=attn,
        optim=t.optim,
        max_grad_norm=t.max_grad_norm,
        learning_rate=t.learning_rate,
        weight_decay=t.weight_decay,
        lora=lora,
        quant_4bit=quant,
        quant_8bit=(
            (("skip", tuple(q.llm_int8_skip_modules or ())), ("threshold", q.llm_int8_threshold))
            if q is not None and q.load_in_8bit and not q.load_in_4bit else ()
        ),
        chunked_loss=chunked,
        diffusion=diffusion_settings(recipe, config, notes),
        distributed=_shard_plan(recipe, notes),
        notes=tuple(notes),
    )
    if getattr(recipe, "dpo", None) is not None:  # TRL's DPOConfig decides its step's settings
        from recipe_checks.memory.preference import dpo_step_settings

        settings = dpo_step_settings(recipe, settings)
    return settings


def _shard_plan(recipe, notes: list[str]):
    """The distributed section as the trace takes it (None: one GPU), with what the trace says of it."""
    if getattr(recipe, "distributed", None) is None:
        return None
    from recipe_checks.memory.sharding import plan_from_recipe, sharding_notes

    plan = plan_from_recipe(recipe)
    if plan is None:
        notes.append("the number of GPUs is not stated: traced as one GPU holding the whole model")
        return None
    notes.extend(sharding_notes(plan))
    return plan


def diffusion_settings(recipe, config: dict, notes: list[str]) -> tuple:
    """The diffusion step's settings when the model is a diffusers transformer; () otherwise."""
    from recipe_checks.models.diffusers import is_diffusers_config

    if not is_diffusers_config(config):
        return ()
    from recipe_checks.memory.diffusion import step_inputs

    return freeze(step_inputs(recipe, config, notes))


def _liger_chunked_loss(training, model_type: str | None, notes: list[str]) -> bool:
    """Whether `use_liger_kernel` gives this model Liger's fused (chunked) loss, as the Trainer
    applies it; notes what the trace does not follow."""
    from recipe_checks.memory.chunked_loss import liger_data, supports_chunked_loss

    extra = training.model_extra or {}
    if not extra.get("use_liger_kernel"):
        return False
    config = extra.get("liger_kernel_config") or {}
    if not supports_chunked_loss(model_type):
        notes.append(f"use_liger_kernel: Liger has no fused loss for model type '{model_type}'; traced without it")
        return False
    swapped = [k for k in liger_data()["other_default_kernels"] if config.get(k, True)]
    if swapped:
        notes.append(f"use_liger_kernel: Liger's {', '.join(swapped)} kernels are traced as transformers' own "
                     "modules, which keep at least as much for the backward pass (an upper bound)")
    return bool(config.get("fused_linear_cross_entropy", True))


def freeze(value: Any) -> Any:
    """Lists and dicts as (sorted) tuples: hashable settings."""
    if isinstance(value, list):
        return tuple(freeze(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, freeze(v)) for k, v in value.items()))
    return value


def thaw(value: Any) -> Any:
    """The lists and dicts that `freeze` made tuples of."""
    if isinstance(value, tuple) and value and all(isinstance(v, tuple) and len(v) == 2 for v in value):
        return {k: thaw(v) for k, v in value}
    if isinstance(value, tuple):
        return [thaw(v) for v in value]
    return value
