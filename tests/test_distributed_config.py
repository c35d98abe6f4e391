"""The distributed section's DeepSpeed and accelerate files, Axolotl's and LLaMA-Factory's multi-GPU keys, and
the distributed rules RC801-RC807: each import path, each rule firing and not firing, and hostile files.

Static checks only (no trace): each recipe is checked with traced=False against an H100.
"""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest

from recipe_checks.engine import check_recipe
from recipe_checks.formats import GPUS_NOT_STATED
from recipe_checks.gpus import GpuCatalog
from recipe_checks.limits import MAX_CONFIG_BYTES
from recipe_checks.options import Options

CATALOG = GpuCatalog.load(())
SMALL = "HuggingFaceTB/SmolLM2-135M"  # bundled: the model rules build it on the meta device in well under a second

LORA = """\
lora:
  r: 16
  lora_alpha: 32
  target_modules: [q_proj, k_proj, v_proj, o_proj]
"""
TRAINING = """\
training:
  per_device_train_batch_size: 2
  gradient_accumulation_steps: 4
  learning_rate: 2.0e-4
  bf16: true
  gradient_checkpointing: true
  max_seq_length: 1024
"""


def recipe(distributed: str, *, model: str = SMALL, lora: bool = True, training: str = TRAINING,
           hardware: str = "hardware: {gpu: h100-sxm}\n", extra: str = "") -> str:
    return (f"model: {model}\n{extra}{LORA if lora else ''}{training}distributed:\n"
            f"{textwrap.indent(textwrap.dedent(distributed), '  ')}{hardware}")


@pytest.fixture
def files(tmp_path: Path):
    """files(name=text, ...) writes each file under tmp_path ('/' makes folders) and returns tmp_path."""

    def _write(**named: str) -> Path:
        for name, text in named.items():
            path = tmp_path / name.replace("__", "/")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(text) if not text.lstrip().startswith("{") else text, encoding="utf-8")
        return tmp_path

    return _write


def check(path: Path, gpu: str = "h100-sxm"):
    state, results = check_recipe(path, Options(gpus=(gpu,)), CATALOG, traced=False)
    assert not [r.error for r in results if r.error is not None]
    return state, [f for r in results for f in r.findings]


def ids(findings) -> set[str]:
    return {f.rule_id for f in findings if f.severity.value != "info"}


def only(findings, rule_id: str):
    found = [f for f in findings if f.rule_id == rule_id]
    assert found, findings
    return found


def ds(**config) -> str:
    return json.dumps(config, indent=2)


ZERO3_OFFLOAD = ds(train_batch_size=64, train_micro_batch_size_per_gpu=2, gradient_accumulation_steps="auto",
                   bf16={"enabled": "auto"},
                   zero_optimization={"stage": 3, "offload_optimizer": {"device": "cpu", "pin_memory": True},
                                      "offload_param": {"device": "nvme", "nvme_path": "/local_nvme"},
                                      "stage3_gather_16bit_weights_on_model_save": True})


# --- native recipes: DeepSpeed JSON ----------------------------------------------------------------------

def test_a_deepspeed_config_gives_the_strategy_offload_and_world_size(files):
    root = files(**{"ds.json": ZERO3_OFFLOAD, "r.yaml": recipe("deepspeed: ds.json\n")})
    state, findings = check(root / "r.yaml")
    d = state.recipe.distributed
    assert (d.strategy, d.world_size, d.zero.offload_optimizer, d.zero.offload_param) == ("zero3", 8, "cpu", "nvme")
    # 64 = micro 2 x accumulation 4 (training, for "auto") x 8 GPUs: DeepSpeed's own equation
    assert not ids(findings) & {"RC801", "RC802", "RC803", "RC103"}, findings
    # a finding about a key the file gave points at the recipe's deepspeed line
    assert state.loaded.location(("distributed", "strategy")).line == state.loaded.location(("distributed", "deepspeed")).line


@pytest.mark.parametrize(("stage", "strategy"), [(0, "ddp"), (1, "zero1"), (2, "zero2"), (3, "zero3"), (None, "ddp")])
def test_each_zero_stage_is_a_strategy(files, stage, strategy):
    zero = {"stage": stage} if stage is not None else {}
    root = files(**{"ds.json": ds(zero_optimization=zero), "r.yaml": recipe("deepspeed: ds.json\nworld_size: 4\n")})
    state, _ = check(root / "r.yaml")
    assert state.recipe.distributed.strategy == strategy


