"""Configs that are not recipes (checks/formats/kinds.py): an accelerate or DeepSpeed config, a torchtune, ai-toolkit
or LLaMA-Factory v1 config named on the command line gets one RC112 note saying what it is and how it is checked,
never a flood of unknown keys; directory discovery and pytest collection leave them out; recipes stay recipes.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from recipe_checks.discover import discover_recipes
from recipe_checks.engine import check_recipe
from recipe_checks.formats import detect, read_as_native
from recipe_checks.formats.kinds import classify, other_kind
from recipe_checks.gpus import GpuCatalog
from recipe_checks.options import Options
from recipe_checks.recipe.load import load_recipe_file, load_text, looks_like_recipe, read_recipe_text

from tests.conftest import RECIPES

FORMATS_DIR = Path(__file__).resolve().parent / "formats"
NOT_RECIPES = FORMATS_DIR / "not-recipes"
CATALOG = GpuCatalog.load(())

# file, what it is called, the severity of its one RC112 note, words of its message and help, the line it points at
KINDS = [
    ("accelerate-fsdp2.yaml", "an accelerate config", "info",
     ("compute_environment, distributed_type", "not a training recipe"), "accelerate_config:",
     "compute_environment: LOCAL_MACHINE"),
    ("deepspeed-zero2.json", "a DeepSpeed config", "info",
     ("train_batch_size", "not a training recipe"), "deepspeed:", '"train_batch_size": "auto"'),
    ("deepspeed-zero3.yaml", "a DeepSpeed config", "info",
     ("train_batch_size, train_micro_batch_size_per_gpu, zero_optimization", "not a training recipe"), "deepspeed:",
     "train_batch_size: auto"),
    ("torchtune-llama3_1-8b-lora.yaml", "a torchtune config", "warning",
     ("model._component_", "torchtune configs are not read by recipe-checks yet: not checked"), "write it as a recipe",
     "_component_: torchtune.models.llama3_1.lora_llama3_1_8b"),
    ("ai-toolkit-flux-lora.yaml", "an ai-toolkit config", "warning",
     ("job, config.process", "not read by recipe-checks yet: not checked"), "write it as a recipe", "job: extension"),
    ("llamafactory-v1-lora-sft.yaml", "a LLaMA-Factory v1 config", "warning",
     ("peft_config", "read support pending"), "model_name_or_path", "model: Qwen/Qwen3-4B"),
]


def test_every_config_of_another_kind_is_covered():
    assert {c[0] for c in KINDS} == {p.name for p in NOT_RECIPES.iterdir()}


@pytest.mark.parametrize(("name", "description", "severity", "words", "help_words", "line"), KINDS,
                         ids=[c[0] for c in KINDS])
def test_a_named_config_of_another_kind_gets_one_note_saying_what_it_is(name, description, severity, words,
                                                                          help_words, line):
    state, results = check_recipe(NOT_RECIPES / name, Options(gpus=("rtx4090",)), CATALOG, traced=False)
    assert not [r.error for r in results if r.error is not None]
    [finding] = [f for r in results for f in r.findings]
    assert finding.rule_id == "RC112" and finding.severity.value == severity, finding
    assert finding.message.startswith(f"{description} (")
    for word in words:
        assert word in finding.message, finding.message
    assert help_words in finding.help
    assert line in state.source_line(finding.location.line)
    assert other_kind(read_recipe_text(NOT_RECIPES / name)) == description


@pytest.mark.parametrize("name", [c[0] for c in KINDS if c[0].endswith(".yaml")])
def test_a_config_of_another_kind_in_a_directory_is_not_a_recipe(name, tmp_path):
    shutil.copy(NOT_RECIPES / name, tmp_path / name)
    shutil.copy(RECIPES / "llama3-8b-qlora-rtx4090.yaml", tmp_path / "recipe.yaml")
    assert not looks_like_recipe(read_recipe_text(tmp_path / name))
    assert [p.name for p in discover_recipes([str(tmp_path)])] == ["recipe.yaml"]


def test_pytest_collects_no_config_of_another_kind(pytester):
    for name in (c[0] for c in KINDS):
        shutil.copy(NOT_RECIPES / name, pytester.path / name)
    shutil.copy(FORMATS_DIR / "axolotl-llama3-qlora.yml", pytester.path / "axolotl.yml")
    result = pytester.runpytest(".", "--gpu=rtx4090", "--collect-only", "-q", "-p", "no:cacheprovider")
    assert {line.split("::")[0] for line in result.outlines if "::" in line} == {"axolotl.yml"}


@pytest.mark.parametrize("text", [
    "model: meta-llama/Llama-3.1-8B\nlora:\n  r: 16\ntraining:\n  learning_rate: 2.0e-4\n",
    "model: meta-llama/Llama-3.1-8B\n",
    "model:\n  id: meta-llama/Llama-3.1-8B\n  config: configs/llama.json\ntraining: {bf16: true}\n",
    # a native recipe that names its accelerate and DeepSpeed files is a recipe, not those files
    ("model: meta-llama/Llama-3.1-8B\ndistributed:\n  accelerate_config: fsdp.yaml\n  deepspeed: ds.json\n"
     "# compute_environment, distributed_type, zero_optimization, train_batch_size, _component_, process\n"),
    # LLaMA-Factory v1's keys beside a recipe's own sections: still a recipe (its unknown keys are RC102)
    "model: Qwen/Qwen3-4B\nmodel_class: llm\npeft_config: {name: lora}\ntraining: {learning_rate: 1.0e-4}\n",
])
def test_a_native_recipe_stays_a_recipe(text, tmp_path):
    assert looks_like_recipe(text) and classify(text) is None
    loaded = load_text(text, "recipe.yaml")
    native, error = read_as_native(loaded)
    assert error is None and native is loaded
    (tmp_path / "recipe.yaml").write_text(text)
    assert [p.name for p in discover_recipes([str(tmp_path)])] == ["recipe.yaml"]


def test_tool_configs_stay_those_tools_configs():
    for path in [*FORMATS_DIR.glob("*.y*ml")]:
        text = read_recipe_text(path)
        assert other_kind(text) is None, path
        assert other_kind(load_recipe_file(path).data) is None, path
    assert other_kind(load_recipe_file(FORMATS_DIR / "examples" / "deepspeed" / "ds_z3_config.json").data) \
        == "a DeepSpeed config"


def test_a_forced_format_reads_the_file_as_that_format():
    loaded = load_recipe_file(NOT_RECIPES / "llamafactory-v1-lora-sft.yaml")
    native, error = read_as_native(loaded, "native")
    assert error is None and native is loaded  # read as a recipe, as asked: its unknown keys are RC102


def test_other_kind_tells_accelerate_and_deepspeed_from_top_level_keys_alone():
    assert other_kind(["compute_environment", "distributed_type", "num_processes", "mixed_precision"]) \
        == "an accelerate config"
    assert other_kind(["train_micro_batch_size_per_gpu", "zero_optimization", "bf16"]) == "a DeepSpeed config"
    assert other_kind(["model", "compute_environment", "distributed_type", "num_processes"]) is None


@pytest.mark.parametrize("odd", [
    "job: extension\nconfig: [1, 2]\n", "job: [extension]\nconfig: {process: []}\n", "model: {_component_: 1}\n",
    "zero_optimization: 3\ntrain_batch_size: 8\n", "compute_environment: [1]\ndistributed_type: {}\n",
    "model_class: llm\npeft_config: {}\n", "_component_: x\n", "{1: 2, null: 3}\n",
])
def test_odd_files_are_classified_without_a_crash(odd):
    other_kind(odd)
    other_kind(load_text(odd, "odd.yaml").data)


def test_a_trl_config_with_only_a_dataset_mixture_is_recognised_as_trl(tmp_path):
    text = ("model_name_or_path: Qwen/Qwen2.5-0.5B\ndatasets:\n  - path: trl-lib/Capybara\nlearning_rate: 2.0e-5\n")
    assert detect(load_text(text, "x.yaml").data) == "trl"
    handbook = tmp_path / "handbook.yaml"  # alignment-handbook's recipes: the mixture under dataset_mixture
    handbook.write_text("model_name_or_path: Qwen/Qwen2.5-0.5B\ntorch_dtype: bfloat16\ndataset_mixture:\n"
                        "  datasets:\n    - id: HuggingFaceH4/ultrachat_200k\n      split: train_sft\n"
                        "  seed: 0\n  test_split_size: 0.01\nlearning_rate: 2.0e-5\nmax_length: 2048\n")
    state, results = check_recipe(handbook, Options(gpus=("rtx4090",)), CATALOG, traced=False)
    assert state.loaded.translation.format == "trl" and state.loaded.translation.untranslated == []
    assert not {f.rule_id for r in results for f in r.findings} & {"RC102", "RC110", "RC112"}


def test_a_llamafactory_v1_export_config_with_model_and_peft_config_only_is_v1():
    """LLaMA-Factory's examples/v1/train_lora/export_lora.yaml: `model` and one v1 key, nothing else (was RC102)."""
    from recipe_checks.formats.kinds import other_kind

    text = ("model: Qwen/Qwen3-4B\npeft_config:\n  name: lora\n  adapter_name_or_path: ./outputs/test_lora\n"
            "  export_dir: ./merge_lora_model\n")
    assert other_kind(text) == "a LLaMA-Factory v1 config"
    assert other_kind("model: Qwen/Qwen3-4B\npeft_config: {name: lora}\ntraining: {learning_rate: 1.0e-4}\n") is None
