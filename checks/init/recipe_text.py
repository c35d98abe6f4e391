"""One candidate of `recipe-checks init` as the recipe file it writes: YAML with a comment on each
setting that says what it is and why it has this value.

The text is what gets traced: the search loads and validates it as any recipe file is loaded, so the
recipe written is the one whose peak the header reports (the header aside).
"""

from __future__ import annotations

from dataclasses import dataclass

_COMMENT_COLUMN = 38


@dataclass(frozen=True)
class Spec:
    """What a request fixes for every candidate: the model, GPU, method, precision, sizes."""

    model: str  # hub id as the recipe writes it
    model_type: str
    gpu: str  # catalog key
    gpu_name: str
    method: str  # lora, qlora or full (as asked)
    precision: str  # bfloat16, float16 or float32: autocast, and the 4-bit compute dtype
    precision_why: str
    targets: tuple[str, ...]  # leaf names of every linear projection, as peft's all-linear resolves them
    fan_in_fan_out: bool  # the targets are transformers' Conv1D (GPT-2): stored transposed
    seq_len: int
    batch: int  # effective batch in sequences per optimizer step
    attn_implementation: str = "sdpa"  # eager where transformers has no sdpa for the architecture
    lora_r: int = 16
    lora_alpha: int = 32


@dataclass(frozen=True)
class Plan:
    """The memory savers and micro-batch of one candidate."""

    quantized: bool  # QLoRA: 4-bit NF4 base (for --method lora a saver, for qlora the method)
    checkpointing: bool
    paged_optimizer: bool
    chunked_loss: bool
    micro_batch: int

    def method(self, spec: Spec) -> str:
        return "qlora" if self.quantized else ("full" if spec.method == "full" else "lora")

    def describe(self, spec: Spec) -> str:
        parts = [{"qlora": "QLoRA", "lora": "LoRA", "full": "full"}[self.method(spec)],
                 f"micro-batch {self.micro_batch} x {accumulation_for(spec, self)} accumulated",
                 "checkpointing" if self.checkpointing else "no checkpointing",
                 "paged 8-bit AdamW" if self.paged_optimizer else "AdamW"]
        if self.chunked_loss:
            parts.append("chunked loss")
        return ", ".join(parts)