def test_a_strategy_the_file_contradicts_is_a_finding_not_a_silent_win(files):
    root = files(**{"ds.json": ds(zero_optimization={"stage": 2}),
                    "r.yaml": recipe("deepspeed: ds.json\nstrategy: zero3\nworld_size: 4\n")})
    state, findings = check(root / "r.yaml")
    [finding] = only(findings, "RC801")
    assert "distributed.strategy is 'zero3'" in finding.message and "'zero2'" in finding.message
    assert "ds.json:" in finding.message and finding.severity.value == "error"
    assert state.source_line(finding.location.line).strip() == "strategy: zero3"


def test_the_batch_equation_gives_or_checks_the_world_size(files):
    config = ds(train_batch_size=60, train_micro_batch_size_per_gpu=2, gradient_accumulation_steps=4)
    root = files(**{"ds.json": config, "r.yaml": recipe("deepspeed: ds.json\n")})
    state, findings = check(root / "r.yaml")
    [finding] = only(findings, "RC801")
    assert "not a multiple of micro-batch x accumulation = 2 x 4 = 8" in finding.message
    assert state.recipe.distributed is None  # no world size: the schema asks for one (RC103)
    root = files(**{"ds.json": ds(train_batch_size=64, train_micro_batch_size_per_gpu=2),
                    "r.yaml": recipe("deepspeed: ds.json\nworld_size: 4\n")})
    _, findings = check(root / "r.yaml")
    [finding] = only(findings, "RC803")
    assert "2 x 4 x 4" not in finding.message and "8 x 4 = 32" in finding.message and "world size to 8" in finding.help


def test_world_size_launcher_leaves_the_gpu_count_to_the_launcher_as_a_warning_not_an_error(files):
    """What `recipe-checks convert` writes for a config whose launcher is told the number of GPUs: the sharding is
    checked without a world size (RC111, a warning); a file that states the number replaces it; a GPU count
    written beside it, or a quoted number, is an error."""
    root = files(**{"ds.json": ds(zero_optimization={"stage": 3}), "r.yaml": recipe("deepspeed: ds.json\nworld_size: launcher\n")})
    state, findings = check(root / "r.yaml")
    d = state.recipe.distributed
    assert (d.strategy, d.world_size, d.size_known) == ("zero3", "launcher", False)
    [note] = only(findings, "RC111")
    assert note.severity.value == "warning" and "number of GPUs to the launcher" in note.message
    assert state.source_line(note.location.line).strip() == "world_size: launcher"
    assert not {f.rule_id for f in findings if f.severity.value == "error"}, findings
    files(**{"ds.json": ds(train_batch_size=64, train_micro_batch_size_per_gpu=2, zero_optimization={"stage": 3})})
    state, findings = check(root / "r.yaml")  # 64 = 2 x 4 x 8: the file states it
    assert state.recipe.distributed.world_size == 8 and not ids(findings) & {"RC111", "RC801", "RC103"}, findings
    for written in ("world_size: launcher\ngpus_per_node: 8\n", "world_size: '8'\n", "world_size: auto\n"):
        files(**{"r.yaml": recipe(f"deepspeed: ds.json\n{written}")})
        _, findings = check(root / "r.yaml")
        assert "RC103" in ids(findings) and "RC111" not in ids(findings), (written, findings)


def test_batch_sizes_that_differ_from_training_are_refused_as_the_trainer_refuses_them(files):
    root = files(**{"ds.json": ds(train_micro_batch_size_per_gpu=4, gradient_accumulation_steps=4),
                    "r.yaml": recipe("deepspeed: ds.json\nworld_size: 2\n")})
    _, findings = check(root / "r.yaml")
    [finding] = only(findings, "RC803")
    assert "train_micro_batch_size_per_gpu" in finding.message and "per_device_train_batch_size is 2" in finding.message


def test_auto_batch_sizes_need_the_world_size_from_the_recipe(files):
    root = files(**{"ds.json": ds(train_batch_size="auto", zero_optimization={"stage": 2}),
                    "r.yaml": recipe("deepspeed: ds.json\n")})
    state, findings = check(root / "r.yaml")
    [finding] = [f for f in findings if f.rule_id == "RC103" and f.key.startswith("distributed")]
    assert "give the number of GPUs" in finding.message and "ds.json" in finding.message


