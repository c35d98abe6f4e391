"""Axolotl configs whose values Axolotl hands on as they are: a string lora_target_modules is peft's regex, and
Axolotl's own optimizers (muon, ...) are valid names the checks cannot model, so a note, never an error.
"""

from __future__ import annotations

from pathlib import Path

from recipe_checks.engine import check_recipe
from recipe_checks.gpus import GpuCatalog
from recipe_checks.options import Options

CATALOG = GpuCatalog.load(())
REGEX = r"model.layers.[\d]+.self_attn.(q|v)_proj"


def _config(tmp_path: Path, **keys: str) -> Path:
    lines = {"base_model": "TinyLlama/TinyLlama-1.1B-Chat-v1.0", "adapter": "lora", "lora_r": "8",
             "lora_alpha": "16", "micro_batch_size": "1", "sequence_len": "512", **keys}
    path = tmp_path / "axolotl.yml"
    path.write_text("".join(f"{key}: {value}\n" for key, value in lines.items()))
    return path


def _check(path: Path):
    state, results = check_recipe(path, Options(gpus=("rtx4090",)), CATALOG, traced=False)
    assert not [r.error for r in results if r.error is not None]
    return state, [f for r in results for f in r.findings]


def _modules_peft_adapts(state, target_modules) -> int:
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer

    model = get_peft_model(state.meta_model(fresh=True), LoraConfig(r=8, target_modules=target_modules))
    return sum(isinstance(m, LoraLayer) for m in model.modules())


def test_a_string_lora_target_modules_is_the_regex_peft_full_matches(tmp_path):
    state, findings = _check(_config(tmp_path, lora_target_modules=f"'{REGEX}'"))
    assert not [f for f in findings if f.rule_id in ("RC104", "RC201")]
    assert state.recipe.lora.target_modules == REGEX  # a string, as Axolotl passes it to LoraConfig
    adapted = state.memo["targets"].matched_modules
    assert len(adapted) == _modules_peft_adapts(state, REGEX) == 2 * 22  # q and v of TinyLlama's 22 layers


def test_a_list_lora_target_modules_is_still_names_matched_as_suffixes(tmp_path):
    state, findings = _check(_config(tmp_path, lora_target_modules="[q_proj, v_proj]"))
    assert state.recipe.lora.target_modules == ["q_proj", "v_proj"]
    assert not [f for f in findings if f.rule_id in ("RC104", "RC201")]
    assert len(state.memo["targets"].matched_modules) == _modules_peft_adapts(state, ["q_proj", "v_proj"]) == 44


def test_a_list_naming_no_module_is_still_rc201(tmp_path):
    _, findings = _check(_config(tmp_path, lora_target_modules="[q_proj, query_key_value]"))
    assert [f.key for f in findings if f.rule_id == "RC201"] == ["lora_target_modules[1]"]


def test_axolotls_own_optimizer_is_not_checked_with_its_reason_never_rc302(tmp_path):
    _, findings = _check(_config(tmp_path, optimizer="muon"))
    assert not [f for f in findings if f.rule_id == "RC302"]
    notes = [f for f in findings if f.rule_id == "RC111" and f.key == "optimizer"]
    assert len(notes) == 1
    assert "Axolotl's own optimizer 'muon' is not modelled" in notes[0].message
    assert "adamw_torch_fused" in notes[0].message


def test_a_misspelt_optimizer_in_an_axolotl_config_is_still_rc302(tmp_path):
    _, findings = _check(_config(tmp_path, optimizer="adamw_torhc"))
    errors = [f for f in findings if f.rule_id == "RC302"]
    assert len(errors) == 1 and "'adamw_torhc'" in errors[0].message
    assert not [f for f in findings if f.rule_id == "RC111" and f.key == "optimizer"]
