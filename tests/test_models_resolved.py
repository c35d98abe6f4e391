"""The models public example configs name resolve offline (issue 20): aliases, adapters, new bundled families;
a model whose config is not here is 'not checked', a warning that --recipes-strict fails."""

from __future__ import annotations

import json

import pytest
import yaml

from recipe_checks.cli import EXIT_FINDINGS, EXIT_OK, main
from recipe_checks.models.resolve import BUNDLED_DIR, ModelResolutionError, bundled_index, resolve_model_config
from recipe_checks.models.skeleton import build_meta_model
from tests.conftest import GOOD_RECIPE

# The parameter count printed by the meta-device build of each config added for issue 20 (transformers 5.24),
# the same number as the entry's params_b in configs/index.yaml. Exact: a changed field changes the count.
NEW_FAMILIES = {
    "openai/gpt-oss-20b": 20_914_757_184,
    "mistralai/Mixtral-8x22B-v0.1": 140_620_634_112,
    "Qwen/Qwen3-4B-Instruct-2507": 4_022_468_096,
    "Qwen/Qwen2-1.5B-Instruct": 1_543_714_304,
    "codellama/CodeLlama-7b-hf": 6_738_546_688,
    "codellama/CodeLlama-13b-hf": 13_016_028_160,
    "Qwen/Qwen1.5-MoE-A2.7B-Chat": 14_315_784_192,
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B": 1_777_088_000,
}


@pytest.mark.parametrize(("alias", "hub_id"), [
    ("NousResearch/Llama-3.2-1B", "meta-llama/Llama-3.2-1B"),
    ("unsloth/Llama-3.2-1B-Instruct", "meta-llama/Llama-3.2-1B"),
    ("unsloth/Llama-3.2-1B-Instruct-bnb-4bit", "meta-llama/Llama-3.2-1B"),
    ("NousResearch/Meta-Llama-3-8B", "meta-llama/Meta-Llama-3-8B"),
    ("NousResearch/Meta-Llama-3.1-8B", "meta-llama/Llama-3.1-8B"),
    ("mistral-community/Mixtral-8x22B-v0.1", "mistralai/Mixtral-8x22B-v0.1"),
])
def test_an_alias_resolves_to_its_bundled_config(alias, hub_id):
    resolved = resolve_model_config(alias)
    assert resolved.source.startswith(f"bundled config of {hub_id} ")
    assert resolved.config == json.loads((BUNDLED_DIR / bundled_index()[hub_id.lower()].file).read_text())


@pytest.mark.parametrize("hub_id", sorted(NEW_FAMILIES))
def test_a_new_bundled_family_builds_with_its_published_parameter_count(hub_id):
    model = build_meta_model(resolve_model_config(hub_id))
    count = sum(p.numel() for p in model.parameters())
    assert count == NEW_FAMILIES[hub_id]
    entry = bundled_index()[hub_id.lower()]
    index = yaml.safe_load((BUNDLED_DIR / "index.yaml").read_text(encoding="utf-8"))
    assert index[entry.hub_id]["params_b"] == round(count / 1e9, 4)


# -- an adapter repository named as the model -------------------------------------------------------------

def _adapter(folder, base: str):
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "base_model_name_or_path": base}))
    return folder


def test_a_local_adapter_resolves_to_its_base_model(tmp_path):
    adapter = _adapter(tmp_path / "my-adapter", "meta-llama/Llama-3.2-1B")
    resolved = resolve_model_config(str(adapter))
    assert resolved.config == resolve_model_config("meta-llama/Llama-3.2-1B").config
    assert resolved.source.startswith("base model meta-llama/Llama-3.2-1B of the adapter ")


def test_a_cached_adapter_resolves_to_its_base_model_without_the_network(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--alignment-handbook--zephyr-7b-sft-qlora"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    _adapter(repo / "snapshots" / commit, "mistralai/Mistral-7B-v0.1")
    resolved = resolve_model_config("alignment-handbook/zephyr-7b-sft-qlora")
    assert resolved.config["model_type"] == "mistral"
    assert "bundled config of mistralai/Mistral-7B-v0.1" in resolved.source


def test_an_adapter_whose_base_is_not_here_says_so_and_stays_not_checked(tmp_path):
    adapter = _adapter(tmp_path / "orphan", "some-org/not-bundled-anywhere")
    with pytest.raises(ModelResolutionError) as info:
        resolve_model_config(str(adapter))
    assert "is an adapter" in str(info.value) and "'some-org/not-bundled-anywhere'" in str(info.value)
    assert info.value.missing and "hf download some-org/not-bundled-anywhere config.json" in info.value.help


def test_an_adapter_of_an_adapter_is_followed_one_step_only(tmp_path):
    first = _adapter(tmp_path / "a", str(tmp_path / "b"))
    _adapter(tmp_path / "b", str(first))  # a loop: b names a
    with pytest.raises(ModelResolutionError) as info:
        resolve_model_config(str(first))
    assert info.value.missing


# -- a model whose config is not here: not checked, a warning ---------------------------------------------

def _recipe_with_model(write, model: str):
    return write("recipe.yaml", GOOD_RECIPE.replace("model: meta-llama/Llama-3.1-8B", f"model: {model}"))


def test_an_unresolvable_model_is_a_warning_with_the_command_to_get_its_config(write, capsys):
    path = _recipe_with_model(write, "some-org/Llama-3.1-8B-finetune")
    assert main(["check", str(path), "--format", "json"]) == EXIT_OK
    findings = json.loads(capsys.readouterr().out)["findings"]
    (rc106,) = [f for f in findings if f["rule"] == "RC106"]
    assert rc106["severity"] == "warning"
    assert "not checked (needs the model's config" in rc106["message"]
    assert "`hf download some-org/Llama-3.1-8B-finetune config.json`" in rc106["help"]
    assert "--recipes-allow-network" in rc106["help"]
    assert "Did you mean 'meta-llama/Llama-3.1-8B'" in rc106["help"]  # a near miss of a bundled id


def test_strict_fails_an_unresolvable_model(write, capsys):
    path = _recipe_with_model(write, "some-org/Llama-3.1-8B-finetune")
    assert main(["check", str(path), "--recipes-strict"]) == EXIT_FINDINGS
    assert "RC106 (warning)" in capsys.readouterr().out


def test_a_config_that_is_there_but_unusable_stays_an_error(write, tmp_path, capsys):
    path = write("recipe.yaml", GOOD_RECIPE.replace("model: meta-llama/Llama-3.1-8B",
                                                    "model: {id: x/y, config: missing/config.json}"))
    assert main(["check", str(path), "--format", "json"]) == EXIT_FINDINGS
    (rc106,) = [f for f in json.loads(capsys.readouterr().out)["findings"] if f["rule"] == "RC106"]
    assert rc106["severity"] == "error"
