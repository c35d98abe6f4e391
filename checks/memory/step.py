"""Trace one real training step of a recipe's full-size model on fake tensors.

The model is transformers' own architecture built under FakeTensorMode (shapes and dtypes, no data);
quantization is bitsandbytes' own Linear4bit (see quantize.py), adapters are peft's, the optimizer is
the one transformers' Trainer builds for `training.optim`. The step runs as the steady state of
training: optimizer states exist (from earlier steps), gradients exist during the forward when
gradient accumulation keeps them, then forward, backward, gradient clipping and the optimizer step.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import io
import logging
import warnings
from dataclasses import dataclass, field
from typing import Any

from checks.memory.tracker import MemoryTimeline, MemoryTracker

_DTYPES = ("float32", "float16", "bfloat16")
# Paged bitsandbytes optimizers put states of tensors with at least this many elements in CUDA
# managed memory (bitsandbytes/optim/optimizer.py: get_state_buffer).
PAGED_MIN_NUMEL = 100_000


@dataclass(frozen=True)
class StepSettings:
    """Everything of a recipe that decides the memory of a training step."""

    micro_batch: int
    seq_len: int
    gradient_accumulation: int = 1
    gradient_checkpointing: bool = False
    gradient_checkpointing_kwargs: tuple = ()
    precision: str = "float32"  # training autocast dtype: bfloat16, float16 or float32
    weights_dtype: str = "float32"
    attn_implementation: str | None = "sdpa"  # None: transformers' default for the model
    optim: str = "adamw_torch"
    max_grad_norm: float = 1.0
    learning_rate: float = 5e-5
    weight_decay: float = 0.0
    lora: tuple = ()  # sorted (key, value) of the LoraConfig kwargs; empty: full fine-tune
    quant_4bit: tuple = ()  # sorted (key, value) of the 4-bit settings; empty: not quantized
    quant_8bit: tuple = ()  # sorted (key, value) of the LLM.int8() settings; empty: not 8-bit
    chunked_loss: bool = False  # Liger's fused linear cross-entropy (use_liger_kernel)
    notes: tuple[str, ...] = ()


@dataclass
class StepTrace:
    timeline: MemoryTimeline
    settings: StepSettings
    trainable_params: int
    total_params: int
    quantized_layers: int
    notes: list[str] = field(default_factory=list)
    curve: list | None = None  # every event as (sign, bytes, category), when asked for


class TraceError(RuntimeError):
    """The step cannot be traced for this recipe (an unsupported optimizer, model or setting)."""


def settings_from_recipe(recipe, config: dict) -> StepSettings:
    """The memory-relevant settings of a recipe, with the defaults transformers would apply."""
    t = recipe.training
    notes = []
    precision = recipe.training_dtype
    q = recipe.quantization
    quantized = q is not None and (q.load_in_4bit or q.load_in_8bit)
    dtype = recipe.model.torch_dtype
    if dtype in (None, "auto"):
        config_dtype = config.get("torch_dtype") or config.get("dtype")
        if config_dtype in _DTYPES:
            dtype = config_dtype
            notes.append(f"weights load in {dtype}, the dtype in the model's config.json")
        elif quantized:
            dtype = "float16"
            notes.append("weights load in float16: the config names no dtype and bitsandbytes loading defaults to it")
        else:
            dtype = "float32"
            notes.append("weights load in float32: neither model.torch_dtype nor the config names a dtype")
    attn = recipe.model.attn_implementation
    if attn in ("flash_attention_2", "flash_attention_3"):
        notes.append(f"{attn} is traced as sdpa: both keep no attention matrix, only the output and log-sum-exp")
        attn = "sdpa"
    lora = ()
    if recipe.lora is not None:
        from checks.recipe.validate import library_kwargs

        lora = tuple(sorted((k, _freeze(v)) for k, v in library_kwargs(recipe.lora).items()))
    quant = ()
    if q is not None and q.load_in_4bit:
        compute = q.bnb_4bit_compute_dtype or "float32"
        quant = tuple(sorted({
            "quant_type": q.bnb_4bit_quant_type,
            "double_quant": q.bnb_4bit_use_double_quant,
            "compute_dtype": compute,
            "skip": tuple(q.llm_int8_skip_modules or ()),
            "quant_storage": q.bnb_4bit_quant_storage or "uint8",
        }.items()))
    chunked = _liger_chunked_loss(t, config.get("model_type"), notes)
    return StepSettings(
        micro_batch=t.per_device_train_batch_size,
        seq_len=t.max_seq_length,
        gradient_accumulation=t.gradient_accumulation_steps,
        gradient_checkpointing=t.gradient_checkpointing,
        gradient_checkpointing_kwargs=tuple(sorted((t.gradient_checkpointing_kwargs or {}).items())),
        precision=precision,
        weights_dtype=dtype,
        attn_implementation=attn,
        optim=t.optim,
        max_grad_norm=t.max_grad_norm,
        learning_rate=t.learning_rate,
        weight_decay=t.weight_decay,
        lora=lora,
        quant_4bit=quant,
        quant_8bit=(
            (("skip", tuple(q.llm_int8_skip_modules or ())), ("threshold", q.llm_int8_threshold))
            if q is not None and q.load_in_8bit and not q.load_in_4bit else ()
        ),
        chunked_loss=chunked,
        notes=tuple(notes),
    )


def _liger_chunked_loss(training, model_type: str | None, notes: list[str]) -> bool:
    """Whether `use_liger_kernel` gives this model Liger's fused (chunked) loss, as the Trainer
    applies it; notes what the trace does not follow."""
    from checks.memory.chunked_loss import liger_data, supports_chunked_loss

    extra = training.model_extra or {}
    if not extra.get("use_liger_kernel"):
        return False
    config = extra.get("liger_kernel_config") or {}
    if not supports_chunked_loss(model_type):
        notes.append(f"use_liger_kernel: Liger has no fused loss for model type '{model_type}'; traced without it")
        return False
    swapped = [k for k in liger_data()["other_default_kernels"] if config.get(k, True)]
    if swapped:
        notes.append(f"use_liger_kernel: Liger's {', '.join(swapped)} kernels are traced as transformers' own "
                     "modules, which keep at least as much for the backward pass (an upper bound)")
    return bool(config.get("fused_linear_cross_entropy", True))


def _freeze(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    return value


def _thaw(value: Any) -> Any:
    if isinstance(value, tuple) and value and all(isinstance(v, tuple) and len(v) == 2 for v in value):
        return {k: _thaw(v) for k, v in value}
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


@contextlib.contextmanager
def _not_tracing():
    """transformers keeps an explicit causal mask when it sees a FakeTensor ("tracing"), where a real
    run on unpadded, unpacked batches passes is_causal to SDPA instead; we are not compiling, and
    the traced batch is one unpadded sequence per row, so answer as a real run would."""
    import transformers.masking_utils as masking

    originals = masking.is_tracing, masking.find_packed_sequence_indices
    masking.is_tracing = lambda tensor=None: False
    masking.find_packed_sequence_indices = lambda *args, **kwargs: None
    try:
        yield
    finally:
        masking.is_tracing, masking.find_packed_sequence_indices = originals


@contextlib.contextmanager
def _int8_matmul_as_on_cuda():
    """bitsandbytes trains 8-bit layers on a CPU tensor with MatMul8bitFp (dequantize, then matmul);
    on CUDA, which the trace stands for, with MatMul8bitLt (int8 matmul)."""
    import bitsandbytes as bnb
    from bitsandbytes.autograd._functions import MatMul8bitLt, MatmulLtState

    original = bnb.matmul

    def matmul(A, B, out=None, state=None, threshold=0.0, bias=None):
        state = state or MatmulLtState()
        if threshold > 0.0:
            state.threshold = threshold
        return MatMul8bitLt.apply(A, B, out, bias, state)

    bnb.matmul = matmul
    try:
        yield
    finally:
        bnb.matmul = original


@contextlib.contextmanager
def _quiet():
    loggers = [logging.getLogger(n) for n in ("transformers", "peft", "bitsandbytes")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _optimizer(settings: StepSettings, params: list):
    """The optimizer transformers' Trainer builds for this name, forced to CUDA's defaults."""
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(
        output_dir="/nonexistent-recipe-checks", optim=settings.optim, learning_rate=settings.learning_rate,
        weight_decay=settings.weight_decay, report_to=[], use_cpu=True,
    )
    try:
        cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args)
    except Exception as exc:  # optimizers whose package is not installed (galore, apollo, ...)
        raise TraceError(f"optimizer '{settings.optim}' cannot be built here: {exc}") from None
    if cls.__module__.startswith("torch.optim") and "fused" not in kwargs:
        kwargs = {**kwargs, "foreach": True}  # torch's default on CUDA: multi-tensor, with its temporaries
    return cls(params, **kwargs)


@dataclass
class _QuantSettings:
    bnb_4bit_quant_type: str
    bnb_4bit_use_double_quant: bool
    bnb_4bit_quant_storage: str
    llm_int8_skip_modules: list


def _materialize_fake(model, fake) -> None:
    """Replace every meta parameter, buffer and 4-bit quant state tensor by a fake CPU tensor."""
    import torch

    from checks.memory.quantize import BNB_PARAM_ATTRIBUTES

    done: dict[int, Any] = {}

    def convert(t):
        if id(t) not in done:
            with fake:
                new = torch.empty(t.shape, dtype=t.dtype, device="cpu")
            if isinstance(t, torch.nn.Parameter):
                new = torch.nn.Parameter(new, requires_grad=t.requires_grad)
                for attr in BNB_PARAM_ATTRIBUTES:
                    if hasattr(t, attr):
                        setattr(new, attr, getattr(t, attr))
            done[id(t)] = new
        return done[id(t)]

    for module in model.modules():
        for name, param in list(module._parameters.items()):
            if param is not None:
                module._parameters[name] = convert(param)
        for name, buf in list(module._buffers.items()):
            if buf is not None:
                module._buffers[name] = convert(buf)
        state = getattr(module, "quant_state", None)
        while state is not None:
            for attr in ("absmax", "code", "offset"):
                value = getattr(state, attr, None)
                if isinstance(value, torch.Tensor):
                    setattr(state, attr, convert(value))
            state = getattr(state, "state2", None)
        int8_state = getattr(module, "state", None)
        if getattr(int8_state, "CB", None) is not None:  # LLM.int8(): CB is the weight's own storage
            int8_state.CB = module.weight.data
            int8_state.SCB = convert(int8_state.SCB)


# A model with many identical decoder blocks is traced with four (two edges, two interior blocks
# compared with each other) and replayed with block 1's events repeated for the blocks left out.
TRACED_BLOCKS = 4
TEMPLATE_BLOCK = 1


@dataclass
class StepModel:
    """The model a recipe trains, ready for run_step."""

    model: Any
    fake: Any  # the FakeTensorMode its tensors belong to; None for real tensors
    quantized: int  # 4-bit or 8-bit layers in the built model
    blocks: Any = None  # the decoder blocks' ModuleList, when found
    copies: int = 0  # how many more blocks like block 1 the full-size model has than the built one
    notes: list[str] = field(default_factory=list)


def build_step_model(resolved, settings: StepSettings, task_type: str = "CAUSAL_LM", *, real: bool = False,
                     replicate_blocks: bool = False) -> StepModel:
    """The model a recipe trains, as the training script builds it.

    Fake (the default): built on the meta device (module conversions such as peft's .to() cannot
    swap fake parameters), then every parameter and buffer becomes a fake CPU tensor. Real: built
    with real CPU tensors and really quantized, to validate the fake trace on small models.
    `replicate_blocks`: when every decoder block is identical, keep only TRACED_BLOCKS of them.
    """
    import torch
    import transformers
    from torch._subclasses.fake_tensor import FakeTensorMode

    from checks.memory.quantize import quantize_model_4bit
    from checks.models.skeleton import _AUTO_CLASS_BY_TASK, build_config

    config = build_config(resolved)
    auto_class = getattr(transformers, _AUTO_CLASS_BY_TASK.get(task_type, "AutoModelForCausalLM"))
    weights_dtype = getattr(torch, settings.weights_dtype)
    quantized = 0
    notes = []
    with _quiet(), torch.device("cpu" if real else "meta"):
        model = auto_class.from_config(config, dtype=weights_dtype, attn_implementation=settings.attn_implementation)
        if settings.attn_implementation is None and model.config._attn_implementation != "sdpa":
            notes.append(f"{model.config._attn_implementation} attention traced: transformers' default for "
                         f"{type(model).__name__}, which has no sdpa implementation")
        blocks = decoder_blocks(model)
        copies = 0
        if replicate_blocks and blocks is not None and len(blocks) > TRACED_BLOCKS + 1:
            different = first_different_block(blocks, model.config)
            if different is None:
                copies = len(blocks) - TRACED_BLOCKS
                _keep_blocks(blocks, TRACED_BLOCKS)
            else:
                notes.append(f"all {len(blocks)} decoder blocks traced: block {different} differs from block 0")
        if settings.quant_4bit:
            quant = _thaw(settings.quant_4bit)
            q = _QuantSettings(quant["quant_type"], quant["double_quant"], quant["quant_storage"], list(quant["skip"] or []))
            quantized = quantize_model_4bit(model, q, getattr(torch, quant["compute_dtype"]), real=real)
        if settings.quant_8bit:
            from checks.memory.quantize import quantize_model_8bit

            quant = dict(settings.quant_8bit)
            quantized = quantize_model_8bit(model, quant["threshold"], list(quant["skip"]), real=real)
            if quant["threshold"] > 0:
                notes.append("LLM.int8() outlier columns depend on the data: the trace takes none (their "
                             "fp16 input slice, tokens x outlier columns, is not counted)")
        if settings.lora:
            from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

            if quantized:
                # TRL's SFTTrainer prepares quantized models this way: non-quantized weights to fp32
                model = prepare_model_for_kbit_training(
                    model, use_gradient_checkpointing=settings.gradient_checkpointing,
                    gradient_checkpointing_kwargs=_thaw(settings.gradient_checkpointing_kwargs) or None,
                )
            model = get_peft_model(model, LoraConfig(**_thaw(settings.lora)))
        if settings.gradient_checkpointing:
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs=_thaw(settings.gradient_checkpointing_kwargs) or None
            )
            if settings.lora:
                model.enable_input_require_grads()
        if settings.chunked_loss:
            from checks.memory.chunked_loss import use_chunked_loss

            # the Trainer patches the model under the peft wrapper (_apply_liger_kernel_to_instance)
            use_chunked_loss(model.get_base_model() if hasattr(model, "get_base_model") else model)
        model.train()
    fake = None
    if not real:
        fake = FakeTensorMode(allow_non_fake_inputs=True)
        _materialize_fake(model, fake)
    return StepModel(model, fake, quantized, blocks, copies, notes)


def decoder_blocks(model):
    """The ModuleList of the model's decoder blocks: the one list of num_hidden_layers modules of
    one class; None when there is no such single list (encoder-decoder, vision towers, ...)."""
    import torch

    count = getattr(_text_config(model.config), "num_hidden_layers", None)
    found = [
        m for m in model.modules()
        if isinstance(m, torch.nn.ModuleList) and count and len(m) == count and len({type(b) for b in m}) == 1
    ]
    return found[0] if len(found) == 1 else None


def _text_config(config):
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _fingerprint(block) -> tuple:
    """What decides a block's memory: its modules, their parameter and buffer shapes and dtypes,
    and their plain attributes (sliding window, attention type, ...) except the block's index."""
    parts = []
    for name, module in block.named_modules():
        attributes = tuple(sorted(
            (k, v) for k, v in vars(module).items()
            if not k.startswith("_") and k not in ("layer_idx", "layer_id", "layer_number")
            and isinstance(v, (bool, int, float, str, type(None)))
        ))
        tensors = tuple(
            (n, tuple(t.shape), t.dtype)
            for n, t in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]
        )
        parts.append((name, type(module).__qualname__, attributes, tensors))
    return tuple(parts)


