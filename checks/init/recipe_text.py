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
    batch: int  # effective batch in sequences per optimizer step, over all the GPUs
    attn_implementation: str = "sdpa"  # eager where transformers has no sdpa for the architecture
    lora_r: int = 16
    lora_alpha: int = 32
    gpus: int = 1  # the GPUs the run takes (the world size); each takes batch / gpus of the sequences
    parameters: int = 0  # the model's parameter count (the meta model's): what a rank of DDP holds all of


# The strategies init proposes on several GPUs, in order of throughput (docs/init.md): DDP keeps the whole
# model on each rank and communicates the gradients only; FSDP2 all-gathers every block's parameters in its
# forward and backward; ZeRO-3 with the optimizer offloaded also moves the states over PCIe and steps on the CPU.
STRATEGY_LABELS = {"ddp": "DDP", "fsdp": "FSDP2", "zero3": "ZeRO-3 and the optimizer offloaded to the CPU"}
_SHORT_LABELS = {"ddp": "DDP", "fsdp": "FSDP2", "zero3": "ZeRO-3 + CPU offload"}
SHARDED = ("fsdp", "zero3")  # each rank holds one shard of the parameters


@dataclass(frozen=True)
class Plan:
    """The memory savers, micro-batch and sharding of one candidate."""

    quantized: bool  # QLoRA: 4-bit NF4 base (for --method lora a saver, for qlora the method)
    checkpointing: bool
    paged_optimizer: bool
    chunked_loss: bool
    micro_batch: int  # per rank
    strategy: str | None = None  # ddp, fsdp or zero3 over spec.gpus; None: one GPU

    def method(self, spec: Spec) -> str:
        return "qlora" if self.quantized else ("full" if spec.method == "full" else "lora")

    def ranks(self, spec: Spec) -> int:
        """The GPUs the candidate runs on, each with its micro-batch."""
        return spec.gpus if self.strategy is not None else 1

    def describe(self, spec: Spec) -> str:
        parts = [{"qlora": "QLoRA", "lora": "LoRA", "full": "full"}[self.method(spec)]]
        if self.strategy is not None:
            parts.append(f"{_SHORT_LABELS[self.strategy]} over {spec.gpus}")
        parts += [f"micro-batch {self.micro_batch} x {accumulation_for(spec, self)} accumulated",
                 "checkpointing" if self.checkpointing else "no checkpointing",
                 "paged 8-bit AdamW" if self.paged_optimizer else "AdamW"]
        if self.chunked_loss:
            parts.append("chunked loss")
        return ", ".join(parts)


def accumulation_for(spec: Spec, plan: Plan) -> int:
    return max(1, spec.batch // (plan.micro_batch * plan.ranks(spec)))


def weights_dtype(spec: Spec, method: str) -> str:
    """The dtype the recipe loads the weights in (`model.torch_dtype`)."""
    # bf16 GPUs keep the weights in bf16; fp16 AMP needs fp32 trained parameters (the GradScaler
    # refuses to unscale fp16 gradients), which peft's fp32 adapters are and a full fine-tune's are not
    if spec.precision == "bfloat16":
        return "bfloat16"
    return "float32" if method == "full" or spec.precision == "float32" else "float16"


def weights_bytes(spec: Spec, method: str) -> int:
    """The unquantized weights of the whole model in `weights_dtype`: what one DDP rank holds at least."""
    return spec.parameters * (4 if weights_dtype(spec, method) == "float32" else 2)


def _line(text: str, comment: str = "") -> str:
    if not comment:
        return text
    return f"{text:<{_COMMENT_COLUMN - 1}} # {comment}" if len(text) < _COMMENT_COLUMN - 1 else f"{text}  # {comment}"


def recipe_text(spec: Spec, plan: Plan, header: list[str] | tuple[str, ...] = ()) -> str:
    """The recipe of one candidate; `header`: comment lines (without '# ') put after the title."""
    method = plan.method(spec)
    label = {"lora": "LoRA", "qlora": "QLoRA", "full": "full fine-tune"}[method]
    dtype = spec.precision
    weights = weights_dtype(spec, method)
    where = (f"on one {spec.gpu_name} ({spec.gpu})" if plan.strategy is None
             else f"on {spec.gpus} x {spec.gpu_name} ({spec.gpu}) with {STRATEGY_LABELS[plan.strategy]}")
    lines = [
        f"# {spec.model}, {label}, {where}; sequence length {spec.seq_len}.",
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
    accumulation, ranks = accumulation_for(spec, plan), plan.ranks(spec)
    precision_line = {"bfloat16": "  bf16: true", "float16": "  fp16: true"}.get(dtype)
    lines += [
        _line("training:", "transformers.TrainingArguments, plus max_seq_length"),
        _line(f"  per_device_train_batch_size: {plan.micro_batch}",
              "the micro-batch: the largest that fits" + (" (of each GPU)" if ranks > 1 else "")),
        _line(f"  gradient_accumulation_steps: {accumulation}",
              f"effective batch {plan.micro_batch * accumulation} sequences per optimizer step" if ranks == 1 else
              f"effective batch {plan.micro_batch} x {accumulation} x {ranks} GPUs = "
              f"{plan.micro_batch * accumulation * ranks} sequences per optimizer step"),
        _line(f"  learning_rate: {'2.0e-5' if method == 'full' else '2.0e-4'}",
              ("full fine-tunes want ~10x less than LoRA" if method == "full" else "the usual (Q)LoRA rate")
              + "; with a dot: PyYAML reads 2e-4 as a string"),
        "  lr_scheduler_type: cosine",
        _line("  warmup_steps: 0.03", "below 1: a fraction of the run"),
        _line(precision_line, spec.precision_why) if precision_line else f"  # fp32 training: {spec.precision_why}",
        _line(f"  optim: {'paged_adamw_8bit' if plan.paged_optimizer else 'adamw_torch'}",
              "8-bit states in pages that can spill to host memory (RC301)" if plan.paged_optimizer
              else "DeepSpeed swaps in its CPU Adam for the offloaded states" if plan.strategy == "zero3"
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
    lines.append(f"  max_seq_length: {spec.seq_len}")
    if plan.strategy is not None:
        lines += distributed_lines(spec, plan)
    lines += [
        "hardware:",
        _line(f"  gpu: {spec.gpu}", f"each of the {spec.gpus} GPUs" if plan.strategy is not None else ""),
    ]
    return "\n".join(lines) + "\n"


def distributed_lines(spec: Spec, plan: Plan) -> list[str]:
    """The `distributed` section of a candidate on several GPUs (docs/distributed-configs.md)."""
    lines = [
        _line("distributed:", "how the GPUs share the step (docs/distributed-configs.md)"),
        _line(f"  strategy: {plan.strategy}", {
            "ddp": "DistributedDataParallel: each rank the whole model, the gradients all-reduced",
            "fsdp": "FSDP2: torch.distributed.fsdp.fully_shard on each block and on the root",
            "zero3": "DeepSpeed ZeRO-3: parameters, gradients and optimizer states sharded",
        }[plan.strategy]),
        _line(f"  world_size: {spec.gpus}", "GPUs in all, one rank each"),
    ]
    if plan.strategy == "fsdp":
        lines += [
            "  fsdp:",
            _line("    reshard_after_forward: true", "each block's parameters freed again after its forward, "
                                                      "all-gathered again for its backward"),
        ]
    if plan.strategy == "zero3":
        lines += [
            "  zero:",
            _line("    offload_optimizer: cpu", "fp32 master weights, gradients and Adam states in host memory"),
        ]
    return lines
