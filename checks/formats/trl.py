"""TRL command-line configs (`trl sft|dpo|grpo|kto|reward|rloo|distillation --config FILE`) into the recipe model.

The keys are those of trl/trainer/model_config.py (ModelConfig) and the trainer's config class (SFTConfig,
DPOConfig, ..., each a transformers.TrainingArguments); trl/scripts/<trainer>.py builds the model, the
BitsAndBytesConfig (get_quantization_config) and the LoraConfig (get_peft_config) from them. The file does not
name its trainer (the command line does): the keys only one trainer's config class defines say which it is.
"""

from __future__ import annotations

from recipe_checks.formats import Builder, NativeRecipe

SOURCE = ("TRL 1.16 (trl/trainer/model_config.py ModelConfig; sft_config.py SFTConfig, dpo_config.py DPOConfig and the "
          "other trainers' config classes; scripts/sft.py, scripts/dpo.py)")
# TrlParser.parse_args_and_config reads the YAML with yaml.safe_load (PyYAML: `2e-5` is a string) and makes each
# value the default of its argparse option; argparse converts a string default with the option's type, which
# HfArgumentParser sets to the dataclass field's type: float('2e-5') for learning_rate, int('8') for a batch size
# (an unconvertible string, int('1e3'), stops the run). The types are those of transformers 5's TrainingArguments
# (warmup_steps is a float there), SFTConfig and ModelConfig, for the keys translated as numbers.
PARSED_TYPES = {
    **dict.fromkeys(("learning_rate", "num_train_epochs", "warmup_steps", "weight_decay", "max_grad_norm",
                     "adam_beta1", "adam_beta2", "adam_epsilon", "lora_dropout", "beta", "label_smoothing", "ld_alpha",
                     "discopop_tau", "f_alpha_divergence_coef", "ref_model_mixup_alpha"), float),
    **dict.fromkeys(("per_device_train_batch_size", "gradient_accumulation_steps", "max_steps", "seed", "max_length",
                     "lora_r", "lora_alpha", "precompute_ref_batch_size", "ref_model_sync_steps"), int),
}
REQUIRED = frozenset({"model_name_or_path"})
SIGNATURE = frozenset({
    "use_peft", "lora_r", "lora_target_modules", "lora_task_type", "max_length", "dataset_name", "packing",
    "use_bnb_nested_quant", "dataset_text_field", "dataset_train_split", "lora_modules_to_save", "dtype",
    "torch_dtype", "completion_only_loss", "assistant_only_loss", "padding_free", "dataset_config",
    "datasets", "dataset_mixture",
    # keys of one trainer's config class (TRAINER_KEYS below): a `trl dpo|grpo|kto|reward --config` file
    "beta", "precompute_ref_log_probs", "max_prompt_length", "num_generations", "max_completion_length", "use_vllm",
    "reward_funcs", "desirable_weight", "undesirable_weight", "center_rewards_coefficient",
})
# The dataset mixture TrlParser reads beside the model and training arguments: trl/scripts/utils.py
# DatasetMixtureConfig (`datasets:` a list of {path, name, data_dir, data_files, split, columns}, `streaming`,
# `test_split_size`), the form TRL's docs give for `trl sft --config`; alignment-handbook's recipes write the same
# under `dataset_mixture:` (its ScriptArguments: {datasets: [{id, config, split, columns, weight}], seed,
# test_split_size}). Data only: neither changes a step's memory, whose rows are max_length tokens.
DATASET_MIXTURE = ("datasets", "streaming", "test_split_size", "dataset_mixture")

IGNORED = (
    "dataset_name", "dataset_config", "dataset_train_split", "dataset_test_split", "dataset_text_field",
    "dataset_streaming", "dataset_num_proc", "dataset_kwargs", "output_dir", "logging_steps", "save_steps",
    "save_strategy", "save_total_limit", "eval_strategy", "eval_steps", "per_device_eval_batch_size", "report_to",
    "push_to_hub", "hub_model_id", "run_name", "logging_dir", "overwrite_output_dir", "do_train", "do_eval",
    "completion_only_loss", "assistant_only_loss", "chat_template_path", "eos_token", "pad_token",
    "gradient_checkpointing_kwargs_unused", "ignore_bias_buffers", "model_init_kwargs", "dataloader_num_workers",
    "logging_first_step", "log_level", "bf16_full_eval", "lora_task_type", "trust_remote_code",
)