def test_a_deepspeed_precision_that_contradicts_training_fails_rc802(files):
    root = files(**{"ds.json": ds(bf16={"enabled": True}, zero_optimization={"stage": 2}),
                    "r.yaml": recipe("deepspeed: ds.json\nworld_size: 2\n",
                                     training=TRAINING.replace("bf16: true", "bf16: false"))})
    _, findings = check(root / "r.yaml")
    assert "bf16.enabled" in only(findings, "RC802")[0].message
    root = files(**{"ds.json": ds(bf16={"enabled": "auto"}, zero_optimization={"stage": 2})})
    _, findings = check(root / "r.yaml")
    assert "RC802" not in ids(findings)


# --- native recipes: accelerate config --------------------------------------------------------------------

FSDP2 = """\
compute_environment: LOCAL_MACHINE
distributed_type: FSDP
mixed_precision: bf16
num_machines: 2
num_processes: 16
machine_rank: 0
fsdp_config:
  fsdp_version: 2
  fsdp_reshard_after_forward: false
  fsdp_offload_params: true
  fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP
  fsdp_state_dict_type: SHARDED_STATE_DICT
  fsdp_cpu_ram_efficient_loading: true
"""


def test_an_accelerate_fsdp2_config_gives_the_fsdp_options_and_the_nodes(files):
    root = files(**{"acc.yaml": FSDP2, "r.yaml": recipe("accelerate_config: acc.yaml\n")})
    state, findings = check(root / "r.yaml")
    d = state.recipe.distributed
    assert (d.strategy, d.world_size, d.nodes, d.gpus_per_node) == ("fsdp", 16, 2, 8)
    assert (d.fsdp.reshard_after_forward, d.fsdp.offload_policy) == (False, "cpu")
    assert not ids(findings) & {"RC801", "RC802", "RC103"}, findings


@pytest.mark.parametrize(("fsdp_config", "strategy", "reshard"), [
    ("fsdp_sharding_strategy: SHARD_GRAD_OP", "fsdp", False),
    ("fsdp_reshard_after_forward: FULL_SHARD", "fsdp", True),
    ("fsdp_sharding_strategy: 3", "ddp", None),  # NO_SHARD, by its number
    ("{}", "fsdp", True),  # FSDP1 and FULL_SHARD, the plugin's defaults
])
def test_fsdp1_sharding_strategies_map_where_they_mean_the_same(files, fsdp_config, strategy, reshard):
    config = f"distributed_type: FSDP\nnum_processes: 4\nfsdp_config: {fsdp_config}\n" if fsdp_config == "{}" else \
        f"distributed_type: FSDP\nnum_processes: 4\nfsdp_config:\n  {fsdp_config}\n"
    root = files(**{"acc.yaml": config, "r.yaml": recipe("accelerate_config: acc.yaml\n")})
    state, findings = check(root / "r.yaml")
    d = state.recipe.distributed
    assert d.strategy == strategy and (d.fsdp.reshard_after_forward if d.fsdp else None) == reshard
    assert "FSDP1" in only(findings, "RC801")[0].message and only(findings, "RC801")[0].severity.value == "warning"


def test_an_accelerate_deepspeed_config_reads_its_zero_stage_or_its_deepspeed_file(files):
    root = files(**{"acc.yaml": "distributed_type: DEEPSPEED\nnum_processes: 8\ndeepspeed_config:\n"
                                "  zero_stage: 3\n  offload_optimizer_device: cpu\n  offload_param_device: none\n",
                    "r.yaml": recipe("accelerate_config: acc.yaml\n")})
    state, _ = check(root / "r.yaml")
    d = state.recipe.distributed
    assert (d.strategy, d.world_size, d.zero.offload_optimizer, d.zero.offload_param) == ("zero3", 8, "cpu", "none")
    root = files(**{"configs__acc.yaml": "distributed_type: DEEPSPEED\nnum_processes: 4\ndeepspeed_config:\n"
                                         "  deepspeed_config_file: zero2.json\n  zero3_init_flag: false\n",
                    "configs__zero2.json": ds(zero_optimization={"stage": 2, "offload_optimizer": {"device": "cpu"}}),
                    "r.yaml": recipe("accelerate_config: configs/acc.yaml\n")})
    state, findings = check(root / "r.yaml")
    d = state.recipe.distributed
    assert (d.strategy, d.world_size, d.zero.offload_optimizer) == ("zero2", 4, "cpu"), findings


