"""TRL command-line configs (`trl sft --config FILE`) into the recipe model.

The keys are those of trl/trainer/model_config.py (ModelConfig) and trl/trainer/sft_config.py
(SFTConfig, a transformers.TrainingArguments); trl/scripts/sft.py builds the model, the
BitsAndBytesConfig (get_quantization_config) and the LoraConfig (get_peft_config) from them.
"""

from __future__ import annotations

from recipe_checks.formats import Builder, NativeRecipe

SOURCE = "TRL main (trl/trainer/model_config.py ModelConfig, sft_config.py SFTConfig, scripts/sft.py)"
# TrlParser.parse_args_and_config reads the YAML with yaml.safe_load (PyYAML: `2e-5` is a string) and makes each
# value the default of its argparse option; argparse converts a string default with the option's type, which
# HfArgumentParser sets to the dataclass field's type: float('2e-5') for learning_rate, int('8') for a batch size
# (an unconvertible string, int('1e3'), stops the run). The types are those of transformers 5's TrainingArguments
# (warmup_steps is a float there), SFTConfig and ModelConfig, for the keys translated as numbers.
PARSED_TYPES = {
    **dict.fromkeys(("learning_rate", "num_train_epochs", "warmup_steps", "weight_decay", "max_grad_norm",
                     "adam_beta1", "adam_beta2", "adam_epsilon", "lora_dropout"), float),
    **dict.fromkeys(("per_device_train_batch_size", "gradient_accumulation_steps", "max_steps", "seed", "max_length",
                     "lora_r", "lora_alpha"), int),
}
REQUIRED = frozenset({"model_name_or_path"})
SIGNATURE = frozenset({
    "use_peft", "lora_r", "lora_target_modules", "lora_task_type", "max_length", "dataset_name", "packing",
    "use_bnb_nested_quant", "dataset_text_field", "dataset_train_split", "lora_modules_to_save", "dtype",
    "torch_dtype", "completion_only_loss", "assistant_only_loss", "padding_free", "dataset_config",
    "datasets", "dataset_mixture",
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

# SFTConfig / TrainingArguments fields passed through with the same name and meaning
_TRAINING = ("per_device_train_batch_size", "gradient_accumulation_steps", "num_train_epochs", "max_steps",
             "lr_scheduler_type", "warmup_steps", "weight_decay", "max_grad_norm", "fp16", "tf32", "optim", "seed",
             "gradient_checkpointing_kwargs", "adam_beta1", "adam_beta2", "adam_epsilon", "lr_scheduler_kwargs")
_LORA = {"lora_r": "r", "lora_alpha": "lora_alpha", "lora_dropout": "lora_dropout",
         "lora_modules_to_save": "modules_to_save", "use_rslora": "use_rslora", "use_dora": "use_dora"}
# ModelConfig's LoRA defaults (they differ from peft.LoraConfig's r=8, alpha=8, dropout=0)
_LORA_DEFAULTS = {"lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.05}


def translate(b: Builder, out: NativeRecipe) -> None:
    b.ignore((*IGNORED, *DATASET_MIXTURE))
    out.set(("model", "id"), b.take("model_name_or_path"), "model_name_or_path")
    out.copy_section(b, "model", {"model_revision": "revision", "trust_remote_code": "trust_remote_code",
                                  "attn_implementation": "attn_implementation"})
    dtype_key = "dtype" if b.has("dtype") else "torch_dtype"
    dtype = b.take("dtype") or b.take("torch_dtype")
    if dtype is not None:
        out.set(("model", "torch_dtype"), dtype, dtype_key)
    _quantization(b, out, dtype, dtype_key)
    if b.take("use_peft"):
        _lora(b, out)
    else:
        b.ignore((*_LORA, "lora_target_modules"))
    _training(b, out)
    for key, why in NOT_CHECKED.items():
        b.not_checked(key, why)


def _quantization(b: Builder, out: NativeRecipe, dtype, dtype_key: str) -> None:
    four, eight = b.take("load_in_4bit"), b.take("load_in_8bit")
    b.ignore(("bnb_4bit_quant_type", "use_bnb_nested_quant"))
    if eight:
        out.set(("quantization", "load_in_8bit"), True, "load_in_8bit")
    if four:  # get_quantization_config: compute and storage dtype are the model's dtype
        out.set(("quantization", "load_in_4bit"), True, "load_in_4bit")
        out.set(("quantization", "bnb_4bit_quant_type"), b.get("bnb_4bit_quant_type", "nf4"),
                "bnb_4bit_quant_type" if b.has("bnb_4bit_quant_type") else "load_in_4bit")
        out.set(("quantization", "bnb_4bit_use_double_quant"), b.get("use_bnb_nested_quant", False),
                "use_bnb_nested_quant" if b.has("use_bnb_nested_quant") else "load_in_4bit")
        if dtype not in (None, "auto"):
            out.set(("quantization", "bnb_4bit_compute_dtype"), dtype, dtype_key)
            out.set(("quantization", "bnb_4bit_quant_storage"), dtype, dtype_key)


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


def _training(b: Builder, out: NativeRecipe) -> None:
    out.section_origin("training", "per_device_train_batch_size", "learning_rate", "max_length", "bf16", b=b)
    out.copy_section(b, "training", _TRAINING)
    out.warmup_ratio(b)
    # SFTConfig's own defaults: learning_rate 2e-5, gradient checkpointing on, bf16 unless fp16 is set
    out.copy(b, ("training", "learning_rate"), "learning_rate", 2.0e-5)
    out.copy(b, ("training", "gradient_checkpointing"), "gradient_checkpointing", True)
    bf16 = b.take("bf16")
    out.set(("training", "bf16"), (not b.get("fp16", False)) if bf16 is None else bf16, "bf16" if bf16 is not None else None)
    length_key = "max_length" if b.has("max_length") else "max_seq_length"
    length = b.take("max_length") or b.take("max_seq_length")
    out.set(("training", "max_seq_length"), length or 1024, length_key if length else None)
