"""The rule registry: unique ids, documented in ruff's layout, and every rule exercised by the corpus."""

from __future__ import annotations

import copy
import re
from collections import Counter

import pytest

from recipe_checks.rules import CHECKS, IGNORES_CHECK, all_rules
from recipe_checks.rules.rc303_bnb_optimizer_gpu import BNB_OPTIMIZERS
from recipe_checks.rules.rc302_unknown_optimizer import optimizer_names
from tests.conftest import CORPUS


def test_rule_ids_and_names_are_unique():
    rules = all_rules()
    assert len({r.id for r in rules}) == len(rules)
    assert len({r.name for r in rules}) == len(rules)


def test_each_rule_lives_in_its_own_module_named_after_its_id():
    for rule in all_rules():
        assert rule.__module__.rsplit(".", 1)[-1].startswith(rule.id.lower() + "_")
        assert rule.check in (*CHECKS, IGNORES_CHECK)  # RC109 runs in the engine's post-pass


def test_each_rule_is_documented_in_four_sections():
    for rule in all_rules():
        doc = rule.doc()
        for heading in ("## What it checks", "## Why it matters", "## Example", "## Use instead"):
            assert heading in doc, f"{rule.id} lacks {heading}"
        assert rule.why


# Rules no recipe file can trigger on this machine, each tested where it can be (tests/test_real_steps.py).
NOT_FROM_A_RECIPE = {
    "RC705": "a base weight that trains or changes needs a bug outside the recipe: tested by unfreezing one",
    "RC707": "checkpointing that does nothing needs a model or wrapper that ignores it: tested by switching it off",
    "RC721": "needs a CUDA GPU: tested with a CPU device standing in for one",
    "RC722": "needs a CUDA GPU: tested with a CPU device standing in for one",
    "RC603": "needs a baseline (--recipes-baseline), which no recipe file gives: tested in tests/test_baseline.py",
    "RC114": "needs diffusers not installed: tested in tests/test_flux.py with its import monkeypatched away",
    "RC802": "needs a DeepSpeed or accelerate config beside the recipe, which the corpus run does not copy: tested "
             "in tests/test_distributed_config.py",
    "RC803": "needs a DeepSpeed config beside the recipe, which the corpus run does not copy: tested in "
             "tests/test_distributed_config.py",
}


def test_every_rule_but_the_informational_one_has_a_broken_recipe_in_the_corpus():
    expected: set[str] = set(NOT_FROM_A_RECIPE)
    for path in CORPUS.glob("*.yaml"):
        match = re.search(r"^# expect: (.*)$", path.read_text(), re.MULTILINE)
        if match:
            expected.update(match.group(1).split())
    missing = {r.id for r in all_rules() if r.severity.value != "info"} - expected
    assert not missing, f"rules without a corpus recipe: {sorted(missing)}"


def test_bitsandbytes_optimizers_are_real_transformers_names():
    assert BNB_OPTIMIZERS <= set(optimizer_names())


def _tiny_llama():
    import torch
    import transformers

    config = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, vocab_size=256)
    with torch.device("meta"):
        return transformers.LlamaForCausalLM(config)


ALL_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.mark.parametrize("rank_pattern", [
    {"proj": 64},  # a key matches a whole dotted suffix in peft: 'proj' is no module's name, so every rank is r
    {"q_proj": 64},
    {"model.layers.0.self_attn.q_proj": 32},
    {r"layers\.\d\.mlp\..*": 4},
], ids=["proj", "q_proj", "one-module", "regex"])
def test_adapter_count_resolves_rank_pattern_as_peft_injects_it(rank_pattern):
    from peft import LoraConfig, get_peft_model

    from recipe_checks.targets import analyse_targets

    config = LoraConfig(r=8, target_modules=ALL_PROJECTIONS, rank_pattern=rank_pattern)
    result = analyse_targets(copy.deepcopy(config), _tiny_llama(), _tiny_llama)
    injected = get_peft_model(_tiny_llama(), copy.deepcopy(config))
    assert result.adapter_params == sum(p.numel() for name, p in injected.named_parameters() if "lora_" in name)
    wrapped_ranks = Counter(m.r["default"] for m in injected.modules() if isinstance(getattr(m, "r", None), dict))
    assert result.ranks == dict(wrapped_ranks)  # what RC208 reports: the ranks peft gives, per module


