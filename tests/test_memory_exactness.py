"""The fake-tensor trace accounts exactly what a real execution of the same step allocates.

Small models from the huggingface_hub cache layout (tiny configs this suite writes itself) run one
training step twice under the same accounting: on fake tensors, as for full-size models, and for
real on the CPU (bitsandbytes really quantizing the weights for QLoRA). The acceptance bound is 1%;
the breakdown must agree too.
"""

from __future__ import annotations

import pytest

from checks.memory.step import StepSettings, build_step_model, run_step
from checks.models.resolve import resolve_model_config
from tests.conftest import write_hub_cache

TINY = {
    "tiny-org/tiny-llama": {"model_type": "llama", "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 3,
                            "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1024,
                            "max_position_embeddings": 512},
    "tiny-org/tiny-qwen2": {"model_type": "qwen2", "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 3,
                            "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1024,
                            "max_position_embeddings": 512},
}
LORA = (("lora_alpha", 16), ("lora_dropout", 0.05), ("r", 8),
        ("target_modules", ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")),
        ("task_type", "CAUSAL_LM"))
DORA = tuple(sorted(dict(LORA, use_dora=True).items()))
NF4 = (("compute_dtype", "bfloat16"), ("double_quant", True), ("quant_storage", "uint8"), ("quant_type", "nf4"), ("skip", ()))


def settings(**changes) -> StepSettings:
    base = dict(micro_batch=2, seq_len=64, precision="bfloat16", weights_dtype="bfloat16", optim="adamw_torch")
    return StepSettings(**{**base, **changes})


CASES = {
    "llama-lora-sdpa": ("tiny-org/tiny-llama", settings(lora=LORA)),
    "llama-lora-eager-checkpointing": ("tiny-org/tiny-llama", settings(lora=LORA, attn_implementation="eager",
                                                                       gradient_checkpointing=True)),
    "llama-qlora-checkpointing-paged": ("tiny-org/tiny-llama", settings(lora=LORA, quant_4bit=NF4, optim="paged_adamw_8bit",
                                                                        gradient_checkpointing=True)),
    "llama-qlora-eager": ("tiny-org/tiny-llama", settings(lora=LORA, quant_4bit=NF4, attn_implementation="eager")),
    "llama-full-sdpa": ("tiny-org/tiny-llama", settings()),
    "llama-dora-sdpa": ("tiny-org/tiny-llama", settings(lora=DORA)),
    "qwen2-lora-eager": ("tiny-org/tiny-qwen2", settings(lora=LORA, attn_implementation="eager")),
    "qwen2-qlora-sdpa-paged": ("tiny-org/tiny-qwen2", settings(lora=LORA, quant_4bit=NF4, optim="paged_adamw_8bit")),
    "qwen2-full-checkpointing-accumulation": ("tiny-org/tiny-qwen2", settings(gradient_checkpointing=True,
                                                                             gradient_accumulation=2)),
    "llama-lora-int8": ("tiny-org/tiny-llama", settings(lora=LORA, weights_dtype="float16",
                                                       quant_8bit=(("skip", ()), ("threshold", 6.0)))),
    "llama-lora-chunked-loss": ("tiny-org/tiny-llama", settings(lora=LORA, chunked_loss=True)),
    "qwen2-qlora-chunked-loss-checkpointing": ("tiny-org/tiny-qwen2", settings(lora=LORA, quant_4bit=NF4, chunked_loss=True,
                                                                              optim="paged_adamw_8bit",
                                                                              gradient_checkpointing=True)),
    "qwen2-full-fp32-eager": ("tiny-org/tiny-qwen2", settings(precision="float32", weights_dtype="float32",
                                                              attn_implementation="eager")),
}


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    for repo_id, config in TINY.items():
        write_hub_cache(tmp_path, repo_id, config)
    return tmp_path


@pytest.mark.parametrize("case", CASES)
def test_fake_trace_matches_a_real_execution_within_one_percent(hub_cache, case):
    repo_id, step = CASES[case]
    resolved = resolve_model_config(repo_id)
    assert resolved.source == "huggingface_hub cache"
    fake = _run(resolved, step, real=False)
    real = _run(resolved, step, real=True)
    assert abs(fake.timeline.peak_bytes - real.timeline.peak_bytes) <= 0.01 * real.timeline.peak_bytes
    assert fake.timeline.breakdown == real.timeline.breakdown


def _run(resolved, step, real):
    return run_step(build_step_model(resolved, step, real=real), step)