def test_an_accelerate_multi_gpu_config_is_ddp_and_its_mixed_precision_is_compared(files):
    root = files(**{"acc.yaml": "distributed_type: MULTI_GPU\nnum_processes: 2\nmixed_precision: fp16\n",
                    "r.yaml": recipe("accelerate_config: acc.yaml\n")})
    state, findings = check(root / "r.yaml")
    assert state.recipe.distributed.strategy == "ddp" and state.recipe.distributed.world_size == 2
    [finding] = only(findings, "RC802")
    assert finding.severity.value == "warning" and "'fp16'" in finding.message


def test_an_accelerate_config_that_distributes_nothing_leaves_the_section_waiting(files):
    root = files(**{"acc.yaml": "distributed_type: 'NO'\nnum_processes: 1\n",
                    "r.yaml": recipe("accelerate_config: acc.yaml\nstrategy: ddp\nworld_size: 1\n")})
    state, findings = check(root / "r.yaml")
    assert "one process, nothing is distributed" in only(findings, "RC801")[0].message
    assert state.recipe.distributed is None and "distributed" in state.validation.broken
    assert "RC807" not in ids(findings)


# --- Axolotl and LLaMA-Factory -----------------------------------------------------------------------

AXOLOTL = """\
base_model: HuggingFaceTB/SmolLM2-135M
adapter: lora
lora_r: 16
lora_alpha: 32
lora_target_modules: [q_proj, v_proj]
micro_batch_size: 2
gradient_accumulation_steps: 4
sequence_len: 1024
learning_rate: 2.0e-4
optimizer: adamw_torch_fused
bf16: true
"""


def test_axolotl_deepspeed_with_a_world_size_is_the_native_section(files):
    root = files(**{"deepspeed_configs__zero2.json": ds(zero_optimization={"stage": 2}),
                    "axo.yml": AXOLOTL + "deepspeed: deepspeed_configs/zero2.json\nworld_size: 4\n"})
    state, findings = check(root / "axo.yml")
    d = state.recipe.distributed
    assert (d.strategy, d.world_size, d.deepspeed) == ("zero2", 4, "deepspeed_configs/zero2.json")
    assert "RC806" in ids(findings)  # LoRA with ZeRO-2: the translated section is checked like a native one
    assert not any(GPUS_NOT_STATED in f.message for f in findings)


def test_axolotl_without_a_world_size_keeps_the_section_and_says_how_to_state_it(files):
    root = files(**{"zero3.json": ds(zero_optimization={"stage": 3}), "axo.yml": AXOLOTL + "deepspeed: zero3.json\n"})
    state, findings = check(root / "axo.yml")
    assert state.recipe.distributed.strategy == "zero3" and not state.recipe.distributed.size_known
    [note] = [f for f in findings if f.rule_id == "RC111" and GPUS_NOT_STATED in f.message]
    assert "world_size: N" in note.message and state.source_line(note.location.line).startswith("deepspeed:")
    # numbers in the DeepSpeed config state it instead: the note goes
    files(**{"zero3.json": ds(train_batch_size=16, train_micro_batch_size_per_gpu=2, zero_optimization={"stage": 3})})
    state, findings = check(root / "axo.yml")
    assert state.recipe.distributed.world_size == 2 and not any(GPUS_NOT_STATED in f.message for f in findings)


def test_axolotl_fsdp_config_is_fsdp2_fully_shard(files):
    root = files(**{"axo.yml": AXOLOTL + "world_size: 8\nfsdp_version: 2\nfsdp_config:\n  offload_params: true\n"
                                         "  fsdp_reshard_after_forward: false\n  state_dict_type: FULL_STATE_DICT\n"})
    state, findings = check(root / "axo.yml")
    d = state.recipe.distributed
    assert (d.strategy, d.world_size, d.fsdp.reshard_after_forward, d.fsdp.offload_policy) == ("fsdp", 8, False, "cpu")
    assert "RC110" not in ids(findings), findings


def test_axolotl_legacy_fsdp_list_is_fsdp1_resolved(files):
    root = files(**{"axo.yml": AXOLOTL + "world_size: 2\nfsdp: [shard_grad_op, auto_wrap]\n"})
    state, _ = check(root / "axo.yml")
    d = state.recipe.distributed
    assert (d.strategy, d.fsdp.reshard_after_forward) == ("fsdp", False)
    assert any("FSDP1" in what for _, what in state.loaded.translation.resolved)


