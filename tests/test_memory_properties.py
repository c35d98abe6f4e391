"""Invariants of the memory engine (hypothesis), traced on fake tensors of a small Llama-shaped model.

The model is large enough that its Linear layers outweigh its embeddings, as in every real LLM: QLoRA
upcasts the unquantized embeddings to fp32 (as TRL does), which on a toy model would outweigh what
4-bit saves.
"""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recipe_checks.memory.step import StepSettings, trace_training_step
from recipe_checks.models.resolve import ResolvedModel

SMALL = ResolvedModel("small-llama", {
    "model_type": "llama", "hidden_size": 1024, "intermediate_size": 2816, "num_hidden_layers": 2,
    "num_attention_heads": 8, "num_key_value_heads": 4, "vocab_size": 4096, "max_position_embeddings": 4096,
}, "test")
LORA = (("lora_alpha", 16), ("r", 8), ("target_modules", ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                           "up_proj", "down_proj")), ("task_type", "CAUSAL_LM"))
NF4 = (("compute_dtype", "bfloat16"), ("double_quant", True), ("quant_storage", "uint8"), ("quant_type", "nf4"),
       ("skip", ()))

methods = st.sampled_from(["full", "lora", "qlora"])
batches = st.integers(1, 4)
lengths = st.sampled_from([32, 64, 128, 256])
flags = st.booleans()


def step(method: str, batch: int, seq: int, checkpointing: bool = False, attn: str = "sdpa") -> StepSettings:
    return StepSettings(
        micro_batch=batch, seq_len=seq, precision="bfloat16", weights_dtype="bfloat16", optim="adamw_torch",
        gradient_checkpointing=checkpointing, attn_implementation=attn,
        lora=LORA if method != "full" else (), quant_4bit=NF4 if method == "qlora" else (),
    )


def timeline(settings: StepSettings):
    return trace_training_step(SMALL, settings).timeline


def peak(settings: StepSettings) -> int:
    return timeline(settings).peak_bytes


# Activations live until the backward: where the peak is in the forward or backward pass, more tokens
# must mean strictly more memory; where it is in the optimizer step (a full fine-tune's AdamW), the
# activations are gone and the peak may not move.
ACTIVATION_PHASES = ("forward", "backward")


@settings(max_examples=8, deadline=None, derandomize=True)
@given(methods, batches, lengths, flags)
def test_more_micro_batch_never_needs_less_memory(method, batch, seq, checkpointing):
    base = timeline(step(method, batch, seq, checkpointing))
    more = timeline(step(method, batch + 1, seq, checkpointing))
    assert more.peak_bytes >= base.peak_bytes
    if base.peak_phase in ACTIVATION_PHASES:
        assert more.peak_bytes > base.peak_bytes
    assert more.breakdown.get("activations", 0) > base.breakdown.get("activations", 0) or base.peak_phase == "optimizer"


@settings(max_examples=8, deadline=None, derandomize=True)
@given(methods, batches, lengths, flags)
def test_longer_sequences_never_need_less_memory(method, batch, seq, checkpointing):
    base = timeline(step(method, batch, seq, checkpointing))
    longer = timeline(step(method, batch, seq * 2, checkpointing))
    assert longer.peak_bytes >= base.peak_bytes
    if base.peak_phase in ACTIVATION_PHASES:
        assert longer.peak_bytes > base.peak_bytes


WIDE = ResolvedModel("wide-llama", {
    "model_type": "llama", "hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 2,
    "num_attention_heads": 16, "num_key_value_heads": 4, "vocab_size": 4096, "max_position_embeddings": 4096,
}, "test")


@settings(max_examples=12, deadline=None, derandomize=True)
@given(st.integers(1, 2), st.sampled_from([32, 64, 128]), flags)
def test_qlora_below_lora_below_full_fine_tune(batch, seq, checkpointing):
    # Where weights dominate, as in real LLM fine-tunes. With TRL's preparation, QLoRA's fp32 norms
    # make fp32 hidden states, so where activations dominate QLoRA can exceed LoRA (traced, and
    # equal to a real execution: test_memory_exactness.py).
    qlora, lora, full = (
        trace_training_step(WIDE, step(m, batch, seq, checkpointing)).timeline.peak_bytes
        for m in ("qlora", "lora", "full")
    )
    assert qlora < lora < full


