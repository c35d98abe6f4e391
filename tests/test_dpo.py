"""DPO recipes (TRL's DPOTrainer): the dpo section, its static rules, the traced DPO step against a real CPU
execution of it, the real step through DPOTrainer on a tiny model, and the checks' skip without TRL."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from recipe_checks.engine import run_check
from recipe_checks.gpus import GpuCatalog
from recipe_checks.memory.step import StepSettings, build_step_model, run_step
from recipe_checks.models.resolve import ResolvedModel
from recipe_checks.options import Options

TINY_LLAMA = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 128,
              "intermediate_size": 256, "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2,
              "vocab_size": 1024, "max_position_embeddings": 512}
LORA = (("lora_alpha", 16), ("lora_dropout", 0.05), ("r", 8),
        ("target_modules", ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")),
        ("task_type", "CAUSAL_LM"))
NF4 = (("compute_dtype", "bfloat16"), ("double_quant", True), ("quant_storage", "uint8"), ("quant_type", "nf4"), ("skip", ()))
OUTPUTS = ("log_probs", "entropy", "mean_logits", "is_top1")


def dpo(reference: str) -> tuple:
    return (("disable_dropout", True), ("loss_type", ("sigmoid",)), ("outputs", OUTPUTS), ("reference", reference),
            ("trainer", "dpo"))


def settings(**changes) -> StepSettings:
    base = dict(micro_batch=2, seq_len=64, precision="bfloat16", weights_dtype="bfloat16", optim="adamw_torch")
    return StepSettings(**{**base, **changes})


CASES = {
    "lora-dpo": settings(lora=LORA, preference=dpo("adapters_disabled")),
    "lora-dpo-checkpointing": settings(lora=LORA, gradient_checkpointing=True, preference=dpo("adapters_disabled")),
    "qlora-dpo-checkpointing": settings(lora=LORA, gradient_checkpointing=True, optim="paged_adamw_8bit",
                                        quant_4bit=NF4, preference=dpo("adapters_disabled")),
    "full-dpo-reference-model": settings(preference=dpo("model")),
    "full-dpo-precomputed": settings(preference=dpo("precomputed")),
}


def _trace(config: dict, step: StepSettings, *, real: bool, replicate: bool = False):
    resolved = ResolvedModel(name="tiny-org/tiny-llama", config=config, source="")
    return run_step(build_step_model(resolved, step, real=real, replicate_blocks=replicate), step)


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_the_traced_dpo_step_is_exact_against_a_real_cpu_execution(case):
    step = CASES[case]
    fake = _trace(TINY_LLAMA, step, real=False)
    real = _trace(TINY_LLAMA, step, real=True)
    assert fake.timeline.peak_bytes == real.timeline.peak_bytes
    assert fake.timeline.breakdown == real.timeline.breakdown
    assert fake.timeline.region_peaks == real.timeline.region_peaks


def test_the_reference_pass_is_in_the_breakdown_and_a_full_dpo_holds_a_second_model():
    lora = _trace(TINY_LLAMA, CASES["lora-dpo-checkpointing"], real=False)
    full = _trace(TINY_LLAMA, CASES["full-dpo-reference-model"], real=False)
    precomputed = _trace(TINY_LLAMA, CASES["full-dpo-precomputed"], real=False)
    # with checkpointing the reference forward (no_grad, its own fused-head tile) is where the step peaks
    assert lora.timeline.breakdown.get("reference", 0) > 0
    assert lora.timeline.region_peaks["reference"] == lora.timeline.peak_bytes
    assert "reference_weights" not in lora.timeline.breakdown  # the adapters are disabled: no second copy
    assert full.timeline.breakdown["reference_weights"] == full.timeline.breakdown["weights"]
    assert "reference" not in precomputed.timeline.region_peaks and "reference_weights" not in precomputed.timeline.breakdown
    # the second model costs its weights; the precomputed run holds its batch's two reference log-prob
    # columns instead (micro_batch floats each: one 512-byte allocation each)
    columns = 2 * 512
    assert full.timeline.peak_bytes - precomputed.timeline.peak_bytes >= full.timeline.breakdown["weights"] - columns


def test_the_concatenated_forward_runs_chosen_and_rejected_rows_together():
    """Twice the rows: a DPO step of micro-batch 1 keeps the activations of two sequences, as SFT of 2 does."""
    one_pair = _trace(TINY_LLAMA, settings(micro_batch=1, preference=dpo("precomputed")), real=False)
    two_pairs = _trace(TINY_LLAMA, settings(micro_batch=2, preference=dpo("precomputed")), real=False)
    sft_two = _trace(TINY_LLAMA, settings(micro_batch=2), real=False)
    assert two_pairs.timeline.breakdown["activations"] > one_pair.timeline.breakdown["activations"]
    # the same hidden states flow through the blocks; SFT's full logits are its own, the fused head keeps none
    assert one_pair.timeline.breakdown["activations"] >= 0.9 * sft_two.timeline.breakdown["activations"]


def test_the_fused_head_never_holds_the_full_logits_nor_its_torch_folds_temporaries():
    trace = _trace(TINY_LLAMA, CASES["lora-dpo"], real=False)
    rows, length, vocab = 4, 64, TINY_LLAMA["vocab_size"]
    full_logits_fp32 = rows * (length - 1) * vocab * 4
    tile = rows * (length - 1) * 32768 * 2  # TRL's one [tokens, 32768] tile in bf16
    assert trace.timeline.breakdown["logits_loss"] < tile + full_logits_fp32 // 4
    assert trace.timeline.breakdown["logits_loss"] >= tile


@pytest.mark.slow
def test_the_full_dpo_trace_of_four_blocks_replays_as_all_blocks():
    config = {**TINY_LLAMA, "num_hidden_layers": 8}
    step = CASES["full-dpo-reference-model"]
    replicated = _trace(config, step, real=False, replicate=True)
    whole = _trace(config, step, real=False)
    assert any("4 of 8 identical decoder blocks traced" in note for note in replicated.notes)
    assert replicated.timeline.peak_bytes == whole.timeline.peak_bytes
    assert replicated.timeline.breakdown == whole.timeline.breakdown


# -- the dpo section and its static rules ---------------------------------------------------------------
def _state(path: Path):
    from recipe_checks.context import RecipeState

    return RecipeState.from_file(path, path.name, Options(), GpuCatalog.load(()))


def _recipe(tmp_path: Path, text: str, name: str = "recipe.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


LORA_DPO = """\
    model: {id: Qwen/Qwen2.5-0.5B, torch_dtype: bfloat16}
    lora: {r: 8, lora_alpha: 16, target_modules: all-linear}
    training: {per_device_train_batch_size: 2, gradient_accumulation_steps: 2, learning_rate: 5.0e-6, bf16: true}
    dpo: {beta: 0.1, max_length: 256}
    hardware: {gpu: rtx4090}
    """


def test_a_dpo_key_of_older_trl_is_unknown_with_a_did_you_mean(tmp_path):
    state = _state(_recipe(tmp_path, LORA_DPO.replace("max_length: 256", "max_prompt_length: 128")))
    [finding] = [f for f in run_check(state, "schema").findings if f.rule_id == "RC102"]
    assert "'max_prompt_length'" in finding.message and "did you mean 'max_length'" in finding.help


def test_dpo_takes_dpoconfigs_own_keys_and_training_the_trainingarguments_ones(tmp_path):
    from recipe_checks.recipe.library import section_keys

    keys = section_keys("dpo")
    assert {"beta", "loss_type", "max_length", "precompute_ref_log_probs"} <= keys
    assert not keys & {"learning_rate", "gradient_checkpointing", "bf16", "output_dir"}
    state = _state(_recipe(tmp_path, LORA_DPO.replace("beta: 0.1", "beta: 0.1, learning_rate: 1.0e-6")))
    assert [f.key for f in run_check(state, "schema").findings if f.rule_id == "RC102"] == ["dpo.learning_rate"]


def test_a_setting_dpoconfig_refuses_is_rc117_blaming_the_key(tmp_path):
    text = LORA_DPO.replace("dpo: {beta: 0.1, max_length: 256}", "dpo: {loss_weights: [1.0], loss_type: [sigmoid, sft]}")
    [finding] = [f for f in run_check(_state(_recipe(tmp_path, text)), "schema").errors if f.rule_id == "RC117"]
    assert finding.key == "dpo.loss_type"  # the first key that, left out, lets DPOConfig build
    assert "`loss_weights` must have the same length as `loss_type`" in finding.message


def test_training_max_seq_length_in_a_dpo_recipe_is_rc118(tmp_path):
    text = LORA_DPO.replace("bf16: true}", "bf16: true, max_seq_length: 2048}")
    [finding] = [f for f in run_check(_state(_recipe(tmp_path, text)), "schema").warnings if f.rule_id == "RC118"]
    assert "dpo.max_length 256" in finding.message and finding.help.startswith("set dpo.max_length: 2048")


def test_the_dpo_settings_follow_dpoconfigs_defaults():
    from recipe_checks.memory.settings import settings_from_recipe
    from recipe_checks.recipe.load import load_text
    from recipe_checks.recipe.validate import validate

    text = textwrap.dedent("""\
        model: {id: Qwen/Qwen2.5-0.5B, torch_dtype: bfloat16}
        training: {per_device_train_batch_size: 1}
        dpo: {beta: 0.1}
        """)
    recipe = validate(load_text(text, "r.yaml")).recipe
    step = settings_from_recipe(recipe, {"model_type": "qwen2"})
    # DPOConfig: bf16 when fp16 is not set, activation checkpointing on, max_length 1024; full: a reference model
    assert (step.precision, step.gradient_checkpointing, step.seq_len) == ("bfloat16", True, 1024)
    assert dict(step.preference)["reference"] == "model"


# -- the plugin, end to end -------------------------------------------------------------------------------
FULL_DPO = """\
model: {id: Qwen/Qwen2.5-1.5B, torch_dtype: bfloat16}
training: {per_device_train_batch_size: 1, bf16: true}
dpo: {beta: 0.1, max_length: 256}
hardware: {gpu: rtx4090, vram_budget_gib: 5}
"""


@pytest.mark.slow
def test_a_full_dpo_holding_a_reference_model_that_cannot_fit_fails_with_rc604_and_rc601(pytester):
    pytester.makefile(".yaml", full=FULL_DPO)
    result = pytester.runpytest("full.yaml", "-k", "vram", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines([
        "RC604 full-parameter DPO holds the model twice (the policy and DPOTrainer's reference model, 2.9 GiB each "
        "in bfloat16): 5.8 GiB, more than the 5.0 GiB budget*",
        "help: set dpo.precompute_ref_log_probs: true (the reference log-probs are computed once before training",
        "RC601 peak 18.0 GiB does not fit the 5.0 GiB budget*",
        "*precomputed reference log-probs (no second model in memory): peak 15.2 GiB",
        "      (saves 2.9 GiB) -- dpo.precompute_ref_log_probs: true",
        "*weights 2.88, reference_weights 2.88,*",
    ], consecutive=False)
    result.assert_outcomes(failed=1)


def test_a_setting_trl_refuses_fails_the_schema_check_with_rc117(pytester):
    bad = FULL_DPO.replace("dpo: {beta: 0.1, max_length: 256}", "dpo:\n  loss_type: [sigmoid, sft]\n  loss_weights: [1.0]")
    pytester.makefile(".yaml", bad=bad)
    result = pytester.runpytest("bad.yaml", "-k", "schema", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["RC117 DPOConfig refuses dpo.loss_type: ValueError: `loss_weights` must have the same "
                                 "length as `loss_type`*", "  --> bad.yaml:4:*"], consecutive=False)
    result.assert_outcomes(failed=1)


def test_without_trl_the_dpo_checks_skip_naming_the_extra(pytester, monkeypatch):
    monkeypatch.setitem(sys.modules, "trl", None)  # `import trl` raises ImportError, as without the extra
    pytester.makefile(".yaml", lora=textwrap.dedent(LORA_DPO))
    result = pytester.runpytest("lora.yaml", "-k", "schema or vram or cpu-step", "-rA", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines([
        "RC117 (info) DPOConfig not checked: the dpo section needs TRL: pip install 'recipe-checks[trl]'",
        "SKIPPED [2] lora.yaml:1: not run: the dpo section needs TRL: pip install 'recipe-checks[trl]'",
    ], consecutive=False)
    result.assert_outcomes(passed=1, skipped=2)  # vram and cpu-step; the schema check judges the rest


# -- cpu-step: a real step through DPOTrainer -------------------------------------------------------------
def test_the_tiny_tokenizer_maps_words_to_ids_and_keeps_eos_a_special_token():
    from recipe_checks.fixtures.tiny import tiny_tokenizer

    tokenizer = tiny_tokenizer(64, eos_token_id=2, bos_token_id=1)
    assert tokenizer("w5 w7 w9" + tokenizer.eos_token)["input_ids"] == [5, 7, 9, 2]
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, len(tokenizer)) == (2, 1, 64)


@pytest.mark.slow
def test_a_lora_dpo_recipe_passes_cpu_step_through_dpotrainer(tmp_path):
    from recipe_checks.run.cpu_step import cpu_step

    state = _state(_recipe(tmp_path, LORA_DPO))
    result = run_check(state, "cpu-step")
    assert result.error is None and result.skipped is None and result.errors == [], (result.error, result.errors)
    outcome = cpu_step(state)
    # the policy starts as its reference (adapters at the identity, disabled for the reference): log 2
    assert outcome.preference.rewards_chosen == outcome.preference.rewards_rejected == 0.0
    assert outcome.report.losses[0] == pytest.approx(0.6931, abs=1e-3)
    assert outcome.report.block_forwards == 2 * len(outcome.report.losses)  # the policy's and the reference's
    assert outcome.report.no_gradient == [] and outcome.report.base_changed == []


@pytest.mark.slow
def test_a_policy_that_is_not_its_reference_at_step_0_is_rc712(tmp_path):
    text = """\
        model: {id: openai-community/gpt2}
        training: {per_device_train_batch_size: 2, learning_rate: 1.0e-6}
        dpo: {disable_dropout: false, max_length: 64}
        """
    state = _state(_recipe(tmp_path, text))
    [finding] = [f for f in run_check(state, "cpu-step").warnings if f.rule_id == "RC712"]
    assert finding.key == "dpo.disable_dropout" and "not 0" in finding.message
    fixed = _state(_recipe(tmp_path, text.replace("disable_dropout: false", "disable_dropout: true"), "fixed.yaml"))
    assert not [f for f in run_check(fixed, "cpu-step").findings if f.rule_id == "RC712"]


@pytest.mark.slow
def test_a_setting_dpotrainer_refuses_is_rc701_blaming_the_dpo_key(tmp_path):
    text = LORA_DPO.replace("dpo: {beta: 0.1, max_length: 256}", "dpo: {beta: 0.1, sync_ref_model: true}")
    [finding] = [f for f in run_check(_state(_recipe(tmp_path, text)), "cpu-step").errors if f.rule_id == "RC701"]
    assert finding.key == "dpo.sync_ref_model"
    assert finding.message.startswith("DPOTrainer refuses dpo.sync_ref_model: NotImplementedError")


@pytest.mark.slow
def test_a_lora_dpo_recipe_passes_cpu_train_through_dpotrainer_train(tmp_path):
    from recipe_checks.run.cpu_train import cpu_train

    state = _state(_recipe(tmp_path, LORA_DPO.replace("learning_rate: 5.0e-6", "learning_rate: 5.0e-5")))
    result = run_check(state, "cpu-train")
    assert result.error is None and result.errors == [], (result.error, result.errors)
    report = cpu_train(state).report
    assert report.first_loss == pytest.approx(0.6931, abs=1e-3)  # DPO's sigmoid loss at the reference: log 2
    assert report.last_loss < report.first_loss and report.adapters_changed and report.base_changed == []


def test_a_qlora_dpo_model_is_built_as_dpotrainer_builds_it():
    """TRL 1.16's DPOTrainer casts a quantized model's adapters to bf16 and does no k-bit preparation: the
    embeddings, norms and head stay in the dtype they load in (an SFT trace upcasts them to fp32)."""
    import torch

    resolved = ResolvedModel(name="tiny-org/tiny-llama", config=TINY_LLAMA, source="")
    built = build_step_model(resolved, CASES["qlora-dpo-checkpointing"], real=True)
    trainable = {p.dtype for p in built.model.parameters() if p.requires_grad}
    frozen_float = {p.dtype for p in built.model.parameters() if not p.requires_grad and p.dtype.is_floating_point}
    assert trainable == {torch.bfloat16} and frozen_float == {torch.bfloat16}


@pytest.mark.slow
def test_a_loss_type_trl_does_not_know_is_rc701_at_the_step_blaming_dpo_loss_type(tmp_path):
    text = LORA_DPO.replace("dpo: {beta: 0.1, max_length: 256}", "dpo: {beta: 0.1, loss_type: sigmoidd}")
    [finding] = [f for f in run_check(_state(_recipe(tmp_path, text)), "cpu-step").errors if f.rule_id == "RC701"]
    assert finding.key == "dpo.loss_type"
    assert finding.message.startswith("DPOTrainer's step refuses dpo.loss_type: ValueError: Unknown loss type: sigmoidd")


@pytest.mark.slow
def test_the_estimate_of_the_shipped_dpo_recipe_names_the_reference_pass():
    from recipe_checks.gpus import GIB
    from recipe_checks.memory.estimate import estimate
    from recipe_checks.models.resolve import resolve_model_config
    from recipe_checks.recipe.load import load_text
    from recipe_checks.recipe.validate import validate
    from tests.conftest import RECIPES

    path = RECIPES / "llama3-8b-lora-dpo-rtx4090.yaml"
    recipe = validate(load_text(path.read_text(encoding="utf-8"), path.name)).recipe
    result = estimate(recipe, resolve_model_config(recipe.model.id), GpuCatalog.load().get("rtx4090"))
    assert result.fits and "reference_weights" not in result.breakdown  # LoRA: the adapters disabled, no copy
    reference = result.trace.timeline.region_peaks["reference"]
    assert result.notes[0] == (f"reference forward (no_grad, chosen and rejected rows): peaks at "
                               f"{(reference + result.peak_bytes - result.trace.timeline.peak_bytes) / GIB:.2f} GiB, "
                               f"{(result.trace.timeline.peak_bytes - reference) / GIB:.2f} GiB below the step's peak")
    assert ("policy forward: the chosen and rejected rows concatenated, 2 rows (1 pair(s)) of 1024 tokens in one "
            "forward") in result.notes


def test_the_throughput_ceiling_of_a_dpo_step_adds_the_reference_forward(tmp_path):
    """Per token (chosen and rejected alike): the policy's forward, backward and recompute, as an SFT step's
    at the same length; plus one forward of the reference. Precomputed log-probs: the SFT step's alone."""
    from recipe_checks.throughput import attention_flops_per_token, recipe_ceiling

    gpu = GpuCatalog.load().get("rtx4090")
    sft = _state(_recipe(tmp_path, LORA_DPO.replace("dpo: {beta: 0.1, max_length: 256}", "")
                         .replace("bf16: true}", "bf16: true, max_seq_length: 256, gradient_checkpointing: true}"),
                         "sft.yaml"))
    dpo_state = _state(_recipe(tmp_path, LORA_DPO))
    precomputed = _state(_recipe(tmp_path, LORA_DPO.replace("beta: 0.1", "beta: 0.1, precompute_ref_log_probs: true"),
                                 "pre.yaml"))
    ceilings = {name: recipe_ceiling(state.recipe, state.meta_model(), gpu)
                for name, state in (("sft", sft), ("dpo", dpo_state), ("precomputed", precomputed))}
    assert ceilings["precomputed"].flops_per_token == ceilings["sft"].flops_per_token
    forward = 2.0 * ceilings["sft"].matmul_params + attention_flops_per_token(sft.meta_model().config, 256)
    assert ceilings["dpo"].flops_per_token == ceilings["sft"].flops_per_token + forward


