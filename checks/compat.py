"""Every private API of torch, transformers, peft and bitsandbytes that recipe-checks touches, in one place,
and the library versions it is tested with.

Written against torch 2.13, transformers 5.20-5.24, peft 0.21, bitsandbytes 0.50 (the range in
SUPPORTED, proven by ci/oldest-releases and ci/newest-releases). Each symbol is looked up at first use; a
missing one raises CompatError, which names the library, its installed version, the symbol and the
supported range, instead of an AttributeError in the middle of a trace. Nothing here imports a heavy
library at import time: `version_warnings()` runs at session start.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import re
from typing import Any

from recipe_checks.memory.errors import TraceError

# distribution -> (oldest, newest) tested release; the newest is a release series (5.24 is any 5.24.x).
# pyproject.toml declares the same range and ci/constraints.txt pins the newest.
SUPPORTED: dict[str, tuple[str, str]] = {
    "torch": ("2.13.0", "2.13"),
    "transformers": ("5.20.0", "5.24"),
    "peft": ("0.21.0", "0.21"),
    "bitsandbytes": ("0.50.0", "0.50"),
    "accelerate": ("1.2.0", "1.15"),
    "huggingface_hub": ("1.31.0", "2.4"),
    "pydantic": ("2.8.0", "2.14"),
    "trl": ("1.16.0", "1.16"),  # optional (the trl extra, DPO recipes): the trace runs TRL's own fused LM head
    "diffusers": ("0.42.0", "0.42"),  # optional (the diffusers extra, FLUX recipes)
}


class CompatError(TraceError):
    """An installed library lacks a symbol recipe-checks uses: a finding, not a crash."""


def installed_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _release(version: str) -> tuple[int, ...]:
    """The numeric release of a version string: '2.13.0+cpu' -> (2, 13, 0), '5.0.0rc1' -> (5, 0, 0)."""
    match = re.match(r"\d+(?:\.\d+)*", version)
    return tuple(int(part) for part in match.group(0).split("."))[:3] if match else ()


def supported_range(distribution: str) -> str:
    """The tested range as people write it: '5.20-5.24', or '0.21' for a single release series."""
    oldest, newest = SUPPORTED[distribution]
    low = ".".join(oldest.split(".")[:2]) if oldest.endswith(".0") else oldest
    return low if low == newest else f"{low}-{newest}"


def _recipe_checks_version() -> str:
    return installed_version("recipe-checks") or "(not installed)"


def version_warnings() -> list[str]:
    """One warning per installed library outside the tested range; an empty list when all are in it."""
    warnings = []
    for distribution, (oldest, newest) in SUPPORTED.items():
        version = installed_version(distribution)
        if version is None:
            continue  # bitsandbytes is optional; the others are dependencies pip installed
        release = _release(version)
        tested = f"the tested range {supported_range(distribution)} of recipe-checks {_recipe_checks_version()}"
        if release < _release(oldest):
            warnings.append(f"{distribution} {version} is below {tested}: the memory trace may fail or count "
                            f"differently; install {distribution}>={oldest}")
        elif release[: len(_release(newest))] > _release(newest):
            warnings.append(f"{distribution} {version} is above {tested}: it is untested, and a private API the "
                            f"memory trace uses may have changed; install {distribution}<={newest}.* to be sure")
    return warnings


def _missing(dotted: str) -> CompatError:
    distribution = dotted.split(".")[0]
    version = installed_version(distribution) or "(not installed)"
    return CompatError(f"{distribution} {version} lacks {dotted}; recipe-checks supports {distribution} "
                       f"{supported_range(distribution)}")


@functools.cache
def require(dotted: str) -> Any:
    """The object at a dotted path (module, then attributes), e.g.
    'bitsandbytes.autograd._functions.MatMul8bitLt'; CompatError when any part is missing."""
    parts = dotted.split(".")
    for split in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:split]))
        except ModuleNotFoundError:
            continue
        try:
            for attr in parts[split:]:
                obj = getattr(obj, attr)
        except AttributeError:
            raise _missing(dotted) from None
        return obj
    raise _missing(dotted)


# -- torch ------------------------------------------------------------------------------------------
def fake_tensor_mode() -> type:
    return require("torch._subclasses.fake_tensor.FakeTensorMode")


def torch_dispatch_mode() -> type:
    return require("torch.utils._python_dispatch.TorchDispatchMode")


def tensor_slots(module) -> tuple[dict, dict]:
    """A module's own parameter and buffer dicts (torch.nn.Module._parameters, _buffers), whose entries
    are replaced in place: `module.weight = t` would run peft's and bitsandbytes' __setattr__ checks."""
    try:
        return module._parameters, module._buffers
    except AttributeError:
        raise _missing("torch.nn.Module._parameters") from None


# -- torch.distributed (written against torch 2.13) ---------------------------------------------------
def local_tensor(tensor):
    """The tensor that holds a DTensor's memory on this rank (DTensor._local_tensor); any other tensor as it is.
    A DTensor is a wrapper without storage of its own: what a rank allocates is its local shard."""
    local = getattr(tensor, "_local_tensor", None)
    return local if local is not None else tensor


def fake_store() -> type:
    """torch.testing._internal.distributed.fake_pg.FakeStore: the store of the `fake` backend, whose
    collectives return at once (torch's own tool for memory estimation without GPUs)."""
    return require("torch.testing._internal.distributed.fake_pg.FakeStore")


def fully_shard():
    """torch.distributed.fsdp.fully_shard (FSDP2) and its MixedPrecisionPolicy."""
    return require("torch.distributed.fsdp.fully_shard"), require("torch.distributed.fsdp.MixedPrecisionPolicy")


def fsdp_lazy_init(model) -> None:
    """FSDP2 initialises its root state at the first forward (FSDPState._lazy_init): run it before the step
    is accounted, as the steady state of training has (the unsharded parameters' storages exist, empty)."""
    state = getattr(model, "_get_fsdp_state", None)
    if state is None:
        raise _missing("torch.distributed.fsdp.FSDPModule._get_fsdp_state")
    try:
        state()._lazy_init()
    except AttributeError:
        raise _missing("torch.distributed.fsdp._fully_shard._fsdp_state.FSDPState._lazy_init") from None


def bitsandbytes_op(name: str):
    """torch.ops.bitsandbytes.<name>.default, the op bitsandbytes registers with torch."""
    require("bitsandbytes")  # importing it registers the ops
    import torch

    try:
        return getattr(torch.ops.bitsandbytes, name).default
    except (AttributeError, RuntimeError):
        raise _missing(f"bitsandbytes.torch.ops.bitsandbytes.{name}") from None


def is_fake(tensor) -> bool:
    """Whether a tensor is a FakeTensor (torch._subclasses.fake_tensor.is_fake)."""
    return bool(require("torch._subclasses.fake_tensor.is_fake")(tensor))


def grouped_mm_output(mat_a, mat_b, offs, out_dtype):
    """The output of aten::_grouped_mm as torch lays it out (torch._meta_registrations'
    _create_grouped_mm_output_tensor, which the CPU and CUDA kernels mirror), for operands whose
    dtype the fast kernel's fake check refuses."""
    return require("torch._meta_registrations._create_grouped_mm_output_tensor")(mat_a, mat_b, offs, out_dtype)


# -- transformers -----------------------------------------------------------------------------------
def masking_utils():
    """transformers.masking_utils, with the function the trace replaces checked to exist."""
    require("transformers.masking_utils.find_packed_sequence_indices")
    return require("transformers.masking_utils")


def attn_implementation(config) -> str | None:
    """The attention a built model runs (config._attn_implementation; transformers has no public getter)."""
    if not hasattr(config, "_attn_implementation"):
        raise _missing("transformers.PretrainedConfig._attn_implementation")
    return config._attn_implementation


def supports_sdpa(model_type: str, architectures: list | None = None) -> bool:
    """Whether transformers' model class for this model_type has an sdpa attention path (`_supports_sdpa`, a class
    attribute transformers 5.20-5.24 reads in `_check_and_adjust_attn_implementation`; no public accessor). Unknown
    model types and classes count as supporting it: the build then says what transformers says."""
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    names = [*(architectures or []), MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type)]
    for name in filter(None, names):
        cls = getattr(transformers, name, None) if isinstance(name, str) else None
        if cls is not None:
            return bool(getattr(cls, "_supports_sdpa", True))
    return True


