"""`recipe-checks estimate`: the JSON it prints, its exit codes, and the fixes it traces."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from types import SimpleNamespace

import pytest
import yaml

from recipe_checks import compat
from recipe_checks.cli import EXIT_FINDINGS, EXIT_OK, EXIT_USAGE, main
from recipe_checks.memory.step import settings_from_recipe
from recipe_checks.recipe.load import load_text
from recipe_checks.recipe.validate import validate
from tests.conftest import GOOD_RECIPE, RECIPES, REPO

CLAIM_8B = REPO / "docs" / "examples" / "claim-llama3-8b-lora-24gb.yaml"


def test_a_recipe_that_fits_exits_0_with_the_fields_promised(write, capsys):
    path = write("fits.yaml", GOOD_RECIPE)
    assert main(["estimate", str(path), "--json", "--no-fixes"]) == EXIT_OK
    out = json.loads(capsys.readouterr().out)
    assert out["fits"] is True
    assert out["peak_bytes"] <= out["budget_bytes"]
    assert {"weights", "quant_state", "adapters", "activations", "cuda_context"} <= set(out["breakdown"])
    # Counted from the model's shapes, not from the trace: Llama 3.1 8B, r=16 on q, k, v, o (hidden 4096,
    # 8 KV heads of 128) has 32 x 16 x (4 x 4096 + 4096 + 1024 + 1024 + 4096) adapter parameters, kept in
    # fp32 by peft, each tensor a multiple of the allocator's 512 bytes: the adapters at the peak are
    # exactly 4 bytes per parameter.
    assert out["trainable_parameters"] == 32 * 16 * (4 * 4096 + 4096 + 1024 + 1024 + 4096) == 13_631_488
    assert out["breakdown"]["adapters"] == 4 * out["trainable_parameters"]


def test_a_recipe_that_does_not_fit_exits_1_with_traced_fixes_ranked(capsys):
    assert main(["estimate", str(CLAIM_8B), "--json"]) == EXIT_FINDINGS
    out = json.loads(capsys.readouterr().out)
    assert out["fits"] is False
    saved = [fix["saved_bytes"] for fix in out["fixes"]]
    assert saved == sorted(saved, reverse=True) and all(s > 0 for s in saved)
    for fix in out["fixes"]:
        assert fix["peak_bytes"] == out["peak_bytes"] - fix["saved_bytes"]
    chunked = next(f for f in out["fixes"] if f["name"].startswith("chunked loss"))
    assert chunked["change"].startswith("training.use_liger_kernel: true")
    # the full logits and their fp32 upcast are what the chunked loss removes: most of logits_loss
    assert chunked["saved_bytes"] > 0.7 * out["breakdown"]["logits_loss"]


def test_bad_input_exits_2(write, capsys):
    assert main(["estimate", str(write("x.yaml", "model: [unclosed\n")), "--json"]) == EXIT_USAGE
    assert "schema errors" in json.loads(capsys.readouterr().out)["error"]
    assert main(["estimate", str(write("y.yaml", GOOD_RECIPE)), "--gpu", "rtx4099", "--json"]) == EXIT_USAGE
    assert "rtx4090" in json.loads(capsys.readouterr().out)["error"]


def _settings(text: str):
    result = validate(load_text(text, "r.yaml"))
    return settings_from_recipe(result.recipe, {"model_type": "llama"})


def test_use_liger_kernel_traces_the_chunked_loss_and_says_what_it_approximates():
    on = _settings(GOOD_RECIPE.replace("training:\n", "training:\n  use_liger_kernel: true\n"))
    assert on.chunked_loss is True
    assert any("rope, rms_norm, swiglu kernels are traced as transformers' own modules" in n for n in on.notes)
    only_loss = _settings(GOOD_RECIPE.replace("training:\n", "training:\n  use_liger_kernel: true\n  liger_kernel_config:"
                                              " {rope: false, rms_norm: false, swiglu: false}\n"))
    assert only_loss.chunked_loss is True and not any("Liger" in n for n in only_loss.notes)
    no_fused = _settings(GOOD_RECIPE.replace("training:\n", "training:\n  use_liger_kernel: true\n  liger_kernel_config:"
                                             " {fused_linear_cross_entropy: false}\n"))
    assert no_fused.chunked_loss is False
    assert _settings(GOOD_RECIPE).chunked_loss is False


PINNED = REPO / "tests" / "pinned_peaks.yaml"
PINNED_LIBRARIES = ("torch", "transformers", "peft", "bitsandbytes", "diffusers", "trl")  # FLUX and DPO pins depend on the last two


@pytest.fixture(scope="module")
def shipped_estimates() -> dict:
    """Each shipped recipe estimated once against each GPU it declares (the trace is shared between GPUs)."""
    from recipe_checks.gpus import GpuCatalog
    from recipe_checks.memory.estimate import estimate
    from recipe_checks.models.resolve import resolve_model_config

    catalog = GpuCatalog.load()
    out = {}
    for path in sorted(RECIPES.glob("*.yaml")):
        recipe = validate(load_text(path.read_text(encoding="utf-8"), path.name)).recipe
        resolved = resolve_model_config(recipe.model.id)
        out[path.name] = {gpu: estimate(recipe, resolved, catalog.get(gpu), with_fixes=False)
                          for gpu in recipe.hardware.gpu}
    return out


def _pinned_figures(estimates: dict) -> dict:
    return {
        name: {"traced_peak_bytes": next(iter(by_gpu.values())).trace.timeline.peak_bytes,
               "fits": {gpu: e.fits for gpu, e in by_gpu.items()}}
        for name, by_gpu in estimates.items()
    }


@pytest.mark.slow
def test_shipped_recipes_trace_the_peaks_pinned_for_these_library_versions(shipped_estimates):
    installed = {name: compat.installed_version(name) for name in PINNED_LIBRARIES}
    figures = _pinned_figures(shipped_estimates)
    if os.environ.get("RECIPE_CHECKS_PIN_PEAKS") == "1":  # re-pin after a deliberate change of the engine
        PINNED.write_text(
            "# Traced tensor peaks (bytes, exact) of recipes/*.yaml, each against the GPUs it declares, with the\n"
            "# libraries below. Re-pin after a deliberate engine change: RECIPE_CHECKS_PIN_PEAKS=1 pytest "
            "tests/test_estimate.py\n" + yaml.safe_dump({"libraries": installed, "recipes": figures}, sort_keys=True),
            encoding="utf-8")
    pinned = yaml.safe_load(PINNED.read_text(encoding="utf-8"))
    if pinned["libraries"] != installed:
        pytest.skip(f"peaks are pinned for {pinned['libraries']}; installed: {installed}. Install "
                    "ci/constraints.txt to compare, or re-pin with RECIPE_CHECKS_PIN_PEAKS=1")
    assert figures == pinned["recipes"]



# --- fixes: combinations when no single fix fits, and weights that exceed the card alone ----------

QWEN_14B_LORA = """\
model: {id: Qwen/Qwen2.5-14B, torch_dtype: bfloat16}
lora: {r: 16, lora_alpha: 32, target_modules: [q_proj, k_proj, v_proj, o_proj]}
training: {per_device_train_batch_size: 2, bf16: true, gradient_checkpointing: true, max_seq_length: 2048}
hardware: {gpu: rtx4090}
"""
QLORA = "QLoRA (4-bit NF4 base)"
HALF_BATCH = "smaller micro-batch, same effective batch"


def _fake_trace(calls: list):
    """A stand-in for trace_training_step whose peak is a made-up function of the settings (GiB): weights
    10 (3 in 4-bit), activations 2 per sequence (a third with checkpointing) and 1.5 of logits per
    sequence (none with a chunked loss). It records every settings it is asked to trace."""
    from recipe_checks.memory.tracker import MemoryTimeline

    def trace(resolved, settings, task="CAUSAL_LM"):
        calls.append(settings)
        weights = (3 if settings.quant_4bit else 10) * GIB
        activations = settings.micro_batch * 2 * GIB // (3 if settings.gradient_checkpointing else 1)
        logits = 0 if settings.chunked_loss else int(settings.micro_batch * 1.5 * GIB)
        breakdown = {"weights": weights, "activations": activations, "logits_loss": logits}
        timeline = MemoryTimeline(sum(breakdown.values()), "backward", breakdown, weights, 1)
        return SimpleNamespace(timeline=timeline, notes=[], trainable_params=1)

    return trace


GIB = 1024**3


def _base(settings, trace, budget_gib: float):
    from recipe_checks.memory.estimate import Estimate, _total

    traced = trace(None, settings)
    return Estimate(peak_bytes=_total(traced), budget_bytes=int(budget_gib * GIB), budget_source="test",
                    breakdown={}, paged_bytes=0, peak_phase="backward", trace=traced)


def test_when_no_single_fix_fits_the_first_traced_combination_that_fits_is_offered(monkeypatch):
    from recipe_checks.memory import estimate as est

    calls: list = []
    monkeypatch.setattr("recipe_checks.memory.step.trace_training_step", _fake_trace(calls))
    settings = dataclasses.replace(_settings(GOOD_RECIPE.replace("  load_in_4bit: true\n", "")),
                                   micro_batch=4, gradient_checkpointing=True, quant_4bit=(), optim="adamw_torch")
    resolved = SimpleNamespace(config={"model_type": "llama"})
    base = _base(settings, _fake_trace([]), budget_gib=9.5)  # weights 10 + 4 x (0.67 + 1.5): 18.7 GiB
    singles = est.rank_fixes(resolved, settings, "CAUSAL_LM", base)
    assert singles and not any(f.fits for f in singles)
    calls.clear()
    combined = est.combine_fixes(resolved, settings, "CAUSAL_LM", base)
    assert combined is not None and combined.fits and combined.peak_bytes <= base.budget_bytes
    # greedy: QLoRA saves the most (7 GiB), then halving the batch is the first fix on top that fits
    assert combined.parts == (QLORA, HALF_BATCH)
    assert combined.name == f"{QLORA} + {HALF_BATCH}"
    assert "load_in_4bit: true" in combined.change and "per_device_train_batch_size: 2" in combined.change
    # traced as a whole: the settings with both applied were traced, and the peak is that trace's
    both = calls[-1]
    assert both.quant_4bit and both.micro_batch == 2 and both.optim == "paged_adamw_8bit"
    assert combined.peak_bytes == est._total(_fake_trace([])(None, both))
    assert len(calls) <= est.COMBINATION_ROUNDS * len(est.candidate_fixes(settings, "llama"))


def test_a_combination_applies_a_fix_again_and_gives_up_after_the_rounds(monkeypatch):
    from recipe_checks.memory import estimate as est

    calls: list = []
    monkeypatch.setattr("recipe_checks.memory.step.trace_training_step", _fake_trace(calls))
    settings = dataclasses.replace(_settings(GOOD_RECIPE), micro_batch=8, gradient_checkpointing=True,
                                   chunked_loss=True, seq_len=128, quant_4bit=(("quant_type", "nf4"),),
                                   optim="paged_adamw_8bit")
    resolved = SimpleNamespace(config={"model_type": "qwen2_moe"})  # no chunked loss fix for it
    # only the batch can shrink: 8 -> 4 -> 2 -> 1, one halving a round; the change names the last one
    fits = est.combine_fixes(resolved, settings, "CAUSAL_LM", _base(settings, _fake_trace([]), budget_gib=5.5))
    assert fits is not None and fits.parts == (HALF_BATCH,) and "per_device_train_batch_size: 2," in fits.change
    calls.clear()
    assert est.combine_fixes(resolved, settings, "CAUSAL_LM", _base(settings, _fake_trace([]), budget_gib=1)) is None
    assert len(calls) == est.COMBINATION_ROUNDS  # one candidate a round, each traced once


def test_weights_alone_over_the_budget_name_the_smallest_gpu_that_fits_the_recipe_as_it_is(monkeypatch):
    from recipe_checks.gpus import GpuCatalog
    from recipe_checks.memory import estimate as est

    monkeypatch.setattr("recipe_checks.memory.step.trace_training_step", _fake_trace([]))
    recipe = validate(load_text(GOOD_RECIPE.replace("  load_in_4bit: true\n", "").replace(
        "  per_device_train_batch_size: 1", "  per_device_train_batch_size: 2"), "r.yaml")).recipe
    resolved = SimpleNamespace(config={"model_type": "llama"}, name="m")
    catalog = GpuCatalog.load()
    result = est.estimate(recipe, resolved, catalog.get("rtx4060"), with_fixes=False, catalog=catalog)
    assert result.weights_bytes == 10 * GIB > result.budget_bytes and not result.fits
    # the smallest card by memory whose budget (memory less the margin) holds the peak; all these have bf16
    fitting = [p for p in catalog if result.peak_bytes <= est.budget_for(recipe, p)[0] and p.supports_bf16]
    smallest = min(fitting, key=lambda p: (p.memory_bytes, p.key))
    assert result.smallest_fitting_gpu == smallest.key
    assert result.notes[0] == result.weights_note
    assert result.weights_note.startswith("the model's weights alone take 10.0 GiB, more than the ")
    assert f": {smallest.key} ({smallest.name}" in result.weights_note
    on_a_card_that_holds_them = est.estimate(recipe, resolved, catalog.get("rtx4090"), with_fixes=False)
    assert on_a_card_that_holds_them.weights_note is None and on_a_card_that_holds_them.smallest_fitting_gpu is None


@pytest.mark.slow
def test_qwen2_5_14b_lora_on_rtx4090_fits_with_qlora_plus_batch_1(write, capsys):
    # traced for real: 6 single fixes, then 1 combination (13.7 s measured here, 42 s with the 2 cores busy)
    path = write("qwen14b.yaml", QWEN_14B_LORA)
    assert main(["estimate", str(path), "--json"]) == EXIT_FINDINGS
    out = json.loads(capsys.readouterr().out)
    singles = [f for f in out["fixes"] if not f["parts"]]
    assert singles and not any(f["fits"] for f in singles)  # neither QLoRA nor batch 1 alone
    first = out["fixes"][0]
    assert first["parts"] == [QLORA, HALF_BATCH] and first["fits"] is True
    assert "per_device_train_batch_size: 1, gradient_accumulation_steps: 2" in first["change"]
    assert first["peak_bytes"] <= out["budget_bytes"]
    # traced, not added up: the two savings alone do not make the combination's
    saved = {f["name"]: f["saved_bytes"] for f in singles}
    assert first["saved_bytes"] != saved[QLORA] + saved[HALF_BATCH]
    assert out["weights_exceed_budget"] is True and out["weights_bytes"] > out["budget_bytes"]
    assert out["smallest_fitting_gpu"] == "a100-40gb"  # the 37.5 GiB peak fits its 38 GiB budget, not a 5090's 30
    assert out["notes"][0].startswith("the model's weights alone take 27.5 GiB, more than the 22.8 GiB budget")


ADAPTER_CLAIM = re.compile(r"#.*?(\d+(?:\.\d+)?)M adapter parameters")


@pytest.mark.slow
def test_the_adapter_parameters_a_recipe_comment_quotes_are_the_traced_ones():
    from recipe_checks.memory.step import trace_training_step
    from recipe_checks.models.resolve import resolve_model_config

    claims = {p: ADAPTER_CLAIM.search(p.read_text(encoding="utf-8")) for p in sorted(RECIPES.glob("*.yaml"))}
    claims = {p: float(m.group(1)) for p, m in claims.items() if m}
    assert claims, "no shipped recipe quotes its adapter size any more: drop this test"
    for path, millions in claims.items():
        recipe = validate(load_text(path.read_text(encoding="utf-8"), path.name)).recipe
        resolved = resolve_model_config(recipe.model.id)
        trace = trace_training_step(resolved, settings_from_recipe(recipe, resolved.config))
        assert round(trace.trainable_params / 1e6, 1) == millions, (path.name, trace.trainable_params)


def test_the_vram_check_shows_the_weights_message_and_the_combination(write, monkeypatch):
    from recipe_checks.engine import run_check
    from recipe_checks.context import RecipeState
    from recipe_checks.gpus import GpuCatalog
    from recipe_checks.options import Options

    monkeypatch.setattr("recipe_checks.memory.step.trace_training_step", _fake_trace([]))
    path = write("r.yaml", GOOD_RECIPE.replace("  load_in_4bit: true\n", "").replace(
        "  per_device_train_batch_size: 1", "  per_device_train_batch_size: 4").replace("rtx4090", "rtx4060"))
    state = RecipeState.from_file(path, str(path), Options(), GpuCatalog.load())
    [finding] = run_check(state, "vram", "rtx4060").findings
    assert finding.rule_id == "RC601"
    assert finding.help.startswith("the model's weights alone take 10.0 GiB, more than the 7.6 GiB budget")
    combination = next(part for part in finding.help.split("; ") if " + " in part)
    assert "fits)" in combination  # "QLoRA (4-bit NF4 base) + ...: peak ... (saves ..., fits)"


def _small(model_type: str, architecture: str, **extra):
    from recipe_checks.models.resolve import ResolvedModel

    return ResolvedModel(f"small-{model_type}", {
        "model_type": model_type, "architectures": [architecture], "hidden_size": 256, "intermediate_size": 512,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64,
        "vocab_size": 1024, "max_position_embeddings": 2048, **extra}, "test")


def test_flash_attention_on_a_model_without_sdpa_is_traced_with_a_fused_stand_in_not_refused():
    """Gemma 2 has no sdpa path in transformers, the stand-in for flash attention elsewhere: its flash attention
    recipes were RC601 errors ("cannot be traced"). The stand-in is sdpa's kernel under a name of its own: on a
    model with both, it traces exactly what sdpa does."""
    from recipe_checks.memory.step import StepSettings, trace_training_step

    settings = StepSettings(micro_batch=2, seq_len=128, precision="bfloat16", weights_dtype="bfloat16",
                            optim="adamw_torch", attn_implementation="sdpa")
    llama = _small("llama", "LlamaForCausalLM")
    sdpa = trace_training_step(llama, settings).timeline
    stand_in = trace_training_step(llama, dataclasses.replace(settings, attn_implementation=compat.FLASH_STAND_IN))
    assert (stand_in.timeline.peak_bytes, stand_in.timeline.breakdown) == (sdpa.peak_bytes, sdpa.breakdown)

    recipe = validate(load_text(GOOD_RECIPE.replace("model: meta-llama/Llama-3.1-8B",
                                                    "model: {id: google/gemma-2-9b, attn_implementation: "
                                                    "flash_attention_2}"), "r.yaml")).recipe
    gemma = _small("gemma2", "Gemma2ForCausalLM", query_pre_attn_scalar=64, sliding_window=64)
    chosen = settings_from_recipe(recipe, gemma.config)
    assert chosen.attn_implementation == compat.FLASH_STAND_IN
    assert any("transformers has no sdpa path for this model" in note for note in chosen.notes)
    assert trace_training_step(gemma, chosen).timeline.peak_bytes > 0  # traced, where it raised before
    assert settings_from_recipe(recipe, _small("llama", "LlamaForCausalLM").config).attn_implementation == "sdpa"
