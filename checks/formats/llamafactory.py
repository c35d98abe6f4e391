"""LLaMA-Factory YAML configs (llamafactory-cli train FILE) into the recipe model.

Meanings and defaults follow src/llamafactory/hparams: finetuning_args.py (FinetuningArguments,
LoraArguments), model_args.py (ModelArguments, QuantizationArguments), data_args.py (DataArguments);
every other key is a transformers.TrainingArguments field (Seq2SeqTrainingArguments).
"""

from __future__ import annotations

from recipe_checks.formats import Builder, NativeRecipe, gpus_not_stated
from recipe_checks.recipe import LAUNCHER
from recipe_checks.recipe.load import OMEGACONF

SOURCE = ("LLaMA-Factory main (src/llamafactory/hparams: finetuning_args.py, model_args.py, data_args.py); `deepspeed` "
          "is TrainingArguments.deepspeed, a DeepSpeed JSON the HF integration reads")
# hparams/parser.py read_args loads the YAML with OmegaConf.load: `learning_rate: 2e-5` is a float (YAML 1.2), where
# PyYAML reads a string; parse_dict then passes the values to the dataclasses unconverted.
YAML_READING = OMEGACONF
REQUIRED = frozenset({"model_name_or_path"})
SIGNATURE = frozenset({
    "finetuning_type", "lora_rank", "lora_target", "quantization_bit", "cutoff_len", "stage", "template",
    "dataset_dir", "additional_target", "pref_beta", "pref_loss", "double_quantization", "quantization_type",
    "flash_attn", "disable_gradient_checkpointing", "plot_loss", "overwrite_cache", "val_size",
})

IGNORED = (
    "do_train", "do_eval", "do_predict", "dataset", "eval_dataset", "dataset_dir", "template", "overwrite_cache",
    "preprocessing_num_workers", "dataloader_num_workers", "output_dir", "logging_steps", "save_steps",
    "plot_loss", "overwrite_output_dir", "save_only_model", "report_to", "val_size", "per_device_eval_batch_size",
    "eval_strategy", "eval_steps", "ddp_timeout", "resume_from_checkpoint", "max_samples", "run_name",
    "predict_with_generate", "include_num_input_tokens_seen", "enable_thinking", "mask_history",
    "train_on_prompt", "adapter_name_or_path", "use_fast_tokenizer", "save_strategy", "save_total_limit",
    "logging_dir", "trust_remote_code", "export_dir", "export_size", "export_device", "export_legacy_format",
    "tokenized_path", "streaming", "buffer_size", "mix_strategy", "interleave_probs", "create_new_adapter",
    "pref_ftx", "pref_loss", "pref_beta", "simpo_gamma", "dpo_label_smoothing", "kto_chosen_weight",
    "kto_undesirable_weight", "media_dir", "image_max_pixels", "video_max_pixels", "video_fps",
    "image_min_pixels", "hub_model_id", "push_to_hub", "low_cpu_mem_usage", "print_param_status",
    "quantization_device_map",
)

NOT_CHECKED = {
    "packing": "packing several examples into each cutoff_len row is not modelled: one full row is traced",
    "neat_packing": "packing several examples into each cutoff_len row is not modelled: one full row is traced",
    "fsdp": "FSDP shards the model across GPUs: one unsharded GPU is estimated",
    "use_galore": "GaLore projects the gradients: the optimizer state is not that of the recipe's optimizer",
    "use_apollo": "APOLLO's optimizer state is not modelled",
    "use_badam": "BAdam trains one block at a time: checked as a full fine-tune",
    "pissa_init": "PiSSA initialises the adapters from the weights' SVD (not at identity)",
    "loraplus_lr_ratio": "LoRA+ trains B with a larger learning rate than the recipe's",
    "enable_liger_kernel": "Liger kernels are not applied to the traced model",
    "use_unsloth": "Unsloth patches the model: the unpatched model is checked",
    "use_unsloth_gc": "Unsloth's offloaded checkpointing is traced as plain gradient checkpointing",
    "rope_scaling": "RoPE scaling is not applied to the model config",
    "moe_aux_loss_coef": "the router's auxiliary loss is not modelled",
    "freeze_trainable_layers": "freeze tuning trains only some layers: checked as a full fine-tune",
    "freeze_trainable_modules": "freeze tuning trains only some modules: checked as a full fine-tune",
    "upcast_layernorm": "layer norms upcast to float32 are not modelled",
    "upcast_lmhead_output": "the float32 lm_head output is not modelled",
}

# keys that are transformers.TrainingArguments fields with the same name and meaning
_TRAINING = ("per_device_train_batch_size", "gradient_accumulation_steps", "learning_rate", "num_train_epochs",
             "max_steps", "lr_scheduler_type", "warmup_steps", "weight_decay", "max_grad_norm", "bf16", "fp16",
             "tf32", "optim", "seed", "gradient_checkpointing_kwargs", "adam_beta1", "adam_beta2", "adam_epsilon")
