"""Trace one real training step of a recipe's full-size model on fake tensors: run the step under the
memory tracker and return its peak and what is live at it.

The model is transformers' own architecture built under FakeTensorMode (shapes and dtypes, no data;
build.py); quantization is bitsandbytes' own Linear4bit (quantize.py), adapters are peft's, the optimizer is
the one transformers' Trainer builds for `training.optim` (optimizer.py). The step runs as the steady state of
training: optimizer states exist (from earlier steps), gradients exist during the forward when
gradient accumulation keeps them, then forward, backward, gradient clipping and the optimizer step.
The engine's public names are importable from here, wherever they live.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, field

from recipe_checks import compat
from recipe_checks.memory.blocks import (  # noqa: F401  (re-exported)
    TEMPLATE_BLOCK, TRACED_BLOCKS, NotPeriodic, blocks_of_tensors, decoder_blocks, first_different_block,
    segment_hooks,
)
from recipe_checks.memory.build import StepModel, build_step_model, causal_lm_loss, quiet  # noqa: F401  (re-exported)
from recipe_checks.memory.errors import TraceError  # noqa: F401  (re-exported)
from recipe_checks.memory.optimizer import PAGED_MIN_NUMEL, SpanByParameter, build_optimizer
from recipe_checks.memory.settings import StepSettings, settings_from_recipe  # noqa: F401  (re-exported)
from recipe_checks.memory.tracker import MemoryTimeline, MemoryTracker


@dataclass
class StepTrace:
    timeline: MemoryTimeline
    settings: StepSettings
    trainable_params: int
    total_params: int
    quantized_layers: int
    notes: list[str] = field(default_factory=list)
    curve: list | None = None  # every event as (sign, bytes, category), when asked for
    ops: frozenset = frozenset()  # the name of every op the step dispatched (and every emulated kernel)

    def to_dict(self) -> dict | None:
        """What the result cache stores of a trace (checks/result_cache.py): all but its settings, which are
        the entry's key; None for a trace that keeps its memory curve (tests ask for it; it is not stored)."""
        from recipe_checks.result_cache import to_json

        if self.curve is not None:
            return None
        return {"timeline": to_json(self.timeline), "trainable_params": self.trainable_params,
                "total_params": self.total_params, "quantized_layers": self.quantized_layers,
                "notes": list(self.notes), "ops": sorted(self.ops)}

    @classmethod
    def from_dict(cls, data: dict, settings: StepSettings) -> StepTrace:
        """The trace `to_dict` stored, traced with `settings`; NotAnEntry for anything else."""
        from recipe_checks.result_cache import from_json

        stored = from_json(_StoredTrace, data)
        return cls(stored.timeline, settings, stored.trainable_params, stored.total_params, stored.quantized_layers,
                   stored.notes, ops=frozenset(stored.ops))


@dataclass
class _StoredTrace:
    """StepTrace.to_dict's fields, with the types a stored entry must have."""

    timeline: MemoryTimeline
    trainable_params: int
    total_params: int
    quantized_layers: int
    notes: list[str]
    ops: list[str]


@contextlib.contextmanager
def _no_packed_sequences():
    """transformers looks for packed sequences (several documents in one row) in the position ids by
    reading their values, which fake tensors do not have; the traced batch is one unpadded sequence per
    row, as a real run's unpacked batch, so answer as a real run would: none. (Its other checks for
    tracing look at an attention mask, which the trace does not pass: they need no patch.)"""
    masking = compat.masking_utils()
    original = masking.find_packed_sequence_indices
    masking.find_packed_sequence_indices = lambda *args, **kwargs: None
    try:
        yield
    finally:
        masking.find_packed_sequence_indices = original


