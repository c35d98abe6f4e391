"""Unsloth recipes: the `unsloth` section's strictness, its contradictions with the other sections, the family
and throughput rules, and what the vram check says it models of Unsloth."""

from __future__ import annotations

import shutil

import pytest
import transformers

from recipe_checks.engine import check_recipe
from recipe_checks.gpus import GpuCatalog
from recipe_checks.options import Options
from recipe_checks.recipe.load import load_text
from recipe_checks.recipe.validate import validate
from recipe_checks.unsloth import DATA_FILE, patched_families, unsloth_data
from tests.conftest import CORPUS, RECIPES

CATALOG = GpuCatalog.load()
SHIPPED = RECIPES / "llama3-8b-unsloth-qlora-rtx4090.yaml"
UNSLOTH_RULES = {"RC120", "RC121", "RC122", "RC215", "RC606", "RC607"}

# A consistent Unsloth 16-bit LoRA recipe on a small llama: every RC120 pair agrees.
LORA_16BIT = """\
model: meta-llama/Llama-3.2-1B
unsloth:
  max_seq_length: 2048
  load_in_4bit: false
lora:
  r: 16
  lora_alpha: 16
  target_modules: [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]
training:
  per_device_train_batch_size: 2
  learning_rate: 2.0e-4
  bf16: true
  gradient_checkpointing: true
  max_seq_length: 2048
hardware:
  gpu: rtx4090
"""


def findings(tmp_path, text: str, gpu: str = "rtx4090"):
    path = tmp_path / "recipe.yaml"
    path.write_text(text, encoding="utf-8")
    _, results = check_recipe(path, Options(gpus=(gpu,)), CATALOG, traced=False)
    return [f for r in results for f in r.findings]


def ids(found) -> set[str]:
    return {f.rule_id for f in found if f.severity.value != "info"}


def test_a_consistent_unsloth_recipe_has_no_finding(tmp_path):
    assert ids(findings(tmp_path, LORA_16BIT)) == set()


def test_a_misspelt_unsloth_key_is_rc102_with_did_you_mean_and_its_line(tmp_path):
    found = findings(tmp_path, LORA_16BIT.replace("  max_seq_length: 2048\n  load_in_4bit", "  max_seq_len: 2048\n  load_in_4bit", 1))
    typo = [f for f in found if f.rule_id == "RC102"]
    assert len(typo) == 1
    assert typo[0].message == "unknown key 'max_seq_len' in unsloth"
    assert "did you mean 'max_seq_length'" in typo[0].help
    assert typo[0].location.line == 3


@pytest.mark.parametrize("line, key", [
    ('  load_in_4bit: "false"', ("unsloth", "load_in_4bit")),           # a quoted boolean
    ("  load_in_4bit: false\n  use_gradient_checkpointing: offload", ("unsloth", "use_gradient_checkpointing")),
    ("  load_in_4bit: false\n  gpu_memory_utilization: 1.5", ("unsloth", "gpu_memory_utilization")),
    ("  load_in_4bit: false\n  dtype: fp16", ("unsloth", "dtype")),
])
def test_a_wrong_type_or_value_in_unsloth_is_rc103_at_its_key(tmp_path, line, key):
    text = LORA_16BIT.replace("  load_in_4bit: false", line, 1)
    validation = validate(load_text(text, "r.yaml"))
    assert [v.key_path for v in validation.invalid_values] == [key]
    assert "RC103" in ids(findings(tmp_path, text))


@pytest.mark.parametrize("old, new, words", [
    ("  max_seq_length: 2048\n  load_in_4bit", "  max_seq_length: 4096\n  load_in_4bit",
     "unsloth.max_seq_length is 4,096 but training.max_seq_length is 2,048"),
    ("  load_in_4bit: false\n", "", "unsloth.load_in_4bit is true (its default), but the recipe has no quantization"),
    ("  gradient_checkpointing: true\n", "  gradient_checkpointing: false\n",
     "training.gradient_checkpointing is false but unsloth.use_gradient_checkpointing is 'unsloth' (its default)"),
    ("  load_in_4bit: false\n", "  load_in_4bit: false\n  full_finetuning: true\n",
     "unsloth.full_finetuning is true and the recipe has a lora section"),
    ("  load_in_4bit: false\n", "  load_in_4bit: false\n  dtype: float16\n",
     "unsloth.dtype is float16 but training.bf16 is true"),
    ("  r: 16\n", "", "lora.r is unset: Unsloth's get_peft_model defaults it to 16, peft's LoraConfig to 8"),
    ("  target_modules: [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]\n", "",
     "lora.target_modules is unset"),
])
def test_a_contradiction_between_unsloth_and_another_section_is_rc120(tmp_path, old, new, words):
    text = LORA_16BIT.replace(old, new, 1)
    assert text != LORA_16BIT
    found = [f for f in findings(tmp_path, text) if f.rule_id == "RC120"]
    assert len(found) == 1, [f.message for f in found]
    assert words in found[0].message


