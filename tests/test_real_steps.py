"""Real steps and runs: cpu-step over the kinds of recipe people train, the rules no recipe file can
trigger (by switching the feature they guard off), and gpu-step / gpu-train's logic on a CPU device
standing in for a CUDA one (the memory limit, the out-of-memory report, the comparison with the trace)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from tests.conftest import RECIPES

from recipe_checks.engine import run_check
from recipe_checks.gpus import GIB, MIB, GpuCatalog
from recipe_checks.options import Options

QWEN_LORA = """\
model: Qwen/Qwen2.5-0.5B
lora:
  r: 8
  lora_alpha: 16
  target_modules: [q_proj, v_proj]
training:
  per_device_train_batch_size: 1
  max_seq_length: 256
  learning_rate: 1.0e-4
hardware:
  gpu: rtx4090
"""


def _state(path: Path):
    from recipe_checks.context import RecipeState

    return RecipeState.from_file(path, path.name, Options(), GpuCatalog.load(()))


def _write(tmp_path: Path, text: str, name: str = "recipe.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def _errors(result) -> list[str]:
    return [f"{f.rule_id} {f.message}" for f in result.errors]


# -- cpu-step on the recipes people train --------------------------------------------------------------
KINDS = {
    "gpt2-conv1d-lora": """\
        model: openai-community/gpt2
        lora: {r: 8, lora_alpha: 16, target_modules: [c_attn, c_proj], fan_in_fan_out: true}
        training: {per_device_train_batch_size: 2, max_seq_length: 128, learning_rate: 2.0e-4}
        """,
    "qwen-8bit-lora": """\
        model: Qwen/Qwen2.5-0.5B
        quantization: {load_in_8bit: true}
        lora: {r: 8, lora_alpha: 16, target_modules: all-linear}
        training: {per_device_train_batch_size: 1, max_seq_length: 128, optim: paged_adamw_8bit, fp16: true}
        """,
    # 4-bit weights packed into a float dtype (as Axolotl and FSDP-QLoRA set quant_storage): their bytes are
    # codes, not numbers, so the step must not read them as NaN or as changed
    "qlora-bf16-quant-storage": """\
        model: Qwen/Qwen2.5-0.5B
        quantization: {load_in_4bit: true, bnb_4bit_quant_type: nf4, bnb_4bit_compute_dtype: float16,
                       bnb_4bit_quant_storage: bfloat16}
        lora: {r: 8, lora_alpha: 16, target_modules: all-linear}
        training: {per_device_train_batch_size: 1, max_seq_length: 128, optim: paged_adamw_8bit, fp16: true}
        """,
    "reentrant-checkpointing-accumulation-warmup": """\
        model: Qwen/Qwen2.5-0.5B
        lora: {r: 8, lora_alpha: 16, target_modules: [q_proj, k_proj, v_proj, o_proj]}
        training:
          per_device_train_batch_size: 1
          gradient_accumulation_steps: 4
          max_seq_length: 128
          warmup_steps: 20
          lr_scheduler_type: cosine
          gradient_checkpointing: true
          gradient_checkpointing_kwargs: {use_reentrant: true}
        """,
}


@pytest.mark.parametrize("recipe", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_recipe_passes_cpu_step(recipe):
    result = run_check(_state(recipe), "cpu-step")
    assert result.skipped is None and result.error is None, (result.skipped, result.error)
    assert _errors(result) == []
    assert any(f.rule_id == "RC701" and "one real step" in f.message for f in result.infos)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_the_kinds_of_recipe_people_train_pass_cpu_step(tmp_path, kind):
    result = run_check(_state(_write(tmp_path, KINDS[kind])), "cpu-step")
    assert result.error is None and result.skipped is None, (result.error, result.skipped)
    assert _errors(result) == []


def test_the_step_is_the_recipes_and_reports_what_it_saw(tmp_path):
    from recipe_checks.run.cpu_step import cpu_step

    state = _state(_write(tmp_path, KINDS["reentrant-checkpointing-accumulation-warmup"]))
    report = cpu_step(state).report
    assert len(report.losses) == 4  # one per micro-batch of the accumulation
    # the first step past warmup: cosine's peak, TrainingArguments' default 5e-5 (warmup's first step has lr 0)
    assert report.step_index == 20 and report.learning_rate == pytest.approx(5.0e-5)
    assert report.identity_max_diff == 0.0  # LoRA's zero B: the adapted model is exactly the base
    assert report.block_recomputes == report.block_forwards == 4  # reentrant checkpointing re-ran block 0
    assert report.no_gradient == [] and report.unchanged == [] and report.base_changed == []


def test_lora_a_gets_its_gradient_only_after_b_moved(tmp_path, monkeypatch):
    """With the probe backward switched off, every A matrix looks gradient-less: the pair is judged."""
    from recipe_checks.run import step

    state = _state(_write(tmp_path, QWEN_LORA))
    real = step._note_gradients
    calls = []

    def first_call_only(trainable, got, report):
        calls.append(report)
        if len(calls) == 1:
            real(trainable, got, report)

    monkeypatch.setattr(step, "_note_gradients", first_call_only)
    result = run_check(state, "cpu-step")
    assert any(e.startswith("RC704") and "q_proj" in e for e in _errors(result)), _errors(result)


def test_checkpointing_that_does_nothing_is_rc707(tmp_path, monkeypatch):
    from recipe_checks import compat

    monkeypatch.setattr(compat, "enable_activation_checkpointing", lambda model, kwargs: None)
    recipe = QWEN_LORA.replace("  learning_rate: 1.0e-4\n", "  learning_rate: 1.0e-4\n  gradient_checkpointing: true\n")
    result = run_check(_state(_write(tmp_path, recipe)), "cpu-step")
    assert [e[:5] for e in _errors(result)] == ["RC707"], _errors(result)
    assert result.errors[0].location.line == recipe.splitlines().index("  gradient_checkpointing: true") + 1


def test_a_base_weight_that_trains_is_rc705(tmp_path, monkeypatch):
    from recipe_checks.run import cpu_step as module

    real_build = module.build_training

    def unfreeze_one(*args, **kwargs):
        setup = real_build(*args, **kwargs)
        setup.model.get_base_model().model.layers[0].mlp.up_proj.weight.requires_grad_(True)
        return setup

    monkeypatch.setattr(module, "build_training", unfreeze_one)
    result = run_check(_state(_write(tmp_path, QWEN_LORA)), "cpu-step")
    assert any(e.startswith("RC705") and "model.layers.0.mlp.up_proj" in e for e in _errors(result)), _errors(result)


def test_a_recipe_the_libraries_cannot_build_is_a_finding_not_a_crash(tmp_path):
    recipe = QWEN_LORA.replace("training:\n", "quantization: {load_in_4bit: true, bnb_4bit_compute_dtype: ''}\ntraining:\n")
    state = _state(_write(tmp_path, recipe))
    result = run_check(state, "cpu-step")
    assert result.error is None
    assert result.skipped and "quantization" in result.skipped  # the static error (RC504) explains it


# -- gpu-step and gpu-train on a CPU device standing in for a CUDA one -----------------------------------
class StandInGpu:
    """A CPU device that answers as a CUDA GPU: the code path of gpu-step runs, counted by CpuDevice."""

    def __new__(cls, total: int, name: str = "NVIDIA H200"):
        from recipe_checks.run.device import CpuDevice

        device = CpuDevice(total_memory=total)
        device.kind = "cuda"
        device.name = name
        device.torch_device = "cpu"  # where its tensors live
        return device


BETA_1_5 = QWEN_LORA.replace("  learning_rate: 1.0e-4\n", "  learning_rate: 1.0e-4\n  adam_beta1: 1.5\n")


@pytest.mark.parametrize("recipe", ["beta-1.5", "flux1-dev-qlora-rtx4090"])
def test_a_fixture_cache_that_cannot_be_written_fails_cpu_step_and_never_passes_ci(pytester, recipe):
    """A recipe cpu-step would reject (Adam's beta1 1.5), run where no fixture can be written (a path under a
    file, as a read-only cache or a full disk fail alike): the check fails with the cache's error and its fix,
    under `-m "not slow" --recipes-strict`, instead of skipping and letting CI pass."""
    text = BETA_1_5 if recipe == "beta-1.5" else (RECIPES / f"{recipe}.yaml").read_text(encoding="utf-8")
    pytester.makefile(".yaml", recipe=text)
    (pytester.path / "a-file").write_text("not a directory", encoding="utf-8")
    result = pytester.runpytest("recipe.yaml", "-k", "cpu-step", "-m", "not slow", "--recipes-strict",
                                f"--recipes-fixture-cache={pytester.path / 'a-file' / 'cache'}", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1, deselected=result.parseoutcomes().get("deselected", 0))
    result.stdout.fnmatch_lines(["*RC701 the real step could not run: cannot write the tiny-random model*"
                                 "into the fixture cache*", "*help: make the fixture cache writable*"])
    assert result.ret == pytest.ExitCode.TESTS_FAILED


def test_cpu_train_with_a_fixture_cache_that_cannot_be_written_is_an_error(tmp_path, monkeypatch):
    """cpu-train runs after cpu-step passed, possibly answered from the result cache without a fixture: its own
    fixture then fails alike (here cpu-step's gate is lifted to reach it)."""
    from recipe_checks import engine
    from recipe_checks.context import RecipeState

    monkeypatch.delitem(engine.PREREQUISITES, "cpu-train")
    (tmp_path / "a-file").write_text("not a directory", encoding="utf-8")
    path = _write(tmp_path, QWEN_LORA)
    state = RecipeState.from_file(path, path.name, Options(fixture_cache=str(tmp_path / "a-file" / "cache")),
                                  GpuCatalog.load(()))
    result = run_check(state, "cpu-train")
    assert result.skipped is None and result.error is None, (result.skipped, result.error)
    assert [f.rule_id for f in result.errors] == ["RC711"]
    assert "cannot write the tiny-random model" in result.errors[0].message


@pytest.fixture
def tiny_llama_recipe(tmp_path):
    """A recipe whose 'full-size' model is a tiny Llama config, so a CPU can run gpu-step's code."""
    from recipe_checks.fixtures.tiny import tiny_config
    from recipe_checks.models.resolve import resolve_model_config

    full = resolve_model_config("meta-llama/Llama-3.1-8B", None)
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "config.json").write_text(json.dumps(tiny_config(full.config)), encoding="utf-8")
    return _write(tmp_path, """\
        model: {config: tiny}
        lora: {r: 8, lora_alpha: 16, target_modules: [q_proj, v_proj]}
        training: {per_device_train_batch_size: 2, max_seq_length: 64, learning_rate: 1.0e-3, max_grad_norm: 1.0}
        hardware: {gpu: rtx4090}
        """)


