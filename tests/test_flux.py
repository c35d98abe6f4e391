"""FLUX.1-dev LoRA and QLoRA with diffusers: the bundled transformer config, the traced flow-matching
step against a real CPU execution, the target-module rules on diffusers' module names, the shipped
recipes, and the optional diffusers extra.
"""

from __future__ import annotations

import pytest

diffusers = pytest.importorskip("diffusers")  # imported before any pytester run (see tests/conftest.py)
import diffusers.pipelines.flux.pipeline_flux  # noqa: E402,F401
import diffusers.training_utils  # noqa: E402,F401

from checks.memory.step import StepSettings, build_step_model, run_step  # noqa: E402
from checks.models.resolve import ResolvedModel, resolve_model_config  # noqa: E402

# A small FluxTransformer2DModel: the architecture of FLUX.1-dev (double- and single-stream blocks,
# guidance embedding, 64-channel packed latents) at widths a CPU runs in milliseconds.
TINY_FLUX = {
    "_class_name": "FluxTransformer2DModel", "attention_head_dim": 16, "axes_dims_rope": [4, 6, 6],
    "guidance_embeds": True, "in_channels": 64, "joint_attention_dim": 32, "num_attention_heads": 2,
    "num_layers": 2, "num_single_layers": 3, "patch_size": 1, "pooled_projection_dim": 16,
}
PUBLISHED_LORA = (("init_lora_weights", "gaussian"), ("lora_alpha", 4), ("r", 4),
                  ("target_modules", ("to_k", "to_q", "to_v", "to_out.0")), ("task_type", None))
NF4 = (("compute_dtype", "bfloat16"), ("double_quant", False), ("quant_storage", "uint8"), ("quant_type", "nf4"),
       ("skip", ()))
DIFFUSION = (("guidance", True), ("guidance_scale", 1.0), ("height", 96), ("text_tokens", 7),
             ("weighting_scheme", "none"), ("width", 64))


def flux_settings(**changes) -> StepSettings:
    base = dict(micro_batch=2, seq_len=1, gradient_accumulation=4, precision="bfloat16", weights_dtype="bfloat16",
                optim="adamw_bnb_8bit", lora=PUBLISHED_LORA, diffusion=DIFFUSION)
    return StepSettings(**{**base, **changes})


EXACTNESS = {
    "lora": flux_settings(),
    "lora-checkpointing": flux_settings(gradient_checkpointing=True),
    "qlora": flux_settings(quant_4bit=NF4),
    "qlora-checkpointing": flux_settings(quant_4bit=NF4, gradient_checkpointing=True),
    "lora-fp16-adamw": flux_settings(precision="float16", weights_dtype="float16", optim="adamw_torch"),
}


def _trace(settings: StepSettings, real: bool):
    resolved = ResolvedModel(name="tiny-flux", config=dict(TINY_FLUX), source="test")
    return run_step(build_step_model(resolved, settings, real=real), settings)


@pytest.mark.slow  # 5-8 s a case: a real CPU step of the small transformer next to its fake trace
@pytest.mark.parametrize("case", EXACTNESS)
def test_the_fake_flux_trace_is_exact_against_a_real_cpu_step(case):
    settings = EXACTNESS[case]
    fake, real = _trace(settings, real=False), _trace(settings, real=True)
    assert fake.timeline.peak_bytes == real.timeline.peak_bytes
    assert fake.timeline.breakdown == real.timeline.breakdown
    assert fake.trainable_params == real.trainable_params > 0


@pytest.mark.slow
def test_checkpointing_and_qlora_change_the_traced_flux_step():
    """The exactness cases differ where the features act: switching one off changes the trace."""
    plain, checkpointed = _trace(EXACTNESS["lora"], False), _trace(EXACTNESS["lora-checkpointing"], False)
    quantized = _trace(EXACTNESS["qlora"], False)
    assert checkpointed.timeline.breakdown["activations"] < plain.timeline.breakdown["activations"]
    assert quantized.timeline.breakdown["weights"] < plain.timeline.breakdown["weights"]
    assert quantized.quantized_layers > 0 and "quant_state" in quantized.timeline.breakdown


def test_the_bundled_flux_transformer_has_the_published_parameter_counts():
    """The HF flux-qlora post prints `trainable params: 4,669,440 || all params: 11,906,077,760` after
    add_adapter with the published LoraConfig: the bundled config gives those numbers."""
    from peft import LoraConfig

    from checks.models.skeleton import build_meta_model

    resolved = resolve_model_config("black-forest-labs/FLUX.1-dev", component="transformer")
    assert resolved.source.startswith("bundled config of black-forest-labs/FLUX.1-dev")
    model = build_meta_model(resolved, None, fresh=True)
    model.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                 target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    assert model.num_parameters(only_trainable=True) == 4_669_440
    assert model.num_parameters() == 11_906_077_760