NOT_CHECKED = {
    "packing": "packing several examples into each max_length row is not modelled: one full row is traced",
    "padding_free": "padding-free batches are not modelled: padded rows of max_length are traced",
    "deepspeed": "DeepSpeed shards optimizer state, gradients or weights across GPUs: one GPU holding all is estimated",
    "fsdp": "FSDP shards the model across GPUs: one unsharded GPU is estimated",
    "use_liger_kernel": "Liger kernels are not applied to the traced model",
    "activation_offloading": "activations offloaded to the CPU are not traced",
    "lora_target_parameters": "adapters on parameters (MoE experts) from the TRL CLI are not modelled",
}

# --- which trainer: the keys only its config class defines --------------------------------------------------------
# Read from TRL 1.16: dataclasses.fields(XConfig) less TrainingArguments' fields and those of the other trainers'
# config classes (trl/trainer/dpo_config.py DPOConfig, grpo_config.py GRPOConfig, rloo_config.py RLOOConfig,
# kto_config.py KTOConfig, reward_config.py RewardConfig, distillation_config.py DistillationConfig), plus the
# trainer script's own arguments (scripts/grpo.py GRPOScriptArguments: reward_funcs, reward_model_name_or_path).
# `trl sft` passes a key of another config class to the launcher as an argument it does not know: such a file is
# not an SFT run.
DPO_ONLY = ("discopop_tau", "f_alpha_divergence_coef", "f_divergence_type", "label_smoothing", "ld_alpha",
            "loss_weights", "use_weighting")
# DPOConfig fields of TRL releases before 1.0 that 1.16 dropped: a DPO config written for an older TRL
DPO_BEFORE_1_0 = ("max_prompt_length", "rpo_alpha", "reference_free", "generate_during_eval", "ref_adapter_name",
                  "model_adapter_name", "force_use_ref_model", "ref_model_init_kwargs")
# DPOConfig and KTOConfig both define these (GRPOConfig and RLOOConfig beta and the ref_model_* ones too)
REFERENCE_KEYS = ("beta", "precompute_ref_log_probs", "precompute_ref_batch_size", "sync_ref_model",
                  "ref_model_mixup_alpha", "ref_model_sync_steps", "disable_dropout")
KTO_ONLY = ("desirable_weight", "undesirable_weight")
REWARD_ONLY = ("center_rewards_coefficient",)
RLOO_ONLY = ("normalize_advantages", "reward_clip_range")
DISTILLATION_ONLY = ("teacher_model_name_or_path", "teacher_model_revision", "teacher_model_init_kwargs")
GRPO_ONLY = ("cast_lm_head_to_fp32", "delta", "entropy_coef", "entropy_coef_delta", "entropy_coef_max", "entropy_coef_min",
             "entropy_target", "importance_sampling_level", "log_completions_hub_repo", "max_tool_calling_iterations",
             "multi_objective_aggregation", "off_policy_mask_threshold", "sapo_temperature_neg", "sapo_temperature_pos",
             "scale_rewards", "top_entropy_quantile", "use_adaptive_entropy", "use_bias_correction_kl", "vespo_k_neg",
             "vespo_k_pos", "vespo_lambda_neg", "vespo_lambda_pos", "vllm_importance_sampling_cap",
             "vllm_importance_sampling_clip_max", "vllm_importance_sampling_clip_min",
             "vllm_importance_sampling_correction", "vllm_importance_sampling_mode",
             "reward_funcs", "reward_model_name_or_path")  # the last two: GRPOScriptArguments
# GRPOConfig and RLOOConfig share the generation (online) keys; max_completion_length was also an older DPOConfig's
ONLINE = ("cache_implementation", "chat_template_kwargs", "ds3_gather_for_generation", "epsilon", "epsilon_high",
          "generation_batch_size", "generation_kwargs", "log_completions", "log_multimodal", "log_unique_prompts",
          "mask_truncated_completions", "min_p", "num_completions_to_print", "num_generations",
          "num_generations_eval", "num_iterations", "repetition_penalty", "reward_weights", "steps_per_generation",
          "temperature", "top_k", "top_p", "transformers_continuous_batching_config",
          "use_transformers_continuous_batching", "use_transformers_paged", "use_vllm", "vllm_enable_sleep_mode",
          "vllm_gpu_memory_utilization", "vllm_group_port", "vllm_max_model_length", "vllm_mode", "vllm_model_impl",
          "vllm_server_base_url", "vllm_server_host", "vllm_server_port", "vllm_server_timeout",
          "vllm_structured_outputs_regex", "vllm_tensor_parallel_size")