def run_step(built: StepModel, settings: StepSettings, *, keep_curve: bool = False) -> StepTrace:
    """Run the steady-state training step under the memory tracker (on fake or real tensors);
    `keep_curve`: keep every event of the memory curve in the result (for tests)."""
    import torch

    from recipe_checks.memory.chunked_loss import ChunkedLoss
    from recipe_checks.memory.kernels import check_ops, int8_matmul_as_on_cuda
    from recipe_checks.memory.quantize import quant_state_tensors

    model, fake = built.model, built.fake
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise TraceError("the model has no trainable parameter")
    if built.quantized:
        check_ops()
    plan = settings.distributed
    own = rank_share(trainable, plan.world_size) if plan is not None and plan.strategy == "zero1" else trainable
    with quiet():
        optimizer = build_optimizer(settings, own)  # outside fake mode: bitsandbytes builds real code maps
    paged = settings.optim.startswith("paged_")
    tracker = MemoryTracker()
    block_of = blocks_of_tensors(built.blocks)
    if block_of:
        optimizer.state = SpanByParameter(optimizer.state, tracker, block_of)
    master = plan is not None and plan.keeps_master_weights and not settings.lora
    for p in model.parameters():
        trained = "adapters" if settings.lora else ("master_weights" if master else "weights")
        tracker.tag(p, trained if p.requires_grad else "weights", block_of.get(id(p)))
    for b in model.buffers():
        tracker.tag(b, "weights", block_of.get(id(b)))
    for t in quant_state_tensors(model):
        tracker.tag(t, "quant_state", block_of.get(id(t)))
    head = next((m for m in model.modules() if isinstance(m, ChunkedLoss)), None) or (
        model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None)
    hooks = []
    if head is not None:
        hooks.append(head.register_forward_pre_hook(lambda *_: setattr(tracker, "region", "logits_loss")))
        hooks.append(head.register_full_backward_hook(lambda *_: setattr(tracker, "region", "")))
    hooks.extend(segment_hooks(built.blocks, tracker, first=plan is not None))
    autocast = (
        torch.autocast("cpu", dtype=getattr(torch, settings.precision))
        if settings.precision != "float32" else contextlib.nullcontext()
    )
    collectives = contextlib.nullcontext()
    if plan is not None:
        from recipe_checks.memory.sharding import collectives_untracked

        collectives = collectives_untracked(tracker)
    try:
        with quiet(), _no_packed_sequences(), int8_matmul_as_on_cuda(), collectives, \
                (fake or contextlib.nullcontext()), tracker:
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
            buffers = communication_buffers(plan, built, trainable)  # held by the distributed engine throughout
            held = torch.empty(buffers, dtype=torch.uint8) if buffers else None
            if held is not None:
                tracker.tag(held, "communication_buffers")
            if settings.gradient_accumulation == 1:
                optimizer.zero_grad(set_to_none=True)
            else:
                for p in trainable:  # gradients of the earlier micro-batches are live during this one
                    tracker.tag(p.grad, "gradients")
            tracker.phase = "forward"
            with autocast:
                loss, batch = (built.loss or causal_lm_loss)(model, settings, tracker)
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
            if plan is not None and plan.offload:  # the step runs on the host, beside the states it updates
                tracker.region = "host_optimizer_step"
            if settings.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(trainable, settings.max_grad_norm, foreach=True)
            optimizer.step()
            tracker.segment = None
            tracker.region = ""
            if paged:
                for p in own:
                    if p.numel() >= PAGED_MIN_NUMEL:
                        for value in optimizer.state[p].values():
                            if isinstance(value, torch.Tensor) and value.numel() > 1:
                                tracker.tag(value, "optimizer_state_paged")
            tracker.phase = "end"
            del held
    finally:
        for hook in hooks:
            hook.remove()
    notes = list(settings.notes) + built.notes
    copies = built.copies
    if copies:
        differs = tracker.periodic(TEMPLATE_BLOCK, TEMPLATE_BLOCK + 1)
        if differs:
            raise NotPeriodic(differs)
        notes.append(f"{TRACED_BLOCKS} of {TRACED_BLOCKS + copies} identical decoder blocks traced; "
                     f"block {TEMPLATE_BLOCK}'s allocations stand for the other {copies}")
    timeline = tracker.timeline(TEMPLATE_BLOCK, copies, host=plan.host_categories if plan is not None else frozenset())

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
        quantized_layers=quantized, notes=notes, ops=frozenset(tracker.ops),
        curve=tracker.memory_curve(TEMPLATE_BLOCK, copies) if keep_curve else None,
    )


