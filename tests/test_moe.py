"""Mixture-of-experts models (fused 3-D experts, transformers 5): the fake trace against a real CPU
execution of tiny Mixtral, Qwen3-MoE and Qwen2-MoE (with its shared expert) models, LoRA and QLoRA, on
attention and on the experts (peft's target_parameters); the routing the trace cannot know; block
replication; and what the trace says of a QLoRA run's experts.
"""

from __future__ import annotations

import dataclasses

import pytest

from recipe_checks.memory.step import StepSettings, build_step_model, run_step
from recipe_checks.models.resolve import ResolvedModel, resolve_model_config

SIZES = {"hidden_size": 128, "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2,
         "vocab_size": 1024, "max_position_embeddings": 512}
MIXTRAL = ResolvedModel("tiny-mixtral", {"model_type": "mixtral", **SIZES, "intermediate_size": 256,
                                         "num_local_experts": 4, "num_experts_per_tok": 2}, "test")
QWEN3_MOE = ResolvedModel("tiny-qwen3-moe", {"model_type": "qwen3_moe", **SIZES, "head_dim": 32, "intermediate_size": 256,
                                             "moe_intermediate_size": 64, "num_experts": 8, "num_experts_per_tok": 2,
                                             "norm_topk_prob": True}, "test")
QWEN2_MOE = ResolvedModel("tiny-qwen2-moe", {"model_type": "qwen2_moe", **SIZES, "intermediate_size": 256,  # + a shared expert
                                             "moe_intermediate_size": 64, "shared_expert_intermediate_size": 128,
                                             "num_experts": 8, "num_experts_per_tok": 2}, "test")
ATTENTION = (("lora_alpha", 16), ("lora_dropout", 0.0), ("r", 8),
             ("target_modules", ("q_proj", "k_proj", "v_proj", "o_proj")), ("task_type", "CAUSAL_LM"))
EXPERTS = tuple(sorted(dict(ATTENTION, target_parameters=("mlp.experts.gate_up_proj", "mlp.experts.down_proj")).items()))
NF4 = (("compute_dtype", "bfloat16"), ("double_quant", True), ("quant_storage", "uint8"), ("quant_type", "nf4"),
       ("skip", ()))
BASE = StepSettings(micro_batch=2, seq_len=64, precision="bfloat16", weights_dtype="bfloat16", optim="adamw_torch")

CASES = {
    f"{name}-{method}-{targets}": (model, dataclasses.replace(BASE, lora=lora, **extra))
    for name, model in (("mixtral", MIXTRAL), ("qwen3-moe", QWEN3_MOE), ("qwen2-moe", QWEN2_MOE))
    for targets, lora in (("attention", ATTENTION), ("experts", EXPERTS))
    for method, extra in (("lora", {}), ("qlora", {"quant_4bit": NF4, "optim": "paged_adamw_8bit"}),
                          ("qlora-checkpointing", {"quant_4bit": NF4, "gradient_checkpointing": True}))
}


def _run(resolved, settings, real, **kwargs):
    return run_step(build_step_model(resolved, settings, real=real, **kwargs), settings)


@pytest.mark.slow  # real and fake steps, seconds each
@pytest.mark.parametrize("case", CASES)
def test_fake_trace_of_an_moe_step_equals_a_real_cpu_execution(case):
    resolved, settings = CASES[case]
    fake = _run(resolved, settings, real=False)
    real = _run(resolved, settings, real=True)
    assert fake.timeline.peak_bytes == real.timeline.peak_bytes
    assert fake.timeline.breakdown == real.timeline.breakdown
    assert fake.timeline.peak_phase == real.timeline.peak_phase
    assert "aten::_grouped_mm" in fake.ops  # transformers' grouped_mm experts ran, not a per-expert loop


def test_qlora_leaves_the_experts_unquantized_and_upcast_to_float32():
    """bitsandbytes quantizes nn.Linear layers only (attention: 3 blocks x 4); the experts are 3-D
    nn.Parameters that prepare_model_for_kbit_training upcasts, and the real model has them in fp32."""
    import torch

    settings = dataclasses.replace(BASE, lora=ATTENTION, quant_4bit=NF4)
    built = build_step_model(MIXTRAL, settings, real=True)
    experts = built.model.get_base_model().model.layers[0].mlp.experts
    assert {p.dtype for p in experts.parameters()} == {torch.float32}
    assert built.quantized == 3 * 4
    fake = build_step_model(MIXTRAL, settings)
    count = 3 * 4 * (2 * 256 * 128 + 128 * 256)
    assert (f"the {count / 1e9:.2f}B expert parameters are 3-D nn.Parameters; prepare_model_for_kbit_training then "
            f"upcasts them from bfloat16 to float32: {count * 4 / 1e9:.1f} GB") in " ".join(fake.notes)
    unquantized = build_step_model(MIXTRAL, dataclasses.replace(BASE, lora=ATTENTION))
    assert not any("not quantized" in note for note in unquantized.notes)