def first_different_block(blocks, config) -> int | None:
    """The index of the first block that differs from block 0 (structure, attributes or the
    config's per-layer type), or None when all are identical."""
    layer_types = getattr(_text_config(config), "layer_types", None)
    first = _fingerprint(blocks[0])
    for index, block in enumerate(blocks):
        if layer_types is not None and index < len(layer_types) and layer_types[index] != layer_types[0]:
            return index
        if index and _fingerprint(block) != first:
            return index
    return None


def _keep_blocks(blocks, count: int) -> None:
    """Drop all but the first `count` blocks. The config keeps the full count: what the model builds
    per layer outside the blocks (a KV cache with a slot per layer, masks per layer type) is then the
    full model's, and the blocks' loop stops at the blocks there are."""
    del blocks[count:]


def run_step(built: StepModel, settings: StepSettings, *, keep_curve: bool = False) -> StepTrace:
    """Run the steady-state training step under the memory tracker (on fake or real tensors);
    `keep_curve`: keep every event of the memory curve in the result (for tests)."""
    import torch

    from checks.memory.chunked_loss import ChunkedLoss
    from checks.memory.quantize import quant_state_tensors

    model, fake = built.model, built.fake
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise TraceError("the model has no trainable parameter")
    with _quiet():
        optimizer = _optimizer(settings, trainable)  # outside fake mode: bitsandbytes builds real code maps
    paged = settings.optim.startswith("paged_")
    tracker = MemoryTracker()
    block_of = _blocks_of_tensors(built.blocks)
    if block_of:
        optimizer.state = _SpanByParameter(optimizer.state, tracker, block_of)
    for p in model.parameters():
        tracker.tag(p, "adapters" if p.requires_grad and settings.lora else "weights", block_of.get(id(p)))
    for b in model.buffers():
        tracker.tag(b, "weights", block_of.get(id(b)))
    for t in quant_state_tensors(model):
        tracker.tag(t, "quant_state", block_of.get(id(t)))
    head = next((m for m in model.modules() if isinstance(m, ChunkedLoss)), None) or model.get_output_embeddings()
    hooks = []
    if head is not None:
        hooks.append(head.register_forward_pre_hook(lambda *_: setattr(tracker, "region", "logits_loss")))
        hooks.append(head.register_full_backward_hook(lambda *_: setattr(tracker, "region", "")))
    hooks.extend(_segment_hooks(built.blocks, tracker))
    autocast = (
        torch.autocast("cpu", dtype=getattr(torch, settings.precision))
        if settings.precision != "float32" else contextlib.nullcontext()
    )
    try:
        with _quiet(), _not_tracing(), _int8_matmul_as_on_cuda(), (fake or contextlib.nullcontext()), tracker:
            # steady state: the optimizer has stepped before, so its states exist
            tracker.phase = "init"
            for p in trainable:
                p.grad = torch.zeros_like(p)
            tracker.phase = "warmup"
            optimizer.step()
            for p in trainable:
                for value in optimizer.state[p].values():
                    if isinstance(value, torch.Tensor):
                        tracker.tag(value, None, block_of.get(id(p)))
            tracker.forget_transients("warmup")
            tracker.phase = "init"
            if settings.gradient_accumulation == 1:
                optimizer.zero_grad(set_to_none=True)
            else:
                for p in trainable:  # gradients of the earlier micro-batches are live during this one
                    tracker.tag(p.grad, "gradients")
            input_ids = torch.zeros((settings.micro_batch, settings.seq_len), dtype=torch.long)
            labels = torch.zeros((settings.micro_batch, settings.seq_len), dtype=torch.long)
            tracker.phase = "forward"
            with autocast:
                output = model(input_ids=input_ids, labels=labels)
                tracker.segment = None  # before autocast's cache of cast weights and the output die
                loss = output.loss
                del output  # with use_cache, its past_key_values hold every block's keys and values
            if settings.gradient_accumulation > 1:
                loss = loss / settings.gradient_accumulation
            tracker.phase = "backward"
            tracker.region = "logits_loss"
            loss.backward()
            tracker.segment = None
            del loss
            tracker.region = ""
            for p in trainable:
                tracker.tag(p.grad, "gradients")
            tracker.phase = "optimizer"
            if settings.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(trainable, settings.max_grad_norm, foreach=True)
            optimizer.step()
            tracker.segment = None
            if paged:
                for p in trainable:
                    if p.numel() >= PAGED_MIN_NUMEL:
                        for value in optimizer.state[p].values():
                            if isinstance(value, torch.Tensor) and value.numel() > 1:
                                tracker.tag(value, "optimizer_state_paged")
            tracker.phase = "end"
    finally:
        for hook in hooks:
            hook.remove()
    notes = list(settings.notes) + built.notes
    copies = built.copies
    if copies:
        differs = tracker.periodic(TEMPLATE_BLOCK, TEMPLATE_BLOCK + 1)
        if differs:
            raise _NotPeriodic(differs)
        notes.append(f"{TRACED_BLOCKS} of {TRACED_BLOCKS + copies} identical decoder blocks traced; "
                     f"block {TEMPLATE_BLOCK}'s allocations stand for the other {copies}")
    timeline = tracker.timeline(TEMPLATE_BLOCK, copies)

    def count(params) -> int:  # a packed 4-bit weight holds two parameters per byte
        return sum(p.numel() * (2 if p.dtype == torch.uint8 and built.quantized else 1) for p in params)

    template = list(built.blocks[TEMPLATE_BLOCK].parameters()) if copies else []
    quantized = built.quantized
    if copies and quantized:
        import bitsandbytes as bnb

        quantized += copies * sum(isinstance(m, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt))
                                  for m in built.blocks[TEMPLATE_BLOCK].modules())
    return StepTrace(
        timeline, settings,
        trainable_params=sum(p.numel() for p in trainable) + copies * sum(p.numel() for p in template if p.requires_grad),
        total_params=count(model.parameters()) + copies * count(template),
        quantized_layers=quantized, notes=notes,
        curve=tracker.memory_curve(TEMPLATE_BLOCK, copies) if keep_curve else None,
    )


