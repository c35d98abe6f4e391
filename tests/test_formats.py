"""Axolotl, LLaMA-Factory and TRL configs read as recipes (checks/formats): each public example's settings
through the engine, with findings at the lines of the original files; detection, forced formats,
untranslated and not-checked keys, bf16: auto per target GPU, convert, and collection from a directory.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from recipe_checks.cli import main
from recipe_checks.engine import check_recipe
from recipe_checks.formats import GPUS_NOT_STATED, detect, read_as_native, translate
from recipe_checks.gpus import GpuCatalog
from recipe_checks.options import Options
from recipe_checks.recipe.load import load_recipe_file, looks_like_recipe, read_recipe_text
from tests.conftest import CORPUS, RECIPES

FORMATS_DIR = Path(__file__).resolve().parent / "formats"
HOSTILE = Path(__file__).resolve().parent / "hostile"
CATALOG = GpuCatalog.load(())

# file, target GPU, the error and warning rule ids it gets, and (rule, key as written, text of the line
# the finding points at) for its key findings: the line is the original file's.
CASES = [
    # LoRA on an 8-bit base is not QLoRA: RC301 (paged optimizer) is QLoRA's rule, for 4-bit bases
    ("axolotl-llama3-lora-8b.yml", "rtx4090", {"RC111"}, [("RC111", "sample_packing", "sample_packing: true")]),
    ("axolotl-llama3-qlora.yml", "rtx4090", {"RC111"}, [("RC111", "sample_packing", "sample_packing: true")]),
    ("axolotl-mistral-qlora.yml", "rtx4090", {"RC111", "RC301"},
     [("RC111", "sample_packing", "sample_packing: true"), ("RC301", "optimizer", "optimizer: adamw_bnb_8bit")]),
    ("axolotl-gemma2-qlora-t4.yml", "t4", {"RC111", "RC301", "RC406"},
     [("RC406", "bf16", "bf16: auto"), ("RC301", "optimizer", "optimizer: adamw_bnb_8bit")]),
    ("axolotl-mixtral-qlora.yml", "rtx4090", {"RC216"}, [("RC216", "load_in_4bit", "load_in_4bit: true")]),
    ("axolotl-phi3-lora-qv.yml", "rtx4090", {"RC201"},
     [("RC201", "lora_target_modules[0]", "- q_proj"), ("RC201", "lora_target_modules[1]", "- v_proj")]),
    ("axolotl-llama3-dpo.yml", "rtx4090", {"RC111"}, [("RC111", "rl", "rl: dpo")]),
    ("axolotl-llama3-fft-zero3.yml", "rtx4090", {"RC111"},
     [("RC111", "sample_packing", "sample_packing: true"), ("RC111", "deepspeed", "deepspeed: deepspeed_configs")]),
    ("axolotl-qwen2.5-lora-typo.yml", "rtx4090", {"RC110"}, [("RC110", "lora_alfa", "lora_alfa: 32")]),
    ("axolotl-without-base-model.yml", "rtx4090", {"RC112"}, [("RC112", "base_model_config", "base_model_config:")]),
    # trust_remote_code on Llama 3 (no auto_map): transformers runs no repository code, so RC107 is only an info.
    # LLaMA-Factory's examples still write warmup_ratio, which transformers 5's TrainingArguments lacks and
    # LLaMA-Factory hands it: RC110 says to write warmup_steps (overwrite_output_dir is LLaMA-Factory's own field)
    ("llamafactory-llama3-lora-sft.yaml", "rtx4090", {"RC110"},
     [("RC107", "trust_remote_code", "trust_remote_code: true"), ("RC110", "warmup_ratio", "warmup_ratio: 0.1")]),
    ("llamafactory-qwen2.5-qlora-t4.yaml", "t4", {"RC110", "RC301", "RC401", "RC404"},
     [("RC401", "bf16", "bf16: true"), ("RC404", "bf16", "bf16: true"), ("RC110", "warmup_ratio", "warmup_ratio: 0.1")]),
    ("llamafactory-llama3-full-ds3.yaml", "rtx4090", {"RC110", "RC111"},
     [("RC111", "deepspeed", "deepspeed: examples/"), ("RC110", "warmup_ratio", "warmup_ratio: 0.1")]),
    ("llamafactory-llama3-dpo.yaml", "rtx4090", {"RC110", "RC111"},
     [("RC111", "stage", "stage: dpo"), ("RC110", "warmup_ratio", "warmup_ratio: 0.1")]),
    ("trl-sft-qwen2.5-lora.yaml", "rtx4090", set(), []),
    ("trl-sft-4bit-without-peft.yaml", "rtx4090", {"RC501"}, [("RC501", "load_in_4bit", "load_in_4bit: true")]),
    # TRL's dataset mixture (`datasets:`, `streaming`, `test_split_size`) is data: no RC102, no RC110
    ("trl-sft-datasets-mixture.yaml", "rtx4090", set(), []),
    # the trainer, from its config class's keys: DPO traced as DPOTrainer's step, the others named and not traced
    ("trl-dpo-qwen2.5-lora.yaml", "rtx4090", {"RC111"}, [("RC111", "max_prompt_length", "max_prompt_length: 512")]),
    ("trl-grpo-qwen2.5-vllm.yaml", "rtx4090", {"RC111"}, [("RC111", "use_vllm", "use_vllm: true")]),
    # no dtype: TRL computes the 4-bit matmuls in its default float32 while training in bf16 (RC405)
    ("trl-kto-qwen2.5-qlora.yaml", "rtx4090", {"RC111", "RC405"},
     [("RC111", "desirable_weight", "desirable_weight: 1.0")]),
    ("trl-reward-qwen2.5-lora.yaml", "rtx4090", {"RC111"},
     [("RC111", "center_rewards_coefficient", "center_rewards_coefficient: 0.01")]),
]


def _check(path: Path, gpu: str | None, **options):
    state, results = check_recipe(path, Options(gpus=(gpu,) if gpu else (), **options), CATALOG, traced=False)
    assert not [r.error for r in results if r.error is not None]
    return state, [f for r in results for f in r.findings]


def test_at_least_twelve_third_party_configs_are_covered():
    assert len(CASES) >= 12 and {c[0] for c in CASES} == {p.name for p in FORMATS_DIR.glob("*.y*ml")}


@pytest.mark.parametrize(("name", "gpu", "expected", "key_findings"), CASES, ids=[c[0] for c in CASES])
def test_third_party_config_gets_its_rules_at_the_lines_of_the_original_file(name, gpu, expected, key_findings):
    state, findings = _check(FORMATS_DIR / name, gpu)
    assert {f.rule_id for f in findings if f.severity.value != "info"} == expected, findings
    for rule_id, key, line_text in key_findings:
        found = [f for f in findings if f.rule_id == rule_id and f.key == key]
        assert found, (rule_id, key, findings)
        for finding in found:
            assert line_text in state.source_line(finding.location.line), (finding, state.source_line(finding.location.line))


@pytest.mark.parametrize(("name", "fmt"), [
    ("axolotl-llama3-qlora.yml", "axolotl"), ("llamafactory-llama3-lora-sft.yaml", "llamafactory"),
    ("trl-sft-qwen2.5-lora.yaml", "trl"), ("axolotl-without-base-model.yml", None),
])
def test_a_config_is_recognised_by_its_keys(name, fmt):
    data = load_recipe_file(FORMATS_DIR / name).data
    assert detect(data) == fmt
    assert looks_like_recipe(read_recipe_text(FORMATS_DIR / name)) is (fmt is not None)


def test_every_shipped_and_corpus_file_is_still_read_as_before():
    """A file with a top-level `model` key is a native recipe, untouched; any other is no tool's config,
    but the corpus cases of the format rules themselves (rc110-rc112)."""
    files = [*RECIPES.glob("*.yaml"), *CORPUS.glob("*.y*ml"), *HOSTILE.rglob("*.y*ml")]
    assert len(files) > 40
    for path in files:
        try:
            loaded = load_recipe_file(path)
        except Exception:
            continue  # refused before any format is looked at, as before
        about_formats = path.name.startswith(("rc110", "rc111", "rc112"))
        if "model" in loaded.data:
            native, error = read_as_native(loaded)
            assert error is None and native is loaded and native.translation is None, path
        elif not about_formats:
            assert detect(loaded.data) is None, path
            assert looks_like_recipe(read_recipe_text(path)) is False, path


def test_a_forced_format_reads_a_file_whatever_its_keys(tmp_path):
    path = tmp_path / "renamed.yaml"  # TRL keys only, without a key only TRL speaks: not recognised
    path.write_text("model_name_or_path: Qwen/Qwen2.5-0.5B\nlearning_rate: 2.0e-4\nbf16: true\n")
    assert detect(load_recipe_file(path).data) is None
    _, findings = _check(path, "rtx4090")
    assert "RC102" in {f.rule_id for f in findings}  # read as a native recipe: its keys are unknown
    state, forced = _check(path, "rtx4090", format="trl")
    assert state.recipe.model.id == "Qwen/Qwen2.5-0.5B" and state.recipe.training.learning_rate == 2.0e-4
    assert not {f.rule_id for f in forced} & {"RC102", "RC110"}
    native_state, _ = _check(FORMATS_DIR / "axolotl-llama3-qlora.yml", "rtx4090", format="native")
    assert native_state.loaded.translation is None  # forced native: Axolotl's keys are unknown recipe keys


def test_untranslated_keys_are_listed_in_one_finding_each_with_its_line():
    state, findings = _check(FORMATS_DIR / "axolotl-qwen2.5-lora-typo.yml", "rtx4090")
    [finding] = [f for f in findings if f.rule_id == "RC110"]
    assert "lora_alfa" in finding.message and "turbo_mode" in finding.message
    lines = {d.split(": ", 1)[1]: int(d.split(":")[0].split()[1]) for d in finding.details}
    for key, line in lines.items():
        assert state.source_line(line).startswith(f"{key}:")
    assert set(lines) == {"lora_alfa", "turbo_mode"}


def test_empty_keys_and_known_irrelevant_keys_are_not_listed_as_untranslated():
    state, findings = _check(FORMATS_DIR / "axolotl-llama3-lora-8b.yml", "rtx4090")
    assert state.loaded.translation.untranslated == []  # fsdp:, deepspeed:, datasets, wandb_project...
    assert "RC110" not in {f.rule_id for f in findings}


def test_not_checked_keys_are_named_and_only_when_set(tmp_path):
    _, findings = _check(FORMATS_DIR / "axolotl-llama3-fft-zero3.yml", "rtx4090")
    assert {f.key for f in findings if f.rule_id == "RC111"} == {"sample_packing", "deepspeed"}
    unset = tmp_path / "unset.yml"
    text = (FORMATS_DIR / "axolotl-llama3-qlora.yml").read_text()  # fsdp:, deepspeed: empty already
    unset.write_text(text.replace("sample_packing: true", "sample_packing: false"))
    _, qlora = _check(unset, "rtx4090")
    assert "RC111" not in {f.rule_id for f in qlora}


@pytest.mark.parametrize(("gpu", "precision"), [("a100-80gb", "bf16"), ("t4", "fp16")])
def test_bf16_auto_is_resolved_against_the_target_gpu(gpu, precision):
    path = FORMATS_DIR / "axolotl-gemma2-qlora-t4.yml"
    state, findings = _check(path, gpu)
    [note] = [f for f in findings if f.rule_id == "RC113"]
    assert f"trains in {precision} on" in note.message and state.source_line(note.location.line) == "bf16: auto"
    ids = {f.rule_id for f in findings}
    assert ("RC406" in ids) is (precision == "fp16")  # Gemma overflows in fp16: only the T4 run is at risk
    assert "RC401" not in ids and "RC404" not in ids  # the model and compute dtype follow the resolution


def test_one_config_checked_against_two_gpus_resolves_bf16_auto_for_each():
    state, results = check_recipe(FORMATS_DIR / "axolotl-gemma2-qlora-t4.yml", Options(gpus=("a100-80gb", "t4")),
                                  CATALOG, traced=False)
    by_gpu = {r.gpu: {f.rule_id for f in r.findings} for r in results if r.check == "precision"}
    assert "RC406" in by_gpu["t4"] and "RC406" not in by_gpu["a100-80gb"]


ODD_VALUES = ([1, "x"], {"a": 1}, "auto", "x", -1, 0, True, 2.5, "2e-4")


@pytest.mark.parametrize("fmt", ["axolotl", "llamafactory", "trl"])
@pytest.mark.parametrize("odd", ODD_VALUES, ids=[repr(v) for v in ODD_VALUES])
def test_odd_values_in_every_translated_key_are_findings_never_crashes(tmp_path, fmt, odd):
    from recipe_checks.formats import axolotl, llamafactory, trl

    module = {"axolotl": axolotl, "llamafactory": llamafactory, "trl": trl}[fmt]
    keys = sorted(module.SIGNATURE | module.REQUIRED | set(module.NOT_CHECKED) | {"bf16", "fp16", "learning_rate"})
    path = tmp_path / "odd.yaml"
    path.write_text(yaml.safe_dump({key: odd for key in keys}))
    translate(load_recipe_file(path), fmt)  # the translation itself copes, not only the engine's safety net
    state, results = check_recipe(path, Options(gpus=("t4",), format=fmt), CATALOG, traced=False)
    assert not [r.error for r in results if r.error is not None]
    assert state.load_error is None or state.load_error.rule_id == "RC112"


def test_a_translated_config_is_traced_like_its_converted_recipe(tmp_path, capsys):
    """The vram check traces the translated recipe (TRL's defaults included): the same peak as the native
    recipe `convert` writes, since both are one recipe."""
    path = FORMATS_DIR / "trl-sft-qwen2.5-lora.yaml"
    assert main(["convert", str(path)]) == 0
    native = tmp_path / "native.yaml"
    native.write_text(capsys.readouterr().out)
    peaks = []
    for recipe in (path, native):
        _, results = check_recipe(recipe, Options(gpus=("rtx4090",)), CATALOG, traced=True)
        [vram] = [r for r in results if r.check == "vram"]
        assert vram.error is None and vram.skipped is None, vram
        [finding] = [f for f in vram.findings if f.rule_id == "RC601"]
        peaks.append(finding.message.split(" of the ")[0])
    assert peaks[0] == peaks[1] and peaks[0].startswith("peak ")


def test_findings_name_the_key_as_written():
    _, findings = _check(FORMATS_DIR / "axolotl-phi3-lora-qv.yml", "rtx4090")
    assert {f.key for f in findings if f.rule_id == "RC201"} == {"lora_target_modules[0]", "lora_target_modules[1]"}


def test_unrecognised_lookalike_says_what_is_missing_and_nothing_else():
    _, findings = _check(FORMATS_DIR / "axolotl-without-base-model.yml", "rtx4090")
    [finding] = findings
    assert finding.rule_id == "RC112" and "Axolotl" in finding.message and "base_model" in finding.help


@pytest.mark.parametrize("name", [c[0] for c in CASES if c[0] != "axolotl-without-base-model.yml"])
def test_convert_prints_a_native_recipe_that_checks_the_same(name, tmp_path, capsys):
    gpu = next(c[1] for c in CASES if c[0] == name)
    code = main(["convert", str(FORMATS_DIR / name), "--gpu", gpu])
    out = capsys.readouterr().out
    assert code == (1 if name == "axolotl-qwen2.5-lora-typo.yml" else 0)
    shutil.copytree(FORMATS_DIR, tmp_path / "formats")  # the DeepSpeed configs the files name, relative to them
    native = tmp_path / "formats" / "native.yaml"
    native.write_text(out)
    data = yaml.safe_load(out)
    assert "model" in data and detect(data) == "native"
    original_state, original = _check(FORMATS_DIR / name, gpu)
    state, converted = _check(native, gpu)
    assert state.loaded.translation is None
    format_only = {"RC110", "RC111", "RC112", "RC113"}  # the notes of a translation, written as comments
    # a config that shards without saying on how many GPUs: the recipe says `world_size: launcher`, its own RC111
    unstated = any(what.startswith(GPUS_NOT_STATED) for _, what in original_state.loaded.translation.not_checked)
    assert {f.rule_id for f in converted} == {f.rule_id for f in original} - format_only | ({"RC111"} if unstated else set())
    if name == "axolotl-qwen2.5-lora-typo.yml":
        assert "# untranslated: lora_alfa (line 11)" in out


def test_convert_refuses_unreadable_input_and_native_recipes(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("base_model: [unclosed\n")
    assert main(["convert", str(bad)]) == 2
    assert main(["convert", str(FORMATS_DIR / "axolotl-without-base-model.yml")]) == 2
    assert "RC112" in capsys.readouterr().err
    assert main(["convert", str(RECIPES / "llama3-8b-qlora-rtx4090.yaml")]) == 2


def _directory(root: Path) -> Path:
    target = root / "configs"
    target.mkdir()
    for name in ("axolotl-llama3-qlora.yml", "trl-sft-qwen2.5-lora.yaml"):
        shutil.copy(FORMATS_DIR / name, target / name)
    (target / "unrelated.yaml").write_text("steps:\n  - run: make\nname: ci\n")
    return target


def test_cli_check_of_a_directory_collects_the_recognised_configs(tmp_path, capsys):
    target = _directory(tmp_path)
    code = main(["check", str(target), "--gpu", "rtx4090", "--format", "json"])
    report = json.loads(capsys.readouterr().out)
    assert sorted(Path(p).name for p in report["recipes"]) == ["axolotl-llama3-qlora.yml", "trl-sft-qwen2.5-lora.yaml"]
    assert code in (0, 1) and not report["internal_errors"]


def test_plugin_collects_recognised_configs_in_a_directory(pytester):
    _directory(pytester.path)
    result = pytester.runpytest("configs/", "--gpu=rtx4090", "--collect-only", "-q", "-p", "no:cacheprovider")
    listed = {line.split("::")[0] for line in result.outlines if "::" in line}
    assert listed == {"configs/axolotl-llama3-qlora.yml", "configs/trl-sft-qwen2.5-lora.yaml"}


def test_plugin_reports_a_finding_at_the_line_of_the_original_file(pytester):
    shutil.copy(FORMATS_DIR / "axolotl-phi3-lora-qv.yml", pytester.path / "phi3.yml")
    result = pytester.runpytest("phi3.yml", "--gpu=rtx4090", "-k", "target-modules", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*RC201*'q_proj' matches nothing*", "*phi3.yml:16:*", "*- q_proj*"])


# Each of YAML's line breaks (PyYAML's reader ends a comment at \n, \r, U+0085, U+2028 and U+2029), followed by
# what a config could try to write into the converted recipe if its text left the comment it is quoted in
INJECTED = "checks: {ignore: {RC201: injected}}"
LINE_BREAKS = {"newline": "\n", "carriage-return": "\r", "crlf": "\r\n", "next-line-u0085": "\x85",
               "line-separator-u2028": "\u2028", "paragraph-separator-u2029": "\u2029"}


@pytest.mark.parametrize("name", list(LINE_BREAKS))
def test_convert_keeps_every_untranslated_key_and_quoted_value_inside_its_comment(name, tmp_path, capsys):
    """An untranslated key, a value a not-checked note quotes and the file's own name, each holding a line break
    and a `checks.ignore` section after it: the written recipe holds them in comments, escaped, and nothing
    of them as keys."""
    brk = LINE_BREAKS[name]
    config = {
        "base_model": "Qwen/Qwen2.5-7B", "adapter": "lora", "lora_r": 16, "lora_target_linear": True,
        "micro_batch_size": 1, "sequence_len": 512, "learning_rate": 0.0002,
        f"turbo{brk}{INJECTED}{brk}#": True,  # untranslated: its key is quoted in a comment
        "fsdp": [f"hybrid_shard{brk}{INJECTED}{brk}#"], "fsdp_config": {}, "world_size": 2,  # quoted by a not-checked note
    }
    path = tmp_path / f"cfg{brk}{INJECTED}{brk}#.yml"  # the file's name opens the recipe
    path.write_text(json.dumps(config, indent=1))  # JSON is YAML: each break written as its escape, read as itself
    assert brk in next(k for k in load_recipe_file(path).data if k.startswith("turbo"))
    assert main(["convert", str(path), "--format", "axolotl"]) == 1  # the untranslated key: exit 1
    out = capsys.readouterr().out
    data = yaml.safe_load(out)
    assert "checks" not in data and set(data) == {"model", "lora", "training", "distributed"}, data
    head = out[:out.index("\nmodel:")]
    assert all(line.startswith("# ") for line in head.split("\n")), head
    escaped = brk.encode("unicode_escape").decode()
    assert f"# untranslated: turbo{escaped}{INJECTED}{escaped}# (line " in out
    assert f"'hybrid_shard{escaped}{INJECTED}{escaped}#' shards within a node" in out
    assert f"config {tmp_path}/cfg{escaped}{INJECTED}{escaped}#.yml\n" in out


@pytest.mark.parametrize("name", ["llamafactory-llama3-full-ds3.yaml", "axolotl-llama3-fft-zero3.yml"])
def test_converting_a_config_that_leaves_the_gpu_count_to_the_launcher_keeps_its_note_a_note(name, tmp_path, capsys):
    """The original's "number of GPUs not stated" is an RC111 warning; the converted recipe was an RC103 error
    ("give the number of GPUs"), since only a translation could leave it out. It now says `world_size: launcher`
    and gets the same warning, at that line, and no error the original does not have."""
    assert main(["convert", str(FORMATS_DIR / name), "--gpu", "rtx4090"]) == 0
    out = capsys.readouterr().out
    assert yaml.safe_load(out)["distributed"]["world_size"] == "launcher"
    shutil.copytree(FORMATS_DIR, tmp_path / "formats")  # the DeepSpeed config it names, relative to it
    native = tmp_path / "formats" / "native.yaml"
    native.write_text(out)
    _, original = _check(FORMATS_DIR / name, "rtx4090")
    _, converted = _check(native, "rtx4090")

    def gpu_count(findings):
        return [(f.rule_id, f.severity.value) for f in findings if "number of GPUs" in f.message]

    assert gpu_count(original) == [("RC111", "warning")]
    assert gpu_count(converted) == [("RC111", "warning")]
    [note] = [f for f in converted if "number of GPUs" in f.message]
    assert note.location.line == out.split("\n").index("  world_size: launcher") + 1
    assert {f.rule_id for f in converted if f.severity.value == "error"} <= {f.rule_id for f in original}
    assert main(["check", str(native), "--gpu", "rtx4090", "-q"]) == main(["check", str(FORMATS_DIR / name), "--gpu",
                                                                              "rtx4090", "-q"]) == 0


# --- numbers as each tool reads them, and long free text -------------------------------------------------------------

LLAMAFACTORY_2E_5 = """\
model_name_or_path: HuggingFaceTB/SmolLM2-135M
stage: sft
finetuning_type: lora
lora_target: all
per_device_train_batch_size: 1
learning_rate: {lr}
cutoff_len: 256
bf16: true
"""
TRL_2E_5 = """\
model_name_or_path: HuggingFaceTB/SmolLM2-135M
use_peft: true
lora_r: 8
per_device_train_batch_size: 1
learning_rate: {lr}
max_length: 256
"""


@pytest.mark.parametrize(("template", "fmt"), [(LLAMAFACTORY_2E_5, "llamafactory"), (TRL_2E_5, "trl")])
def test_a_learning_rate_of_2e_5_is_the_float_its_tool_reads_not_rc103(template, fmt, tmp_path):
    """LLaMA-Factory loads its YAML with OmegaConf (YAML 1.2: `2e-5` is a float); TRL with PyYAML (a string), which
    argparse then converts with the field's type, float('2e-5'). PyYAML alone made it a string: RC103."""
    path = tmp_path / "cfg.yaml"
    path.write_text(template.format(lr="2e-5"))
    native, error = read_as_native(load_recipe_file(path))
    assert error is None and native.translation.format == fmt
    lr = native.data["training"]["learning_rate"]
    assert lr == 2e-05 and type(lr) is float
    _, findings = _check(path, "rtx4090")
    assert "RC103" not in {f.rule_id for f in findings}, findings


@pytest.mark.parametrize("written", ["1E+3", ".5e-3", "-2e-5"])
def test_llamafactory_reads_each_yaml_1_2_float_form_as_a_float(written, tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text(LLAMAFACTORY_2E_5.format(lr="2e-5") + f"weight_decay: {written}\n")
    native, _ = read_as_native(load_recipe_file(path))
    assert native.data["training"]["weight_decay"] == float(written)


@pytest.mark.parametrize(("template", "written", "still"), [
    (LLAMAFACTORY_2E_5, "'2e-5'", "2e-5"),  # quoted: a string to OmegaConf too, passed on unconverted
    (TRL_2E_5, "fast", "fast"),  # float('fast') fails in TRL as well
])
def test_a_string_the_tool_does_not_read_as_a_number_is_still_rc103(template, written, still, tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text(template.format(lr=written))
    native, _ = read_as_native(load_recipe_file(path))
    assert native.data["training"]["learning_rate"] == still
    _, findings = _check(path, "rtx4090")
    assert any(f.rule_id == "RC103" and f.key == "learning_rate" for f in findings), findings


def test_a_trl_int_field_written_1e3_stays_a_string_as_trl_fails_on_it(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text(TRL_2E_5.format(lr="2e-5") + "max_steps: 1e3\n")
    native, _ = read_as_native(load_recipe_file(path))
    assert native.data["training"]["max_steps"] == "1e3"  # int('1e3') raises in TrlParser


def test_a_native_recipe_still_reads_2e_5_as_a_string():
    from recipe_checks.recipe.load import load_text

    assert load_text("model: a\ntraining:\n  learning_rate: 2e-5\n", "r.yaml").data["training"]["learning_rate"] == "2e-5"


def test_a_trl_config_with_a_20000_character_chat_template_is_checked(tmp_path):
    """alignment-handbook's SmolLM3 SFT config and open-r1's config_distill.yaml hold chat templates past the
    4,096 characters a value the checks read may have: the whole file was refused with RC101."""
    template = "{% for message in messages %}{{ message['content'] }}{% endfor %}" * 320
    assert len(template) > 20_000
    path = tmp_path / "sft.yaml"
    path.write_text(TRL_2E_5.format(lr="2.0e-5") + f"chat_template: {json.dumps(template)}\n")
    state, findings = _check(path, "rtx4090")
    assert "RC101" not in {f.rule_id for f in findings}, findings
    assert state.recipe is not None and state.loaded.translation.format == "trl"


def test_llamafactory_oft_is_adapters_not_a_quantized_full_fine_tune(tmp_path):
    """LLaMA-Factory's QOFT example (examples/extras/qoft) trains OFT adapters on a 4-bit base: it was read as a full
    fine-tune and failed RC501; OFT is not modelled, so its step is not checked, and nothing is blamed on it."""
    path = tmp_path / "qoft.yaml"
    path.write_text("model_name_or_path: meta-llama/Meta-Llama-3-8B-Instruct\nquantization_bit: 4\n"
                    "quantization_method: bnb\nstage: sft\ndo_train: true\nfinetuning_type: oft\noft_block_size: 32\n"
                    "oft_target: all\ndataset: identity\ntemplate: llama3\ncutoff_len: 2048\n"
                    "per_device_train_batch_size: 1\nlearning_rate: 1.0e-4\nbf16: true\n")
    state, results = check_recipe(path, Options(gpus=("h100",)), GpuCatalog.load(), traced=True)
    findings = [f for r in results for f in r.findings]
    assert not [f for f in findings if f.is_error], findings
    assert any(f.rule_id == "RC111" and "OFT adapters are not modelled" in f.message for f in findings)
    vram = next(r for r in results if r.check == "vram")
    assert vram.skipped is not None and "trains OFT adapters" in vram.skipped


@pytest.mark.parametrize(("config", "reentrant"), [
    ("base_model: meta-llama/Meta-Llama-3-8B\nadapter: lora\nload_in_8bit: true\nlora_target_linear: true\n"
     "micro_batch_size: 2\nsequence_len: 4096\ngradient_checkpointing: true\nlearning_rate: 0.0002\n", True),
    ("base_model: meta-llama/Meta-Llama-3-8B\nadapter: lora\nload_in_8bit: true\nlora_target_linear: true\n"
     "micro_batch_size: 2\nsequence_len: 4096\ngradient_checkpointing: true\nlearning_rate: 0.0002\nrl: dpo\n", None),
    ("base_model: meta-llama/Meta-Llama-3-8B\nadapter: lora\nmicro_batch_size: 2\nsequence_len: 4096\n"
     "gradient_checkpointing: true\ngradient_checkpointing_kwargs: {use_reentrant: false}\nlearning_rate: 0.0002\n", False),
    ("model_name_or_path: meta-llama/Meta-Llama-3-8B\nstage: sft\nfinetuning_type: lora\nlora_target: all\n"
     "quantization_bit: 8\ncutoff_len: 4096\nper_device_train_batch_size: 2\nlearning_rate: 1.0e-4\n", True),
    ("model_name_or_path: meta-llama/Meta-Llama-3-8B\nstage: sft\nfinetuning_type: lora\nlora_target: all\n"
     "use_reentrant_gc: false\ncutoff_len: 4096\nper_device_train_batch_size: 2\nlearning_rate: 1.0e-4\n", False),
])
def test_checkpointing_is_reentrant_where_axolotl_and_llamafactory_make_it_so(tmp_path, config, reentrant):
    """Axolotl's normalize_config and LLaMA-Factory's use_reentrant_gc make checkpointing reentrant by default; under
    LLM.int8() that decides 24 GiB on Llama 3 8B (its layers keep their inputs outside autograd's saved tensors)."""
    path = tmp_path / "c.yaml"
    path.write_text(config)
    native, finding = read_as_native(load_recipe_file(path))
    assert finding is None
    kwargs = native.data["training"].get("gradient_checkpointing_kwargs")
    assert (kwargs or {}).get("use_reentrant") is reentrant