def test_rank_and_alpha_are_the_ones_peft_gives_each_module():
    from peft import LoraConfig, get_peft_model

    from recipe_checks.targets import rank_and_alpha_for

    config = LoraConfig(r=8, lora_alpha=16, target_modules=ALL_PROJECTIONS,
                        rank_pattern={"proj": 64, "v_proj": 4}, alpha_pattern={"o_proj": 3, "self_attn": 99})
    injected = get_peft_model(_tiny_llama(), copy.deepcopy(config)).base_model.model
    wrapped = {name: m for name, m in injected.named_modules() if hasattr(m, "lora_alpha") and "default" in m.r}
    assert len(wrapped) == 2 * len(ALL_PROJECTIONS)
    for name, module in wrapped.items():
        assert rank_and_alpha_for(config, name) == (module.r["default"], module.lora_alpha["default"]), name


def test_a_refusal_of_peft_injection_points_at_the_key_peft_names():
    from recipe_checks.engine import check_recipe
    from recipe_checks.gpus import GpuCatalog
    from recipe_checks.options import Options

    path = CORPUS / "rc209-target-parameters-with-dropout.yaml"
    _, results = check_recipe(path, Options(), GpuCatalog.load(), traced=False)
    [finding] = [f for r in results for f in r.findings if f.rule_id == "RC209"]
    assert finding.key == "lora.lora_dropout"
    assert finding.location.line == 8
    assert "lora_dropout != 0" in finding.message


def test_the_lora_key_named_in_a_peft_message_is_found_by_its_whole_name():
    from recipe_checks.rules.rc209_peft_injection_rejected import named_lora_key

    section = {"r": 16, "lora_dropout": 0.05, "use_dora": True, "target_parameters": []}
    assert named_lora_key("lora.ParamWrapper does not work with lora_dropout != 0.", section) == "lora_dropout"
    assert named_lora_key("lora.ParamWrapper does not work with use_dora=True.", section) == "use_dora"
    assert named_lora_key("`r` should be a positive integer", section) == "r"
    assert named_lora_key("lora.ParamWrapper does not work with lora_bias=True.", section) is None


def test_nested_keyword_mappings_fail_with_rc102_and_rc103_at_their_keys(tmp_path):
    from recipe_checks.engine import check_recipe
    from recipe_checks.gpus import GpuCatalog
    from recipe_checks.options import Options

    path = tmp_path / "nested.yaml"
    path.write_text(
        "model: meta-llama/Llama-3.1-8B\n"
        "training:\n"
        "  gradient_checkpointing: true\n"
        "  gradient_checkpointing_kwargs: {use_reentrant: [1, {a: b}], use_reentrent: false, foo: .nan}\n"
        "  liger_kernel_config: [1, 2]\n"
        "hardware: {gpu: rtx4090}\n", encoding="utf-8")
    _, results = check_recipe(path, Options(), GpuCatalog.load(), traced=False)
    found = {f.key: f for r in results for f in r.findings if f.rule_id in ("RC102", "RC103")}
    mapping = "training.gradient_checkpointing_kwargs"
    assert {key: f.rule_id for key, f in found.items()} == {
        f"{mapping}.use_reentrant": "RC103", f"{mapping}.use_reentrent": "RC102", f"{mapping}.foo": "RC102",
        "training.liger_kernel_config": "RC103"}
    assert {f.location.line for f in found.values()} == {4, 5}
    assert found[f"{mapping}.use_reentrant"].location.column == 50  # the value, not the mapping
    assert "[1, {'a': 'b'}]" in found[f"{mapping}.use_reentrant"].message
    assert found[f"{mapping}.use_reentrant"].help == "write true or false"
    assert found[f"{mapping}.use_reentrent"].help.startswith("did you mean 'use_reentrant'?")
    assert "preserve_rng_state" in found[f"{mapping}.foo"].help
    assert "mapping of Liger kernel flags" in found["training.liger_kernel_config"].message



# -- RC107: trust_remote_code is an error only where transformers would really run repository code ----------

