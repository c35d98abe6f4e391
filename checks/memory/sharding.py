"""Several GPUs: each rank's training step, traced with torch's own distributed engine.

The model is built on fake tensors as for one GPU; a process group of the `fake` backend (torch's own,
torch.testing._internal.distributed.fake_pg: its collectives return at once) stands for the recipe's world
size, and torch's FSDP2 (`fully_shard`) shards the model on a CPU device mesh of that size. The step then
runs as rank 0 runs it: sharded parameters, each block's parameters all-gathered for its forward and
backward and freed again, gradients reduce-scattered into shards, the optimizer over the shards.

How each strategy is traced (`plan_from_recipe`, `shard_step_model`):
- fsdp:  fully_shard on every decoder block and on the root, with the recipe's options.
- zero3: DeepSpeed ZeRO-3 holds the same tensors as FSDP2 with resharding after forward and fp32 master
         shards of the trained parameters (its optimizer's fp32 partition), all-gathered in the training
         dtype: traced so. What DeepSpeed holds besides: its 16-bit copy of each trained shard and its
         communication buckets, added with the sizes it documents (`zero_buffers`).
- zero2: as zero3 without resharding after forward (the blocks stay all-gathered from their forward to
         their backward, as ZeRO-2 keeps whole parameters on every rank).
- zero1, ddp: every rank holds the whole model and whole gradients: the one-GPU step, plus DDP's
         gradient buckets (ddp) or with the optimizer states of 1/world_size of the parameters (zero1).
Offload (fsdp offload_policy: cpu, zero offload_optimizer / offload_param): the tensors it moves live in
host memory, counted apart from the GPU's.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

from recipe_checks import compat

STRATEGY_LABELS = {"ddp": "DDP", "fsdp": "FSDP2", "zero1": "ZeRO-1", "zero2": "ZeRO-2", "zero3": "ZeRO-3"}
SHARDED_STRATEGIES = ("fsdp", "zero2", "zero3")  # traced with fully_shard

# DDP's Reducer copies every gradient into its buckets (torch/nn/parallel/distributed.py, DistributedDataParallel
# docstring, gradient_as_bucket_view: "When set to False (the default) ... gradients are copied into the
# buckets", so the buckets hold a second copy of the gradients; True makes gradients views into them).
DDP_BUCKETS_SOURCE = "torch.nn.parallel.DistributedDataParallel, gradient_as_bucket_view=False (default)"

# DeepSpeed's buffers, at the sizes transformers' DeepSpeed integration gives its "auto" values
# (transformers/integrations/deepspeed.py, HfTrainerDeepSpeedConfig.trainer_config_finalize):
# reduce_bucket_size = hidden_size^2, stage3_prefetch_bucket_size = 0.9 * hidden_size^2, in elements of the
# training dtype (DeepSpeed's own defaults, deepspeed/runtime/zero/config.py, are 5e8 and 5e7 elements).
ZERO_BUFFERS_SOURCE = ("transformers' DeepSpeed integration 'auto' values: reduce_bucket_size = hidden_size^2, "
                       "stage3_prefetch_bucket_size = 0.9 x hidden_size^2 (deepspeed/runtime/zero/config.py)")

# Categories of the breakdown that each strategy keeps one shard of per rank (the rest are this rank's own
# or the whole model on every rank).
_SHARDED = {
    "ddp": frozenset(),
    "zero1": frozenset({"optimizer_state", "optimizer_state_paged"}),
    "zero2": frozenset({"adapters", "master_weights", "gradients", "optimizer_state", "optimizer_state_paged",
                        "communication_buffers"}),
    "zero3": frozenset({"weights", "adapters", "master_weights", "quant_state", "gradients", "optimizer_state",
                        "optimizer_state_paged"}),
    "fsdp": frozenset({"weights", "adapters", "quant_state", "gradients", "optimizer_state", "optimizer_state_paged"}),
}


@dataclass(frozen=True)
class ShardPlan:
    """What of a recipe's `distributed` section decides a rank's memory."""

    strategy: str
    world_size: int
    reshard_after_forward: bool = True
    param_dtype: str | None = None  # FSDP2 MixedPrecisionPolicy
    reduce_dtype: str | None = None
    offload: bool = False  # fsdp offload_policy: cpu, zero offload_optimizer: cpu/nvme (states off the GPU)
    offload_params: bool = False  # fsdp offload_policy: cpu, zero3 offload_param: cpu/nvme

    @property
    def label(self) -> str:
        return STRATEGY_LABELS[self.strategy]

    @property
    def shards(self) -> bool:
        """Whether the trace applies fully_shard: a sharded strategy over more than one rank."""
        return self.strategy in SHARDED_STRATEGIES and self.world_size > 1

    @property
    def sharded(self) -> frozenset:
        return _SHARDED[self.strategy]

    @property
    def keeps_master_weights(self) -> bool:
        """DeepSpeed ZeRO-2/3 in mixed precision: the trained shards are its optimizer's fp32 master partition."""
        return self.strategy in ("zero2", "zero3") and self.param_dtype is not None

    @property
    def host_categories(self) -> frozenset:
        """What the offload moves to host memory: the optimizer's states, and with them the fp32 master
        shards and sharded gradients it updates from (DeepSpeed's CPU Adam; FSDP2's CPUOffloadPolicy)."""
        out = set()
        if self.offload:
            out |= {"optimizer_state", "optimizer_state_paged", "gradients", "master_weights", "host_optimizer_step"}
            if self.strategy in ("zero2", "zero3", "fsdp"):
                out.add("adapters")
        if self.offload_params:
            out |= {"weights", "quant_state"}
        return frozenset(out)

    def with_world_size(self, world_size: int) -> ShardPlan:
        from dataclasses import replace

        return replace(self, world_size=world_size)


