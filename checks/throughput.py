"""The best tokens/s a recipe can reach on a GPU: its FLOPs per token against the dense tensor peak.

FLOPs per token follow the usual accounting (Kaplan et al. 2020; Chinchilla's 6N): a forward pass
costs 2 FLOPs per matmul parameter plus attention's score and value products; the backward pass
costs two forwards when weights train (input and weight gradients) and one when they are frozen
(LoRA/QLoRA: input gradients only; the adapters' own cost is under 1%); gradient checkpointing
recomputes one forward. No real run reaches the peak, so this is a ceiling, not a prediction.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Throughput:
    flops_per_token: float
    matmul_params: int
    tokens_per_second: float | None  # None: the profile has no dense figure for this precision
    peak_tflops: float | None

    def hours_per_epoch(self, dataset_tokens: int) -> float | None:
        if not self.tokens_per_second:
            return None
        return dataset_tokens / self.tokens_per_second / 3600


def matmul_params(model) -> int:
    """Parameters that take part in a matmul per token: Linear/Conv1D weights, and for fused MoE
    experts the share of experts a token is routed to."""
    import torch
    from transformers.pytorch_utils import Conv1D

    config = getattr(model, "config", None)
    experts = getattr(config, "num_local_experts", None) or getattr(config, "num_experts", None)
    active = getattr(config, "num_experts_per_tok", None)
    total = 0
    for module in model.modules():
        if isinstance(module, (torch.nn.Linear, Conv1D)):
            total += module.weight.numel()
        else:
            for param in module.parameters(recurse=False):
                if param.dim() == 3 and experts and active:
                    total += param.numel() * active // experts
    return total


def attention_flops_per_token(config, seq_len: int) -> float:
    text = getattr(config, "text_config", None) or config
    layers = text.num_hidden_layers
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    # QK^T and AV: 2 matmuls x 2 FLOPs x seq x heads x head_dim, halved on average by the causal mask
    return 2.0 * layers * seq_len * heads * head_dim


def recipe_ceiling(recipe, model, gpu) -> Throughput:
    """The ceiling for a recipe's own settings: its sequence length, method, checkpointing, precision."""
    from recipe_checks.recipe.schema import Method

    if getattr(recipe, "diffusion", None) is not None:  # a diffusion transformer: no tokens/s ceiling is modelled
        return Throughput(0.0, matmul_params(model), None, None)
    if getattr(recipe, "dpo", None) is not None:  # a DPO step: its sequence length, and the reference's forward
        from recipe_checks.memory.preference import dpo_ceiling

        return dpo_ceiling(recipe, model, gpu)
    return ceiling(model, recipe.training.max_seq_length, trains_weights=recipe.method is Method.FULL,
                   checkpointing=recipe.training.gradient_checkpointing, gpu=gpu, precision=recipe.training_dtype)


def ceiling(model, seq_len: int, *, trains_weights: bool, checkpointing: bool, gpu, precision: str) -> Throughput:
    n = matmul_params(model)
    forward = 2.0 * n + attention_flops_per_token(model.config, seq_len)
    backward = 2 * forward if trains_weights else forward + attention_flops_per_token(model.config, seq_len)
    flops = forward + backward + (forward if checkpointing else 0)
    peak = {"bfloat16": gpu.dense_bf16_tflops, "float16": gpu.dense_fp16_tflops}.get(precision)
    return Throughput(flops, n, peak * 1e12 / flops if peak else None, peak)