def _rc107(tmp_path, model: str, config: dict | None = None, **options):
    """The RC107 findings for GOOD_RECIPE with `model` (a flow mapping), and the recipe's state."""
    import json

    from recipe_checks.engine import check_recipe
    from recipe_checks.gpus import GpuCatalog
    from recipe_checks.options import Options
    from tests.conftest import GOOD_RECIPE

    if config is not None:
        (tmp_path / "config.json").write_text(json.dumps(config))
    path = tmp_path / "recipe.yaml"
    path.write_text(GOOD_RECIPE.replace("model: meta-llama/Llama-3.1-8B", f"model: {model}"))
    state, results = check_recipe(path, Options(**options), GpuCatalog.load(()), traced=False)
    assert not [r.error for r in results if r.error is not None]
    return state, [f for r in results for f in r.findings if f.rule_id == "RC107"]


@pytest.mark.parametrize("hub_id", ["meta-llama/Meta-Llama-3-8B", "Qwen/Qwen2.5-7B", "mistralai/Mixtral-8x7B-v0.1"])
def test_trust_remote_code_on_a_config_without_auto_map_is_only_an_info_that_it_has_no_effect(tmp_path, hub_id):
    _, found = _rc107(tmp_path, f"{{id: {hub_id}, trust_remote_code: true}}")
    assert [(f.severity.value, f.key) for f in found] == [("info", "model.trust_remote_code")], found
    assert found[0].message.startswith("trust_remote_code has no effect")
    assert "no auto_map" in found[0].message


def test_trust_remote_code_on_phi3_whose_config_has_an_auto_map_fails_with_rc107(tmp_path):
    _, found = _rc107(tmp_path, "{id: microsoft/Phi-3-mini-4k-instruct, trust_remote_code: true}")
    assert [f.severity.value for f in found] == ["error"], found
    assert "auto_map names the repository's code (AutoConfig -> configuration_phi3.Phi3Config" in found[0].message


QWEN_7B_LIKE = {  # Qwen/Qwen-7B's config.json, cut down: a model_type transformers does not ship, and an auto_map
    "model_type": "qwen", "architectures": ["QWenLMHeadModel"], "hidden_size": 64, "num_hidden_layers": 2,
    "auto_map": {"AutoConfig": "configuration_qwen.QWenConfig", "AutoModelForCausalLM": "modeling_qwen.QWenLMHeadModel"},
}
MPT_7B_LIKE = {  # mosaicml/mpt-7b's config.json, cut down: transformers ships mpt, but the auto_map runs the repo's
    "model_type": "mpt", "architectures": ["MPTForCausalLM"], "d_model": 64, "n_heads": 4, "n_layers": 2,
    "vocab_size": 128, "max_seq_len": 64,
    "auto_map": {"AutoConfig": "configuration_mpt.MPTConfig", "AutoModelForCausalLM": "modeling_mpt.MPTForCausalLM"},
}


@pytest.mark.parametrize(("config", "named"), [
    (QWEN_7B_LIKE, "AutoConfig -> configuration_qwen.QWenConfig"),
    (MPT_7B_LIKE, "AutoConfig -> configuration_mpt.MPTConfig"),
    ({"model_type": "my_remote_arch", "hidden_size": 64}, "model_type 'my_remote_arch' is not one transformers ships"),
], ids=["qwen-7b", "mpt-7b", "unknown-model-type"])
def test_trust_remote_code_where_repository_code_would_run_fails_with_rc107(tmp_path, config, named):
    _, found = _rc107(tmp_path, "{id: some-org/remote, config: config.json, trust_remote_code: true}", config)
    errors = [f for f in found if f.severity.value == "error"]
    assert len(errors) == 1 and errors[0].key == "model.trust_remote_code", found
    assert errors[0].message.startswith("the recipe asks to run the model repository's code")
    assert named in errors[0].message


def test_trust_remote_code_on_a_model_not_resolvable_offline_is_not_reported_by_rc107(tmp_path):
    _, found = _rc107(tmp_path, "{id: some-org/not-bundled-anywhere-7b, trust_remote_code: true}")
    assert found == []


