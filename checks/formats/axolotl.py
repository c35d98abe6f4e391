"""Axolotl YAML configs into the recipe model, following Axolotl's own pydantic schema and loader.

Defaults and meanings are those of src/axolotl/utils/schemas (config.py AxolotlInputConfig, peft.py
LoraConfig, training.py HyperparametersConfig) and src/axolotl/utils/config normalize_config, as of
Axolotl main after v0.13.0 (peft.py at commit 00564c8, training.py at 002a637; config.py where
`attn_implementation` replaces the deprecated flash_attention flags).
"""

from __future__ import annotations

from typing import Any

from recipe_checks.formats import Builder, NativeRecipe, gpus_not_stated
from recipe_checks.recipe import LAUNCHER

SOURCE = ("Axolotl main after v0.13.0 (src/axolotl/utils/schemas: config.py, peft.py at 00564c8, training.py at "
          "002a637; utils/config normalize_config); its multi-GPU keys as of v0.18.0-9 (067b021: schemas/config.py "
          "deepspeed, fsdp, fsdp_config, fsdp_version, world_size; schemas/fsdp.py FSDPConfig; schemas/validation.py "
          "check_fsdp_config_kwargs_prefix; utils/trainer.py prepare_optim_env, setup_fsdp_envs)")
REQUIRED = frozenset({"base_model"})
SIGNATURE = frozenset({
    "adapter", "micro_batch_size", "sequence_len", "lora_target_linear", "sample_packing", "num_epochs",
    "lr_scheduler", "optimizer", "flash_attention", "sdp_attention", "base_model_config", "peft_use_dora",
    "lora_target_modules", "datasets", "pad_to_sequence_len", "train_on_inputs", "val_set_size",
    "wandb_project", "special_tokens", "dataset_prepared_path", "evals_per_epoch", "saves_per_epoch",
})

# attention flags (deprecated for attn_implementation in config.py) -> the transformers name
_ATTENTION_FLAGS = {"flash_attention": "flash_attention_2", "sdp_attention": "sdpa", "eager_attention": "eager",
                    "flex_attention": "flex_attention"}
_NATIVE_ATTENTION = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")

DEFAULT_OPTIMIZER = "adamw_torch_fused"  # HyperparametersConfig.optimizer's default
# Axolotl's CustomSupportedOptimizers (utils/schemas/enums.py, main after v0.18.0): optimizers Axolotl builds
# itself, valid in its configs though transformers' OptimizerNames lacks them
AXOLOTL_OPTIMIZERS = frozenset({
    "optimi_adamw", "ao_adamw_4bit", "ao_adamw_8bit", "ao_adamw_fp8", "adopt_adamw", "came_pytorch", "muon", "dion",
    "flash_adamw", "flash_adam", "flash_sgd", "flash_sgdw", "flash_lion",
})

# Keys understood and irrelevant to a step's memory and correctness: data, prompts, logging, saving, eval.
IGNORED = (
    "datasets", "test_datasets", "dataset_prepared_path", "val_set_size", "output_dir", "chat_template",
    "chat_template_jinja", "default_system_message", "special_tokens", "tokens", "tokenizer_type", "tokenizer_config",
    "tokenizer_use_fast", "tokenizer_legacy", "model_type", "is_llama_derived_model", "is_mistral_derived_model",
    "is_qwen_derived_model", "strict", "train_on_inputs", "group_by_length", "logging_steps", "save_steps",
    "eval_steps", "evals_per_epoch", "saves_per_epoch", "save_strategy", "save_total_limit", "save_safetensors",
    "eval_strategy", "evaluation_strategy", "early_stopping_patience", "resume_from_checkpoint",
    "auto_resume_from_checkpoints", "local_rank", "debug", "wandb_project", "wandb_entity", "wandb_watch",
    "wandb_name", "wandb_run_id", "wandb_log_model", "hub_model_id", "hub_strategy", "hf_use_auth_token",
    "push_dataset_to_hub", "dataset_processes", "dataset_num_proc", "shuffle_merged_datasets", "eval_table_size",
    "eval_max_new_tokens", "eval_sample_packing", "eval_causal_lm_metrics", "do_causal_lm_eval",
    "loss_watchdog_threshold", "loss_watchdog_patience", "lora_model_dir", "pad_to_sequence_len",
    "xformers_attention", "logging_dir", "dataloader_num_workers", "dataloader_pin_memory",
    "dataloader_prefetch_factor", "dataloader_drop_last", "remove_unused_columns", "max_prompt_len", "bf16_full_eval",
    "lora_on_cpu", "merge_lora", "merge_method", "gc_steps", "eval_batch_size", "trl", "vllm", "seed_everything",
)