def test_axolotl_deepspeed_file_missing_next_to_the_config_is_a_warning(files):
    root = files(**{"axo.yml": AXOLOTL + "deepspeed: deepspeed_configs/zero3_bf16.json\n"})
    state, findings = check(root / "axo.yml")
    [finding] = only(findings, "RC801")
    assert finding.severity.value == "warning" and "not next to this config" in finding.message
    assert state.recipe.distributed is None


def test_llamafactory_deepspeed_is_the_native_section(files):
    config = ("model_name_or_path: HuggingFaceTB/SmolLM2-135M\nstage: sft\nfinetuning_type: lora\nlora_target: all\n"
              "cutoff_len: 1024\nper_device_train_batch_size: 2\ngradient_accumulation_steps: 4\nbf16: true\n"
              "deepspeed: ds_z3.json\n")
    root = files(**{"ds_z3.json": ds(train_batch_size="auto", bf16={"enabled": "auto"},
                                     zero_optimization={"stage": 3}), "lf.yaml": config})
    state, findings = check(root / "lf.yaml")
    assert state.recipe.distributed.strategy == "zero3"
    assert any(f.rule_id == "RC111" and GPUS_NOT_STATED in f.message for f in findings)


# --- hostile files -----------------------------------------------------------------------------------

def _one_rc801(root: Path, name: str = "r.yaml"):
    state, findings = check(root / name)
    found = only(findings, "RC801")
    assert state.source_line(found[0].location.line).strip().startswith(("deepspeed:", "accelerate_config:")), found
    return state, found


def test_a_missing_deepspeed_config_is_an_error_at_its_line(files):
    root = files(**{"r.yaml": recipe("deepspeed: nowhere.json\nworld_size: 2\n")})
    state, [finding] = _one_rc801(root)
    assert "does not exist" in finding.message and finding.severity.value == "error"
    assert state.recipe.distributed is None and "distributed" in state.validation.broken


@pytest.mark.parametrize(("content", "words"), [
    ('{"zero_optimization": {"stage": 2},}', "not valid JSON"),
    ("[1, 2]", "a JSON list, not an object"),
    ('{"zero_optimization": {"stage": "3"}}', "must be 0, 1, 2 or 3"),
    ('{"zero_optimization": {"stage": 5}}', "must be 0, 1, 2 or 3"),
    ('{"zero_optimization": 7}', "must be an object"),
    ('{"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "gpu"}}}', "must be none, cpu or nvme"),
    ('{"zero_optimization": {"stage": 2}, "zero_optimization": {"stage": 3}}', "twice"),
    ("[" * 10_000 + "]" * 10_000, "nests too deeply"),
    ('{"a": ' * 40 + "1" + "}" * 40, "nests deeper than"),
    ("\ufeff\x00\x01binary", "NUL byte"),
])
def test_a_malformed_deepspeed_config_is_one_finding_never_a_traceback(files, content, words):
    root = files(**{"ds.json": "", "r.yaml": recipe("deepspeed: ds.json\nworld_size: 2\n")})
    (root / "ds.json").write_text(content, encoding="utf-8")
    _, found = _one_rc801(root)
    assert any(words in f.message for f in found), found


def test_unknown_keys_that_deepspeed_refuses_are_errors_and_ignored_ones_warnings(files):
    config = ds(zero_optimisation={"stage": 3}, my_note="hello",
                zero_optimization={"stage": 2, "overlap_com": True, "offload_optimizer": {"device": "cpu", "pinned": 1}})
    root = files(**{"ds.json": config, "r.yaml": recipe("deepspeed: ds.json\nworld_size: 2\n")})
    state, found = _one_rc801(root)
    by_key = {f.message.split("'")[1]: f for f in found if "'" in f.message}
    assert by_key["zero_optimisation"].severity.value == "error" and "zero_optimization" in by_key["zero_optimisation"].help
    assert by_key["my_note"].severity.value == "warning"
    assert by_key["overlap_com"].severity.value == "error" and "overlap_comm" in by_key["overlap_com"].help
    assert by_key["pinned"].severity.value == "error"
    assert f"ds.json:{_line(root / 'ds.json', 'overlap_com')}" in by_key["overlap_com"].message
    assert state.recipe.distributed.strategy == "zero2"  # what DeepSpeed would read: the section still resolves


def _line(path: Path, key: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if f'"{key}"' in line)