def plan_from_recipe(recipe) -> ShardPlan | None:
    d = getattr(recipe, "distributed", None)
    if d is None or not getattr(d, "size_known", True):  # a translated config that names no GPU count: RC111 says so
        return None
    offload = offload_params = False
    raf = True
    param_dtype = reduce_dtype = None
    if d.strategy == "fsdp" and d.fsdp is not None:
        raf = d.fsdp.reshard_after_forward
        if d.fsdp.mp_policy is not None:
            param_dtype, reduce_dtype = d.fsdp.mp_policy.param_dtype, d.fsdp.mp_policy.reduce_dtype
        offload = offload_params = d.fsdp.offload_policy == "cpu"
    if d.strategy.startswith("zero"):
        raf = d.strategy == "zero3"
        training = recipe.training_dtype
        if training != "float32":  # DeepSpeed's mixed precision: fp32 master shards, compute in the 16-bit dtype
            param_dtype = reduce_dtype = training
        if d.zero is not None:
            offload = d.zero.offload_optimizer != "none"
            offload_params = d.zero.offload_param != "none"
    return ShardPlan(d.strategy, d.size, raf, param_dtype, reduce_dtype, offload, offload_params)


@contextlib.contextmanager
def fake_process_group(world_size: int, rank: int = 0):
    """The default process group as rank `rank` of `world_size` ranks on the `fake` backend, destroyed after.
    A process that already has a process group (a test run under torchrun) keeps it: tracing refuses."""
    import torch.distributed as dist

    from recipe_checks.memory.errors import TraceError

    if not dist.is_available():
        raise TraceError("this torch build has no torch.distributed: a sharded step cannot be traced")
    if dist.is_initialized():
        raise TraceError("this process already has a torch.distributed process group: a sharded step is traced "
                         "in a process without one (run recipe-checks outside torchrun)")
    compat.require("torch.testing._internal.distributed.fake_pg")  # registers the `fake` backend
    dist.init_process_group("fake", store=compat.fake_store()(), rank=rank, world_size=world_size)
    try:
        yield
    finally:
        dist.destroy_process_group()


def shard_step_model(step, plan: ShardPlan):
    """Apply the plan's sharding to a built StepModel in place (fully_shard on each decoder block, then on
    the root), as the trainer does before its first step; needs a process group (fake or real)."""
    import torch
    from torch.distributed.device_mesh import init_device_mesh

    if not plan.shards:
        return step
    from recipe_checks.memory.errors import NotModelled

    if step.quantized:
        raise NotModelled("bitsandbytes' quantized layers are not sharded by this trace: FSDP2's fully_shard turns "
                          "their packed weights into plain DTensors and loses the quantization state")
    fully_shard, MixedPrecisionPolicy = compat.fully_shard()
    mesh = init_device_mesh("cpu", (plan.world_size,))
    dtype = (lambda name: getattr(torch, name) if name else None)
    mp = MixedPrecisionPolicy(param_dtype=dtype(plan.param_dtype), reduce_dtype=dtype(plan.reduce_dtype))
    context = step.fake if step.fake is not None else contextlib.nullcontext()
    with context:
        if plan.strategy.startswith("zero") and plan.param_dtype:
            # DeepSpeed's optimizer keeps an fp32 partition of every trained parameter: the shards FSDP2 holds
            for p in step.model.parameters():
                if p.requires_grad and p.dtype != torch.float32:
                    p.data = p.data.float()
        for block in (step.blocks if step.blocks is not None else []):
            fully_shard(block, mesh=mesh, reshard_after_forward=plan.reshard_after_forward, mp_policy=mp)
        fully_shard(step.model, mesh=mesh, reshard_after_forward=plan.reshard_after_forward, mp_policy=mp)
        compat.fsdp_lazy_init(step.model)
        # the steady state: earlier steps have all-gathered every block once, so its unsharded parameters exist
        # (resized to 0 bytes between uses); FSDPModule.unshard/reshard, its public API, does one such round
        for module in [*(step.blocks if step.blocks is not None else []), step.model]:
            module.unshard()
            module.reshard()
    step.notes.append(f"rank 0 of {plan.world_size} traced: torch's FSDP2 (fully_shard on each of the decoder "
                      "blocks and on the root) on a fake process group"
                      + (f", as {plan.label} holds the same tensors" if plan.strategy != "fsdp" else ""))
    return step