# Keys that change memory or correctness and that the recipe model cannot express yet: named, not checked.
NOT_CHECKED = {
    "sample_packing": "packs several examples into each sequence_len row (block-diagonal attention): the "
                      "memory of a packed row is that of one full row, which is what is traced",
    "rl": "an RL/preference step (DPO, ORPO, KTO, GRPO...) runs chosen and rejected sequences and a reference "
          "model: what is traced is one supervised step",
    "activation_offloading": "activations offloaded to the CPU are not traced: the estimate keeps them on the GPU",
    "layer_offloading": "weights offloaded to the CPU are not traced",
    "unfrozen_parameters": "only the parameters matching these patterns train: checked as a full fine-tune",
    "plugins": "plugins (Liger, Cut Cross Entropy...) patch the model: the unpatched model is checked",
    "liger_kernel": "Liger kernels are not applied to the traced model",
    "lora_mlp_kernel": "Axolotl's fused LoRA kernels are not applied to the traced model",
    "lora_qkv_kernel": "Axolotl's fused LoRA kernels are not applied to the traced model",
    "lora_o_kernel": "Axolotl's fused LoRA kernels are not applied to the traced model",
    "chunked_cross_entropy": "the chunked loss is not traced: the full logits are",
    # Axolotl's own ports of Unsloth's kernels (src/axolotl/monkeypatch/unsloth_.py), patched into the model
    # Axolotl loads: not FastLanguageModel, so not the recipe's `unsloth` section (docs/unsloth.md)
    "unsloth_lora_mlp": "Unsloth's fused LoRA MLP kernel, as Axolotl patches it in, is not applied to the traced model",
    "unsloth_lora_qkv": "Unsloth's fused LoRA QKV kernel, as Axolotl patches it in, is not applied to the traced model",
    "unsloth_lora_o": "Unsloth's fused LoRA O kernel, as Axolotl patches it in, is not applied to the traced model",
    "unsloth_cross_entropy_loss": "Unsloth's cross-entropy kernel, as Axolotl patches it in, is not traced: the "
                                  "full logits and their loss are",
    "unsloth_rms_norm": "Unsloth's RMSNorm kernel, as Axolotl patches it in, is not traced: transformers' RMSNorm is",
    "unsloth_rope": "Unsloth's RoPE kernel, as Axolotl patches it in, is not traced: transformers' rotary embedding is",
    "relora": "ReLoRA restarts and merges adapters during the run",
    "loraplus_lr_ratio": "LoRA+ trains B with a larger learning rate than the recipe's",
    "gptq": "a GPTQ-quantized base model is not modelled (bitsandbytes only)",
    "s2_attention": "shifted-sparse attention is not modelled",
    "sage_attention": "SageAttention is not modelled",
    "tiled_mlp": "the tiled MLP is not traced",
    "peft": "the torchao backend of peft's quantization is not modelled",
    "qat": "quantization-aware training is not modelled",
    "quantization": "post-training quantization settings are not modelled",
    "fp8": "FP8 training through torchao is not modelled",
    "context_parallel_size": "context parallelism splits each sequence across GPUs: one GPU is estimated",
    "tensor_parallel_size": "tensor parallelism splits each layer across GPUs: one GPU is estimated",
    "base_model_config": "the model's config.json is taken from base_model, not from this id",
    "peft_layer_replication": "replicated layers are not modelled",
    "reward_model": "a reward model's head and pairwise loss are not modelled",
    "process_reward_model": "a process reward model's head is not modelled",
    "batch_size": "",  # resolved below into gradient_accumulation_steps where that is not set
}