def test_a_directory_a_large_file_and_an_escaping_symlink_are_refused(files, tmp_path):
    root = files(**{"r.yaml": recipe("deepspeed: configs\nworld_size: 2\n"), "configs__x": ""})
    assert "a directory" in _one_rc801(root)[1][0].message
    with open(root / "big.json", "wb") as f:
        f.truncate(MAX_CONFIG_BYTES + 1)
    files(**{"r.yaml": recipe("deepspeed: big.json\nworld_size: 2\n")})
    assert "more than the" in _one_rc801(root)[1][0].message
    outside = tmp_path.parent / f"{tmp_path.name}-outside.json"
    outside.write_text(ds(zero_optimization={"stage": 3}))
    try:
        os.symlink(outside, root / "link.json")
    except OSError:
        pytest.skip("this file system cannot make symbolic links")
    files(**{"r.yaml": recipe("deepspeed: link.json\nworld_size: 2\n")})
    assert "symbolic link that leads outside the recipe's folder; it is not read" in _one_rc801(root)[1][0].message
    os.symlink("zero3.json", root / "inside.json")  # a link that stays in the folder is read
    files(**{"zero3.json": ds(zero_optimization={"stage": 3}), "r.yaml": recipe("deepspeed: inside.json\nworld_size: 2\n")})
    state, findings = check(root / "r.yaml")
    assert state.recipe.distributed.strategy == "zero3" and "RC801" not in ids(findings)


@pytest.mark.parametrize(("content", "words"), [
    ("distributed_type: FSDP\nfsdp_config: !!python/object/apply:os.system ['true']\n", "not valid YAML"),
    ("- a\n- b\n", "the top level is a list"),
    ("distributed_type: MEGATRON_LM\nnum_processes: 8\n", "not modelled"),
    ("distributed_type: FSDP\nnum_processes: 4\nfsdp_config:\n  fsdp_version: 3\n", "fsdp_version must be 1 or 2"),
    ("distributed_type: FSDP\nnum_processes: 4\nfsdp_config:\n  fsdp_version: 1\n  fsdp_reshard_after_forward: HYBRID_SHARD\n",
     "not modelled"),
    ("distributed_type: MULTI_GPU\nnum_processes: 4\nnum_prosesses: 4\n", "not an accelerate config key"),
    ("distributed_type: MULTI_GPU\nnum_processes: 'four'\n", "must be a whole number"),
    ("distributed_type: MULTI_GPU\nnum_processes: 6\nnum_machines: 4\n", "not a multiple of num_machines"),
    ("distributed_type: DEEPSPEED\nnum_processes: 2\ndeepspeed_config:\n  deepspeed_config_file: gone.json\n",
     "does not exist"),
])
def test_a_malformed_accelerate_config_is_a_finding_never_a_traceback(files, content, words):
    root = files(**{"acc.yaml": content, "r.yaml": recipe("accelerate_config: acc.yaml\nworld_size: 4\n")})
    _, found = _one_rc801(root)
    assert any(words in f.message for f in found), found


# --- the rules ---------------------------------------------------------------------------------------

QLORA = "quantization: {load_in_4bit: true, bnb_4bit_quant_type: nf4, bnb_4bit_compute_dtype: bfloat16%s}\n"


@pytest.mark.parametrize(("strategy", "storage", "fires"), [
    ("fsdp", "", True), ("zero3", ", bnb_4bit_quant_storage: uint8", True),
    ("fsdp", ", bnb_4bit_quant_storage: float32", True), ("fsdp", ", bnb_4bit_quant_storage: bfloat16", False),
    ("zero2", "", False), ("ddp", "", False),
])
def test_qlora_sharded_needs_its_quant_storage_in_the_parameters_dtype_rc804(files, strategy, storage, fires):
    root = files(**{"r.yaml": recipe(f"strategy: {strategy}\nworld_size: 2\n", extra=QLORA % storage)})
    _, findings = check(root / "r.yaml")
    assert ("RC804" in ids(findings)) is fires, findings


def test_llm_int8_cannot_be_sharded_rc804(files):
    root = files(**{"r.yaml": recipe("strategy: zero3\nworld_size: 2\n", extra="quantization: {load_in_8bit: true}\n")})
    _, findings = check(root / "r.yaml")
    assert "8-bit" in only(findings, "RC804")[0].message
    files(**{"r.yaml": recipe("strategy: zero2\nworld_size: 2\n", extra="quantization: {load_in_8bit: true}\n")})
    assert "RC804" not in ids(check(root / "r.yaml")[1])