def test_rc120_names_the_written_key_and_otherwise_the_section(tmp_path):
    text = LORA_16BIT.replace("  max_seq_length: 2048\n  load_in_4bit", "  max_seq_length: 4096\n  load_in_4bit", 1)
    (found,) = [f for f in findings(tmp_path, text) if f.rule_id == "RC120"]
    assert (found.key, found.location.line) == ("unsloth.max_seq_length", 3)
    (found,) = [f for f in findings(tmp_path, LORA_16BIT.replace("  load_in_4bit: false\n", "", 1)) if f.rule_id == "RC120"]
    assert (found.key, found.location.line, found.location.column) == ("unsloth", 2, 1)


def test_the_patched_families_are_transformers_model_types_each_with_its_source():
    data = unsloth_data()
    assert data["unsloth_version"] and len(data["unsloth_commit"]) == 40
    known = transformers.models.auto.configuration_auto.CONFIG_MAPPING_NAMES
    for model_type, entry in patched_families().items():
        assert model_type in known, model_type
        assert entry["source"].startswith("unsloth/models/loader.py:")


@pytest.mark.parametrize("model, targets, family_rule", [
    ("meta-llama/Llama-3.2-1B", "[q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]", False),
    ("Qwen/Qwen2.5-0.5B", "[q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]", False),
    ("microsoft/Phi-3-mini-4k-instruct", "[qkv_proj, o_proj, gate_up_proj, down_proj]", True),
    ("google/gemma-3-1b-pt", "[q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]", True),
])
def test_rc121_fails_exactly_the_families_unsloth_does_not_patch(tmp_path, model, targets, family_rule):
    text = LORA_16BIT.replace("meta-llama/Llama-3.2-1B", model).replace(
        "[q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]", targets)
    found = findings(tmp_path, text)
    assert ("RC121" in ids(found)) is family_rule
    if family_rule:
        (f,) = [f for f in found if f.rule_id == "RC121"]
        assert f.severity.value == "error" and f.key == "model"
        assert DATA_FILE.name in f.help


def test_without_an_unsloth_section_no_unsloth_rule_runs(tmp_path):
    text = "model: microsoft/Phi-3-mini-4k-instruct\nlora: {r: 16, target_modules: [qkv_proj]}\n" \
           "training: {bf16: true}\nhardware: {gpu: rtx4090}\nexpect: {tokens_per_second: 3000}\n"
    assert not ids(findings(tmp_path, text)) & UNSLOTH_RULES


def test_rc606_passes_a_claim_on_a_patched_family_and_fails_it_on_the_generic_path(tmp_path):
    claim = LORA_16BIT + "expect:\n  tokens_per_second: 3000\n"
    assert "RC606" not in ids(findings(tmp_path, claim))
    generic = claim.replace("  load_in_4bit: false\n", "  load_in_4bit: false\n  full_finetuning: true\n").replace(
        "lora:\n  r: 16\n  lora_alpha: 16\n  target_modules: [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]\n", "")
    found = {f.rule_id: f for f in findings(tmp_path, generic)}
    assert {"RC121", "RC606"} <= set(found) and found["RC121"].severity.value == "warning"
    assert "unsloth.full_finetuning sends it to Unsloth's generic path (RC121)" in found["RC606"].message


def test_rc607_counts_unsloths_default_checkpointing_in_the_ceiling(tmp_path):
    from recipe_checks.throughput import ceiling

    text = LORA_16BIT.replace("  gradient_checkpointing: true\n", "")
    recipe = validate(load_text(text, "r.yaml")).recipe
    from recipe_checks.models.resolve import resolve_model_config
    from recipe_checks.models.skeleton import build_meta_model

    model = build_meta_model(resolve_model_config(recipe.model.id))
    gpu = CATALOG.get("rtx4090")
    args = {"trains_weights": False, "gpu": gpu, "precision": "bfloat16"}
    low = ceiling(model, 2048, checkpointing=True, **args).tokens_per_second
    high = ceiling(model, 2048, checkpointing=False, **args).tokens_per_second
    between = int((low + high) / 2)
    claim = text + f"expect:\n  tokens_per_second: {between}\n"
    assert ids(findings(tmp_path, claim)) == {"RC607"}
    # Unsloth's checkpointing switched off: the claim is under the ceiling without the recomputation
    off = claim.replace("  load_in_4bit: false\n", "  load_in_4bit: false\n  use_gradient_checkpointing: false\n")
    assert ids(findings(tmp_path, off)) == set()