def rank_share(params: list, world_size: int, rank: int = 0) -> list:
    """The parameters whose optimizer states one rank holds under ZeRO-1, partitioned as torch's
    ZeroRedundancyOptimizer partitions them: largest first, each to the rank with the fewest elements."""
    loads = [0] * world_size
    owner = {}
    for p in sorted(params, key=lambda p: -p.numel()):
        r = loads.index(min(loads))
        owner[id(p)] = r
        loads[r] += p.numel()
    return [p for p in params if owner[id(p)] == rank]


def communication_buffers(plan, built: StepModel, trainable: list) -> int:
    """The bytes a distributed engine holds besides the model's own tensors (checks/memory/sharding.py)."""
    if plan is None or plan.world_size == 1:
        return 0
    import torch

    from recipe_checks.memory.sharding import ddp_bucket_bytes, zero_buffer_bytes

    template = [p for p in built.blocks[TEMPLATE_BLOCK].parameters() if p.requires_grad] if built.copies else []
    if plan.strategy == "ddp":  # the buckets of every trained gradient, the blocks the trace left out included
        return ddp_bucket_bytes(trainable) + built.copies * ddp_bucket_bytes(template)
    # the trained shard, of the blocks the trace left out too
    shard = sum(compat.local_tensor(p).numel() for p in trainable)
    shard += built.copies * sum(compat.local_tensor(p).numel() for p in template)
    dtype_bytes = getattr(torch, plan.param_dtype or "bfloat16").itemsize
    config = getattr(built.model, "config", None)
    hidden = getattr(config.get_text_config(), "hidden_size", None) if hasattr(config, "get_text_config") else None
    return zero_buffer_bytes(plan, hidden, shard, dtype_bytes)


def build_traced_model(resolved, settings: StepSettings, task_type: str = "CAUSAL_LM", **kwargs) -> StepModel:
    """build_step_model, then the sharding of a distributed plan (in the process group that is current)."""
    built = build_step_model(resolved, settings, task_type, **kwargs)
    if settings.distributed is not None:
        from recipe_checks.memory.sharding import shard_step_model

        shard_step_model(built, settings.distributed)
    return built


def trace_training_step(resolved, settings: StepSettings, task_type: str = "CAUSAL_LM") -> StepTrace:
    """One training step of the full-size model on fake tensors: the peak and what is live at it.
    Cached per (config, settings, task): recipes and GPUs that share them share one trace, in this process
    and in the result cache (checks/result_cache.py), which keys it by those and the engine's and libraries'
    versions. No GPU profile decides a trace: the budget it is compared with is applied afterwards."""
    import json

    return _trace_cached(json.dumps(resolved.config, sort_keys=True), resolved.name, settings, task_type)


@functools.lru_cache(maxsize=64)
def _trace_cached(config_json: str, name: str, settings: StepSettings, task_type: str) -> StepTrace:
    from recipe_checks import result_cache

    return result_cache.cached(
        "trace", {"config": config_json, "name": name, "settings": settings, "task": task_type},
        lambda: _trace(config_json, name, settings, task_type),
        encode=StepTrace.to_dict, decode=lambda data: StepTrace.from_dict(data, settings))


def _trace(config_json: str, name: str, settings: StepSettings, task_type: str) -> StepTrace:
    import json

    from recipe_checks.models.resolve import ResolvedModel

    resolved = ResolvedModel(name=name, config=json.loads(config_json), source="")
    plan = settings.distributed
    group = contextlib.nullcontext()
    if plan is not None and plan.shards:
        from recipe_checks.memory.sharding import fake_process_group

        group = fake_process_group(plan.world_size)
    with group:
        try:
            return run_step(build_traced_model(resolved, settings, task_type, replicate_blocks=True), settings)
        except TraceError:
            raise
        except Exception as exc:  # noqa: BLE001  blocks 1 and 2 differ, or the model needs all its blocks
            why = str(exc) if isinstance(exc, NotPeriodic) else f"the four-block model fails ({type(exc).__name__})"
            trace = run_step(build_traced_model(resolved, settings, task_type), settings)
            trace.notes.append(f"all decoder blocks traced: {why}")
            return trace
