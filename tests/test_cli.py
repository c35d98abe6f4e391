"""The recipe-checks command: the same engine as the plugin, exit codes, formats, explain, schema."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from recipe_checks.cli import EXIT_FINDINGS, EXIT_OK, EXIT_USAGE, main
from recipe_checks.models.resolve import resolve_model_config
from recipe_checks.recipe.jsonschema import recipe_json_schema
from tests.conftest import GOOD_RECIPE, RECIPES, REPO


def test_check_passes_the_shipped_recipes(capsys):
    assert main(["check", "--with-vram", str(RECIPES)]) == EXIT_OK
    assert "recipe(s) checked: ok" in capsys.readouterr().out


def test_check_reports_findings_and_exits_1(write, capsys):
    path = write("bad.yaml", GOOD_RECIPE.replace("paged_adamw_8bit", "adamw_torch"))
    assert main(["check", str(path)]) == EXIT_FINDINGS
    out = capsys.readouterr().out
    assert f"{path}:14:10: RC301 QLoRA recipe uses optimizer 'adamw_torch', which is not paged" in out


def test_json_format_is_machine_readable(write, capsys):
    path = write("bad.yaml", GOOD_RECIPE.replace("nf4", "nf5"))
    assert main(["check", str(path), "--format", "json"]) == EXIT_FINDINGS
    report = json.loads(capsys.readouterr().out)
    assert report["failed"] is True
    assert [(f["rule"], f["line"], f["key"]) for f in report["findings"]] == [
        ("RC503", 4, "quantization.bnb_4bit_quant_type")
    ]


def test_github_format_annotates_the_line(write, capsys):
    path = write("bad.yaml", GOOD_RECIPE.replace("bf16: true", "bf16: true\n  fp16: true"))
    main(["check", str(path), "--format", "github"])
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith(f"::error file={path},line=14,") and "title=RC402 precision::" in line for line in lines)


def test_unknown_gpu_is_a_usage_error(write, capsys):
    path = write("good.yaml", GOOD_RECIPE)
    assert main(["check", str(path), "--gpu", "rtx4099"]) == EXIT_USAGE
    assert "did you mean 'rtx4090'" in capsys.readouterr().err


def test_missing_path_is_a_usage_error(capsys):
    assert main(["check", "does/not/exist.yaml"]) == EXIT_USAGE


def test_explain_prints_the_rule_documentation(capsys):
    assert main(["explain", "RC301"]) == EXIT_OK
    out = capsys.readouterr().out
    for heading in ("## What it checks", "## Why it matters", "## Example", "## Use instead"):
        assert heading in out
    assert main(["explain", "qlora-paged-optimizer"]) == EXIT_OK


def test_explain_an_unknown_rule_suggests(capsys):
    assert main(["explain", "RC3O1"]) == EXIT_USAGE
    assert "did you mean 'RC301'" in capsys.readouterr().err


def _pinned(distribution: str) -> str:
    for line in (REPO / "ci" / "constraints.txt").read_text().splitlines():
        name, _, version = line.partition("==")
        if name.strip().lower() == distribution:
            return version.strip()
    raise LookupError(distribution)


def test_json_schema_rejects_unknown_keys_and_knows_library_kwargs():
    schema = recipe_json_schema()
    lora = schema["$defs"]["Lora"]
    assert lora["additionalProperties"] is False
    assert "lora_alpha" in lora["properties"] and "use_dora" in lora["properties"]
    assert "max_seq_length" in schema["$defs"]["Training"]["properties"]


@pytest.mark.parametrize("command", [["gpus"], ["models"], ["explain"]])
def test_listing_commands_run(command, capsys):
    assert main(command) == EXIT_OK
    assert capsys.readouterr().out.strip()


def test_console_script_is_installed():
    done = subprocess.run([sys.executable, "-m", "recipe_checks.cli", "explain", "RC201"], capture_output=True, text=True)
    assert done.returncode == 0 and "RC201 target-matches-nothing" in done.stdout


def test_check_does_not_fail_an_off_target_recipe_that_pytest_deselects(write, capsys):
    # a recipe for a T4 with an error the T4-independent checks would report: pytest deselects it
    path = write("t4.yaml", GOOD_RECIPE.replace("gpu: rtx4090", "gpu: t4").replace("nf4", "nf5"))
    assert main(["check", str(path), "--gpu", "rtx4090", "--format", "json"]) == EXIT_OK
    report = json.loads(capsys.readouterr().out)
    assert report["failed"] is False and report["findings"] == []
    assert report["not_checked"] == [{"path": str(path), "gpus": ["t4"]}]
    assert main(["check", str(path), "--gpu", "rtx4090", "--recipes-all-gpus"]) == EXIT_FINDINGS


def test_check_reports_a_misspelt_gpu_under_gpu_selection(write, capsys):
    path = write("typo.yaml", GOOD_RECIPE.replace("gpu: rtx4090", "gpu: rtx4099"))
    assert main(["check", str(path), "--gpu", "rtx4090"]) == EXIT_FINDINGS
    assert "RC105 'rtx4099' is not a known GPU" in capsys.readouterr().out


def test_estimate_takes_the_same_options_as_check(write, capsys):
    # Llama's config with an auto_map: under trust_remote_code transformers would run the repository's code
    llama = resolve_model_config("meta-llama/Llama-3.1-8B").config
    write("remote/config.json", json.dumps({**llama, "auto_map": {"AutoModelForCausalLM": "modeling_x.XForCausalLM"}}))
    remote = GOOD_RECIPE.replace("model: meta-llama/Llama-3.1-8B",
                                 "model: {id: meta-llama/Llama-3.1-8B, config: config.json, trust_remote_code: true}")
    path = write("remote/remote.yaml", remote)
    assert main(["estimate", str(path), "--no-fixes"]) == EXIT_USAGE
    assert "RC107" in capsys.readouterr().err
    assert main(["estimate", str(path), "--no-fixes", "--recipes-trust-remote-code", "--json"]) == EXIT_OK
    assert json.loads(capsys.readouterr().out)["fits"] is True
    assert main(["estimate", str(path), "--gpu", "rtx4090,t4"]) == EXIT_USAGE


def test_estimate_shows_the_static_findings_when_the_step_cannot_be_built(write, capsys):
    path = write("foreign.yaml", GOOD_RECIPE.replace("[q_proj, k_proj, v_proj, o_proj]", "[query_key_value]"))
    assert main(["estimate", str(path), "--no-fixes"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("recipe-checks: the training step cannot be traced: ")  # the real cause first
    assert "the recipe's 1 error(s) below stop the step as written and may be why" in err
    assert "RC201 target module 'query_key_value' matches nothing in LlamaForCausalLM" in err


def test_a_policy_finding_never_stops_the_trace_nor_is_blamed_for_a_failing_one(write, capsys, monkeypatch):
    from recipe_checks.memory import estimate as engine
    from recipe_checks.memory.errors import TraceError

    path = write("unpaged.yaml", GOOD_RECIPE.replace("paged_adamw_8bit", "adamw_torch"))  # RC301: policy
    assert main(["estimate", str(path), "--no-fixes", "--json"]) == EXIT_OK  # traced all the same
    assert [f["rule"] for f in json.loads(capsys.readouterr().out)["static_errors"]] == ["RC301"]

    def fails(*args, **kwargs):
        raise TraceError("peft: Target module ModuleList() is not supported")

    monkeypatch.setattr(engine, "estimate", fails)
    assert main(["estimate", str(path), "--no-fixes"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err == "recipe-checks: the training step cannot be traced: peft: Target module ModuleList() is not supported\n"


def test_one_unreadable_recipe_does_not_stop_the_batch(write, tmp_path, capsys):
    good = write("good.yaml", GOOD_RECIPE)
    write("odd.yaml", "model: {id: x, config: \"\\0/config.json\"}\n")
    assert main(["check", str(tmp_path), "--format", "json"]) == EXIT_FINDINGS
    report = json.loads(capsys.readouterr().out)
    assert str(good) in report["recipes"] and {f["rule"] for f in report["findings"]} >= {"RC106"}
