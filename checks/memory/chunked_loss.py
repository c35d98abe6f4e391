"""The chunked loss users switch on with `use_liger_kernel: true`: Liger's fused linear cross-entropy,
emulated allocation for allocation on fake tensors.

Liger's kernels need Triton on a GPU, so its algorithm (liger_kernel/ops/fused_linear_cross_entropy.py
at commit 00eba634; see checks/data/liger_kernel.yaml) is replayed with the same torch ops and dtypes:
the tokens are split into chunks whose logits are about the size of the hidden states, each chunk's
logits are computed, turned into their gradient in place by the Triton kernel (an in-place op here:
it allocates nothing), and projected back into a full-size input gradient, all in the forward. The
full logits and their fp32 upcast never exist; the backward returns the stored gradients.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
import yaml

DATA = Path(__file__).resolve().parent.parent / "data" / "liger_kernel.yaml"
IGNORE_INDEX = -100


@functools.cache
def liger_data() -> dict:
    return yaml.safe_load(DATA.read_text(encoding="utf-8"))


def supports_chunked_loss(model_type: str | None) -> bool:
    return model_type in liger_data()["fused_linear_cross_entropy_model_types"]


def _next_power_of_2(n: int) -> int:
    return 1 << (n - 1).bit_length() if n > 1 else 1


def chunk_size_for(tokens: int, hidden: int, vocab: int) -> int:
    """Liger's chunk: the token count whose logits match the hidden states (chunk_mem_const 1)."""
    inc_factor = -(-vocab // hidden)
    return min(_next_power_of_2(-(-tokens // inc_factor)), tokens)


def _mm_out_path(inputs: torch.Tensor, weight: torch.Tensor) -> bool:
    """Liger's _can_use_mm_out as it decides on CUDA: one reusable logits buffer and out= matmuls
    when both operands already have the dtype the matmul would run in."""
    if inputs.dtype != weight.dtype or inputs.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return False
    if torch.is_autocast_enabled("cpu"):  # the trace's autocast stands for CUDA's
        return inputs.dtype == torch.get_autocast_dtype("cpu")
    return True


def _accumulate_weight_grad(grad_weight, logits, inputs_chunk) -> None:
    """Liger on Ampere and newer: addmm straight into the accumulator (with an fp32 output dtype when
    the accumulator is fp32 and the logits are not); its legacy path, where that is unavailable,
    adds a weight-sized fp32 product."""
    chunk_input = inputs_chunk if inputs_chunk.dtype == logits.dtype else inputs_chunk.to(logits.dtype)
    if grad_weight.dtype == logits.dtype:
        torch.addmm(grad_weight, logits.t(), chunk_input, out=grad_weight)
        return
    try:
        torch.addmm(grad_weight, logits.t(), chunk_input, out_dtype=torch.float32, out=grad_weight)
    except (RuntimeError, TypeError):
        grad_weight += torch.mm(logits.t(), inputs_chunk).float()


class FusedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, inputs, weight, target, bias=None):
        tokens, hidden = inputs.shape
        vocab = weight.shape[0]
        chunk = chunk_size_for(tokens, hidden, vocab)
        grad_input = torch.zeros_like(inputs)
        grad_weight = torch.zeros_like(weight) if weight.requires_grad else None
        grad_bias = torch.zeros_like(bias) if bias is not None and bias.requires_grad else None
        loss_1d = torch.zeros(tokens, dtype=torch.float32)
        target_mask = target != IGNORE_INDEX
        target_mask.sum()  # Liger reads the count with .item(): the trace keeps the reduction
        del target_mask
        mm_out = _mm_out_path(inputs, weight)
        storage = torch.empty((chunk, vocab), dtype=inputs.dtype) if mm_out and bias is None else None
        for start in range(0, tokens, chunk):
            end = min(start + chunk, tokens)
            inputs_chunk = inputs[start:end]
            if storage is not None:
                logits = storage[: end - start]
                torch.mm(inputs_chunk, weight.t(), out=logits)
            else:
                logits = inputs_chunk @ weight.t()
                if bias is not None:
                    logits = logits + bias
            logits = logits.contiguous()
            logits.mul_(1.0)  # the Triton kernel: loss into loss_1d, the logits' gradient in place
            if mm_out and logits.dtype == grad_input.dtype:
                torch.mm(logits, weight, out=grad_input[start:end])
            else:
                grad_input[start:end] = logits @ weight
            if grad_weight is not None:
                _accumulate_weight_grad(grad_weight, logits, inputs_chunk)
            if grad_bias is not None:
                torch.add(grad_bias, logits.sum(dim=0), out=grad_bias)
            del logits, inputs_chunk
        del storage
        loss = torch.sum(loss_1d)
        ctx.save_for_backward(grad_input.detach(), grad_weight, grad_bias)
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        grad_input, grad_weight, grad_bias = ctx.saved_tensors
        # Liger scales the stored gradients in place when grad_output is not 1 (element_mul_kernel)
        return grad_input, grad_weight, None, grad_bias


class ChunkedLoss(torch.nn.Module):
    """Where the traced step computes the loss in chunks (the tracker's logits_loss region).

    The head's weight is read here, not passed in: a full backward hook on this module (the tracker
    marks the region's end with one) makes autograd materialise a zero gradient for every tensor
    input, which for the frozen head weight would be a weight-sized buffer Liger never allocates.
    """

    def __init__(self, head: torch.nn.Module) -> None:
        super().__init__()
        self.__dict__["head"] = head  # not a submodule: the model owns it

    def forward(self, hidden_states, labels):
        # Liger's LigerForCausalLMLoss: shift the labels by padding, flatten the tokens
        shift_labels = torch.nn.functional.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:].contiguous()
        flat = hidden_states.reshape(-1, hidden_states.shape[-1])
        return FusedLinearCrossEntropy.apply(flat, self.head.weight, shift_labels.reshape(-1), self.head.bias)


def use_chunked_loss(causal_lm) -> None:
    """Patch this model instance as Liger's instance patch does: its forward runs the base model,
    then the fused loss on the last hidden states, and returns no logits."""
    from transformers.modeling_outputs import CausalLMOutputWithPast

    base, head = causal_lm.base_model, causal_lm.get_output_embeddings()
    causal_lm.chunked_loss = ChunkedLoss(head)

    def forward(input_ids=None, labels=None, **kwargs):
        outputs = base(input_ids=input_ids, **kwargs)
        loss = causal_lm.chunked_loss(outputs.last_hidden_state, labels)
        return CausalLMOutputWithPast(loss=loss, logits=None, past_key_values=outputs.past_key_values)

    causal_lm.forward = forward