def accumulation_for(spec: Spec, plan: Plan) -> int:
    return max(1, spec.batch // plan.micro_batch)


def _line(text: str, comment: str = "") -> str:
    if not comment:
        return text
    return f"{text:<{_COMMENT_COLUMN - 1}} # {comment}" if len(text) < _COMMENT_COLUMN - 1 else f"{text}  # {comment}"


def recipe_text(spec: Spec, plan: Plan, header: list[str] | tuple[str, ...] = ()) -> str:
    """The recipe of one candidate; `header`: comment lines (without '# ') put after the title."""
    method = plan.method(spec)
    label = {"lora": "LoRA", "qlora": "QLoRA", "full": "full fine-tune"}[method]
    dtype = spec.precision
    # bf16 GPUs keep the weights in bf16; fp16 AMP needs fp32 trained parameters (the GradScaler
    # refuses to unscale fp16 gradients), which peft's fp32 adapters are and a full fine-tune's are not
    weights = "bfloat16" if dtype == "bfloat16" else ("float32" if method == "full" or dtype == "float32" else "float16")
    lines = [
        f"# {spec.model}, {label}, on one {spec.gpu_name} ({spec.gpu}); sequence length {spec.seq_len}.",
        "# Written by `recipe-checks init`: the first candidate, in order of throughput, whose traced",
        "# training step fits the GPU's memory budget.",
        *(f"# {line}" if line else "#" for line in header),
        f"# Check it:  pytest --gpu={spec.gpu} <this file>   (or: recipe-checks check <this file>)",
        "model:",
        f"  id: {spec.model}",
        _line(f"  torch_dtype: {weights}", {
            "full": "every weight trains, in this dtype" if weights == "bfloat16"
            else "fp32 master weights: fp16 autocast unscales fp32 gradients only",
            "qlora": "the layers left unquantized (norms, embeddings, head)",
            "lora": "the frozen base weights",
        }[method]),
        _line(f"  attn_implementation: {spec.attn_implementation}",
              "PyTorch's fused attention: no seq x seq matrix kept" if spec.attn_implementation == "sdpa"
              else "transformers has no sdpa for this architecture: the seq x seq scores are kept"),
    ]
    if plan.quantized:
        lines += [
            _line("quantization:", "transformers.BitsAndBytesConfig"),
            _line("  load_in_4bit: true", "the frozen base in 4 bits: a quarter of bf16's weight memory"),
            _line("  bnb_4bit_quant_type: nf4", "QLoRA's NormalFloat4 (bitsandbytes' default, fp4, is worse)"),
            _line(f"  bnb_4bit_compute_dtype: {dtype}", "the matmul dtype: the training precision (RC405)"),
            _line("  bnb_4bit_use_double_quant: true", "quantizes the absmax constants too: ~0.4 bits/param saved"),
        ]
    if method != "full":
        lines += [
            _line("lora:", "peft.LoraConfig"),
            _line(f"  r: {spec.lora_r}", "adapter rank"),
            _line(f"  lora_alpha: {spec.lora_alpha}", f"the update is scaled by alpha/r = {spec.lora_alpha / spec.lora_r:g}"),
            "  lora_dropout: 0.05",
            "  # every linear projection of the model, as peft's target_modules='all-linear' resolves them",
            f"  target_modules: [{', '.join(spec.targets)}]",
        ]
        if spec.fan_in_fan_out:
            lines.append(_line("  fan_in_fan_out: true", "the targets are Conv1D layers: weights stored transposed"))
        lines.append("  task_type: CAUSAL_LM")
    accumulation = accumulation_for(spec, plan)
    precision_line = {"bfloat16": "  bf16: true", "float16": "  fp16: true"}.get(dtype)
    lines += [
        _line("training:", "transformers.TrainingArguments, plus max_seq_length"),
        _line(f"  per_device_train_batch_size: {plan.micro_batch}", "the micro-batch: the largest that fits"),
        _line(f"  gradient_accumulation_steps: {accumulation}",
              f"effective batch {plan.micro_batch * accumulation} sequences per optimizer step"),
        _line(f"  learning_rate: {'2.0e-5' if method == 'full' else '2.0e-4'}",
              ("full fine-tunes want ~10x less than LoRA" if method == "full" else "the usual (Q)LoRA rate")
              + "; with a dot: PyYAML reads 2e-4 as a string"),
        "  lr_scheduler_type: cosine",
        _line("  warmup_steps: 0.03", "below 1: a fraction of the run"),
        _line(precision_line, spec.precision_why) if precision_line else f"  # fp32 training: {spec.precision_why}",
        _line(f"  optim: {'paged_adamw_8bit' if plan.paged_optimizer else 'adamw_torch'}",
              "8-bit states in pages that can spill to host memory (RC301)" if plan.paged_optimizer
              else "torch's AdamW: fp32 states, 8 bytes per trained parameter"),
        _line(f"  gradient_checkpointing: {'true' if plan.checkpointing else 'false'}",
              "recompute each block's forward in the backward: less activation memory" if plan.checkpointing
              else "off: the activations fit, and no forward is recomputed"),
    ]
    if plan.chunked_loss:
        lines.append(_line("  use_liger_kernel: true", "Liger's fused linear cross-entropy, no full logits "
                                                        "(needs the liger-kernel package)"))
    if method == "qlora":
        lines.append(_line("  max_grad_norm: 0.3", "the QLoRA paper's clipping"))
    lines += [
        f"  max_seq_length: {spec.seq_len}",
        "hardware:",
        f"  gpu: {spec.gpu}",
    ]
    return "\n".join(lines) + "\n"