# Each config class's loss_type values (its field's help or choices at 1.16): a loss names its trainer
LOSS_TYPES = {
    "dpo": ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot", "aot_unpaired",
            "apo_zero", "apo_down", "discopop", "sigmoid_norm"),  # and 'sft', combined with another
    "kto": ("kto", "apo_zero_unpaired"),
    "grpo": ("grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo"),
}
# What each trainer not modelled does that one supervised step does not (its trainer module at 1.16)
NOT_MODELLED = {
    "grpo": "GRPOTrainer generates num_generations completions per prompt (with vLLM or transformers' generate), "
            "scores them with the reward functions and trains on them, with a reference model when beta > 0",
    "rloo": "RLOOTrainer generates num_generations completions per prompt, scores them and trains on them against "
            "a reference model",
    "kto": "KTOTrainer runs each completion and a mismatched KL completion through the policy and a reference model",
    "reward": "RewardTrainer trains a sequence-classification head on chosen and rejected completions",
    "distillation": "DistillationTrainer runs a teacher model beside the student and may generate completions",
}
LABELS = {"dpo": "DPO", "grpo": "GRPO", "rloo": "RLOO", "kto": "KTO", "reward": "reward-model", "distillation": "distillation"}


def _loss_trainer(loss_type) -> str | None:
    values = loss_type if isinstance(loss_type, list) else [loss_type]
    for trainer, names in LOSS_TYPES.items():
        if any(isinstance(v, str) and v in names for v in values):
            return trainer
    return None


def trainer_of(data: dict) -> tuple[str, list[str]]:
    """The TRL trainer a config is for (`sft`, `dpo`, `grpo`, `rloo`, `kto`, `reward`, `distillation`) and the keys
    that say so, in the file's order. The keys only one config class defines decide first; then the loss_type's
    value; then the reference-model keys DPOConfig shares with KTOConfig, read as DPO (the commoner)."""
    keys = [k for k, v in data.items() if isinstance(k, str) and v is not None]

    def having(*groups):
        return [k for k in keys if any(k in group for group in groups)]

    by_loss = _loss_trainer(data.get("loss_type"))
    for trainer, found in (("reward", having(REWARD_ONLY)), ("kto", having(KTO_ONLY)),
                           ("distillation", having(DISTILLATION_ONLY)), ("rloo", having(RLOO_ONLY)),
                           ("grpo", having(GRPO_ONLY, ONLINE)), ("dpo", having(DPO_ONLY, DPO_BEFORE_1_0))):
        if found:
            return trainer, found
    if by_loss is not None:
        return by_loss, ["loss_type"]
    if "max_completion_length" in keys:  # GRPOConfig's and RLOOConfig's at 1.16
        return "grpo", ["max_completion_length"]
    found = having(REFERENCE_KEYS)
    return ("dpo", found) if found else ("sft", [])


# SFTConfig / TrainingArguments fields passed through with the same name and meaning
_TRAINING = ("per_device_train_batch_size", "gradient_accumulation_steps", "num_train_epochs", "max_steps",
             "lr_scheduler_type", "warmup_steps", "weight_decay", "max_grad_norm", "fp16", "tf32", "optim", "seed",
             "gradient_checkpointing_kwargs", "adam_beta1", "adam_beta2", "adam_epsilon", "lr_scheduler_kwargs")
_LORA = {"lora_r": "r", "lora_alpha": "lora_alpha", "lora_dropout": "lora_dropout",
         "lora_modules_to_save": "modules_to_save", "use_rslora": "use_rslora", "use_dora": "use_dora"}