def test_an_auto_map_without_trust_remote_code_is_no_finding(tmp_path):
    _, found = _rc107(tmp_path, "microsoft/Phi-3-mini-4k-instruct")
    assert found == []  # transformers builds its own phi3 class then, as recipe-checks does


def test_with_the_opt_in_an_auto_map_model_is_still_built_from_transformers_own_class(tmp_path):
    import sys

    state, found = _rc107(tmp_path, "{id: microsoft/Phi-3-mini-4k-instruct, trust_remote_code: true}",
                          trust_remote_code=True)
    assert [f.severity.value for f in found] == ["info"] and "no remote code was run" in found[0].message
    model = state.meta_model()
    assert type(model).__module__.startswith("transformers.models.phi3.")
    assert not [name for name in sys.modules if name.startswith("transformers_modules")]


def test_rc301_is_qloras_rule_a_4bit_base_and_not_lora_on_an_8bit_base(tmp_path):
    """LoRA on an LLM.int8 base with an unpaged optimizer is not QLoRA: no RC301 (29 of 423 public configs got it,
    called "QLoRA"); the same recipe on a 4-bit base still gets it."""
    from recipe_checks.engine import check_recipe
    from recipe_checks.gpus import GpuCatalog
    from recipe_checks.options import Options

    text = """\
model: meta-llama/Llama-3.1-8B
quantization:
  {quantization}
lora: {{r: 16, lora_alpha: 32, target_modules: [q_proj, v_proj], task_type: CAUSAL_LM}}
training: {{per_device_train_batch_size: 1, learning_rate: 2.0e-4, bf16: true, optim: adafactor}}
hardware: {{gpu: a10g}}
"""
    found = {}
    for name, quantization in (("8bit", "load_in_8bit: true"), ("4bit", "{load_in_4bit: true, bnb_4bit_quant_type: nf4}")):
        path = tmp_path / f"{name}.yaml"
        path.write_text(text.format(quantization=quantization), encoding="utf-8")
        _, results = check_recipe(path, Options(), GpuCatalog.load(()), traced=False)
        found[name] = {f.rule_id for r in results for f in r.findings}
    assert "RC301" not in found["8bit"]
    assert "RC301" in found["4bit"]


def test_a_failed_trace_is_blamed_only_on_errors_that_stop_the_step(tmp_path, monkeypatch):
    """A policy error (RC301: a non-paged optimizer) changes nothing the trace builds: a failed trace is reported
    as itself, never as 'fix the optimizer first'; an error that stops the step as written (RC201) may be why."""
    from recipe_checks.engine import check_recipe
    from recipe_checks.gpus import GpuCatalog
    from recipe_checks.memory import estimate as engine
    from recipe_checks.memory.errors import TraceError
    from recipe_checks.options import Options
    from tests.conftest import GOOD_RECIPE

    def fails(*args, **kwargs):
        raise TraceError("ValueError: lora.ParamWrapper does not work with lora_dropout != 0.")

    monkeypatch.setattr(engine, "estimate", fails)
    assert {r.id for r in all_rules() if r.stops_the_step} >= {"RC201", "RC302", "RC402", "RC501"}
    assert not any(r.stops_the_step for r in all_rules() if r.id in ("RC301", "RC401", "RC406", "RC602"))

    def vram(text: str):
        path = tmp_path / "r.yaml"
        path.write_text(text)
        _, results = check_recipe(path, Options(), GpuCatalog.load(), traced=True)
        return next(r for r in results if r.check == "vram")

    policy = vram(GOOD_RECIPE.replace("paged_adamw_8bit", "adamw_torch"))
    assert policy.skipped is None
    assert [f.message for f in policy.findings] == [
        "the training step cannot be traced: ValueError: lora.ParamWrapper does not work with lora_dropout != 0."]
    stopping = vram(GOOD_RECIPE.replace("[q_proj, k_proj, v_proj, o_proj]", "[q_proj, query_key_value]"))
    assert stopping.findings == [] and stopping.skipped.startswith("not judged: the training step cannot be traced")
    assert stopping.skipped.endswith("fix the errors reported in r.yaml::target-modules first".replace(
        "r.yaml", str(tmp_path / "r.yaml")))