def _recipe_and_model(path):
    state = _state(path)
    return state.recipe, state.resolved_model()


def test_gpu_step_on_a_larger_gpu_is_limited_to_the_target_and_compared_with_the_trace(tiny_llama_recipe):
    from recipe_checks.run.gpu import gpu_step

    recipe, resolved = _recipe_and_model(tiny_llama_recipe)
    target = GpuCatalog.load(()).get("rtx4090")
    device = StandInGpu(141 * GIB)
    outcome = gpu_step(recipe, resolved, target, device)
    assert outcome.skip is None and outcome.out_of_memory is None
    assert outcome.plan.limit_bytes < target.memory_bytes < 141 * GIB  # the target's memory, less the context
    comparison = outcome.comparison
    assert comparison.fits and 0 < comparison.measured_allocated < 64 * MIB
    # like with like: a CPU device has no CUDA context, and the counters are the tensors the trace counts
    assert "traced estimate" in " ".join(comparison.lines())
    assert device.allocated() == 0 and device._limit is None  # released and unlimited for the next recipe


def test_an_out_of_memory_gpu_step_is_reported_with_its_numbers_and_the_next_recipe_runs(tiny_llama_recipe):
    from recipe_checks.run.gpu import gpu_step

    recipe, resolved = _recipe_and_model(tiny_llama_recipe)
    big = GpuCatalog.load(()).get("rtx4090")
    from recipe_checks.run.measure import cuda_context_bytes

    # a card whose memory leaves 2 MiB beside the CUDA context: less than the tiny model's step needs
    mib = (cuda_context_bytes() + 2 * MIB) // MIB
    tiny_card = big.model_copy(update={"key": "tiny-card", "memory_gb": mib / 1024, "memory_mib": mib})
    device = StandInGpu(141 * GIB)
    # 8 x 512 tokens: the logits alone (8 MiB in fp32) are more than the card leaves
    longer = recipe.model_copy(update={"training": recipe.training.model_copy(
        update={"per_device_train_batch_size": 8, "max_seq_length": 512})})
    outcome = gpu_step(longer, resolved, tiny_card, device, estimate=_estimate(recipe, resolved, big))
    oom = outcome.out_of_memory
    assert oom is not None and oom.requested_bytes and oom.requested_bytes > 0
    assert "Tried to allocate" in oom.message and oom.budget_bytes
    assert device.allocated() == 0 and device._limit is None
    again = gpu_step(recipe, resolved, big, device)
    assert again.out_of_memory is None and again.comparison.fits