# Axolotl key -> native key, passed through as they are (their meaning is the same as transformers')
_TRAINING = {"gradient_accumulation_steps": "gradient_accumulation_steps", "num_epochs": "num_train_epochs",
             "max_steps": "max_steps", "warmup_steps": "warmup_steps", "weight_decay": "weight_decay",
             "max_grad_norm": "max_grad_norm", "tf32": "tf32", "seed": "seed",
             "gradient_checkpointing_kwargs": "gradient_checkpointing_kwargs", "adam_beta1": "adam_beta1",
             "adam_beta2": "adam_beta2", "adam_epsilon": "adam_epsilon", "lr_scheduler_kwargs": "lr_scheduler_kwargs",
             "optim_args": "optim_args"}
_LORA = {"lora_r": "r", "lora_alpha": "lora_alpha", "lora_dropout": "lora_dropout",
         "lora_fan_in_fan_out": "fan_in_fan_out", "lora_modules_to_save": "modules_to_save",
         "peft_layers_to_transform": "layers_to_transform", "peft_layers_pattern": "layers_pattern",
         "peft_use_dora": "use_dora", "peft_use_rslora": "use_rslora", "lora_target_parameters": "target_parameters"}


def translate(b: Builder, out: NativeRecipe) -> None:
    b.ignore(IGNORED)
    out.set(("model", "id"), b.take("base_model"), "base_model")
    out.copy_section(b, "model", {"revision_of_model": "revision", "trust_remote_code": "trust_remote_code"})
    _attention(b, out)
    adapter = b.take("adapter")
    if adapter not in (None, "lora", "qlora"):
        b.translation.not_checked.append((("adapter",), f"adapter '{adapter}' is not LoRA: checked as a full fine-tune"))
    _quantization(b, out, adapter)
    if adapter in ("lora", "qlora"):
        _lora(b, out)
    _training(b, out)
    _distributed(b, out)
    for key, why in NOT_CHECKED.items():
        if why:
            b.not_checked(key, why)


def _attention(b: Builder, out: NativeRecipe) -> None:
    impl = b.take("attn_implementation")
    origin = "attn_implementation"
    for flag, name in _ATTENTION_FLAGS.items():
        if b.take(flag) and impl is None:
            impl, origin = name, flag
    if impl is None:
        return
    if impl in _NATIVE_ATTENTION:
        out.set(("model", "attn_implementation"), impl, origin)
    else:
        b.translation.not_checked.append(((origin,), f"attention '{impl}' is not modelled: checked with sdpa"))


def _precision(b: Builder) -> str:
    """cfg.torch_dtype as normalize_config sets it; `bf16: auto` (the default) counts as bf16 here and is
    resolved against each target GPU by Translation.for_gpu."""
    bf16 = b.get("bf16", "auto")
    if bf16 == "auto" or bf16 is True or b.get("bfloat16"):
        return "bfloat16"
    if b.get("load_in_8bit") or b.get("fp16") or b.get("float16"):
        return "float16"
    return "float32"


def _quantization(b: Builder, out: NativeRecipe, adapter: Any) -> None:
    four, eight = b.take("load_in_4bit"), b.take("load_in_8bit")
    kwargs = b.take("bnb_config_kwargs")
    if eight:
        out.set(("quantization", "load_in_8bit"), True, "load_in_8bit")
    if four:
        out.set(("quantization", "load_in_4bit"), True, "load_in_4bit")
        if adapter == "qlora":  # the BitsAndBytesConfig Axolotl's model loader builds for qlora
            dtype = _precision(b)
            out.set(("quantization", "bnb_4bit_quant_type"), "nf4", "load_in_4bit")
            out.set(("quantization", "bnb_4bit_use_double_quant"), True, "load_in_4bit")
            out.set(("quantization", "bnb_4bit_compute_dtype"), dtype, "bf16" if b.has("bf16") else "load_in_4bit")
            out.set(("quantization", "bnb_4bit_quant_storage"), "bfloat16", "load_in_4bit")
            if b.get("bf16", "auto") == "auto":
                b.translation.precision_follows += (("quantization", "bnb_4bit_compute_dtype"),)
    if isinstance(kwargs, dict) and (four or eight):
        for key, value in kwargs.items():
            out.set(("quantization", key), value, ("bnb_config_kwargs", key))