_ATTENTION = {"fa2": "flash_attention_2", "sdpa": "sdpa", "disabled": "eager"}


def translate(b: Builder, out: NativeRecipe) -> None:
    b.ignore(IGNORED)
    out.set(("model", "id"), b.take("model_name_or_path"), "model_name_or_path")
    for key in ("model_revision", "trust_remote_code"):
        if b.take(key) is not None:
            out.set(("model", "revision" if key == "model_revision" else key), b.data[key], key)
    attention = b.take("flash_attn")
    if isinstance(attention, str) and attention in _ATTENTION:
        out.set(("model", "attn_implementation"), _ATTENTION[attention], "flash_attn")
    _stage(b)
    method = b.take("finetuning_type") or "lora"
    if method == "oft":  # orthogonal adapters (peft's OFTConfig): adapters, not a full fine-tune, and not modelled
        b.translation.other_adapter = "OFT"
        b.translation.untraced = ("trains OFT adapters (finetuning_type: oft, peft's OFTConfig), which the recipe "
                                  "model does not have")
        b.translation.not_checked.append((("finetuning_type",), "OFT adapters are not modelled: the model, "
                                          "quantization and precision are checked, the step is not"))
    elif method not in ("lora", "full"):
        b.translation.not_checked.append((("finetuning_type",), f"'{method}' tuning is not modelled (LLaMA-Factory "
                                          "has lora, full, freeze and oft): checked as a full fine-tune"))
    _quantization(b, out)
    if method == "lora":
        _lora(b, out)
    _training(b, out)
    _deepspeed(b, out)
    for key, why in NOT_CHECKED.items():
        b.not_checked(key, why)


# The stages whose step is not one supervised step, and what their trainer runs (src/llamafactory/train/<stage>/
# trainer.py). DPO is LLaMA-Factory's own CustomDPOTrainer (dpo/trainer.py, after TRL 0.8's): the chosen and rejected
# rows' full logits cast to float32 (concatenated_forward), not TRL 1.16's fused head that the recipe's `dpo`
# section traces, so it is not read as one; ORPO and SimPO (pref_loss) run it without the reference pass.
STAGES_NOT_MODELLED = {
    "dpo": "LLaMA-Factory's CustomDPOTrainer runs the chosen and rejected rows with their full float32 logits and a "
           "reference pass (none for pref_loss orpo or simpo)",
    "kto": "LLaMA-Factory's CustomKTOTrainer runs each completion and a mismatched KL completion through the policy "
           "and a reference model",
    "rm": "LLaMA-Factory's PairwiseTrainer trains a value head on chosen and rejected completions",
    "ppo": "LLaMA-Factory's CustomPPOTrainer generates completions, scores them with a reward model and trains the "
           "policy and a value head against a reference",
}


def _stage(b: Builder) -> None:
    """`stage` (FinetuningArguments, default sft): pt and sft train one supervised (causal-LM) step, as traced; any
    other stage gets one RC111 naming its trainer, and its step is not traced (Translation.untraced)."""
    stage = b.take("stage")
    if stage is None or stage in ("sft", "pt"):
        return
    label = str(stage).upper() if stage in ("dpo", "kto", "ppo") else "reward-model" if stage == "rm" else f"'{stage}'"
    what = STAGES_NOT_MODELLED.get(stage, "LLaMA-Factory has the stages pt, sft, rm, ppo, dpo and kto") \
        if isinstance(stage, str) else "LLaMA-Factory has the stages pt, sft, rm, ppo, dpo and kto"
    b.translation.trainer = str(stage)
    b.translation.untraced = f"is a LLaMA-Factory {label} config (stage: {stage}): {what}; that step is not modelled"
    why = (f"a LLaMA-Factory {label} stage: {what}; that step is not modelled, so the vram, throughput and "
           "training-step checks do not run rather than judge a supervised step in its place")
    b.translation.not_checked.append((("stage",), why))


def _compute_dtype(b: Builder) -> str:
    """model_args.compute_dtype: bf16 or fp16 as training uses, else float32 (hparams/parser.py)."""
    if b.get("bf16"):
        return "bfloat16"
    return "float16" if b.get("fp16") else "float32"


