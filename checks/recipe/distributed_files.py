"""The files a `distributed` section points at, a DeepSpeed JSON (`deepspeed:`) and an accelerate config
(`accelerate_config:`), read into the section's own fields before it is validated.

What each key means, and its default, follows the libraries that read these files (SOURCE_DEEPSPEED,
SOURCE_ACCELERATE; docs/distributed-configs.md lists every key). A file that cannot be read, or says
something the recipe contradicts, is a Problem at the recipe's key that names the file, with the
file's own line; RC801 reports them. Only dictionaries are touched here: no library is imported.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from recipe_checks.limits import (
    MAX_CONFIG_BYTES,
    MAX_CONFIG_DEPTH,
    MAX_RECIPE_BYTES,
    MAX_WORLD_SIZE,
    InputRefused,
    decode_text,
    read_bounded,
    shorten,
)
from recipe_checks.recipe import LAUNCHER
from recipe_checks.recipe.load import KeyPath, LoadedRecipe, RecipeLoadError, load_text

SOURCE_DEEPSPEED = (
    "DeepSpeed 0.19.6 (deepspeedai/DeepSpeed at edaa722: runtime/config.py batch parameters and "
    "_batch_assertion, runtime/zero/config.py DeepSpeedZeroConfig, runtime/zero/offload_config.py, "
    "runtime/precision_config.py, runtime/config_utils.py extra='forbid' and 'auto' dropped) and transformers "
    "5.24.0 integrations/deepspeed.py (HfTrainerDeepSpeedConfig: 'auto' filled from TrainingArguments)"
)
SOURCE_ACCELERATE = (
    "accelerate 1.15.0.dev0 (huggingface/accelerate at 16cb6eb: commands/config/config_args.py ClusterConfig, "
    "commands/config/cluster.py, utils/dataclasses.py FullyShardedDataParallelPlugin and DeepSpeedPlugin)"
)

FILE_KEYS = ("deepspeed", "accelerate_config")
_LABEL = {"deepspeed": "DeepSpeed config", "accelerate_config": "accelerate config"}

# --- DeepSpeed -----------------------------------------------------------------------------------------
# zero_optimization.stage -> the native strategy (ZeroStageEnum: 0 disabled ... 3 weights)
_STAGES = {0: "ddp", 1: "zero1", 2: "zero2", 3: "zero3"}
_OFFLOAD_DEVICES = ("none", "cpu", "nvme")  # OffloadDeviceEnum
# DeepSpeedZeroConfig's fields and aliases (extra='forbid': DeepSpeed refuses any other key)
_ZERO_KEYS = frozenset({
    "stage", "contiguous_gradients", "reduce_scatter", "reduce_bucket_size", "use_multi_rank_bucket_allreduce",
    "allgather_partitions", "allgather_bucket_size", "overlap_comm", "load_from_fp32_weights", "elastic_checkpoint",
    "offload_param", "offload_optimizer", "zenflow", "sub_group_size", "cpu_offload_param",
    "cpu_offload_use_pin_memory", "cpu_offload", "prefetch_bucket_size", "stage3_prefetch_bucket_size",
    "param_persistence_threshold", "stage3_param_persistence_threshold", "model_persistence_threshold",
    "stage3_model_persistence_threshold", "max_live_parameters", "stage3_max_live_parameters", "max_reuse_distance",
    "stage3_max_reuse_distance", "gather_16bit_weights_on_model_save", "stage3_gather_16bit_weights_on_model_save",
    "module_granularity_threshold", "stage3_module_granularity_threshold", "use_all_reduce_for_fetch_params",
    "stage3_use_all_reduce_for_fetch_params", "allgather_sequential", "stage3_allgather_sequential",
    "partition_stream_chunk_size", "stage3_partition_stream_chunk_size", "stage3_gather_fp16_weights_on_model_save",
    "ignore_unused_parameters", "legacy_stage1", "round_robin_gradients", "zero_hpz_partition_size",
    "zero_quantized_weights", "zero_quantized_nontrainable_weights", "zero_quantized_gradients", "zeropp_loco_param",
    "mics_shard_size", "mics_hierarchical_params_gather", "memory_efficient_linear", "pipeline_loading_checkpoint",
    "override_module_apply", "log_trace_cache_warnings", "enable_sanity_checks", "save_muon_momentum_buffer_in_memory",
    "leaf_module",
})
_OFFLOAD_PARAM_KEYS = frozenset({"device", "nvme_path", "buffer_count", "buffer_size", "max_in_cpu", "pin_memory"})
_OFFLOAD_OPTIMIZER_KEYS = frozenset({
    "device", "nvme_path", "buffer_count", "pin_memory", "pipeline_read", "pipeline_write", "fast_init", "ratio",
    "super_offload", "convert_grad_on_cpu", "cpuadam_cores_perc",
})
# zero_optimization keys that change what a rank holds and are not modelled: (key, value that is the default)
_ZERO_NOT_MODELLED = {
    "zero_hpz_partition_size": (1, "ZeRO++ hpZ keeps a secondary copy of the parameters in each node"),
    "mics_shard_size": (-1, "MiCS shards within groups of this many ranks, not across all of them"),
    "zero_quantized_weights": (False, "ZeRO++ quantized weight communication"),
    "zero_quantized_nontrainable_weights": (False, "frozen weights stored quantized by DeepSpeed"),
    "zero_quantized_gradients": (False, "ZeRO++ quantized gradient communication"),
}
# Top-level keys of a DeepSpeed config (runtime/constants.py and the sections DeepSpeedConfig reads). DeepSpeed
# ignores any other top-level key: a misspelt one ("zero_optimisation") silently turns its feature off.
_DS_TOP_KEYS = frozenset({
    "train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "zero_optimization",
    "bf16", "bfloat16", "fp16", "amp", "torch_autocast", "optimizer", "scheduler", "gradient_clipping",
    "steps_per_print", "wall_clock_breakdown", "memory_breakdown", "dump_state", "zero_allow_untested_optimizer",
    "zero_force_ds_cpu_optimizer", "activation_checkpointing", "flops_profiler", "communication_data_type",
    "seq_parallel_communication_data_type", "prescale_gradients", "gradient_predivide_factor", "sparse_gradients",
    "sparse_attention", "data_types", "checkpoint", "aio", "tensorboard", "wandb", "csv_monitor", "comet", "monitor_config",
    "elasticity", "pipeline", "compile", "sequence_parallel_size", "tensor_parallel", "nebula", "curriculum_learning",
    "data_efficiency", "autotuning", "load_universal_checkpoint", "use_node_local_storage", "disable_allgather",
    "hybrid_engine", "graph_harvesting", "use_data_before_expert_parallelism", "eigenvalue", "progressive_layer_drop",
    "quantize_training", "weight_quantization", "compression_training", "timers", "mesh_param", "zenflow",
    "checkpoint_parallel_write_pipeline", "dataloader_drop_last", "fp8", "gradient_accumulation_dtype",
    "grad_accum_dtype", "zero_optimization_stage", "deepcompile", "expert_parallel",
})
# Top-level keys that change what each rank holds, not modelled by the one-rank-of-N trace
_DS_NOT_MODELLED = {
    "sequence_parallel_size": "sequence parallelism (Ulysses) splits each sequence across ranks",
    "tensor_parallel": "tensor parallelism (AutoTP) splits each layer across ranks",
    "pipeline": "pipeline parallelism splits the layers across ranks",
    "amp": "NVIDIA Apex AMP is not modelled",
    "torch_autocast": "DeepSpeed's torch.autocast mode is not modelled",
    "fp8": "FP8 training is not modelled",
}

# --- accelerate ----------------------------------------------------------------------------------------
# ClusterConfig + BaseConfig fields (config_args.py): accelerate refuses a file with any other top-level key
_ACCELERATE_KEYS = frozenset({
    "compute_environment", "distributed_type", "mixed_precision", "use_cpu", "debug", "num_processes",
    "machine_rank", "num_machines", "gpu_ids", "main_process_ip", "main_process_port", "rdzv_backend",
    "same_network", "main_training_function", "enable_cpu_affinity", "fp8_config", "deepspeed_config",
    "fsdp_config", "parallelism_config", "megatron_lm_config", "mpirun_config", "downcast_bf16", "tpu_name",
    "tpu_zone", "tpu_use_cluster", "tpu_use_sudo", "command_file", "commands", "tpu_vm", "tpu_env",
    "dynamo_config", "fp16", "dynamo_backend",  # the last two: older files, converted by process_config
})
_SHARDING_STRATEGIES = ("FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD", "HYBRID_SHARD", "HYBRID_SHARD_ZERO2")
_MIXED_PRECISION = ("no", "fp16", "bf16", "fp8")


@dataclass(frozen=True)
class FilePlace:
    """Where in a referenced file a value was read: its display path, line (1-based, 0: unknown), key."""

    path: str
    line: int
    key: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else self.path
        return f"{where} ({self.key})" if self.key else where


@dataclass(frozen=True)
class Problem:
    """Something wrong with a referenced file, or between it and the recipe: reported by RC801."""

    at: KeyPath  # the recipe key the finding points at (distributed.deepspeed, or the contradicted key)
    message: str
    help: str
    place: FilePlace | None = None
    severity: str = "error"  # "error" or "warning"


@dataclass
class Setting:
    """A value a file gives, where it was read."""

    value: Any
    place: FilePlace


@dataclass
class DistributedFiles:
    """What the `distributed` section's files say, for the rules: each resolved field with its place, the
    DeepSpeed batch sizes and precision (compared with `training` by RC802 and RC803), and the problems."""

    files: dict[str, str] = field(default_factory=dict)  # recipe key (deepspeed, accelerate_config) -> display path
    read: list[str] = field(default_factory=list)  # the path of each file read or looked for (recipe_checks.recipe.inputs)
    fields: dict[KeyPath, Setting] = field(default_factory=dict)  # native key under distributed -> the file's value
    batch: dict[str, Setting] = field(default_factory=dict)  # train_batch_size, train_micro_batch_size_per_gpu, ...
    precision: dict[str, Setting] = field(default_factory=dict)  # bf16, fp16 (bools), mixed_precision (accelerate)
    checkpointing: Setting | None = None  # accelerate's fsdp_activation_checkpointing
    problems: list[Problem] = field(default_factory=list)
    blocked: str | None = None  # why the section cannot be resolved (its rules wait, RC801 says why)
    world_size_derived: bool = False  # world_size came from DeepSpeed's batch equation
    root: Path | None = None  # the only folder files are read from (recipe_root): the recipe's repository

    def setting(self, *path: str) -> Setting | None:
        return self.fields.get(tuple(path))


class _Refused(Exception):
    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.message)
        self.problem = problem


# --- entry point ---------------------------------------------------------------------------------------

def attach(loaded: LoadedRecipe, base_dir: Path) -> LoadedRecipe:
    """The loaded recipe with its `distributed` section's files read into it (a copy; `loaded` itself is
    unchanged where the section names no file). Never raises: whatever goes wrong is a Problem."""
    section = loaded.data.get("distributed")
    if not isinstance(section, dict) or not any(isinstance(section.get(k), str) for k in FILE_KEYS):
        return loaded
    files = DistributedFiles()
    try:
        _read_all(section, loaded, base_dir, files)
    except _Refused as exc:
        files.problems.append(exc.problem)
        files.blocked = files.blocked or "names a file that cannot be read (RC801)"
    except Exception as exc:  # an input not foreseen: reported, never a crash of the session
        files.problems.append(Problem(("distributed",), f"the distributed section's files cannot be read: "
                                      f"{type(exc).__name__}: {shorten(exc, 200)}", "check the files it names"))
        files.blocked = "names a file that cannot be read (RC801)"
    data = dict(loaded.data)
    key_spans, value_spans = dict(loaded.key_spans), dict(loaded.value_spans)
    if files.blocked is None:
        merged = _merge(section, files, loaded)
        data["distributed"] = merged
        anchor = next((("distributed", k) for k in FILE_KEYS if isinstance(section.get(k), str)), ("distributed",))
        for path in files.fields:
            native = ("distributed", *path)
            for table in (key_spans, value_spans):
                if native not in table and anchor in table:
                    for depth in range(2, len(native) + 1):
                        table.setdefault(native[:depth], table[anchor])
    if files.world_size_derived and loaded.translation is not None:  # the batch sizes state the number of GPUs
        from recipe_checks.formats import GPUS_NOT_STATED

        loaded.translation.not_checked = [(path, what) for path, what in loaded.translation.not_checked
                                          if not what.startswith(GPUS_NOT_STATED)]
    return replace(loaded, data=data, key_spans=key_spans, value_spans=value_spans, distributed_files=files)



def _merge(section: dict[str, Any], files: DistributedFiles, loaded: LoadedRecipe) -> dict[str, Any]:
    """The section with the files' values where it does not write them; where it writes one the file
    contradicts, the written value stays and the contradiction is a Problem. After a contradicted strategy
    the file's fsdp/zero options are left out, and after a contradicted world size its nodes and GPUs per
    node: each contradiction is reported once, here, not again by the schema."""
    merged: dict[str, Any] = {k: (dict(v) if isinstance(v, dict) else v) for k, v in section.items()}
    contradicted: set[str] = set()
    for path, setting in files.fields.items():
        if path[0] in ("fsdp", "zero") and "strategy" in contradicted:
            continue
        if path[0] in ("nodes", "gpus_per_node") and "world_size" in contradicted:
            continue
        node = merged
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):  # a value where a mapping belongs: the schema reports it
                break
            node = child
        else:
            written = node.get(path[-1], _ABSENT)
            if written is _ABSENT or (path == ("world_size",) and written == LAUNCHER):
                node[path[-1]] = setting.value  # a file that states the number of GPUs says what the launcher is told
            elif written != setting.value:
                contradicted.add(path[0])
                shown = ".".join(("distributed", *path))
                files.problems.append(Problem(
                    ("distributed", *path),
                    f"{shown} is {_show(written)} but {setting.place} says {_show(setting.value)}",
                    f"remove {shown} from the recipe (the file is what the run reads), or change the file",
                    setting.place,
                ))
    return merged


_ABSENT = object()


def _show(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else f"'{shorten(value, 60)}'"


def recipe_root(base_dir: Path) -> Path:
    """The folder a recipe's files may be read from: the git repository the recipe is in (the nearest folder
    above it holding .git), else the recipe's own folder. Real paths, links resolved, so the answer is the same
    from any working directory. A file outside it is not read: a recipe in a pull request must not make a
    check read ~/.ssh or ../secrets and quote them in its findings."""
    folder = Path(os.path.realpath(base_dir))
    for candidate in (folder, *folder.parents):
        if os.path.lexists(candidate / ".git"):
            return candidate
    return folder


def _read_all(section: dict[str, Any], loaded: LoadedRecipe, base_dir: Path, files: DistributedFiles) -> None:
    files.root = recipe_root(base_dir)
    raw_training = loaded.data.get("training") if isinstance(loaded.data.get("training"), dict) else {}
    accelerate_path = section.get("accelerate_config")
    deepspeed_path = section.get("deepspeed")
    ds_from_accelerate = None
    if isinstance(accelerate_path, str):
        at = ("distributed", "accelerate_config")
        files.read.append(str(base_dir / accelerate_path))
        path, shown = _resolve(accelerate_path, base_dir, at, "accelerate config", translated=loaded.translation is not None,
                               root=files.root)
        files.files["accelerate_config"] = shown
        data, spans = _read_yaml(path, shown, at)
        ds_from_accelerate = _accelerate(data, spans, shown, at, files, path.parent)
        if ds_from_accelerate is not None:  # its deepspeed_config_file
            files.read.append(ds_from_accelerate)
    if isinstance(deepspeed_path, str):
        at = ("distributed", "deepspeed")
        files.read.append(str(base_dir / deepspeed_path))
        path, shown = _resolve(deepspeed_path, base_dir, at, "DeepSpeed config", translated=loaded.translation is not None,
                               root=files.root)
        files.files["deepspeed"] = shown
        if ds_from_accelerate is not None and os.path.realpath(ds_from_accelerate) != os.path.realpath(path):
            files.problems.append(Problem(
                at, f"the recipe's DeepSpeed config {shown} is not the deepspeed_config_file "
                f"{shorten(ds_from_accelerate)} of the accelerate config {files.files['accelerate_config']}",
                "name one DeepSpeed config: remove distributed.deepspeed, or point the accelerate config at the same file",
            ))
        _deepspeed(*_read_json(path, shown, at), shown, at, files, raw_training, section)
    elif ds_from_accelerate is not None:
        at = ("distributed", "accelerate_config")
        shown = _display(ds_from_accelerate, base_dir)
        files.files["deepspeed"] = shown
        _deepspeed(*_read_json(Path(ds_from_accelerate), shown, at), shown, at, files, raw_training, section)


# --- reading, bounded ----------------------------------------------------------------------------------

def _display(path: str | Path, base_dir: Path) -> str:
    try:
        return os.path.relpath(path, base_dir) if os.path.isabs(path) else str(path)
    except ValueError:  # another drive on Windows
        return str(path)


def _resolve(written: str, base_dir: Path, at: KeyPath, what: str, *, translated: bool,
             root: Path | None) -> tuple[Path, str]:
    """The file a recipe key names, relative to the folder of the file naming it. Not read (a warning: the
    sharding it sets is not checked) where its real path, links followed, lies outside `root` (recipe_root),
    or where it is missing from another tool's config, which its tool resolves from the folder it is launched in."""
    shown = shorten(written)
    if "\0" in written:
        raise _Refused(Problem(at, f"the {what} path '{shown}' contains a NUL byte", "remove the NUL byte from the path"))
    path = Path(written) if os.path.isabs(written) else base_dir / written
    try:
        real = Path(os.path.realpath(path))
    except (OSError, ValueError) as exc:
        raise _Refused(Problem(at, f"the {what} '{shown}' cannot be resolved: {shorten(exc, 120)}",
                               f"point {_dotted(at)} at a {what} file")) from None
    if root is not None and not _under(real, root):
        link = " is a symbolic link that leads" if os.path.islink(path) else " lies"
        raise _Refused(Problem(
            at, f"the {what} '{shown}'{link} outside {_root_name(root)}; it is not read, and the sharding it sets is "
            "not checked (recipe-checks reads files inside the recipe's git repository only, or inside its folder when "
            "it is in none)",
            f"keep the {what} in the repository and write its path relative to the recipe", severity="warning"))
    if not real.exists() and translated:
        raise _Refused(Problem(
            at, f"the {what} '{shown}' is not next to this config; it is not read, and the sharding it sets is not "
            "checked (the tool opens the path from the folder it is launched in)",
            "copy the file next to the config (or write the path relative to it), or check the sharding by hand",
            severity="warning"))
    return path, shown