def _route(model, experts) -> list[int]:
    """Make every router of a real model send token n to the experts `experts[n]`: the router runs as
    it is (its allocations are the trace's), then a forward hook overwrites the indices its top-k chose,
    in place, allocating nothing; returns a list that counts the routers so overridden."""
    overridden = []

    def hook(_router, _args, output):
        output[2].data.copy_(experts)  # .data: top-k keeps its indices for the backward, unversioned here
        overridden.append(1)

    for block in model.get_base_model().model.layers:
        block.mlp.gate.register_forward_hook(hook)
    return overridden


@pytest.mark.slow  # real and fake steps, seconds each
@pytest.mark.parametrize("targets", [ATTENTION, EXPERTS], ids=["attention", "experts"])
def test_every_routing_allocates_what_the_trace_counts(targets):
    """Fake tensors have no routing: the trace is exact for any, since grouped_mm's tensors have tokens x
    top-k rows whatever the split. Two opposite real routings, all tokens on experts 0 and 1 (two experts
    idle) and an even round robin, allocate the same bytes, event for event, and both equal the trace."""
    import torch

    settings = dataclasses.replace(BASE, lora=targets, quant_4bit=NF4)
    curves, splits = [], []
    tokens = BASE.micro_batch * BASE.seq_len
    for experts in (torch.tensor([[0, 1]] * tokens),
                    torch.stack([torch.arange(tokens) % 4, (torch.arange(tokens) + 2) % 4], 1)):
        built = build_step_model(MIXTRAL, settings, real=True)
        overridden = _route(built.model, experts)
        trace = run_step(built, settings, keep_curve=True)
        assert len(overridden) == 3  # each block's router, once in the forward
        curves.append((trace.curve, trace.timeline.peak_bytes, trace.timeline.breakdown))
        splits.append(torch.bincount(experts.flatten(), minlength=4).tolist())
    assert splits == [[tokens, tokens, 0, 0], [tokens // 2] * 4]
    assert curves[0] == curves[1]
    fake = run_step(build_step_model(MIXTRAL, settings), settings, keep_curve=True)
    assert (fake.curve, fake.timeline.peak_bytes, fake.timeline.breakdown) == curves[0]
    assert any(note.startswith("expert routing: transformers' grouped_mm experts") for note in fake.notes)


DEEP_MIXTRAL = ResolvedModel("deep-mixtral", {**MIXTRAL.config, "num_hidden_layers": 9}, "test")


@pytest.mark.slow  # real and fake steps, seconds each
@pytest.mark.parametrize("settings", [
    dataclasses.replace(BASE, lora=EXPERTS),
    dataclasses.replace(BASE, lora=EXPERTS, quant_4bit=NF4, optim="paged_adamw_8bit", gradient_checkpointing=True),
], ids=["lora-experts", "qlora-experts-checkpointing"])
def test_replicated_moe_blocks_give_the_full_trace_exactly(settings):
    built = build_step_model(DEEP_MIXTRAL, settings, replicate_blocks=True)
    assert built.copies == 9 - 4
    replicated = run_step(built, settings, keep_curve=True)
    full = run_step(build_step_model(DEEP_MIXTRAL, settings), settings, keep_curve=True)
    assert replicated.curve == full.curve
    assert (replicated.timeline.peak_bytes, replicated.timeline.breakdown, replicated.total_params,
            replicated.trainable_params, replicated.quantized_layers) == (
        full.timeline.peak_bytes, full.timeline.breakdown, full.total_params, full.trainable_params,
        full.quantized_layers)


def test_mixtral_8x7b_qlora_trace_says_its_45b_experts_are_upcast():
    """The full-size model on fake tensors: the note counts the experts of all 32 blocks, not the 4 traced."""
    from recipe_checks.memory.step import trace_training_step

    settings = dataclasses.replace(BASE, seq_len=512, micro_batch=1, lora=ATTENTION, quant_4bit=NF4,
                                   optim="paged_adamw_8bit", gradient_checkpointing=True)
    trace = trace_training_step(resolve_model_config("mistralai/Mixtral-8x7B-v0.1"), settings)
    assert trace.quantized_layers == 32 * 4
    assert any("the 45.10B expert parameters are 3-D nn.Parameters" in note and "180.4 GB" in note
               for note in trace.notes)
    assert trace.timeline.breakdown["weights"] > 45.1e9 * 4


def test_target_parameters_on_mixtral_8x7b_say_what_each_forward_copies():
    """Each block's experts (8 x (2 x 14336 x 4096 + 4096 x 14336) bf16 parameters) are copied as W + BA."""
    settings = dataclasses.replace(BASE, lora=EXPERTS, gradient_checkpointing=True)
    built = build_step_model(resolve_model_config("mistralai/Mixtral-8x7B-v0.1"), settings, replicate_blocks=True)
    per_block = 8 * 3 * 14336 * 4096 * 2
    assert any(f"in bfloat16): a {per_block / 1e9:.2f} GB copy of each block's targeted experts" in note
               for note in built.notes), built.notes
    attention_only = build_step_model(MIXTRAL, dataclasses.replace(BASE, lora=ATTENTION))
    assert not any("ParamWrapper" in note for note in attention_only.notes)


def test_bundled_qwen3_30b_a3b_has_the_model_cards_sizes():
    """The model card: 30.5B parameters, 29.9B without the (untied) embedding and output head, 48 blocks of
    128 experts; the experts are fused 3-D parameters, which the trace's notes count."""
    from recipe_checks.memory.experts import fused_expert_parameters
    from recipe_checks.models.skeleton import build_meta_model

    model = build_meta_model(resolve_model_config("Qwen/Qwen3-30B-A3B"))
    total = sum(p.numel() for p in model.parameters())
    embeddings = model.get_input_embeddings().weight.numel() + model.get_output_embeddings().weight.numel()
    assert round(total / 1e9, 1) == 30.5 and round((total - embeddings) / 1e9, 1) == 29.9
    experts = fused_expert_parameters(model)
    assert len(experts) == 48 * 2 and {tuple(p.shape) for _, p in experts} == {(128, 2 * 768, 2048), (128, 2048, 768)}


def test_experts_that_loop_over_the_routed_tokens_are_a_trace_error_that_says_why():
    """transformers' eager experts (a loop over the experts that got tokens) have shapes that only real routing
    decides: the trace refuses them by name instead of failing on a data-dependent op; a real run traces."""
    from recipe_checks.memory.errors import TraceError
    from recipe_checks.memory.step import trace_training_step

    eager = ResolvedModel("tiny-mixtral-eager", {**MIXTRAL.config, "experts_implementation": "eager"}, "test")
    settings = dataclasses.replace(BASE, lora=ATTENTION)
    with pytest.raises(TraceError, match="MixtralForCausalLM runs its experts with transformers' 'eager' implementation"):
        trace_training_step(eager, settings)
    real = build_step_model(eager, settings, real=True)
    assert not any(note.startswith("expert routing") for note in real.notes)
    assert run_step(real, settings).timeline.peak_bytes > 0


def test_a_qlora_moe_recipe_is_offered_lora_without_quantization_as_a_traced_fix():
    """On fused experts, dropping the 4-bit base halves the experts' bytes (bf16, not upcast float32): the fix
    lowers the traced peak, so the fixes list keeps it; dense models are not offered it."""
    from recipe_checks.memory.estimate import candidate_fixes
    from recipe_checks.memory.experts import config_has_experts

    assert config_has_experts(MIXTRAL.config) and config_has_experts(QWEN3_MOE.config)
    assert not config_has_experts(resolve_model_config("meta-llama/Llama-3.1-8B").config)
    qlora = dataclasses.replace(BASE, lora=ATTENTION, quant_4bit=NF4, optim="paged_adamw_8bit")
    [(name, change, lora)] = [f for f in candidate_fixes(qlora, "mixtral", fused_experts=True) if "quantization" in f[1]]
    assert name == "LoRA without quantization (the experts stay bfloat16 instead of float32)"
    assert change == "remove the quantization section, model.torch_dtype: bfloat16"
    assert not lora.quant_4bit and lora.weights_dtype == "bfloat16" and lora.lora == qlora.lora
    assert not any("quantization section" in f[1] for f in candidate_fixes(qlora, "llama"))
    peaks = [run_step(build_step_model(MIXTRAL, s), s).timeline.peak_bytes for s in (qlora, lora)]
    assert peaks[1] < peaks[0]


@pytest.mark.slow  # traces the full-size step and its fixes
def test_mixtral_qlora_that_does_not_fit_an_h200_is_told_to_drop_the_quantization():
    """The corpus recipe of RC216 on its H200: the 4-bit Mixtral's float32 experts alone exceed the budget;
    the traced fix that fits is LoRA without quantization, and the weights note names it as the way to shrink."""
    from recipe_checks.gpus import GpuCatalog
    from recipe_checks.memory.estimate import estimate
    from recipe_checks.recipe.load import load_text
    from recipe_checks.recipe.validate import validate
    from tests.conftest import CORPUS

    path = CORPUS / "rc216-mixtral-qlora-experts-unquantized.yaml"
    recipe = validate(load_text(path.read_text(encoding="utf-8"), path.name)).recipe
    catalog = GpuCatalog.load()
    result = estimate(recipe, resolve_model_config(recipe.model.id), catalog.get("h200"), catalog=catalog)
    assert not result.fits and result.weights_exceed_budget
    best = result.fixes[0]
    assert best.name.startswith("LoRA without quantization") and best.fits
    assert best.peak_bytes < result.peak_bytes / 1.8  # bf16 experts, not float32
    assert "only a fix that shrinks them (here LoRA without quantization" in result.weights_note
