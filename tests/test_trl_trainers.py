"""The trainer a TRL or LLaMA-Factory config is for: a TRL DPO config traced as DPOTrainer's step, GRPO, KTO, reward
and LLaMA-Factory's preference stages named by one RC111 and never traced as a supervised step, and TRL's own default
dtype (float32) for a config that sets none. Translation and settings level: no full-size trace.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from recipe_checks.engine import check_recipe, run_check
from recipe_checks.formats import read_as_native
from recipe_checks.gpus import GpuCatalog
from recipe_checks.options import Options
from recipe_checks.recipe.load import load_recipe_file

FORMATS_DIR = Path(__file__).resolve().parent / "formats"
CATALOG = GpuCatalog.load(())
STEP_CHECKS = ("throughput", "vram", "cpu-step", "cpu-train")


def _translated(path: Path) -> dict:
    native, error = read_as_native(load_recipe_file(path))
    assert error is None
    return native


def _state(path: Path):
    state, results = check_recipe(path, Options(gpus=("rtx4090",)), CATALOG, traced=False)
    assert not [r.error for r in results if r.error is not None]
    return state, [f for r in results for f in r.findings]


def test_a_trl_dpo_config_is_translated_into_the_dpo_section_and_traced_as_dpotrainers_step():
    pytest.importorskip("trl")
    from recipe_checks.memory.settings import settings_from_recipe

    path = FORMATS_DIR / "trl-dpo-qwen2.5-lora.yaml"
    native = _translated(path)
    assert native.translation.trainer == "dpo" and native.translation.untraced is None
    assert native.data["dpo"] == {"beta": 0.1, "loss_type": "sigmoid", "max_length": 1024}
    assert "max_seq_length" not in native.data["training"]  # DPOTrainer reads dpo.max_length only (RC118)
    state, findings = _state(path)
    settings = settings_from_recipe(state.recipe, state.resolved_model().config)
    preference = dict(settings.preference)
    # chosen and rejected rows of max_length; with use_peft the reference is the model with its adapters disabled
    assert (preference["trainer"], preference["reference"], settings.seq_len) == ("dpo", "adapters_disabled", 1024)
    assert (settings.weights_dtype, settings.precision) == ("float32", "bfloat16")  # TRL's default dtype, bf16 autocast
    # a DPOConfig key of an older TRL is named, not dropped silently
    assert [(f.rule_id, f.key) for f in findings if f.rule_id in ("RC110", "RC111")] == [("RC111", "max_prompt_length")]


@pytest.mark.parametrize(("name", "trainer", "key"), [
    ("trl-grpo-qwen2.5-vllm.yaml", "GRPO", "use_vllm"),
    ("trl-kto-qwen2.5-qlora.yaml", "KTO", "desirable_weight"),
    ("trl-reward-qwen2.5-lora.yaml", "reward-model", "center_rewards_coefficient"),
])
def test_a_trl_config_of_a_trainer_not_modelled_gets_one_rc111_naming_it_and_no_supervised_trace(name, trainer, key):
    state, findings = _state(FORMATS_DIR / name)
    [note] = [f for f in findings if f.rule_id == "RC111"]
    assert note.key == key and f"a TRL {trainer} config" in note.message
    assert state.source_line(note.location.line).startswith(f"{key}:")
    assert "RC110" not in {f.rule_id for f in findings}  # the trainer's own keys are understood, not listed
    for check in STEP_CHECKS:
        result = run_check(state, check, "rtx4090")
        assert result.skipped is not None and result.skipped.startswith("not checked: "), (check, result)
        assert f"a TRL {trainer} config" in result.skipped and not result.findings
    assert run_check(state, "target-modules").skipped is None  # what is not the step is still checked


def test_a_llamafactory_preference_stage_is_named_once_and_not_traced_as_a_supervised_step():
    state, findings = _state(FORMATS_DIR / "llamafactory-llama3-dpo.yaml")
    [note] = [f for f in findings if f.rule_id == "RC111"]
    assert note.key == "stage" and "CustomDPOTrainer" in note.message
    for check in STEP_CHECKS:
        assert "LLaMA-Factory DPO config" in (run_check(state, check, "rtx4090").skipped or ""), check


@pytest.mark.parametrize("stage", ["kto", "rm", "ppo"])
def test_every_llamafactory_stage_but_pt_and_sft_is_untraced(stage, tmp_path):
    path = tmp_path / "cfg.yaml"
    text = (FORMATS_DIR / "llamafactory-llama3-dpo.yaml").read_text()
    path.write_text(text.replace("stage: dpo", f"stage: {stage}"))
    assert _translated(path).translation.untraced is not None
    path.write_text(text.replace("stage: dpo", "stage: pt"))
    assert _translated(path).translation.untraced is None


@pytest.mark.parametrize(("keys", "trainer"), [
    ({"beta": 0.1}, "dpo"),  # DPOConfig's and KTOConfig's: read as the commoner, DPO
    ({"loss_type": "ipo"}, "dpo"),
    ({"loss_type": "kto", "beta": 0.1}, "kto"),
    ({"loss_type": "dapo"}, "grpo"),
    ({"max_completion_length": 256}, "grpo"),
    ({"num_generations": 8, "beta": 0.04}, "grpo"),
    ({"num_generations": 8, "normalize_advantages": True}, "rloo"),
    ({"teacher_model_name_or_path": "Qwen/Qwen2.5-7B"}, "distillation"),
    ({"loss_type": "nll", "max_length": 512, "packing": True}, "sft"),  # SFTConfig's own keys
    ({"loss_type": {"odd": 1}, "beta": [1, "x"]}, "dpo"),
])
def test_the_trainer_is_read_from_the_keys_only_its_config_class_defines(keys, trainer):
    from recipe_checks.formats.trl import trainer_of

    assert trainer_of({"model_name_or_path": "Qwen/Qwen2.5-0.5B", **keys})[0] == trainer


def test_a_trl_config_without_dtype_loads_its_weights_in_trls_default_float32(tmp_path):
    """ModelConfig.dtype defaults to float32 and the scripts pass it to from_pretrained; bf16: true is autocast.
    Before, the translation left the dtype out and the trace took the checkpoint's (bf16): half the weight memory."""
    from recipe_checks.memory.settings import settings_from_recipe

    path = FORMATS_DIR / "trl-sft-qwen2.5-lora.yaml"
    native = _translated(path)
    assert native.data["model"]["torch_dtype"] == "float32" and native.data["training"]["bf16"] is True
    state, _ = _state(path)
    settings = settings_from_recipe(state.recipe, state.resolved_model().config)
    assert (settings.weights_dtype, settings.precision) == ("float32", "bfloat16")
    written = tmp_path / "bf16.yaml"
    written.write_text(path.read_text() + "dtype: bfloat16\n")
    assert _translated(written).data["model"]["torch_dtype"] == "bfloat16"
    init = tmp_path / "init.yaml"  # the scripts update their model_init_kwargs with the config's
    init.write_text(path.read_text() + "model_init_kwargs: {dtype: float16}\n")
    assert _translated(init).data["model"]["torch_dtype"] == "float16"


def test_trls_4bit_compute_dtype_is_the_model_dtype_and_its_storage_bitsandbytes_default(tmp_path):
    """get_quantization_config (trl/trainer/utils.py, 1.16): bnb_4bit_compute_dtype=model_args.dtype,
    bnb_4bit_quant_storage=model_args.bnb_4bit_quant_storage (None: uint8), no longer the model's dtype."""
    quantization = _translated(FORMATS_DIR / "trl-kto-qwen2.5-qlora.yaml").data["quantization"]
    assert quantization["bnb_4bit_compute_dtype"] == "float32" and "bnb_4bit_quant_storage" not in quantization
    quantization = _translated(FORMATS_DIR / "trl-sft-4bit-without-peft.yaml").data["quantization"]
    assert quantization["bnb_4bit_compute_dtype"] == "bfloat16" and "bnb_4bit_quant_storage" not in quantization