class _SpanByParameter(collections.defaultdict):
    """An optimizer's state that tells the tracker whose parameter is being updated: optimizers that
    update one parameter at a time read `state[p]` first, and the span runs to the next read."""

    def __init__(self, state, tracker, block_of: dict[int, int]):
        super().__init__(dict, state)
        self._tracker, self._block_of = tracker, block_of

    def __getitem__(self, param):
        if self._tracker.phase == "optimizer":
            self._tracker.segment = self._block_of.get(id(param))
        return super().__getitem__(param)


class _NotPeriodic(Exception):
    """Blocks that looked identical allocate differently: trace every block instead."""


def _blocks_of_tensors(blocks) -> dict[int, int]:
    """id(tensor) -> index of the decoder block holding it, for parameters, buffers and 4-bit states."""
    from checks.memory.quantize import quant_state_tensors

    out: dict[int, int] = {}
    for index, block in enumerate(blocks if blocks is not None else []):
        for t in [*block.parameters(), *block.buffers(), *quant_state_tensors(block)]:
            out[id(t)] = index
    return out


def _segment_hooks(blocks, tracker) -> list:
    """Tell the tracker which decoder block's span of the step is running. In the forward, block i's
    span runs from its start to the next block's (the frees between them, such as the previous
    block's output once block i has returned, recur between every pair of blocks; the last block's
    span ends with the model's forward); in the backward, from the gradient of its output (its
    backward starts) to the previous block's."""
    if blocks is None:
        return []

    def enter(index):
        def hook(*_):
            if tracker.phase == "forward":
                tracker.segment = index
        return hook

    def leave(index):
        def hook(_module, _args, output):
            if tracker.phase != "forward":
                return
            hidden = output[0] if isinstance(output, (tuple, list)) else output
            if getattr(hidden, "requires_grad", False):
                hidden.register_hook(lambda grad: setattr(tracker, "segment", index))
        return hook

    hooks = []
    for index, block in enumerate(blocks):
        hooks.append(block.register_forward_pre_hook(enter(index)))
        hooks.append(block.register_forward_hook(leave(index)))
    return hooks


def trace_training_step(resolved, settings: StepSettings, task_type: str = "CAUSAL_LM") -> StepTrace:
    """One training step of the full-size model on fake tensors: the peak and what is live at it.
    Cached per (config, settings, task): recipes and GPUs that share them share one trace."""
    import json

    return _trace_cached(json.dumps(resolved.config, sort_keys=True), resolved.name, settings, task_type)


@functools.lru_cache(maxsize=64)
def _trace_cached(config_json: str, name: str, settings: StepSettings, task_type: str) -> StepTrace:
    import json

    from checks.models.resolve import ResolvedModel

    resolved = ResolvedModel(name=name, config=json.loads(config_json), source="")
    try:
        return run_step(build_step_model(resolved, settings, task_type, replicate_blocks=True), settings)
    except TraceError:
        raise
    except Exception as exc:  # noqa: BLE001  blocks 1 and 2 differ, or the model needs all its blocks
        why = str(exc) if isinstance(exc, _NotPeriodic) else f"the four-block model fails ({type(exc).__name__})"
        trace = run_step(build_step_model(resolved, settings, task_type), settings)
        trace.notes.append(f"all decoder blocks traced: {why}")
        return trace