def _quantization(b: Builder, out: NativeRecipe) -> None:
    bits = b.take("quantization_bit")
    method = b.take("quantization_method") or "bnb"
    b.ignore(("quantization_type", "double_quantization"))
    if bits is None:
        return
    if method not in ("bnb", "bitsandbytes"):
        b.translation.not_checked.append((("quantization_method",), f"'{method}' quantization is not modelled "
                                          "(bitsandbytes only)"))
        return
    if bits == 8:
        out.set(("quantization", "load_in_8bit"), True, "quantization_bit")
    elif bits == 4:
        out.set(("quantization", "load_in_4bit"), True, "quantization_bit")
        out.set(("quantization", "bnb_4bit_quant_type"), b.get("quantization_type", "nf4"),
                "quantization_type" if b.has("quantization_type") else "quantization_bit")
        out.set(("quantization", "bnb_4bit_use_double_quant"), b.get("double_quantization", True),
                "double_quantization" if b.has("double_quantization") else "quantization_bit")
        out.set(("quantization", "bnb_4bit_compute_dtype"), _compute_dtype(b),
                "bf16" if b.has("bf16") else "fp16" if b.has("fp16") else "quantization_bit")
    else:
        b.translation.not_checked.append((("quantization_bit",), f"{bits}-bit quantization is not bitsandbytes' "
                                          "4 or 8 bits: not modelled"))


def _lora(b: Builder, out: NativeRecipe) -> None:
    out.section_origin("lora", "finetuning_type", "lora_rank", "lora_target", b=b)
    rank = b.get("lora_rank", 8)
    b.take("lora_rank")
    out.set(("lora", "r"), rank, "lora_rank" if b.has("lora_rank") else None)
    if b.take("lora_alpha") is not None:
        out.set(("lora", "lora_alpha"), b.data["lora_alpha"], "lora_alpha")
    elif isinstance(rank, int):  # FinetuningArguments.__post_init__: lora_alpha or lora_rank * 2
        out.set(("lora", "lora_alpha"), rank * 2, "lora_rank" if b.has("lora_rank") else None)
        b.resolved("lora_rank", f"lora_alpha {rank * 2} (lora_rank * 2, LLaMA-Factory's default)")
    out.copy(b, ("lora", "lora_dropout"), "lora_dropout", 0.0)
    target = b.get("lora_target", "all")
    b.take("lora_target")
    origin = "lora_target" if b.has("lora_target") else None
    if target == "all":  # every linear layer but the output head (find_all_linear_modules)
        out.set(("lora", "target_modules"), "all-linear", origin)
    else:
        names = [t.strip() for t in target.split(",")] if isinstance(target, str) else target
        out.set(("lora", "target_modules"), names, origin)
    if b.take("additional_target") is not None:
        extra = b.data["additional_target"]
        out.set(("lora", "modules_to_save"), [t.strip() for t in extra.split(",")] if isinstance(extra, str) else extra,
                "additional_target")
    out.copy_section(b, "lora", ("use_dora", "use_rslora"))
    out.set(("lora", "task_type"), "CAUSAL_LM")


def _training(b: Builder, out: NativeRecipe) -> None:
    out.section_origin("training", "per_device_train_batch_size", "learning_rate", "cutoff_len", "bf16", b=b)
    out.copy_section(b, "training", _TRAINING)
    out.warmup_ratio(b)
    out.copy(b, ("training", "max_seq_length"), "cutoff_len", 2048)
    # LLaMA-Factory turns gradient checkpointing on unless told not to (model/model_utils/checkpointing.py)
    disabled = b.take("disable_gradient_checkpointing")
    out.set(("training", "gradient_checkpointing"), not disabled,
            "disable_gradient_checkpointing" if disabled is not None else None)
    # ...reentrant unless use_reentrant_gc: false (hparams/model_args.py:149, model_utils/checkpointing.py:46 at
    # ff6d4d1; FSDP2 turns it off, and LLaMA-Factory's fsdp is not translated): 8-bit layers' inputs (see axolotl.py)
    reentrant = b.take("use_reentrant_gc")
    if not disabled and "gradient_checkpointing_kwargs" not in out.data.get("training", {}):
        out.set(("training", "gradient_checkpointing_kwargs"), {"use_reentrant": reentrant is not False},
                "use_reentrant_gc" if reentrant is not None else None)


def _deepspeed(b: Builder, out: NativeRecipe) -> None:
    """TrainingArguments.deepspeed: a DeepSpeed JSON (read into the distributed section). The number of GPUs is
    the launcher's (FORCE_TORCHRUN / NPROC_PER_NODE), never a key of the file."""
    path = b.take("deepspeed")
    if isinstance(path, str):
        out.set(("distributed", "deepspeed"), path, "deepspeed")
        out.set(("distributed", "world_size"), LAUNCHER, "deepspeed")  # FORCE_TORCHRUN / NPROC_PER_NODE say it
        how = ("give numbers for train_batch_size and train_micro_batch_size_per_gpu in the DeepSpeed config, or check "
               "the native recipe (`recipe-checks convert`) with distributed.world_size: N")
        b.translation.not_checked.append((("deepspeed",), gpus_not_stated(how)))