def _estimate(recipe, resolved, profile):
    from recipe_checks.memory.estimate import estimate

    return estimate(recipe, resolved, profile)


def test_gpu_step_skips_a_smaller_gpu_and_one_without_bf16(tiny_llama_recipe):
    from recipe_checks.run.gpu import gpu_step

    recipe, resolved = _recipe_and_model(tiny_llama_recipe)
    target = GpuCatalog.load(()).get("rtx4090")
    small = gpu_step(recipe, resolved, target, StandInGpu(16 * GIB, name="NVIDIA T4"))
    assert small.skip and "16.00 GiB" in small.skip or "16" in small.skip
    bf16_recipe = recipe.model_copy(update={"training": recipe.training.model_copy(update={"bf16": True})})
    device = StandInGpu(141 * GIB, name="Tesla V100")
    device._bf16 = False
    no_bf16 = gpu_step(bf16_recipe, resolved, target, device)
    assert no_bf16.skip and "bf16" in no_bf16.skip


def test_gpu_train_learns_within_the_budget_and_measures_tokens_per_second(tiny_llama_recipe):
    from recipe_checks.run.gpu import gpu_train

    recipe, resolved = _recipe_and_model(tiny_llama_recipe)
    outcome = gpu_train(recipe, resolved, GpuCatalog.load(()).get("rtx4090"), StandInGpu(141 * GIB), steps=10)
    assert outcome.out_of_memory is None and outcome.comparison.fits
    report = outcome.train
    assert report.finite and report.drop > 0.001 and report.tokens_per_second > 0
    assert report.base_changed == [] and report.adapters_changed


