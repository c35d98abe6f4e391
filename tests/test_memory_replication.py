"""Tracing four identical decoder blocks and replaying block 1 for the rest equals the full trace.

Every figure of the trace is compared, not just the peak: the whole memory curve (each allocation
and free, its bytes and category, in order), the peak, its phase, the breakdown at the peak, the
bytes left at the end and the parameter counts.
"""

from __future__ import annotations

import dataclasses

import pytest

from recipe_checks.memory import step as step_module
from recipe_checks.memory.step import StepSettings, build_step_model, run_step, trace_training_step
from recipe_checks.models.resolve import ResolvedModel, resolve_model_config

DEEP = ResolvedModel("deep-llama", {
    "model_type": "llama", "hidden_size": 256, "intermediate_size": 704, "num_hidden_layers": 9,
    "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 2048, "max_position_embeddings": 1024,
}, "test")
DEEP_QWEN = ResolvedModel("deep-qwen2", {
    "model_type": "qwen2", "hidden_size": 256, "intermediate_size": 704, "num_hidden_layers": 8,
    "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 2048, "max_position_embeddings": 1024,
    "tie_word_embeddings": True,
}, "test")
SLIDING = ResolvedModel("deep-mistral", {
    "model_type": "mistral", "hidden_size": 256, "intermediate_size": 704, "num_hidden_layers": 8,
    "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 2048, "max_position_embeddings": 1024,
    "sliding_window": 64,
}, "test")
LORA = (("lora_alpha", 16), ("r", 8), ("target_modules", "all-linear"), ("task_type", "CAUSAL_LM"))
NF4 = (("compute_dtype", "bfloat16"), ("double_quant", True), ("quant_storage", "uint8"), ("quant_type", "nf4"),
       ("skip", ()))
BASE = StepSettings(micro_batch=2, seq_len=128, precision="bfloat16", weights_dtype="bfloat16", optim="adamw_torch")

CASES = {
    "lora": (DEEP, dataclasses.replace(BASE, lora=LORA)),
    "lora-checkpointing-eager": (DEEP, dataclasses.replace(BASE, lora=LORA, gradient_checkpointing=True,
                                                           attn_implementation="eager")),
    "lora-reentrant-checkpointing": (DEEP, dataclasses.replace(
        BASE, lora=LORA, gradient_checkpointing=True, gradient_checkpointing_kwargs=(("use_reentrant", True),))),
    "qlora-paged-8bit": (DEEP, dataclasses.replace(BASE, lora=LORA, quant_4bit=NF4, optim="paged_adamw_8bit")),
    "qlora-fp16-adamw-8bit": (DEEP, dataclasses.replace(BASE, lora=LORA, precision="float16", weights_dtype="float16",
                                                        quant_4bit=(("compute_dtype", "float16"),) + NF4[1:],
                                                        optim="adamw_8bit")),
    "dora-accumulation": (DEEP, dataclasses.replace(BASE, lora=tuple(sorted(dict(LORA, use_dora=True).items())),
                                                    gradient_accumulation=4)),
    "full-adafactor-no-clipping": (DEEP_QWEN, dataclasses.replace(BASE, optim="adafactor", max_grad_norm=0.0)),
    "full-fp32-checkpointing": (DEEP_QWEN, dataclasses.replace(BASE, precision="float32", weights_dtype="float32",
                                                               gradient_checkpointing=True)),
    "qwen2-lora-sgd": (DEEP_QWEN, dataclasses.replace(BASE, lora=LORA, optim="sgd")),
    "lora-int8-checkpointing": (DEEP, dataclasses.replace(BASE, lora=LORA, weights_dtype="float16",
                                                          quant_8bit=(("skip", ()), ("threshold", 6.0)),
                                                          gradient_checkpointing=True)),
    "sliding-window-kv-cache": (SLIDING, dataclasses.replace(BASE, lora=LORA)),  # a cache slot per layer
    "lora-chunked-loss": (DEEP, dataclasses.replace(BASE, lora=LORA, chunked_loss=True)),
    "full-chunked-loss": (DEEP_QWEN, dataclasses.replace(BASE, chunked_loss=True)),
}


def figures(trace) -> tuple:
    t = trace.timeline
    return (t.peak_bytes, t.peak_phase, t.breakdown, t.end_bytes, t.events, trace.trainable_params,
            trace.total_params, trace.quantized_layers)


@pytest.mark.parametrize("case", CASES)
def test_replicated_blocks_give_the_full_trace_exactly(case):
    resolved, settings = CASES[case]
    built = build_step_model(resolved, settings, replicate_blocks=True)
    assert built.copies == resolved.config["num_hidden_layers"] - step_module.TRACED_BLOCKS
    replicated = run_step(built, settings, keep_curve=True)
    full = run_step(build_step_model(resolved, settings), settings, keep_curve=True)
    assert replicated.curve == full.curve
    assert figures(replicated) == figures(full)
    assert any("identical decoder blocks traced" in note for note in replicated.notes)


@pytest.mark.slow
def test_full_size_llama3_8b_lora_replicated_equals_its_full_trace():
    resolved = resolve_model_config("meta-llama/Meta-Llama-3-8B")
    settings = dataclasses.replace(BASE, seq_len=1024, lora=LORA, gradient_checkpointing=True)
    replicated = run_step(build_step_model(resolved, settings, replicate_blocks=True), settings, keep_curve=True)
    full = run_step(build_step_model(resolved, settings), settings, keep_curve=True)
    assert replicated.curve == full.curve
    assert figures(replicated) == figures(full)
    assert replicated.total_params == 8_030_261_248 + replicated.trainable_params


def test_blocks_of_different_kinds_are_all_traced():
    alternating = ResolvedModel("alternating", {
        **DEEP.config, "model_type": "gemma2", "head_dim": 64, "sliding_window": 64, "query_pre_attn_scalar": 64,
    }, "test")
    built = build_step_model(alternating, dataclasses.replace(BASE, lora=LORA, attn_implementation=None),
                             replicate_blocks=True)
    assert built.copies == 0
    assert built.notes == [
        "eager attention traced: transformers' default for Gemma2ForCausalLM, which has no sdpa implementation",
        "all 9 decoder blocks traced: block 1 differs from block 0",
    ]


def test_blocks_that_allocate_differently_fall_back_to_the_full_trace(monkeypatch):
    settings = dataclasses.replace(BASE, lora=LORA, seq_len=96)
    expected = run_step(build_step_model(DEEP, settings), settings)
    monkeypatch.setattr(step_module.MemoryTracker, "periodic", lambda self, a, b: "blocks 1 and 2 differ (forced)")
    step_module._trace_cached.cache_clear()
    trace = trace_training_step(DEEP, settings)
    assert figures(trace) == figures(expected)
    assert "all decoder blocks traced: blocks 1 and 2 differ (forced)" in trace.notes
