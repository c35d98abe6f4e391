"""The fake-tensor trace accounts exactly what a real execution of the same step allocates.

Small models from the huggingface_hub cache layout (tiny configs this suite writes itself) run one
training step twice under the same accounting: on fake tensors, as for full-size models, and for
real on the CPU (bitsandbytes really quantizing the weights for QLoRA). The acceptance bound is 1%;
the breakdown must agree too.
"""

from __future__ import annotations

import pytest

from recipe_checks.memory.step import StepSettings, build_step_model, run_step
from recipe_checks.models.resolve import resolve_model_config
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
INT8 = (("skip", ()), ("threshold", 6.0))


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
    "llama-lora-int8": ("tiny-org/tiny-llama", settings(lora=LORA, weights_dtype="float16", quant_8bit=INT8)),
    # transformers 5's default checkpointing (non-reentrant), and Axolotl's and LLaMA-Factory's (reentrant)
    "llama-lora-int8-checkpointing": ("tiny-org/tiny-llama", settings(lora=LORA, weights_dtype="float16", quant_8bit=INT8,
                                                                     gradient_checkpointing=True)),
    "llama-lora-int8-reentrant-checkpointing": ("tiny-org/tiny-llama", settings(
        lora=LORA, weights_dtype="float16", quant_8bit=INT8, gradient_checkpointing=True,
        gradient_checkpointing_kwargs=(("use_reentrant", True),))),
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


def test_int8_layers_keep_their_inputs_through_non_reentrant_checkpointing_only(hub_cache):
    """bitsandbytes' MatMul8bitLt keeps its input A in ctx.tensors (autograd/_functions.py:187 in 0.50.2), an
    attribute, not through save_for_backward: non-reentrant checkpointing (transformers 5's default) discards only
    what goes through saved_tensors_hooks, so every 8-bit layer's input stays alive from its forward to its
    backward, in every block at once. Reentrant checkpointing runs the blocks' forward without autograd and keeps
    none. Measured on real executions: the difference is exactly those inputs, per block q/k/v's and gate/up's
    (the RMSNorm outputs, fp32 after prepare_model_for_kbit_training), o_proj's (the attention output, bf16) and
    down_proj's (act(gate) * up, fp32); on Llama 3 8B at 2 x 4096 tokens 768 MiB a block, 24 GiB in all."""
    repo_id, non_reentrant = CASES["llama-lora-int8-checkpointing"]
    _, reentrant = CASES["llama-lora-int8-reentrant-checkpointing"]
    config = TINY[repo_id]
    resolved = resolve_model_config(repo_id)
    kept = _run(resolved, non_reentrant, real=True).timeline.breakdown["activations"]
    recomputed = _run(resolved, reentrant, real=True).timeline.breakdown["activations"]
    tokens, hidden, intermediate = 2 * 64, config["hidden_size"], config["intermediate_size"]
    per_block = tokens * (hidden * 4 + hidden * 2 + hidden * 4 + intermediate * 4)
    assert kept - recomputed == config["num_hidden_layers"] * per_block


@pytest.mark.parametrize(("case", "kernels"), [
    # LLM.int8() as on CUDA: MatMul8bitLt's int8 quantization and int8 matmul (bitsandbytes on a CPU tensor
    # would run MatMul8bitFp, dequantize and matmul in fp16, which keeps other tensors for the backward)
    ("llama-lora-int8", {"bitsandbytes::int8_vectorwise_quant", "bitsandbytes::int8_linear_matmul",
                         "bitsandbytes::int8_mm_dequant"}),
    ("llama-qlora-eager", {"bitsandbytes::dequantize_4bit"}),
])
def test_the_quantized_path_runs_bitsandbytes_kernels(hub_cache, case, kernels):
    repo_id, step = CASES[case]
    trace = _run(resolve_model_config(repo_id), step, real=False)
    assert kernels <= trace.ops, f"not run: {sorted(kernels - trace.ops)}"
    assert trace.quantized_layers == 3 * 7


def test_the_tracker_agrees_with_torch_mem_tracker_on_a_real_cpu_step(monkeypatch):
    """torch's own accountant (torch.distributed._tools.mem_tracker.MemTracker) and ours, on the same real
    CPU step of a plain MLP with SGD and momentum: the same peak, and the same parameters, gradients and
    optimizer states at it. MemTracker rounds to the CUDA allocator's 512 bytes only for CUDA tensors,
    ours always: with our rounding switched off both count raw storage bytes, and the tolerance is 0.
    (Not on a transformers model: MemTracker has no fake-tensor, 4-bit or block-replication view.)"""
    import torch
    from torch.distributed._tools.mem_tracker import MemTracker

    from recipe_checks.memory import tracker as tracker_module

    monkeypatch.setattr(tracker_module, "allocation_bytes", lambda nbytes: nbytes)

    def model_and_optimizer():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.ReLU(), torch.nn.Linear(512, 128))
        return model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, foreach=False)

    def one_step(model, optimizer, on_phase):
        on_phase("forward")
        loss = model(torch.ones(64, 256)).square().mean()
        on_phase("backward")
        loss.backward()
        del loss
        on_phase("optimizer")
        optimizer.step()

    model, optimizer = model_and_optimizer()
    torch_tracker = MemTracker()
    torch_tracker.track_external(model, optimizer)
    with torch_tracker:
        one_step(model, optimizer, lambda phase: None)
    [snapshot] = torch_tracker.get_tracker_snapshot("peak").values()
    theirs = {getattr(kind, "value", kind): nbytes for kind, nbytes in snapshot.items()}

    model, optimizer = model_and_optimizer()
    ours = tracker_module.MemoryTracker()
    for p in model.parameters():
        ours.tag(p, "weights")

    def on_phase(phase):
        ours.phase = phase
        for p in model.parameters():
            if p.grad is not None:
                ours.tag(p.grad, "gradients")

    with ours:
        one_step(model, optimizer, on_phase)
    timeline = ours.timeline()
    params = sum(p.numel() * 4 for p in model.parameters())
    assert timeline.peak_phase == "optimizer" and theirs["Optstate"] > 0  # all three kinds live at the peak
    assert timeline.peak_bytes == theirs["Total"]
    assert timeline.breakdown["weights"] == theirs["Parameter"] == params
    assert timeline.breakdown.get("gradients", 0) == theirs.get("Gradient", 0)
    assert timeline.breakdown.get("optimizer_state", 0) == theirs.get("Optstate", 0)