def ddp_bucket_bytes(trainable) -> int:
    """The bytes of DDP's gradient buckets: one flat copy of every trainable gradient (DDP_BUCKETS_SOURCE)."""
    return sum(p.numel() * p.element_size() for p in trainable)


def zero_buffer_bytes(plan: ShardPlan, hidden_size: int | None, trainable_numel_shard: int, dtype_bytes: int) -> int:
    """What DeepSpeed holds besides the tensors FSDP2 holds (ZERO_BUFFERS_SOURCE): the 16-bit copy of each
    trained shard (ZeRO-2/3 keep both it and the fp32 master), the reduce bucket and, for ZeRO-3, the
    prefetch bucket."""
    if not plan.strategy.startswith("zero") or plan.strategy == "zero1":
        return 0
    partition = trainable_numel_shard * dtype_bytes if plan.param_dtype else 0
    if plan.offload_params:
        partition = 0
    hidden = hidden_size or 0
    buckets = hidden * hidden * dtype_bytes
    if plan.strategy == "zero3":
        buckets += math.ceil(0.9 * hidden * hidden) * dtype_bytes
    return partition + buckets


def sharding_notes(plan: ShardPlan) -> list[str]:
    notes = []
    if plan.strategy in ("zero2", "zero3"):
        notes.append(f"{plan.label}'s 16-bit copy of each trained shard and its communication buckets are added "
                     f"at their documented sizes ({ZERO_BUFFERS_SOURCE})")
    if plan.strategy == "ddp":
        notes.append(f"DDP's gradient buckets hold a second copy of the trained gradients ({DDP_BUCKETS_SOURCE})")
    if plan.host_categories:
        notes.append("offloaded to host memory, not counted on the GPU: "
                     + ", ".join(sorted(c.replace("_", " ") for c in plan.host_categories)))
    return notes


# The collectives FSDP2, DDP and ZeroRedundancyOptimizer call (torch.distributed's functions, looked up at each
# call): what a backend allocates inside one is its own (NCCL's buffers are outside torch's caching allocator,
# gloo's are CPU temporaries of its reduce-scatter), not the training step's.
_COLLECTIVES = ("all_gather_single", "reduce_scatter_single", "all_gather_into_tensor", "reduce_scatter_tensor", "all_reduce",
                "broadcast", "all_gather")


@contextlib.contextmanager
def collectives_untracked(tracker):
    """Run torch.distributed's collectives without accounting what they allocate inside; their outputs are
    tensors the caller allocated, which stay accounted."""
    import functools

    import torch.distributed as dist

    originals = {name: getattr(dist, name) for name in _COLLECTIVES if hasattr(dist, name)}

    def untracked(function):
        @functools.wraps(function)
        def call(*args, **kwargs):
            with tracker.untracked():
                result = function(*args, **kwargs)
                # finished here, on this thread: a backend's worker thread that let go of the tensors later
                # would free them at a moment no run repeats (the fake backend's collectives are done at once)
                if hasattr(result, "wait"):
                    result.wait()
                return result
        return call

    for name, function in originals.items():
        setattr(dist, name, untracked(function))
    try:
        yield
    finally:
        for name, function in originals.items():
            setattr(dist, name, function)


def distributed_fixes(settings) -> list[tuple[str, str, object]]:
    """(name, recipe change, settings) of each distributed fix that applies: a stage that shards more, offload
    of the optimizer states, and twice the GPUs (the smallest world size that fits is searched once a fix
    of more GPUs fits: `smallest_world_size`)."""
    from dataclasses import replace

    plan = settings.distributed
    out = []

    def with_plan(**changes):
        return replace(settings, distributed=replace(plan, **changes))

    mixed = settings.precision if settings.precision != "float32" else None
    if plan.strategy in ("ddp", "zero1", "zero2") and not settings.quant_4bit and not settings.quant_8bit:
        out.append(("ZeRO-3 (parameters, gradients and optimizer states sharded)", "distributed.strategy: zero3",
                    with_plan(strategy="zero3", reshard_after_forward=True, param_dtype=mixed, reduce_dtype=mixed)))
    if plan.strategy == "ddp" and not settings.quant_4bit and not settings.quant_8bit:
        out.append(("FSDP2 (fully_shard)", "distributed.strategy: fsdp", with_plan(strategy="fsdp")))
    if plan.strategy in ("fsdp", "zero3") and not plan.reshard_after_forward:  # ZeRO-2 never reshards
        out.append(("reshard after forward", "distributed.fsdp.reshard_after_forward: true",
                    with_plan(reshard_after_forward=True)))
    if not plan.offload and plan.strategy != "ddp":
        change = ("distributed.fsdp.offload_policy: cpu" if plan.strategy == "fsdp"
                  else "distributed.zero.offload_optimizer: cpu")
        out.append(("offload the optimizer states to host memory", change,
                    with_plan(offload=True, offload_params=plan.strategy == "fsdp")))
    if plan.strategy != "ddp":  # DDP's ranks each hold everything: more of them change nothing per rank
        out.append((f"more GPUs ({2 * plan.world_size})", f"distributed.world_size: {2 * plan.world_size}",
                    replace(settings, distributed=plan.with_world_size(2 * plan.world_size))))
    return out