# ModelConfig's LoRA defaults (they differ from peft.LoraConfig's r=8, alpha=8, dropout=0)
_LORA_DEFAULTS = {"lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.05}


# ModelConfig.dtype's default (trl/trainer/model_config.py, `dtype: str | None = field(default="float32")`): every
# trainer script passes it to from_pretrained (scripts/sft.py, dpo.py: model_init_kwargs `dtype=model_args.dtype`),
# so a config that sets no dtype loads the weights in float32; `bf16: true` is the Trainer's autocast, the weights
# stay as loaded.
DEFAULT_DTYPE = "float32"
# DPOConfig's own fields (dpo_config.py at 1.16) the recipe's `dpo` section passes to DPOConfig as they are
_DPO = ("beta", "loss_type", "loss_weights", "max_length", "precompute_ref_log_probs", "precompute_ref_batch_size",
        "use_weighting", "disable_dropout", "label_smoothing", "f_divergence_type", "f_alpha_divergence_coef", "ld_alpha",
        "discopop_tau", "sync_ref_model", "ref_model_mixup_alpha", "ref_model_sync_steps", "truncation_mode",
        "pad_to_multiple_of", "router_aux_loss_coef")
_DPO_BEFORE_1_0_WHY = {
    "max_prompt_length": "TRL 1.16's DPOConfig has no max_prompt_length (older TRL truncated the prompt to it): rows "
                         "of max_length tokens, prompt and completion together, are traced",
    "rpo_alpha": "TRL 1.16 has no rpo_alpha (its form is loss_type: [sigmoid, sft]): the NLL term is not traced",
    "reference_free": "TRL 1.16 has no reference_free: the reference pass is traced",
}
# The learning rates the trainers' config classes default to (each class's learning_rate field at 1.16)
_LEARNING_RATES = {"sft": 2.0e-5, "dpo": 1.0e-6, "kto": 1.0e-6, "grpo": 1.0e-6, "rloo": 1.0e-6, "reward": 1.0e-4}
_TRAINER_KEYS = {
    "grpo": (*GRPO_ONLY, *ONLINE, "max_completion_length", *REFERENCE_KEYS, "loss_type"),
    "rloo": (*RLOO_ONLY, *ONLINE, "max_completion_length", *REFERENCE_KEYS),
    "kto": (*KTO_ONLY, *REFERENCE_KEYS, "loss_type", "max_length"),
    "reward": (*REWARD_ONLY, "disable_dropout", "max_length"),
    "distillation": (*DISTILLATION_ONLY, *ONLINE, "max_completion_length", "beta", "loss_type", "max_length"),
}


def translate(b: Builder, out: NativeRecipe) -> None:
    b.ignore((*IGNORED, *DATASET_MIXTURE))
    trainer, evidence = trainer_of(b.data)
    b.translation.trainer = trainer
    out.set(("model", "id"), b.take("model_name_or_path"), "model_name_or_path")
    out.copy_section(b, "model", {"model_revision": "revision", "trust_remote_code": "trust_remote_code",
                                  "attn_implementation": "attn_implementation"})
    dtype, dtype_key = _dtype(b, out)
    _quantization(b, out, dtype, dtype_key)
    if b.take("use_peft"):
        _lora(b, out)
    else:
        b.ignore((*_LORA, "lora_target_modules"))
    _training(b, out, trainer)
    if trainer == "dpo":
        _dpo(b, out, evidence)
    elif trainer != "sft":
        _not_modelled(b, trainer, evidence)
    for key, why in NOT_CHECKED.items():
        b.not_checked(key, why)


def _dtype(b: Builder, out: NativeRecipe) -> tuple[str, str | None]:
    """The dtype the weights load in, and the key that says it (None: ModelConfig's default). A `dtype` in
    model_init_kwargs wins: the scripts update their model_init_kwargs with the config's."""
    init = b.get("model_init_kwargs")
    for source, value in (("model_init_kwargs", init.get("dtype") or init.get("torch_dtype") if isinstance(init, dict)
                           else None), ("dtype", b.take("dtype")), ("torch_dtype", b.take("torch_dtype"))):
        if value is not None:  # torch_dtype: ModelConfig's name for it before TRL 0.20
            out.set(("model", "torch_dtype"), value, source)
            return value, source
    out.set(("model", "torch_dtype"), DEFAULT_DTYPE)
    out.section_origin("model", "model_name_or_path")
    b.resolved("model_name_or_path", f"weights in {DEFAULT_DTYPE}: no dtype is set and TRL's ModelConfig.dtype defaults "
               f"to it (bf16: true autocasts the compute, the weights stay {DEFAULT_DTYPE})")
    return DEFAULT_DTYPE, None


def _quantization(b: Builder, out: NativeRecipe, dtype, dtype_key: str | None) -> None:
    four, eight = b.take("load_in_4bit"), b.take("load_in_8bit")
    b.ignore(("bnb_4bit_quant_type", "use_bnb_nested_quant", "bnb_4bit_quant_storage"))
    if eight:
        out.set(("quantization", "load_in_8bit"), True, "load_in_8bit")
    if four:  # get_quantization_config (trainer/utils.py): compute dtype = the model's dtype
        out.set(("quantization", "load_in_4bit"), True, "load_in_4bit")
        out.set(("quantization", "bnb_4bit_quant_type"), b.get("bnb_4bit_quant_type", "nf4"),
                "bnb_4bit_quant_type" if b.has("bnb_4bit_quant_type") else "load_in_4bit")
        out.set(("quantization", "bnb_4bit_use_double_quant"), b.get("use_bnb_nested_quant", False),
                "use_bnb_nested_quant" if b.has("use_bnb_nested_quant") else "load_in_4bit")
        if dtype != "auto":
            out.set(("quantization", "bnb_4bit_compute_dtype"), dtype, dtype_key or "load_in_4bit")
        # ModelConfig.bnb_4bit_quant_storage (None: bitsandbytes' uint8); TRL before 0.20 stored in torch_dtype
        storage = b.get("bnb_4bit_quant_storage") or (dtype if dtype_key == "torch_dtype" else None)
        if storage is not None and storage != "auto":
            out.set(("quantization", "bnb_4bit_quant_storage"), storage,
                    "bnb_4bit_quant_storage" if b.has("bnb_4bit_quant_storage") else dtype_key)


def _dpo(b: Builder, out: NativeRecipe, evidence: list[str]) -> None:
    """DPOConfig's own keys into the recipe's `dpo` section: the step traced is DPOTrainer's (chosen and rejected
    rows, the reference pass: with use_peft the adapters disabled, else a second model; none when precomputed)."""
    out.section_origin("dpo", *evidence, "model_name_or_path", b=b)
    out.set(("dpo", "beta"), b.get("beta", 0.1), "beta" if b.has("beta") else None)  # `dpo:` needs a key of its own
    b.take("beta")
    for key in _DPO[1:]:
        out.copy(b, ("dpo", key), key)
    for key in DPO_BEFORE_1_0:
        b.not_checked(key, _DPO_BEFORE_1_0_WHY.get(key, "not a DPOConfig field in TRL 1.16 (an older TRL's): not "
                                                        "modelled"))


def _not_modelled(b: Builder, trainer: str, evidence: list[str]) -> None:
    """A trainer whose step the recipe model does not have: one RC111 at the first key that names it, and the step
    is not traced (Translation.untraced), rather than traced as the supervised step it is not."""
    b.ignore(_TRAINER_KEYS[trainer])
    label = LABELS[trainer]
    said = ", ".join(evidence[:3]) + (", ..." if len(evidence) > 3 else "")
    b.translation.untraced = (f"is a TRL {label} config ({said}: `trl {trainer}`): {NOT_MODELLED[trainer]}; that step "
                              "is not modelled")
    why = (f"a TRL {label} config ({said}: `trl {trainer}`): {NOT_MODELLED[trainer]}; that step is not modelled, so "
           "the vram, throughput and training-step checks do not run rather than judge a supervised step in its place")
    b.translation.not_checked.append(((evidence[0],), why))


def _lora(b: Builder, out: NativeRecipe) -> None:
    out.section_origin("lora", "use_peft")
    for key, native in _LORA.items():
        out.copy(b, ("lora", native), key, _LORA_DEFAULTS.get(key))
    modules = b.take("lora_target_modules")
    if modules is not None:  # None: peft's default modules for the architecture
        out.set(("lora", "target_modules"), [modules] if isinstance(modules, str) and modules != "all-linear"
                else modules, "lora_target_modules")
    out.set(("lora", "task_type"), b.get("lora_task_type", "CAUSAL_LM"),
            "lora_task_type" if b.has("lora_task_type") else None)


def _training(b: Builder, out: NativeRecipe, trainer: str) -> None:
    out.section_origin("training", "per_device_train_batch_size", "learning_rate", "max_length", "bf16", b=b)
    out.copy_section(b, "training", _TRAINING)
    out.warmup_ratio(b)
    # The config class's own defaults (_BaseConfig, every TRL trainer's): gradient checkpointing on, bf16 unless fp16
    # is set; the learning rate is each class's
    out.copy(b, ("training", "learning_rate"), "learning_rate", _LEARNING_RATES.get(trainer, 2.0e-5))
    out.copy(b, ("training", "gradient_checkpointing"), "gradient_checkpointing", True)
    bf16 = b.take("bf16")
    out.set(("training", "bf16"), (not b.get("fp16", False)) if bf16 is None else bf16, "bf16" if bf16 is not None else None)
    if trainer == "dpo":  # DPOConfig.max_length, in the dpo section: DPOTrainer never reads a max_seq_length
        return
    length_key = "max_length" if b.has("max_length") else "max_seq_length"
    length = b.take("max_length") or b.take("max_seq_length")
    out.set(("training", "max_seq_length"), length or 1024, length_key if length else None)