# A flash attention kernel keeps no attention matrix: the output and its log-sum-exp, as sdpa's fused kernels do.
# Where a model has no sdpa path (Gemma 2: transformers refuses sdpa for its soft-capping), the trace stands in for
# flash attention with this function, registered through transformers' public AttentionInterface (5.20-5.24) under
# a name of its own (a name with "flash" in it is taken for a hub kernel), with flash attention's mask function:
# sdpa's kernel on the same shapes, causal, no mask materialised. Memory only: it is never run for its numbers.
FLASH_STAND_IN = "recipe_checks_fused_attention"


def register_flash_stand_in() -> str:
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    def fused(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
        return sdpa_attention_forward(module, query, key, value, None, dropout=dropout, scaling=scaling, is_causal=True)

    if FLASH_STAND_IN not in AttentionInterface._global_mapping:
        AttentionInterface.register(FLASH_STAND_IN, fused)
        AttentionMaskInterface.register(FLASH_STAND_IN, ALL_MASK_ATTENTION_FUNCTIONS["flash_attention_2"])
    return FLASH_STAND_IN


def experts_implementation(config) -> str | None:
    """The experts implementation a built MoE model runs (config._experts_implementation, transformers 5.x;
    no public getter): 'grouped_mm' by default, 'eager', 'batched_mm', ..."""
    if not hasattr(config, "_experts_implementation"):
        raise _missing("transformers.PretrainedConfig._experts_implementation")
    return config._experts_implementation


def keys_to_not_convert(model) -> list[str]:
    """The modules transformers leaves unquantized (the output head, tied weights)."""
    return list(require("transformers.quantizers.base.get_keys_to_not_convert")(model))


def replace_with_bnb_linear(model, modules_to_not_convert: list[str], quantization_config) -> None:
    require("transformers.integrations.bitsandbytes.replace_with_bnb_linear")(
        model, modules_to_not_convert=modules_to_not_convert, quantization_config=quantization_config)


# -- bitsandbytes -----------------------------------------------------------------------------------
def int8_matmul_classes() -> tuple[type, type]:
    """(MatMul8bitLt, MatmulLtState): the autograd function of LLM.int8() on CUDA and its state."""
    return (require("bitsandbytes.autograd._functions.MatMul8bitLt"),
            require("bitsandbytes.autograd._functions.MatmulLtState"))


def keep_4bit_training_layout(model) -> int:
    """Keep every bitsandbytes Linear4bit of `model` in the layout and autograd path a GPU run has; return how
    many layers it set.

    bitsandbytes 0.50's Linear4bit, on a CPU where its has_avx512bf16() is true, repacks its weight into a CPU
    inference layout the first time it runs in eval mode under no_grad (Linear4bit.forward, guarded by the
    instance attribute `support_avx512bf16_for_cpu` that __init__ sets), and never converts it back: from then
    on matmul_4bit runs gemv_4bit, which has no autograd kernel, and no gradient reaches the input of a frozen
    4-bit layer. A CUDA run never repacks. A real step's eval forwards (the identity probe, a DPO reference
    pass) would otherwise decide the verdict by the CPU the check runs on.
    """
    import bitsandbytes as bnb

    count = 0
    for module in model.modules():
        if not isinstance(module, bnb.nn.Linear4bit):
            continue
        if not hasattr(module, "support_avx512bf16_for_cpu"):
            raise _missing("bitsandbytes.nn.Linear4bit.support_avx512bf16_for_cpu")
        module.support_avx512bf16_for_cpu = False
        count += 1
    return count


def quantize_on_cpu(param, device: str = "cpu"):
    """Really quantize a Params4bit or Int8Params on `device` (their private _quantize; .to(device)
    does not quantize a tensor already on that device)."""
    if not hasattr(type(param), "_quantize"):
        raise _missing(f"bitsandbytes.nn.{type(param).__name__}._quantize")
    return param._quantize(device)


# -- peft -------------------------------------------------------------------------------------------
def lora_create_new_module(lora_config, adapter_name: str, target, **kwargs):
    """peft's LoraModel._create_new_module: the LoRA layer peft would wrap `target` in."""
    return require("peft.tuners.lora.model.LoraModel._create_new_module")(lora_config, adapter_name, target, **kwargs)


def lora_param_wrapper() -> type:
    """peft's ParamWrapper (peft.tuners.lora.layer), the LoRA layer of a lora.target_parameters entry."""
    return require("peft.tuners.lora.layer.ParamWrapper")


def pattern_key(patterns: list[str], name: str) -> str:
    """peft's get_pattern_key (peft.utils.other, not exported by peft.utils): the rank_pattern or
    alpha_pattern key peft picks for a module name."""
    return require("peft.utils.other.get_pattern_key")(patterns, name)


def include_all_linear_layers(peft_config, model):
    """peft's _maybe_include_all_linear_layers: the config with 'all-linear' expanded for this model."""
    return require("peft.tuners.tuners_utils._maybe_include_all_linear_layers")(peft_config, model)


# -- diffusers (optional: the diffusers extra; written against diffusers 0.42) -----------------------
def _flux_pipeline():
    return require("diffusers.pipelines.flux.pipeline_flux.FluxPipeline")


def flux_pack_latents(latents, batch_size: int, channels: int, height: int, width: int):
    """FluxPipeline._pack_latents: 2x2 latent patches as one token, as the FLUX training scripts pack them."""
    return _flux_pipeline()._pack_latents(latents, batch_size, channels, height, width)


def flux_unpack_latents(latents, height: int, width: int, vae_scale_factor: int):
    """FluxPipeline._unpack_latents: the transformer's tokens back to the latent image (height, width in pixels)."""
    return _flux_pipeline()._unpack_latents(latents, height, width, vae_scale_factor)


def flux_latent_image_ids(batch_size: int, height: int, width: int, device, dtype):
    """FluxPipeline._prepare_latent_image_ids: the (0, row, column) ids of the packed image tokens."""
    return _flux_pipeline()._prepare_latent_image_ids(batch_size, height, width, device, dtype)


# -- pytest -----------------------------------------------------------------------------------------
def skip_at_item(reason: str):
    """pytest.skip, reported at the recipe item (file and line) rather than at this plugin's code:
    the `_use_item_location` flag of pytest's Skipped (pytest 7.0-9.x; its skip marks use it)."""
    import pytest

    try:
        raise pytest.skip.Exception(reason, _use_item_location=True)
    except TypeError:  # a pytest without the flag: the same skip, at the plugin's line
        pytest.skip(reason)


def pytest_option_names(parser) -> set[str]:
    """Every option string registered with pytest's Parser so far (`--gpu`, `-x`, ...): its groups' options
    and the anonymous group's (Parser._groups, Parser._anonymous: pytest 8.3-9.2). No public accessor: pytest
    itself reads them to build its argparse parser."""
    groups = [getattr(parser, "_anonymous", None), *getattr(parser, "_groups", [])]
    if groups[0] is None:
        raise _missing("_pytest.config.argparsing.Parser._anonymous")
    return {name for group in groups for option in group.options for name in option.names()}



def pytest_ini(args: list[str], invocation_dir) -> tuple[Any, dict[str, Any]]:
    """The configuration file pytest would read for `pytest ARGS` run in `invocation_dir` (pytest.ini,
    pyproject.toml's [tool.pytest.ini_options], tox.ini, setup.cfg: pytest's own search, first match wins) and its
    raw values (a string, or a list of strings from pyproject.toml): (path or None, {name: value}).
    `_pytest.config.findpaths` (get_dirs_from_args, get_common_ancestor, locate_config): pytest 8.0-9.2; 9.x
    wraps each value in a ConfigValue and returns a fourth item, both read here. No public accessor: a pytest
    Config would load every plugin of the environment to answer."""
    from _pytest.config import findpaths

    try:
        ancestor = findpaths.get_common_ancestor(invocation_dir, findpaths.get_dirs_from_args(args))
        found = findpaths.locate_config(invocation_dir, [ancestor])
    except AttributeError:
        raise _missing("_pytest.config.findpaths.locate_config") from None
    path, values = found[1], found[2] or {}
    return path, {name: getattr(value, "value", value) for name, value in values.items()}

# -- bitsandbytes' import-time hub kernel (written against bitsandbytes 0.50) ------------------------------
_BNB_CPU_OPS = "bitsandbytes.backends.cpu.ops"


class _DropCpuKernelNotice:
    """bitsandbytes 0.49-0.50 logs, when imported on a CPU with AVX512-BF16, that it could not load a
    CPU 4-bit kernel from the kernels hub. recipe-checks never needs it (the trace emulates the CUDA
    kernels; CPU runs fall back to bitsandbytes' own code), and a check run must not tell users to
    install packages from a hub."""

    def filter(self, record) -> bool:
        return "Failed to load CPU gemm_4bit_forward" not in record.getMessage()


class _NoHubKernelLoader:
    """Runs bitsandbytes' CPU backend module with `kernels` unimportable: on a CPU with AVX512-BF16 that module
    calls `kernels.get_kernel("kernels-community/quantization-bitsandbytes")` at import, which downloads and
    loads native code from the hub. bitsandbytes catches the ImportError and keeps its own kernels."""

    def __init__(self, loader) -> None:
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        import sys

        absent = object()
        saved = sys.modules.get("kernels", absent)
        sys.modules["kernels"] = None  # `from kernels import ...` raises ImportError, imported or not
        try:
            self.loader.exec_module(module)
        finally:
            if saved is absent:
                sys.modules.pop("kernels", None)
            else:
                sys.modules["kernels"] = saved


class _NoHubKernelFinder:
    """A meta path finder for bitsandbytes' CPU backend module only (every other import is left alone)."""

    def find_spec(self, fullname, path, target=None):
        if fullname != _BNB_CPU_OPS:
            return None
        import importlib.machinery

        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is not None and spec.loader is not None:
            spec.loader = _NoHubKernelLoader(spec.loader)
        return spec


def bitsandbytes_without_hub_kernel() -> None:
    """Before bitsandbytes is imported (the plugin and the CLI call it at start; it imports nothing): never let
    its import reach the network or load the hub's CPU kernel, which would be remote code run without the
    user's opt-in. That kernel serves the CPU inference layout only, which the real steps never use
    (keep_4bit_training_layout). Also drops bitsandbytes' notice that the kernel could not be loaded."""
    import logging
    import sys

    logger = logging.getLogger(_BNB_CPU_OPS)
    if not any(isinstance(f, _DropCpuKernelNotice) for f in logger.filters):
        logger.addFilter(_DropCpuKernelNotice())
    if not any(isinstance(f, _NoHubKernelFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _NoHubKernelFinder())


# -- offline mode, as the libraries read it -------------------------------------------------------
# The module constants huggingface_hub (1.31-2.4: constants.HF_HUB_OFFLINE, HF_HUB_DISABLE_TELEMETRY, read by
# is_offline_mode() and send_telemetry()) and datasets (5.x: config.HF_HUB_OFFLINE) compute from the environment
# once, at import: setting the environment later does not reach a library already imported.
_OFFLINE_CONSTANTS = {
    "huggingface_hub.constants": ("HF_HUB_OFFLINE", "HF_HUB_DISABLE_TELEMETRY"),
    "datasets.config": ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"),
}


def offline_constants(value: bool) -> dict[tuple[str, str], Any]:
    """Set the offline and no-telemetry constants of every such library already imported to `value`; returns
    what they were, for restore_constants."""
    import sys

    saved = {}
    for module_name, names in _OFFLINE_CONSTANTS.items():
        module = sys.modules.get(module_name)
        for name in names if module is not None else ():
            if hasattr(module, name):
                saved[(module_name, name)] = getattr(module, name)
                setattr(module, name, value)
    return saved


def restore_constants(saved: dict[tuple[str, str], Any], environment_says) -> None:
    """Put back what offline_constants saved; a library first imported meanwhile read the offline environment
    at its import, and gets `environment_says(constant name)`, what the restored environment says, instead."""
    import sys

    for module_name, names in _OFFLINE_CONSTANTS.items():
        module = sys.modules.get(module_name)
        for name in names if module is not None else ():
            if hasattr(module, name):
                value = saved[(module_name, name)] if (module_name, name) in saved else environment_says(name)
                setattr(module, name, value)


# -- activation checkpointing, as the Trainer enables it ---------------------------------------------
def activation_checkpointing(args) -> tuple[bool, dict | None]:
    """(enabled, kwargs) of TrainingArguments: transformers 5.24 names them activation_checkpointing(_kwargs)
    and keeps gradient_checkpointing(_kwargs) as deprecated aliases; 5.20-5.23 have only the old names."""
    if hasattr(args, "activation_checkpointing"):
        return bool(args.activation_checkpointing), args.activation_checkpointing_kwargs
    return bool(args.gradient_checkpointing), args.gradient_checkpointing_kwargs


def enable_activation_checkpointing(model, kwargs: dict | None) -> None:
    """What Trainer.train does before its first step (transformers 5.24: activation_checkpointing_enable,
    which pops every_n_layers and offload out of the kwargs; 5.20-5.23: gradient_checkpointing_enable)."""
    kwargs = dict(kwargs or {})
    if hasattr(model, "activation_checkpointing_enable"):
        every_n_layers = kwargs.pop("every_n_layers", 1)
        offload = kwargs.pop("offload", False)
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs or None,
                                              every_n_layers=every_n_layers, offload=offload)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs or None)