def _root_name(root: Path) -> str:
    return "the recipe's repository" if os.path.lexists(root / ".git") else "the recipe's folder"


def _under(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _dotted(path: KeyPath) -> str:
    return ".".join(str(p) for p in path)


def _read_text(path: Path, shown: str, at: KeyPath, what: str, limit: int) -> str:
    try:
        return decode_text(read_bounded(path, limit, what), what)
    except InputRefused as exc:
        message = str(exc).replace(f"'{shorten(os.fspath(path))}'", f"'{shown}'")
        line = f" (line {exc.line})" if exc.line else ""
        raise _Refused(Problem(at, f"{message}{line}", exc.help, FilePlace(shown, exc.line, ""))) from None


def _read_json(path: Path, shown: str, at: KeyPath) -> tuple[dict[str, Any], str]:
    """A DeepSpeed config: JSON (safe by nature), at most MAX_CONFIG_BYTES, nesting at most MAX_CONFIG_DEPTH,
    a mapping at the top; duplicate keys refused as DeepSpeed's own loader refuses them."""
    text = _read_text(path, shown, at, "DeepSpeed config", MAX_CONFIG_BYTES)
    duplicates: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in items:
            if key in out:
                duplicates.append(key)
            out[key] = value
        return out

    try:
        data = json.loads(text, object_pairs_hook=pairs)
    except RecursionError:
        raise _Refused(Problem(at, f"the DeepSpeed config {shown} nests too deeply to be read",
                               "a DeepSpeed config nests two or three levels: use the file DeepSpeed documents",
                               FilePlace(shown, 0, ""))) from None
    except ValueError as exc:  # JSONDecodeError (with its line), and integers past Python's digit limit
        line = getattr(exc, "lineno", 0)
        raise _Refused(Problem(at, f"the DeepSpeed config {shown} is not valid JSON: {shorten(getattr(exc, 'msg', exc), 120)}"
                               f"{f' at line {line}, column {exc.colno}' if line else ''}",
                               "fix the JSON (DeepSpeed reads the file with a JSON parser: no comments, no trailing "
                               "commas, keys in double quotes)", FilePlace(shown, line, ""))) from None
    if not isinstance(data, dict):
        raise _Refused(Problem(at, f"the DeepSpeed config {shown} is a JSON {type(data).__name__}, not an object",
                               'a DeepSpeed config is one JSON object: {"zero_optimization": {"stage": 2}, ...}',
                               FilePlace(shown, 1, "")))
    deep = _too_deep(data, 0)
    if deep:
        raise _Refused(Problem(at, f"the DeepSpeed config {shown} nests deeper than {MAX_CONFIG_DEPTH} levels at "
                               f"'{deep}'", "a DeepSpeed config nests two or three levels", FilePlace(shown, 0, deep)))
    if duplicates:
        key = duplicates[0]
        raise _Refused(Problem(at, f"the DeepSpeed config {shown} gives the key '{shorten(key, 60)}' twice",
                               "keep one of them: DeepSpeed refuses a config with duplicate keys",
                               FilePlace(shown, _json_line(text, (key,), last=True), key)))
    return data, text


def _too_deep(value: Any, depth: int, where: str = "") -> str | None:
    if depth > MAX_CONFIG_DEPTH:
        return where or "(top)"
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found = _too_deep(item, depth + 1, f"{where}.{key}" if where else str(key))
        if found:
            return found
    return None


def _json_line(text: str, path: tuple[str, ...], last: bool = False) -> int:
    """The line of a key path in a JSON text: each key searched after the one before it (0: not found)."""
    start = 0
    for i, key in enumerate(path):
        pattern = re.compile(r'"' + re.escape(key) + r'"\s*:')
        matches = list(pattern.finditer(text, start))
        if not matches:
            return 0
        match = matches[-1] if last and i == len(path) - 1 else matches[0]
        start = match.start()
    return text.count("\n", 0, start) + 1


def _read_yaml(path: Path, shown: str, at: KeyPath) -> tuple[dict[str, Any], LoadedRecipe]:
    """An accelerate config: YAML read with the recipe loader itself (safe loading, the same limits)."""
    text = _read_text(path, shown, at, "accelerate config", MAX_RECIPE_BYTES)
    try:
        loaded = load_text(text, shown)
    except RecipeLoadError as exc:
        message = exc.finding.message.replace("the recipe must be a YAML mapping with a top-level 'model' key; ", "")
        raise _Refused(Problem(at, f"the accelerate config {shown}: {message}",
                               "fix the file, or write it again with `accelerate config`",
                               FilePlace(shown, exc.finding.location.line, ""))) from None
    return loaded.data, loaded


# --- DeepSpeed JSON ------------------------------------------------------------------------------------

def _deepspeed(data: dict[str, Any], text: str, shown: str, at: KeyPath, files: DistributedFiles,
               training: dict[str, Any], section: dict[str, Any]) -> None:
    def place(*keys: str) -> FilePlace:
        return FilePlace(shown, _json_line(text, keys), ".".join(keys))

    def problem(message: str, help: str, *keys: str, severity: str = "error") -> None:
        files.problems.append(Problem(at, message, help, place(*keys) if keys else FilePlace(shown, 0, ""), severity))

    if data and not any(key in _DS_TOP_KEYS for key in data):  # quote nothing of a file that is no DeepSpeed config
        raise _Refused(Problem(at, f"the file {shown} is not a DeepSpeed config: none of its {len(data)} top-level keys "
                               "is one DeepSpeed reads; it is not read further, and nothing of it is shown",
                               f"point {_dotted(at)} at the DeepSpeed JSON of the run", FilePlace(shown, 0, "")))
    for key in data:
        if key not in _DS_TOP_KEYS:
            from recipe_checks.suggest import did_you_mean

            hint = did_you_mean(str(key), _DS_TOP_KEYS)
            problem(f"{place(str(key))}: '{shorten(key, 60)}' is not a DeepSpeed config key; DeepSpeed ignores it",
                    f"{hint} Remove it if it is not meant for DeepSpeed.".strip(), str(key),
                    severity="error" if hint else "warning")
        elif key in _DS_NOT_MODELLED and data[key] not in (None, False, {}, 1) and not (
                isinstance(data[key], dict) and data[key].get("enabled") is False):
            problem(f"{place(key)}: '{key}' is not checked: {_DS_NOT_MODELLED[key]}",
                    "read the memory verdict as that of data parallelism alone; measure this setting on the GPUs",
                    key, severity="warning")

    zero = data.get("zero_optimization", {})
    if isinstance(zero, bool):  # the deprecated format: true means stage 1 (read_zero_config_deprecated)
        zero = {"stage": 1 if zero else 0}
    if not isinstance(zero, dict):
        raise _Refused(Problem(at, f"{place('zero_optimization')}: zero_optimization must be an object, not "
                               f"{_show(zero)}", 'write "zero_optimization": {"stage": 2}', place("zero_optimization")))
    for key in zero:
        if key not in _ZERO_KEYS:
            from recipe_checks.suggest import did_you_mean

            problem(f"{place('zero_optimization', str(key))}: '{shorten(key, 60)}' is not a zero_optimization key; "
                    "DeepSpeed refuses the config", f"{did_you_mean(str(key), _ZERO_KEYS)} Remove it.".strip(),
                    "zero_optimization", str(key))
        elif key in _ZERO_NOT_MODELLED and zero[key] not in (None, "auto", _ZERO_NOT_MODELLED[key][0]):
            problem(f"{place('zero_optimization', key)}: {key} {_show(zero[key])} is not checked: "
                    f"{_ZERO_NOT_MODELLED[key][1]}", "read the memory verdict as that of plain ZeRO",
                    "zero_optimization", key, severity="warning")
    stage = zero.get("stage", 0)
    if stage == "auto" or isinstance(stage, bool) or not isinstance(stage, int) or stage not in _STAGES:
        raise _Refused(Problem(
            at, f"{place('zero_optimization', 'stage')}: zero_optimization.stage must be 0, 1, 2 or 3, not {_show(stage)}",
            "write the stage as a number: 0 (data parallel), 1 (optimizer states), 2 (and gradients), 3 (and weights)",
            place("zero_optimization", "stage")))
    strategy = Setting(_STAGES[stage], place("zero_optimization", "stage") if "stage" in zero else
                       FilePlace(shown, 1, "zero_optimization.stage (default 0)"))
    before = files.fields.get(("strategy",))
    if before is not None and before.value != strategy.value:  # the accelerate config said otherwise
        problem(f"{strategy.place} gives strategy '{strategy.value}' but {before.place} gives '{before.value}'",
                "make the accelerate config and the DeepSpeed config agree (accelerate reads the DeepSpeed file's)",
                "zero_optimization", "stage")
    files.fields[("strategy",)] = strategy
    offload_optimizer = _offload(zero, "offload_optimizer", _OFFLOAD_OPTIMIZER_KEYS, place, problem, at)
    offload_param = _offload(zero, "offload_param", _OFFLOAD_PARAM_KEYS, place, problem, at)
    if zero.get("cpu_offload") is True and offload_optimizer is None:  # deprecated spellings (new_param_fn)
        offload_optimizer = Setting("cpu", place("zero_optimization", "cpu_offload"))
    if zero.get("cpu_offload_param") is True and offload_param is None:
        offload_param = Setting("cpu", place("zero_optimization", "cpu_offload_param"))
    if stage == 0:
        for setting, name in ((offload_optimizer, "offload_optimizer"), (offload_param, "offload_param")):
            if setting is not None and setting.value != "none":
                problem(f"{setting.place}: {name} needs a ZeRO stage; with stage 0 nothing is offloaded",
                        "use stage 1-3 (stage 3 for offload_param), or remove the offload", "zero_optimization", name,
                        severity="warning")
    else:
        if offload_optimizer is not None:
            files.fields[("zero", "offload_optimizer")] = offload_optimizer
        if offload_param is not None:
            if stage != 3 and offload_param.value != "none":
                problem(f"{offload_param.place}: offload_param is valid only with stage 3 (DeepSpeed partitions the "
                        f"parameters only there), not stage {stage}", "use stage 3, or remove offload_param",
                        "zero_optimization", "offload_param")
            elif stage == 3:
                files.fields[("zero", "offload_param")] = offload_param
    _ds_precision(data, place, problem, files)
    _ds_batch(data, place, problem, files, training, section)


def _offload(zero: dict[str, Any], name: str, known: frozenset[str], place, problem, at: KeyPath) -> Setting | None:
    block = zero.get(name)
    if block is None:
        return None
    if not isinstance(block, dict):
        raise _Refused(Problem(at, f"{place('zero_optimization', name)}: {name} must be an object such as "
                               f'{{"device": "cpu"}}, not {_show(block)}', f'write "{name}": {{"device": "cpu"}}',
                               place("zero_optimization", name)))
    for key in block:
        if key not in known:
            from recipe_checks.suggest import did_you_mean

            problem(f"{place('zero_optimization', name, str(key))}: '{shorten(key, 60)}' is not a key of {name}; "
                    "DeepSpeed refuses the config", f"{did_you_mean(str(key), known)} Remove it.".strip(),
                    "zero_optimization", name, str(key))
    device = block.get("device", "none")
    if device == "auto":
        return None
    if not isinstance(device, str) or device not in _OFFLOAD_DEVICES:
        raise _Refused(Problem(at, f"{place('zero_optimization', name, 'device')}: {name}.device must be none, cpu "
                               f"or nvme, not {_show(device)}", 'write "device": "cpu"',
                               place("zero_optimization", name, "device")))
    return Setting(device, place("zero_optimization", name, "device"))


def _ds_precision(data: dict[str, Any], place, problem, files: DistributedFiles) -> None:
    for name, keys in (("bf16", ("bf16", "bfloat16")), ("fp16", ("fp16",))):
        key = next((k for k in keys if k in data), None)
        if key is None:
            continue
        block = data[key]
        if not isinstance(block, dict):
            problem(f"{place(key)}: {key} must be an object such as {{\"enabled\": true}}, not {_show(block)}",
                    f'write "{key}": {{"enabled": "auto"}}', key)
            continue
        enabled = block.get("enabled", False)
        if enabled == "auto":
            continue
        if not isinstance(enabled, bool):
            problem(f"{place(key, 'enabled')}: {key}.enabled must be true, false or \"auto\", not {_show(enabled)}",
                    f'write "{key}": {{"enabled": "auto"}}', key, "enabled")
            continue
        files.precision[name] = Setting(enabled, place(key, "enabled") if "enabled" in block else place(key))


_BATCH = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps")


def _ds_batch(data: dict[str, Any], place, problem, files: DistributedFiles, training: dict[str, Any],
              section: dict[str, Any]) -> None:
    for key in _BATCH:
        value = data.get(key)
        if value is None or value == "auto":
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 2**40:
            problem(f"{place(key)}: {key} must be a positive whole number or \"auto\", not {_show(value)}",
                    f'write "{key}": "auto" (the Trainer fills it from TrainingArguments)', key)
            continue
        files.batch[key] = Setting(value, place(key))
    total = files.batch.get("train_batch_size")
    if total is None or section.get("world_size", LAUNCHER) != LAUNCHER or "gpus_per_node" in section:
        return
    # "auto" values are the Trainer's: micro = per_device_train_batch_size, accumulation = its own
    micro = files.batch.get("train_micro_batch_size_per_gpu")
    steps = files.batch.get("gradient_accumulation_steps")
    micro_value = micro.value if micro else _int(training.get("per_device_train_batch_size"), 8)
    steps_value = steps.value if steps else _int(training.get("gradient_accumulation_steps"), 1)
    per_rank = micro_value * steps_value
    if total.value % per_rank == 0 and 1 <= total.value // per_rank <= MAX_WORLD_SIZE:
        files.fields[("world_size",)] = Setting(total.value // per_rank, total.place)
        files.world_size_derived = True
    else:
        problem(f"{total.place}: train_batch_size {total.value} is not a multiple of micro-batch x accumulation = "
                f"{micro_value} x {steps_value} = {per_rank}: no number of GPUs gives DeepSpeed's train_batch_size = "
                "micro-batch x accumulation x world size", f'write "train_batch_size": "auto", or a multiple of {per_rank}',
                "train_batch_size")


def _int(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 1 else default


# --- accelerate config YAML ----------------------------------------------------------------------------

def _accelerate(data: dict[str, Any], loaded: LoadedRecipe, shown: str, at: KeyPath, files: DistributedFiles,
                folder: Path) -> str | None:
    """The accelerate config's settings into `files`; the path of its deepspeed_config_file, if any."""

    def place(*keys: str) -> FilePlace:
        span = loaded.key_spans.get(tuple(keys))
        return FilePlace(shown, span.line if span else 0, ".".join(keys))

    def problem(message: str, help: str, *keys: str, severity: str = "error") -> None:
        files.problems.append(Problem(at, message, help, place(*keys) if keys else FilePlace(shown, 0, ""), severity))

    def refuse(message: str, help: str, *keys: str) -> None:
        raise _Refused(Problem(at, message, help, place(*keys) if keys else FilePlace(shown, 0, "")))

    if data and not any(key in _ACCELERATE_KEYS for key in data):  # quote nothing of a file that is no accelerate config
        refuse(f"the file {shown} is not an accelerate config: none of its {len(data)} top-level keys is one accelerate "
               "reads; it is not read further, and nothing of it is shown",
               f"point {_dotted(at)} at the file `accelerate config` wrote")
    for key in data:
        if key not in _ACCELERATE_KEYS:
            from recipe_checks.suggest import did_you_mean

            problem(f"{place(str(key))}: '{shorten(key, 60)}' is not an accelerate config key; accelerate refuses the "
                    "file (\"unknown keys\")", f"{did_you_mean(str(key), _ACCELERATE_KEYS)} Remove it: accelerate takes "
                    "only the keys `accelerate config` writes".strip(), str(key))
    kind = data.get("distributed_type")
    if isinstance(kind, str):
        kind = kind.upper()
    if data.get("use_cpu") is True:
        refuse(f"{place('use_cpu')}: use_cpu is true: accelerate trains on the CPU, not on GPUs",
               "set use_cpu: false, or remove the distributed section", "use_cpu")
    if kind not in ("MULTI_GPU", "FSDP", "DEEPSPEED"):
        if kind in ("NO", None):
            refuse(f"{place('distributed_type') if 'distributed_type' in data else shown}: distributed_type is "
                   f"{_show(data.get('distributed_type', 'NO'))}: one process, nothing is distributed",
                   "use distributed_type: MULTI_GPU, FSDP or DEEPSPEED, or remove distributed.accelerate_config",
                   *(("distributed_type",) if "distributed_type" in data else ()))
        refuse(f"{place('distributed_type')}: distributed_type {_show(data.get('distributed_type'))} is not modelled: "
               "recipe-checks models MULTI_GPU (DDP), FSDP and DEEPSPEED", "check this run by hand", "distributed_type")
    mixed = data.get("mixed_precision")
    if mixed is False:  # an unquoted `no` is YAML's false
        mixed = "no"
    if mixed is not None:
        if not isinstance(mixed, str) or mixed.lower() not in _MIXED_PRECISION:
            problem(f"{place('mixed_precision')}: mixed_precision must be one of {', '.join(_MIXED_PRECISION)}, not "
                    f"{_show(mixed)}", "write mixed_precision: bf16 (or fp16, no)", "mixed_precision")
        else:
            files.precision["mixed_precision"] = Setting(mixed.lower(), place("mixed_precision"))
    _processes(data, place, problem, files)
    if kind == "MULTI_GPU":
        files.fields[("strategy",)] = Setting("ddp", place("distributed_type"))
        return None
    if kind == "FSDP":
        _accelerate_fsdp(data.get("fsdp_config") or {}, place, problem, refuse, files)
        return None
    return _accelerate_deepspeed(data.get("deepspeed_config") or {}, place, problem, refuse, files, folder)


def _processes(data: dict[str, Any], place, problem, files: DistributedFiles) -> None:
    processes, machines = data.get("num_processes"), data.get("num_machines", 1)
    for key, value in (("num_processes", processes), ("num_machines", machines)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or
                                  not (1 <= value <= MAX_WORLD_SIZE or (key == "num_processes" and value == -1))):
            problem(f"{place(key)}: {key} must be a whole number from 1 to {MAX_WORLD_SIZE:,}, not {_show(value)}",
                    f"write the {'number of GPUs in all' if key == 'num_processes' else 'number of nodes'}", key)
            return
    if processes in (None, -1):  # -1: ClusterConfig's default, the launcher is told (e.g. SLURM)
        return
    files.fields[("world_size",)] = Setting(processes, place("num_processes"))
    if "num_machines" in data:
        files.fields[("nodes",)] = Setting(machines, place("num_machines"))
        if processes % machines:
            problem(f"{place('num_processes')}: num_processes {processes} is not a multiple of num_machines {machines}: "
                    "the nodes would run different numbers of GPUs", "give every node the same number of GPUs",
                    "num_processes")
        else:
            files.fields[("gpus_per_node",)] = Setting(processes // machines, place("num_processes"))


def _accelerate_fsdp(config: Any, place, problem, refuse, files: DistributedFiles) -> None:
    if not isinstance(config, dict):
        refuse(f"{place('fsdp_config')}: fsdp_config must be a mapping, not {_show(config)}",
               "write the fsdp_config mapping `accelerate config` writes", "fsdp_config")
    version = config.get("fsdp_version", 1)  # FullyShardedDataParallelPlugin: FSDP_VERSION defaults to 1
    if version not in (1, 2) or isinstance(version, bool):
        refuse(f"{place('fsdp_config', 'fsdp_version')}: fsdp_version must be 1 or 2, not {_show(version)}",
               "write fsdp_version: 2 (FSDP2, fully_shard)", "fsdp_config", "fsdp_version")
    files.fields[("strategy",)] = Setting("fsdp", place("distributed_type"))
    reshard = config.get("fsdp_reshard_after_forward")
    strategy = config.get("fsdp_sharding_strategy")  # deprecated in favour of fsdp_reshard_after_forward
    if version == 2:
        if reshard is not None:
            if not isinstance(reshard, bool):
                problem(f"{place('fsdp_config', 'fsdp_reshard_after_forward')}: with fsdp_version 2, "
                        f"fsdp_reshard_after_forward must be true or false, not {_show(reshard)} (accelerate refuses it)",
                        "write fsdp_reshard_after_forward: true (FULL_SHARD) or false (SHARD_GRAD_OP)",
                        "fsdp_config", "fsdp_reshard_after_forward")
            else:
                files.fields[("fsdp", "reshard_after_forward")] = Setting(
                    reshard, place("fsdp_config", "fsdp_reshard_after_forward"))
    else:
        key = "fsdp_reshard_after_forward" if reshard is not None else "fsdp_sharding_strategy"
        value = reshard if reshard is not None else strategy if strategy is not None else "FULL_SHARD"
        if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= len(_SHARDING_STRATEGIES):
            value = _SHARDING_STRATEGIES[value - 1]
        name = value.upper() if isinstance(value, str) else value
        if name not in _SHARDING_STRATEGIES:
            refuse(f"{place('fsdp_config', key)}: {key} must be one of {', '.join(_SHARDING_STRATEGIES)} with "
                   f"fsdp_version 1, not {_show(value)}", "write fsdp_version: 2 and fsdp_reshard_after_forward: true",
                   "fsdp_config", key)
        where = place("fsdp_config", key) if key in config else place("fsdp_config")
        said = ("fsdp_config", "fsdp_version") if "fsdp_version" in config else ("fsdp_config",)
        problem(f"{place(*said)}: FSDP1 (fsdp_version {version}{'' if 'fsdp_version' in config else ', the default'}) "
                f"is checked as FSDP2's fully_shard with the same sharding ({name})",
                "write fsdp_version: 2: FSDP1 is deprecated in accelerate and torch, and FSDP2 is what is traced",
                *said, severity="warning")
        if name == "NO_SHARD":
            files.fields[("strategy",)] = Setting("ddp", where)
        elif name in ("FULL_SHARD", "SHARD_GRAD_OP"):
            files.fields[("fsdp", "reshard_after_forward")] = Setting(name == "FULL_SHARD", where)
        else:
            refuse(f"{where}: {name} (sharding within a node, replicating across nodes) is not modelled",
                   "check this run by hand, or use FULL_SHARD", "fsdp_config", key)
    offload = config.get("fsdp_offload_params")
    if offload is not None:
        if not isinstance(offload, bool):
            problem(f"{place('fsdp_config', 'fsdp_offload_params')}: fsdp_offload_params must be true or false, not "
                    f"{_show(offload)}", "write fsdp_offload_params: false", "fsdp_config", "fsdp_offload_params")
        elif offload and files.fields[("strategy",)].value == "fsdp":
            files.fields[("fsdp", "offload_policy")] = Setting("cpu", place("fsdp_config", "fsdp_offload_params"))
    checkpointing = config.get("fsdp_activation_checkpointing")
    if checkpointing is True:
        files.checkpointing = Setting(True, place("fsdp_config", "fsdp_activation_checkpointing"))


def _accelerate_deepspeed(config: Any, place, problem, refuse, files: DistributedFiles, folder: Path) -> str | None:
    if not isinstance(config, dict):
        refuse(f"{place('deepspeed_config')}: deepspeed_config must be a mapping, not {_show(config)}",
               "write the deepspeed_config mapping `accelerate config` writes", "deepspeed_config")
    config_file = config.get("deepspeed_config_file")
    if config_file not in (None, "none"):
        if not isinstance(config_file, str) or not config_file:
            refuse(f"{place('deepspeed_config', 'deepspeed_config_file')}: deepspeed_config_file must be a path, not "
                   f"{_show(config_file)}", "write the path of the DeepSpeed JSON", "deepspeed_config", "deepspeed_config_file")
        # accelerate ignores its own zero_stage and offload settings beside a DeepSpeed config file
        for key in ("zero_stage", "offload_optimizer_device", "offload_param_device"):
            if key in config:
                problem(f"{place('deepspeed_config', key)}: {key} is ignored beside deepspeed_config_file "
                        "(accelerate takes the DeepSpeed config's own)", f"remove {key}; set it in the DeepSpeed config",
                        "deepspeed_config", key, severity="warning")
        path, _ = _resolve(config_file, folder, ("distributed", "accelerate_config"), "DeepSpeed config", translated=False,
                           root=files.root)
        return str(path)
    stage = config.get("zero_stage", 2)  # DeepSpeedPlugin: ACCELERATE_DEEPSPEED_ZERO_STAGE defaults to 2
    if isinstance(stage, bool) or stage not in _STAGES:
        refuse(f"{place('deepspeed_config', 'zero_stage')}: zero_stage must be 0, 1, 2 or 3, not {_show(stage)}",
               "write zero_stage: 2 (or 0, 1, 3)", "deepspeed_config", "zero_stage")
    files.fields[("strategy",)] = Setting(_STAGES[stage], place("deepspeed_config", "zero_stage")
                                          if "zero_stage" in config else place("deepspeed_config"))
    for key, native in (("offload_optimizer_device", "offload_optimizer"), ("offload_param_device", "offload_param")):
        device = config.get(key)
        if device is None:
            continue
        if device not in _OFFLOAD_DEVICES:
            problem(f"{place('deepspeed_config', key)}: {key} must be none, cpu or nvme, not {_show(device)}",
                    f"write {key}: none", "deepspeed_config", key)
        elif stage == 0:
            continue
        elif native == "offload_param" and stage != 3 and device != "none":
            problem(f"{place('deepspeed_config', key)}: {key} needs zero_stage 3, not {stage}",
                    "use zero_stage: 3, or offload_param_device: none", "deepspeed_config", key)
        elif native != "offload_param" or stage == 3:
            files.fields[("zero", native)] = Setting(device, place("deepspeed_config", key))
    return None


