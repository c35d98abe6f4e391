"""What an untranslated key is (RC110), and what a removed TrainingArguments field in a native recipe is (RC102):
removed from transformers' TrainingArguments (with its replacement), a valid key of the tool the translation does
not model (an info, nothing to fix), or a key the tool does not know (a likely typo, with the nearest key)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import transformers
from recipe_checks.engine import check_recipe
from recipe_checks.formats.known_keys import _removed_data, removed_training_arguments, tool_keys
from recipe_checks.gpus import GpuCatalog
from recipe_checks.options import Options

CATALOG = GpuCatalog.load(())


def _findings(tmp_path: Path, text: str, rule_id: str):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    state, results = check_recipe(path, Options(gpus=("rtx4090",)), CATALOG, traced=False)
    assert not [r.error for r in results if r.error is not None]
    return state, [f for r in results for f in r.findings if f.rule_id == rule_id]


TRL = """\
model_name_or_path: Qwen/Qwen2.5-0.5B
use_peft: true
lora_target_modules: all-linear
max_length: 512
warmup_ratio: 0.1
evaluation_strategy: steps
"""
LLAMAFACTORY = """\
model_name_or_path: Qwen/Qwen2.5-0.5B
stage: sft
finetuning_type: lora
lora_target: all
cutoff_len: 512
warmup_ratio: 0.1
evaluation_strategy: steps
overwrite_output_dir: true
"""


@pytest.mark.parametrize("text", [TRL, LLAMAFACTORY], ids=["trl", "llamafactory"])
def test_warmup_ratio_and_evaluation_strategy_in_a_tool_config_are_removed_from_transformers(tmp_path, text):
    _, findings = _findings(tmp_path, text, "RC110")
    [removed] = [f for f in findings if "removed from transformers' TrainingArguments" in f.message]
    assert removed.severity.value == "warning" and removed.key == "warmup_ratio"
    assert "warmup_ratio (removed in transformers 5.0: use warmup_steps: 0.1)" in removed.message
    assert "evaluation_strategy (removed in transformers 4.x" in removed.message
    assert "use eval_strategy: steps" in removed.message
    first = text.splitlines().index("warmup_ratio: 0.1") + 1
    assert [d.split(": ")[:2] for d in removed.details] == [[f"line {first}", "warmup_ratio"],
                                                            [f"line {first + 1}", "evaluation_strategy"]]
    # neither is listed again as unknown or not modelled; LLaMA-Factory's own overwrite_output_dir is no removed key
    others = [d for f in findings if f is not removed for d in f.details]
    assert not [d for d in others if d.endswith(("warmup_ratio", "evaluation_strategy", "overwrite_output_dir"))]
    assert "overwrite_output_dir" not in removed.message


def test_a_valid_axolotl_key_the_translation_does_not_model_is_an_info_not_a_typo(tmp_path):
    _, findings = _findings(tmp_path, (
        "base_model: Qwen/Qwen2.5-0.5B\nadapter: lora\nlora_target_linear: true\nmicro_batch_size: 1\n"
        "sequence_len: 512\ntorch_compile: true\nuse_tensorboard: true\nplugins:\n"
        "  - axolotl.integrations.liger.LigerPlugin\nliger_rope: true\n"
    ), "RC110")
    [finding] = findings
    assert finding.severity.value == "info"
    assert "valid Axolotl key(s) are not modelled by the translation, so not checked" in finding.message
    assert [d.split(": ")[1] for d in finding.details] == ["torch_compile", "use_tensorboard", "liger_rope"]
    assert "misspelt" not in finding.help and "nothing to fix" in finding.help


def test_a_misspelt_axolotl_key_is_a_warning_with_the_key_it_likely_means(tmp_path):
    # the typo in Axolotl's examples/falcon-h1/falcon-h1-1b-qlora-cp.yaml (at 067b021): context_parallel_size
    _, findings = _findings(tmp_path, (
        "base_model: tiiuae/Falcon-H1-1B-Base\nadapter: qlora\nload_in_4bit: true\nlora_target_linear: true\n"
        "micro_batch_size: 1\nsequence_len: 1024\ncontext_parapllel_size: 2\ntorch_compile: true\n"
    ), "RC110")
    [typo] = [f for f in findings if f.severity.value == "warning"]
    assert typo.key == "context_parapllel_size"
    assert "unknown to Axolotl" in typo.message and "did you mean 'context_parallel_size'?" in typo.message
    assert typo.details == ("line 7: context_parapllel_size",)
    [info] = [f for f in findings if f.severity.value == "info"]  # the valid key beside it is no typo
    assert info.details == ("line 8: torch_compile",)


def test_a_native_recipe_with_training_warmup_ratio_is_told_to_write_warmup_steps(tmp_path):
    _, findings = _findings(tmp_path, (
        "model: Qwen/Qwen2.5-0.5B\nlora: {r: 8, target_modules: all-linear}\n"
        "training:\n  per_device_train_batch_size: 1\n  warmup_ratio: 0.1\n  evaluation_strategy: steps\n"
    ), "RC102")
    by_key = {f.key: f for f in findings}
    assert by_key["training.warmup_ratio"].message == (
        "'warmup_ratio' in training was removed in transformers 5.0: use warmup_steps: 0.1")
    assert "use eval_strategy: steps" in by_key["training.evaluation_strategy"].message


def test_the_removed_training_arguments_are_indeed_gone_from_the_installed_transformers():
    fields = {f.name for f in dataclasses.fields(transformers.TrainingArguments)}
    assert set(_removed_data()) == set(removed_training_arguments())  # none came back
    for item in removed_training_arguments().values():
        assert item.key not in fields
        if item.rename:
            assert item.use in fields, item


def test_each_tool_key_set_holds_its_documented_keys_and_the_training_arguments_it_passes_on():
    axolotl, llamafactory, trl = tool_keys("axolotl"), tool_keys("llamafactory"), tool_keys("trl")
    assert {"base_model", "micro_batch_size", "context_parallel_size", "chat_template", "liger_rope"} <= axolotl.keys
    assert "warmup_ratio" in axolotl.own and axolotl.passes_to is None  # Axolotl's own key, converted by Axolotl
    assert {"finetuning_type", "lora_rank", "cutoff_len", "overwrite_output_dir", "predict_with_generate",
            "per_device_train_batch_size"} <= llamafactory.keys
    assert {"use_peft", "lora_r", "max_length", "beta", "reward_funcs", "env", "per_device_train_batch_size"} <= trl.keys
    assert "067b021" in axolotl.source and "ff6d4d1" in llamafactory.source