def _lora(b: Builder, out: NativeRecipe) -> None:
    out.section_origin("lora", "adapter")
    out.copy_section(b, "lora", _LORA)
    if b.get("lora_dropout") is None:
        out.set(("lora", "lora_dropout"), 0.0)  # validate_lora_dropout: 0.0 with an adapter
    linear, modules = b.take("lora_target_linear"), b.take("lora_target_modules")
    if linear:
        out.set(("lora", "target_modules"), "all-linear", "lora_target_linear")
        if modules:
            b.resolved("lora_target_linear", "every linear layer (lora_target_modules are a subset of them)")
    elif modules is not None:
        # as written: Axolotl hands cfg.lora_target_modules to LoraConfig unchanged (loaders/adapter.py
        # _build_peft_lora_config: target_modules=cfg.lora_target_modules or []; it wraps a string in a list only
        # to join it with lora_target_linear's names): a string is a regex peft full-matches (RC201 checks it as
        # one), a list is names peft matches as module-name suffixes
        out.set(("lora", "target_modules"), modules, "lora_target_modules")
    out.set(("lora", "task_type"), "CAUSAL_LM")


def _training(b: Builder, out: NativeRecipe) -> None:
    out.section_origin("training", "micro_batch_size", "learning_rate", "sequence_len", "optimizer", b=b)
    out.copy(b, ("training", "per_device_train_batch_size"), "micro_batch_size", 1)
    out.copy(b, ("training", "max_seq_length"), "sequence_len", 512)
    lr = b.take("learning_rate")
    if isinstance(lr, str):  # HyperparametersConfig.convert_learning_rate: '2e-4' is a float to Axolotl
        try:
            lr = float(lr)
            b.resolved("learning_rate", f"{lr:g} (Axolotl reads the string as a float)")
        except ValueError:
            pass
    if lr is not None:
        out.set(("training", "learning_rate"), lr, "learning_rate")
    out.copy_section(b, "training", _TRAINING)
    out.warmup_ratio(b)
    batch = b.take("batch_size")
    if isinstance(batch, int) and not b.has("gradient_accumulation_steps"):
        steps = max(1, batch // max(1, b.get("micro_batch_size", 1)))
        out.set(("training", "gradient_accumulation_steps"), steps, "batch_size")
        b.resolved("batch_size", f"gradient_accumulation_steps {steps} (batch_size / micro_batch_size)")
    _optimizer(b, out)
    scheduler = b.get("lr_scheduler", "cosine")
    b.take("lr_scheduler")
    if scheduler in ("one_cycle", "rex"):
        b.translation.not_checked.append((("lr_scheduler",), f"Axolotl's own '{scheduler}' schedule is not modelled"))
    else:
        out.set(("training", "lr_scheduler_type"), scheduler, "lr_scheduler" if b.has("lr_scheduler") else None)
    checkpointing = b.take("gradient_checkpointing")
    if checkpointing in ("unsloth", "offload", "offload_disk"):
        b.translation.not_checked.append((("gradient_checkpointing",),
                                          f"'{checkpointing}' checkpointing offloads activations: traced as plain "
                                          "gradient checkpointing"))
    if checkpointing is not None:
        out.set(("training", "gradient_checkpointing"), True if checkpointing in ("unsloth", "offload", "offload_disk") else checkpointing,
                "gradient_checkpointing")
    # Axolotl checkpoints reentrant unless told otherwise: normalize_config (utils/config/__init__.py:377-383 at
    # 067b021) sets gradient_checkpointing_kwargs {use_reentrant: true} when checkpointing is on and neither the
    # kwargs, unfrozen_parameters nor rl are set. It decides memory: LLM.int8() keeps each 8-bit layer's input outside
    # autograd's saved tensors, which non-reentrant checkpointing (transformers' default) cannot free (24 GiB on Llama
    # 3 8B, micro-batch 2 x 4096). Gemma 4, which Axolotl switches back to non-reentrant, is not told apart here.
    if (checkpointing and "gradient_checkpointing_kwargs" not in out.data.get("training", {})
            and b.get("unfrozen_parameters") is None and b.get("rl") is None):
        out.set(("training", "gradient_checkpointing_kwargs"), {"use_reentrant": True}, "gradient_checkpointing")
        b.resolved("gradient_checkpointing", "gradient_checkpointing_kwargs {use_reentrant: true}, Axolotl's default")
    _training_precision(b, out)


def _optimizer(b: Builder, out: NativeRecipe) -> None:
    """HyperparametersConfig.optimizer: a transformers OptimizerNames value (RC302 checks it) or one of Axolotl's
    own, which its trainer builder makes itself (core/builders/base.py) and the traced step cannot: not checked."""
    optimizer = b.take("optimizer")
    if isinstance(optimizer, str) and optimizer in AXOLOTL_OPTIMIZERS:
        out.set(("training", "optim"), DEFAULT_OPTIMIZER, "optimizer")
        b.translation.not_checked.append((("optimizer",), f"Axolotl's own optimizer '{optimizer}' is not modelled: "
                                          f"checked as {DEFAULT_OPTIMIZER}, Axolotl's default (AdamW's two states "
                                          "per trained parameter)"))
        return
    out.copy(b, ("training", "optim"), "optimizer", DEFAULT_OPTIMIZER)


def _training_precision(b: Builder, out: NativeRecipe) -> None:
    bf16, fp16 = b.take("bf16"), b.take("fp16")
    b.ignore(("bfloat16", "float16", "float32"))
    auto = bf16 in (None, "auto")
    if auto:  # Axolotl's default is auto: bf16 where the GPU has it, else fp16 (unless fp16 is set)
        b.translation.bf16_auto = ("bf16",) if bf16 is not None else ()
        b.translation.fp16_written = fp16 is not None
        b.translation.fp16_written_value = bool(fp16)
        out.set(("training", "bf16"), True, "bf16" if bf16 is not None else None)
    else:
        out.set(("training", "bf16"), bf16, "bf16")  # as written: a value that is no bool is RC103's to report
    if fp16 is not None:
        out.set(("training", "fp16"), fp16, "fp16")
    elif auto and bf16 is not None:  # auto's fp16 fallback is the bf16 line's doing: findings point there
        out.set(("training", "fp16"), False, "bf16")
    # the model is loaded in cfg.torch_dtype, adapters or not (a full fine-tune trains bf16 weights)
    out.set(("model", "torch_dtype"), _precision(b), "bf16" if b.has("bf16") else None)
    if auto:
        b.translation.precision_follows += (("model", "torch_dtype"),)


# the legacy `fsdp:` list (TrainingArguments.fsdp options): what each option means for fully_shard
_FSDP_OPTIONS = {"full_shard": True, "shard_grad_op": False}


def _distributed(b: Builder, out: NativeRecipe) -> None:
    """deepspeed / fsdp / fsdp_config as the native distributed section. Axolotl prefers FSDP where both are set
    (prepare_optim_env); the number of GPUs is the launcher's (normalize_config reads WORLD_SIZE), so only a
    `world_size` in the config states it."""
    deepspeed, fsdp, config = b.take("deepspeed"), b.take("fsdp"), b.take("fsdp_config")
    version, world = b.take("fsdp_version"), b.take("world_size")
    b.ignore(("ddp",))
    if isinstance(world, int) and not isinstance(world, bool) and (deepspeed or fsdp or config or world > 1):
        out.set(("distributed", "world_size"), world, "world_size")
    elif world is not None and not isinstance(world, int):
        out.set(("distributed", "world_size"), world, "world_size")  # as written: RC103 reports the value
    if fsdp or config:
        origin = "fsdp_config" if config else "fsdp"
        _fsdp(b, out, fsdp, config if isinstance(config, dict) else {}, version, origin)
        if deepspeed:
            b.translation.resolved.append((("deepspeed",), "not used: Axolotl configures FSDP where fsdp_config is set"))
    elif isinstance(deepspeed, str):
        out.set(("distributed", "deepspeed"), deepspeed, "deepspeed")
        origin = "deepspeed"
    elif isinstance(deepspeed, dict):
        b.translation.not_checked.append((("deepspeed",), "an inline DeepSpeed config is not read: write it to a JSON "
                                          "file and name the file in `deepspeed:`"))
        return
    elif isinstance(world, int) and world > 1:
        out.set(("distributed", "strategy"), "ddp", "world_size")  # several GPUs, nothing sharded: DDP
        return
    else:
        return
    if world is None:
        out.set(("distributed", "world_size"), LAUNCHER, origin)
        how = "add `world_size: N` to the config (Axolotl overwrites it from the launcher's WORLD_SIZE: the run is the same)"
        b.translation.not_checked.append(((origin,), gpus_not_stated(how)))


def _fsdp(b: Builder, out: NativeRecipe, fsdp: Any, config: dict[str, Any], version: Any, origin: str) -> None:
    # check_fsdp_config_kwargs_prefix: fsdp_-prefixed keys are the same keys (fsdp_version keeps its name)
    config = {(k[5:] if isinstance(k, str) and k.startswith("fsdp_") and k != "fsdp_version" else k): v
              for k, v in config.items()}
    if version is None:  # _resolve_fsdp_version: top level, else fsdp_config's, else 1
        version = config.get("fsdp_version", config.get("version", 1))
    out.set(("distributed", "strategy"), "fsdp", origin)
    options = [o.strip() for o in fsdp.split()] if isinstance(fsdp, str) else fsdp if isinstance(fsdp, list) else []
    reshard = config.get("reshard_after_forward")
    if isinstance(reshard, bool):
        out.set(("distributed", "fsdp", "reshard_after_forward"), reshard, ("fsdp_config", _written(b, "reshard_after_forward")))
    for option in options:
        if option in _FSDP_OPTIONS and reshard is None:
            out.set(("distributed", "fsdp", "reshard_after_forward"), _FSDP_OPTIONS[option], "fsdp")
        elif option == "no_shard":
            out.set(("distributed", "strategy"), "ddp", "fsdp")
        elif option == "offload":
            out.set(("distributed", "fsdp", "offload_policy"), "cpu", "fsdp")
        elif isinstance(option, str) and option.startswith("hybrid_shard"):
            b.translation.not_checked.append((("fsdp",), f"'{option}' shards within a node and replicates across "
                                              "nodes: checked as sharding across all GPUs"))
    if config.get("offload_params") is True:
        out.set(("distributed", "fsdp", "offload_policy"), "cpu", ("fsdp_config", _written(b, "offload_params")))
    if str(version) != "2":
        b.translation.resolved.append(((origin,), f"FSDP1 (fsdp_version {version}) checked as FSDP2's fully_shard with "
                                       "the same sharding; Axolotl recommends fsdp_version: 2"))
    if config.get("activation_checkpointing") is True and not b.get("gradient_checkpointing"):
        out.set(("training", "gradient_checkpointing"), True, ("fsdp_config", _written(b, "activation_checkpointing")))
        b.resolved("fsdp_config", "gradient_checkpointing true (FSDP's activation checkpointing of each block)")


def _written(b: Builder, key: str) -> str:
    """The fsdp_config key as the config writes it (with or without Axolotl's deprecated fsdp_ prefix)."""
    config = b.data.get("fsdp_config")
    return f"fsdp_{key}" if isinstance(config, dict) and f"fsdp_{key}" in config and key not in config else key