def test_llm_int8_under_fsdp2_is_not_checked_rather_than_refused_rc804(files):
    """FSDP2 shards parameter by parameter and Axolotl runs 8-bit LoRA so (glm47-flash/lora_fsdp.yaml): the sharding
    is a warning that it is not checked, and the vram check, whose trace does not shard quantized layers, is not
    run with that reason: neither is an error of the recipe."""
    from recipe_checks.engine import check_recipe as run

    root = files(**{"r.yaml": recipe("strategy: fsdp\nworld_size: 2\n", extra="quantization: {load_in_8bit: true}\n")})
    [finding] = only(check(root / "r.yaml")[1], "RC804")
    assert finding.severity.value == "warning" and "not checked" in finding.message
    _, results = run(root / "r.yaml", Options(gpus=("h100-sxm",)), CATALOG, traced=True)
    vram = next(r for r in results if r.check == "vram")
    assert vram.findings == [] and vram.error is None
    assert vram.skipped.startswith("not checked: the training step is not modelled: bitsandbytes' quantized layers")


@pytest.mark.parametrize(("host", "severity"), [(1, "error"), (3, "warning"), (8, None)])
def test_zero_offload_past_the_host_memory_rc805(files, host, severity):
    # full fine-tune of 135M parameters: 16 B x 135M = 2.0 GiB of optimizer states, 0.25 GiB of bf16 parameters
    root = files(**{"r.yaml": recipe("strategy: zero3\nworld_size: 8\nzero: {offload_optimizer: cpu, offload_param: cpu}\n",
                                     lora=False, hardware=f"hardware: {{gpu: h100-sxm, host_memory_gib: {host}}}\n")})
    _, findings = check(root / "r.yaml")
    found = [f for f in findings if f.rule_id == "RC805"]
    assert [f.severity.value for f in found] == ([severity] if severity else []), found
    if found:
        assert "2.3 GiB on the one node" in found[0].message


def test_offload_per_node_is_divided_among_the_nodes_and_fsdp_offload_counts_rc805(files):
    hardware = "hardware: {gpu: h100-sxm, host_memory_gib: 2}\n"
    root = files(**{"r.yaml": recipe("strategy: zero3\nnodes: 2\ngpus_per_node: 8\nzero: {offload_optimizer: cpu}\n",
                                     lora=False, hardware=hardware)})
    assert "RC805" not in ids(check(root / "r.yaml")[1])  # 2.0 GiB over two hosts
    files(**{"r.yaml": recipe("strategy: fsdp\nworld_size: 8\nfsdp: {offload_policy: cpu}\n", lora=False,
                              hardware="hardware: {gpu: h100-sxm, host_memory_gib: 0.5}\n")})
    assert "FSDP offloads" in only(check(root / "r.yaml")[1], "RC805")[0].message
    files(**{"r.yaml": recipe("strategy: zero3\nworld_size: 8\nzero: {offload_optimizer: cpu}\n", lora=False)})
    assert "RC805" not in ids(check(root / "r.yaml")[1])  # no host_memory_gib: nothing to compare with


@pytest.mark.parametrize(("strategy", "lora", "fires"), [
    ("zero2", True, True), ("zero1", True, True), ("zero3", True, False), ("fsdp", True, False), ("zero2", False, False),
])
def test_zero12_on_adapters_shards_only_their_states_rc806(files, strategy, lora, fires):
    root = files(**{"r.yaml": recipe(f"strategy: {strategy}\nworld_size: 4\n", lora=lora)})
    _, findings = check(root / "r.yaml")
    assert ("RC806" in ids(findings)) is fires, findings
    if fires:
        assert "MiB a GPU" in only(findings, "RC806")[0].message


@pytest.mark.parametrize(("section", "fires"), [
    ("strategy: ddp\nworld_size: 1\n", True), ("strategy: fsdp\nnodes: 1\ngpus_per_node: 1\n", True),
    ("strategy: zero2\nworld_size: 1\nzero: {offload_optimizer: cpu}\n", False), ("strategy: ddp\nworld_size: 2\n", False),
])
def test_one_gpu_distributes_nothing_rc807(files, section, fires):
    root = files(**{"r.yaml": recipe(section)})
    _, findings = check(root / "r.yaml")
    assert ("RC807" in ids(findings)) is fires, findings