def test_the_shipped_unsloth_recipe_has_no_static_finding(tmp_path):
    assert ids(findings(tmp_path, SHIPPED.read_text(encoding="utf-8"))) == set()


# -- the vram check: what it models of Unsloth -----------------------------------------------------------------

SMALL = """\
model: HuggingFaceTB/SmolLM2-135M
unsloth:
  max_seq_length: {seq}
  load_in_4bit: false
  use_gradient_checkpointing: {gc}
lora:
  r: 16
  lora_alpha: 16
  target_modules: [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]
training:
  per_device_train_batch_size: 2
  bf16: true
  max_seq_length: {seq}
hardware:
  gpu: rtx4090
"""


def _estimate(text: str):
    from recipe_checks.memory.estimate import estimate
    from recipe_checks.models.resolve import resolve_model_config

    recipe = validate(load_text(text, "r.yaml")).recipe
    return estimate(recipe, resolve_model_config(recipe.model.id), CATALOG.get("rtx4090"), with_fixes=False)


def test_unsloth_checkpointing_is_traced_and_its_offload_named_as_not_traced():
    offloaded = _estimate(SMALL.format(seq=2048, gc="unsloth"))
    off = _estimate(SMALL.format(seq=2048, gc="false"))
    # the recipe leaves training.gradient_checkpointing unset: Unsloth's setting decides the traced step
    assert offloaded.trace.settings.gradient_checkpointing and not off.trace.settings.gradient_checkpointing
    assert offloaded.peak_bytes < off.peak_bytes
    (note,) = [n for n in offloaded.notes if n.startswith("use_gradient_checkpointing 'unsloth'")]
    # SmolLM2-135M: 30 blocks, hidden 576; 2 x 2048 tokens x 576 x 2 bytes (bf16) = 4.5 MiB per block input
    assert "an upper bound" in note and "29 of 30 decoder blocks (4.5 MiB each" in note
    assert not any("use_gradient_checkpointing" in n for n in off.notes)
    assert any(n.startswith("Unsloth's kernels for llama") for n in offloaded.notes)


def test_below_512_tokens_unsloth_checkpointing_is_torchs_and_the_note_says_so():
    short = _estimate(SMALL.format(seq=256, gc="unsloth"))
    assert short.trace.settings.gradient_checkpointing
    assert any("below 512 tokens" in n for n in short.notes)
    assert not any("host memory" in n for n in short.notes)


def test_the_vram_check_states_what_it_traces_of_unsloth_next_to_its_verdict(tmp_path):
    path = tmp_path / "small.yaml"
    path.write_text(SMALL.format(seq=2048, gc="unsloth"), encoding="utf-8")
    _, results = check_recipe(path, Options(gpus=("rtx4090",)), CATALOG, traced=True)
    (vram,) = [r for r in results if r.check == "vram"]
    by_rule = {f.rule_id: f for f in vram.findings}
    assert set(by_rule) == {"RC601", "RC122"} and by_rule["RC122"].severity.value == "info"
    said = by_rule["RC122"].message
    assert "use_gradient_checkpointing 'unsloth' is traced as torch's gradient checkpointing, an upper bound" in said
    assert "host memory" in said and "Unsloth's kernels for llama" in said
    assert by_rule["RC122"].location.line == 2  # the unsloth section's key


# -- through pytest ----------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_the_shipped_unsloth_recipe_is_green_on_rtx4090_with_its_vram_verdict(pytester):
    shutil.copy(SHIPPED, pytester.path / SHIPPED.name)
    result = pytester.runpytest("--gpu=rtx4090", SHIPPED.name, "-p", "no:cacheprovider", "-rA",
                                "-k", "not cpu-step and not cpu-train")
    result.assert_outcomes(passed=7, skipped=2)
    result.stdout.fnmatch_lines([
        ("RC122 (info) the traced step stands for Unsloth's as follows: use_gradient_checkpointing 'unsloth' is "
        "traced as torch's gradient checkpointing, an upper bound: Unsloth copies the input of 31 of 32 decoder "
        "blocks (32.0 MiB each*"),
        "RC601 (info) peak * GiB of the 22.8 GiB budget on rtx4090*",
    ])