# -- trl (the optional [trl] extra; written against trl 1.16) -----------------------------------------
TRL_TESTED = "1.16"


def trl_chunked_logprob():
    """trl.kernels.chunked_logprob: TRL's fused LM head's tiles (TOKEN_CHUNK_SIZE) and its torch folds of a
    tile (_forward_tile, _backward_tile, _addmm_fp32), which its Triton kernels replace on CUDA."""
    module = require("trl.kernels.chunked_logprob")
    for name in ("_forward_tile", "_backward_tile", "_addmm_fp32", "ChunkedLogProbFunction"):
        if not hasattr(module, name):
            raise _missing(f"trl.kernels.chunked_logprob.{name}")
    return module


def trl_fused_head_function_slot():
    """trl.trainer.utils, whose add_fused_lm_head calls the module global _ChunkedLogProbFunction."""
    module = require("trl.trainer.utils")
    if not hasattr(module, "_ChunkedLogProbFunction"):
        raise _missing("trl.trainer.utils._ChunkedLogProbFunction")
    return module


def trl_metrics(trainer) -> dict:
    """The training metrics a TRL trainer logs, per micro-batch (DPOTrainer._metrics["train"]: rewards/chosen,
    rewards/rejected, ...), read as they are appended; no public accessor before they are logged."""
    metrics = getattr(trainer, "_metrics", None)
    if not isinstance(metrics, dict) or "train" not in metrics:
        raise _missing("trl.DPOTrainer._metrics")
    return metrics["train"]
