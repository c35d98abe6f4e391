"""`recipe-checks estimate`: the JSON it prints, its exit codes, and the fixes it traces."""

from __future__ import annotations

import json

from checks.cli import EXIT_FINDINGS, EXIT_OK, EXIT_USAGE, main
from checks.memory.step import settings_from_recipe
from checks.recipe.load import load_text
from checks.recipe.validate import validate
from tests.conftest import GOOD_RECIPE, REPO

CLAIM_8B = REPO / "docs" / "examples" / "claim-llama3-8b-lora-24gb.yaml"


def test_a_recipe_that_fits_exits_0_with_the_fields_promised(write, capsys):
    path = write("fits.yaml", GOOD_RECIPE)
    assert main(["estimate", str(path), "--json", "--no-fixes"]) == EXIT_OK
    out = json.loads(capsys.readouterr().out)
    assert out["fits"] is True
    assert out["peak_bytes"] <= out["budget_bytes"]
    assert out["peak_bytes"] == sum(out["breakdown"].values())
    assert {"weights", "quant_state", "adapters", "activations", "cuda_context"} <= set(out["breakdown"])


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