def test_the_broken_unsloth_recipe_fails_with_rc121_and_rc606_through_pytest(pytester):
    broken = CORPUS / "rc606-unsloth-speedup-claim-on-phi3.yaml"
    shutil.copy(broken, pytester.path / broken.name)
    result = pytester.runpytest("--gpu=rtx4090", broken.name, "-p", "no:cacheprovider",
                                "-k", "schema or throughput")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines([
        "*RC121 trains with Unsloth on a 'phi3' model*",
        "*RC606 expect.tokens_per_second 3,000 with Unsloth where its kernels do not apply*",
    ])


def test_axolotls_unsloth_kernel_keys_are_named_as_not_traced_not_left_untranslated(tmp_path):
    keys = ("unsloth_lora_mlp", "unsloth_lora_qkv", "unsloth_lora_o", "unsloth_cross_entropy_loss",
            "unsloth_rms_norm", "unsloth_rope")
    path = tmp_path / "axolotl.yml"
    path.write_text("base_model: meta-llama/Llama-3.2-1B\nadapter: lora\nlora_r: 16\nlora_alpha: 16\n"
                    "lora_target_linear: true\nsequence_len: 1024\nmicro_batch_size: 1\n"
                    + "".join(f"{key}: true\n" for key in keys), encoding="utf-8")
    _, results = check_recipe(path, Options(gpus=("rtx4090",)), CATALOG, traced=False)
    found = [f for r in results for f in r.findings]
    assert not [f for f in found if f.rule_id == "RC110"]
    named = {f.key: f.message for f in found if f.rule_id == "RC111"}
    assert set(named) == set(keys)
    assert all("as Axolotl patches it in" in message for message in named.values())


def test_the_float32_cast_of_unquantized_weights_is_named_for_quantized_lora_only():
    from recipe_checks.models.resolve import resolve_model_config
    from recipe_checks.unsloth import memory_notes

    def notes(text):
        recipe = validate(load_text(text, "r.yaml")).recipe
        return memory_notes(recipe, resolve_model_config(recipe.model.id).config, "bfloat16")

    cast = "the weights that stay unquantized (embeddings, lm_head, norms) are traced in float32"
    assert any(n.startswith(cast) for n in notes(SHIPPED.read_text(encoding="utf-8")))
    assert not any(n.startswith(cast) for n in notes(LORA_16BIT))


def test_the_vram_fixes_of_an_unsloth_recipe_are_written_in_its_unsloth_section_too():
    from recipe_checks.memory.estimate import Fix, candidate_fixes
    from recipe_checks.memory.settings import StepSettings
    from recipe_checks.unsloth import as_unsloth_fixes

    settings = StepSettings(micro_batch=4, seq_len=2048, lora=(("r", 16),), precision="bfloat16")
    fixes = [Fix(name, change, 0, 1, True) for name, change, _ in candidate_fixes(settings, "llama")]
    assert any("use_liger_kernel" in f.change for f in fixes)  # the plain recipe is offered Liger's loss
    changes = {f.name: f.change for f in as_unsloth_fixes(fixes)}
    assert not any("use_liger_kernel" in c for c in changes.values())  # Unsloth chunks its loss itself
    assert changes["gradient checkpointing"].startswith("unsloth.use_gradient_checkpointing: unsloth")
    assert changes["shorter sequences"] == "training.max_seq_length and unsloth.max_seq_length: 1024"
    assert changes["QLoRA (4-bit NF4 base)"].startswith("unsloth.load_in_4bit: true, quantization: {load_in_4bit: true")


def test_rc120_accepts_the_recipe_the_unsloth_fixes_describe(tmp_path):
    base = LORA_16BIT.replace("  gradient_checkpointing: true\n", "").replace(
        "  load_in_4bit: false\n", "  load_in_4bit: false\n  use_gradient_checkpointing: false\n")
    fixed = base.replace("  use_gradient_checkpointing: false\n", "  use_gradient_checkpointing: unsloth\n").replace(
        "max_seq_length: 2048", "max_seq_length: 1024")
    assert fixed.count("max_seq_length: 1024") == 2
    assert "RC120" not in ids(findings(tmp_path, fixed))


def test_the_unsloth_sections_defaults_are_the_ones_read_from_unsloth():
    from recipe_checks.recipe.schema import Unsloth

    data = unsloth_data()
    defaults = {**data["from_pretrained_defaults"],
                **{k: v for k, v in data["get_peft_model_defaults"].items() if k in Unsloth.model_fields}}
    assert {k: Unsloth.model_fields[k].default for k in defaults} == defaults