def test_a_recipe_without_a_distributed_section_gets_none_of_these_rules(files):
    root = files(**{"r.yaml": f"model: {SMALL}\n{QLORA % ''}{LORA}{TRAINING}hardware: {{gpu: h100-sxm, host_memory_gib: 1}}\n"})
    state, findings = check(root / "r.yaml")
    assert state.loaded.distributed_files is None
    assert not {f.rule_id for f in findings if f.rule_id.startswith("RC8")}


def test_an_accelerate_config_and_a_deepspeed_config_that_disagree_are_a_finding(files):
    root = files(**{"acc.yaml": "distributed_type: DEEPSPEED\nnum_processes: 4\nmixed_precision: no\n"
                                "deepspeed_config:\n  zero_stage: 3\n",
                    "ds.json": ds(zero_optimization={"stage": 2}),
                    "r.yaml": recipe("accelerate_config: acc.yaml\ndeepspeed: ds.json\n",
                                     training=TRAINING.replace("bf16: true", "bf16: false"))})
    state, findings = check(root / "r.yaml")
    assert any("gives strategy 'zero2'" in f.message and "'zero3'" in f.message for f in only(findings, "RC801"))
    assert "RC802" not in ids(findings)  # an unquoted `no` is YAML's false: accelerate's "no", as the recipe trains


# -- where a recipe's files may be read from --------------------------------------------------------------
SECRET = "AKIA-not-a-real-key-0123456789"


def _report_text(state, findings) -> str:
    return "\n".join(f"{f.message}\n{f.help}\n{' '.join(f.details)}" for f in findings)


@pytest.mark.parametrize("written", ["../secrets/creds.json", "ABSOLUTE"])
def test_a_file_outside_the_recipes_repository_is_not_read_from_any_working_directory(tmp_path, monkeypatch, written):
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    (tmp_path / "secrets").mkdir()
    creds = tmp_path / "secrets" / "creds.json"
    creds.write_text(ds(zero_optimization={"stage": 2}, aws_secret_access_key=SECRET))
    named = str(creds) if written == "ABSOLUTE" else "../../secrets/creds.json"
    (repo / "recipes").mkdir()
    (repo / "recipes" / "r.yaml").write_text(recipe(f"deepspeed: {named}\nworld_size: 2\n"))
    verdicts = []
    for cwd in (repo / "recipes", repo, tmp_path, tmp_path / "secrets"):  # `_under('../x', '.')` was cwd-dependent
        monkeypatch.chdir(cwd)
        state, findings = check(Path(os.path.relpath(repo / "recipes" / "r.yaml")))
        found = only(findings, "RC801")
        assert SECRET not in _report_text(state, findings) and "aws_secret" not in _report_text(state, findings)
        verdicts.append([(f.severity.value, f.message) for f in found])
    assert len({repr(v) for v in verdicts}) == 1
    (severity, message), = verdicts[0]
    assert severity == "warning" and "lies outside the recipe's repository; it is not read" in message


def test_a_file_elsewhere_in_the_recipes_repository_is_read(files):
    root = files(**{".git__HEAD": "ref: refs/heads/main\n", "configs__zero3.json": ds(zero_optimization={"stage": 3}),
                    "recipes__r.yaml": recipe("deepspeed: ../configs/zero3.json\nworld_size: 2\n")})
    state, findings = check(root / "recipes" / "r.yaml")
    assert state.recipe.distributed.strategy == "zero3" and "RC801" not in ids(findings)


def test_a_json_file_that_is_no_deepspeed_config_is_not_quoted(files):
    root = files(**{"creds.json": json.dumps({"aws_secret_access_key": SECRET, "region": "eu-west-1"}),
                    "r.yaml": recipe("deepspeed: creds.json\nworld_size: 2\n")})
    state, [finding] = _one_rc801(root)
    assert "is not a DeepSpeed config: none of its 2 top-level keys is one DeepSpeed reads" in finding.message
    assert SECRET not in _report_text(state, [finding]) and "aws_secret" not in _report_text(state, [finding])
    assert "eu-west-1" not in _report_text(state, [finding])


def test_a_yaml_file_that_is_no_accelerate_config_is_not_quoted(files):
    root = files(**{"creds.yaml": f"token: {SECRET}\nuser: admin\n",
                    "r.yaml": recipe("accelerate_config: creds.yaml\n")})
    state, [finding] = _one_rc801(root)
    assert "is not an accelerate config" in finding.message
    assert SECRET not in _report_text(state, [finding]) and "token" not in _report_text(state, [finding])