@pytest.mark.slow
def test_estimate_json_gives_the_reference_pass_peak(capsys):
    import json

    from recipe_checks.cli import main
    from tests.conftest import RECIPES

    assert main(["estimate", str(RECIPES / "llama3-8b-lora-dpo-rtx4090.yaml"), "--gpu", "rtx4090", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    data = data[0] if isinstance(data, list) else data
    assert 0 < data["peak_bytes"] - data["reference_pass_peak_bytes"] < data["peak_bytes"] // 10


def test_liger_kernel_leaves_the_dpo_step_on_trls_fused_head():
    from recipe_checks.memory.settings import settings_from_recipe
    from recipe_checks.recipe.load import load_text
    from recipe_checks.recipe.validate import validate

    text = textwrap.dedent("""\
        model: {id: Qwen/Qwen2.5-0.5B, torch_dtype: bfloat16}
        lora: {r: 8, target_modules: all-linear}
        training: {per_device_train_batch_size: 1, bf16: true, use_liger_kernel: true}
        dpo: {beta: 0.1}
        """)
    recipe = validate(load_text(text, "r.yaml")).recipe
    step = settings_from_recipe(recipe, {"model_type": "qwen2"})
    assert step.chunked_loss is False and any("fused linear cross-entropy off" in n for n in step.notes)