def test_gpu_items_are_collected_with_the_gpu_marker_and_skip_naming_the_requirement(pytester):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the items run for real here")
    pytester.makefile(".yaml", good=QWEN_LORA)
    result = pytester.runpytest("good.yaml", "-m", "gpu", "-rs", "-p", "no:cacheprovider")
    result.assert_outcomes(skipped=2, deselected=9)
    result.stdout.fnmatch_lines(["*needs a CUDA GPU: torch.cuda.is_available() is False here*"])


def test_the_gpu_rules_report_through_the_engine_with_a_device_standing_in(tiny_llama_recipe, monkeypatch):
    from recipe_checks.run import gpu

    state = _state(tiny_llama_recipe)
    without = run_check(state, "gpu-step", "rtx4090")
    assert without.skipped and "no CUDA device" in without.skipped  # this machine: the requirement named
    monkeypatch.setattr(gpu, "local_device", lambda: StandInGpu(141 * GIB))
    state = _state(tiny_llama_recipe)
    step = run_check(state, "gpu-step", "rtx4090")
    assert step.error is None and not step.errors
    assert [f.rule_id for f in step.infos] == ["RC721"] and "limited to" in step.infos[0].message
    train = run_check(state, "gpu-train", "rtx4090")
    assert train.error is None and not train.errors, _errors(train)
    assert "tokens/s on NVIDIA H200" in train.infos[0].message


def test_activation_checkpointing_the_new_name_is_traced_and_run_as_checkpointing(tmp_path):
    from recipe_checks.memory.settings import settings_from_recipe

    recipe_text = QWEN_LORA.replace("  learning_rate: 1.0e-4\n", "  learning_rate: 1.0e-4\n  activation_checkpointing: true\n")
    state = _state(_write(tmp_path, recipe_text))
    assert settings_from_recipe(state.recipe, state.resolved_model().config).gradient_checkpointing
    from recipe_checks.run.cpu_step import cpu_step

    report = cpu_step(state).report
    assert report.checkpointing_asked and report.block_recomputes > 0
