"""`recipe-checks estimate`: the JSON it prints, its exit codes, and the fixes it traces."""

from __future__ import annotations

import json
import os

import pytest
import yaml

from checks import compat
from checks.cli import EXIT_FINDINGS, EXIT_OK, EXIT_USAGE, main
from checks.memory.step import settings_from_recipe
from checks.recipe.load import load_text
from checks.recipe.validate import validate
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
PINNED_LIBRARIES = ("torch", "transformers", "peft", "bitsandbytes")


@pytest.fixture(scope="module")
def shipped_estimates() -> dict:
    """Each shipped recipe estimated once against each GPU it declares (the trace is shared between GPUs)."""
    from checks.gpus import GpuCatalog
    from checks.memory.estimate import estimate
    from checks.models.resolve import resolve_model_config

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