@settings(max_examples=6, deadline=None, derandomize=True)
@given(methods, batches, lengths, st.sampled_from(["sdpa", "eager"]))
def test_checkpointing_keeps_strictly_fewer_activations(method, batch, seq, attn):
    # every block keeps its projections' inputs, norms and attention for the backward; checkpointed, only
    # its input: strictly less wherever the peak is in the forward or backward pass. A full fine-tune
    # with few tokens peaks in AdamW's step, where the activations are gone: there it must not cost more.
    on, off = (trace_training_step(SMALL, step(method, batch, seq, c, attn)).timeline for c in (True, False))
    if off.peak_phase == "optimizer":
        assert on.peak_bytes <= off.peak_bytes
    else:
        assert on.breakdown.get("activations", 0) < off.breakdown.get("activations", 0)


@settings(max_examples=6, deadline=None, derandomize=True)
@given(st.sampled_from(["lora", "qlora"]), st.integers(2, 4), st.sampled_from([128, 256]))
def test_checkpointing_lowers_the_peak_of_adapter_training(method, batch, seq):
    # adapters' optimizer step is small: the peak is in the backward, where the kept activations count
    assert peak(step(method, batch, seq, True)) < peak(step(method, batch, seq, False))


@settings(max_examples=8, deadline=None, derandomize=True)
@given(methods, batches, lengths, flags)
def test_a_chunked_loss_never_needs_more_memory(method, batch, seq, checkpointing):
    base = timeline(step(method, batch, seq, checkpointing))
    chunked = timeline(dataclasses.replace(step(method, batch, seq, checkpointing), chunked_loss=True))
    assert chunked.peak_bytes <= base.peak_bytes
    logits = batch * seq * SMALL.config["vocab_size"] * 2  # one bf16 logits tensor
    if base.breakdown.get("logits_loss", 0) >= logits:  # the logits are part of the peak: they are what it removes
        assert chunked.peak_bytes < base.peak_bytes
        assert chunked.breakdown.get("logits_loss", 0) < base.breakdown["logits_loss"]


# A vocabulary 64x the hidden size (Llama 3: 31x, Qwen2.5: 43x-170x): the logits make the peak.
BIG_VOCAB = ResolvedModel("big-vocab-llama", {
    "model_type": "llama", "hidden_size": 512, "intermediate_size": 1408, "num_hidden_layers": 2,
    "num_attention_heads": 8, "num_key_value_heads": 4, "vocab_size": 32768, "max_position_embeddings": 4096,
}, "test")


@settings(max_examples=6, deadline=None, derandomize=True)
@given(st.sampled_from(["lora", "qlora"]), batches, st.sampled_from([128, 256]), flags)
def test_a_chunked_loss_lowers_the_peak_where_the_logits_make_it(method, batch, seq, checkpointing):
    base = step(method, batch, seq, checkpointing)
    plain = trace_training_step(BIG_VOCAB, base).timeline
    chunked = trace_training_step(BIG_VOCAB, dataclasses.replace(base, chunked_loss=True)).timeline
    assert plain.breakdown.get("logits_loss", 0) >= batch * seq * 32768 * 2  # the premise: logits at the peak
    assert chunked.peak_bytes < plain.peak_bytes
    assert chunked.breakdown.get("logits_loss", 0) < plain.breakdown["logits_loss"]


@pytest.mark.slow
def test_full_size_8bit_lora_lies_between_qlora_and_lora():
    # not on toy models: LLM.int8()'s backward dequantizes a whole fp16 weight, which only the
    # savings of many int8 layers outweigh
    from recipe_checks.models.resolve import resolve_model_config

    llama = resolve_model_config("meta-llama/Meta-Llama-3-8B")
    base = step("lora", 1, 1024, True)
    int8 = dataclasses.replace(base, weights_dtype="float16", quant_8bit=(("skip", ()), ("threshold", 6.0)))
    qlora, lora = (trace_training_step(llama, step(m, 1, 1024, True)).timeline.peak_bytes for m in ("qlora", "lora"))
    assert qlora < trace_training_step(llama, int8).timeline.peak_bytes < lora
