"""Account the bytes a training step holds, allocation by allocation, as the CUDA caching allocator would.
(bitsandbytes kernels that need emulating to be accounted are in kernels.py.)

A TorchDispatchMode sees every op's outputs; each new storage is one allocation (rounded up to the
allocator's 512-byte granularity) and is freed when its storage dies. The tracker logs allocations
and frees with the phase and region they happened in; categories are decided afterwards, when each
storage's fate is known (saved for backward, became a gradient, optimizer state), and the log is
replayed to find the peak and what was live at it.

Identical decoder blocks: each allocation and each event carries the block it belongs to (the block
whose forward or backward is running, else the block of the op's inputs), so a trace of a model with
a few blocks can be replayed as the full model's, with block 1's events repeated where they occur
(`timeline(copies=...)`), after `periodic()` has checked that blocks 1 and 2 logged the same events.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field
from typing import Any

import torch

from recipe_checks import compat
from recipe_checks.memory.kernels import DEQUANTIZE_OPS, EMULATED

TorchDispatchMode = compat.torch_dispatch_mode()
tree_flatten = compat.require("torch.utils._pytree.tree_flatten")

# c10/cuda/CUDACachingAllocator.cpp: every block is rounded up to kMinBlockSize = 512 bytes.
ALLOCATION_GRANULARITY = 512

CATEGORIES = (
    "weights", "quant_state", "adapters", "gradients", "optimizer_state", "optimizer_state_paged",
    "activations", "logits_loss", "dequantized_weights", "temporaries",
    # a preference trainer's reference model: its weights (a second full model), and what its forward allocates
    "reference_weights", "reference",
    # a sharded step (FSDP2): the blocks' parameters all-gathered for their forward and backward; the buffers a
    # distributed engine holds besides (DDP's gradient buckets, DeepSpeed's buckets and 16-bit partitions)
    "unsharded_weights", "communication_buffers",
    # DeepSpeed's fp32 partition of the trained parameters (its optimizer's master copy), and what an optimizer
    # step offloaded to the host allocates there (DeepSpeed's CPU Adam, FSDP2's CPUOffloadPolicy)
    "master_weights", "host_optimizer_step",
)


def allocation_bytes(nbytes: int) -> int:
    return math.ceil(nbytes / ALLOCATION_GRANULARITY) * ALLOCATION_GRANULARITY if nbytes else 0


@dataclass
class _Allocation:
    index: int
    nbytes: int
    phase: str  # init, warmup, forward, backward, optimizer
    region: str  # "", "logits_loss", "dequant", "reference"
    tag: str | None = None  # set explicitly (weights, adapters, gradients, ...) or decided at the end
    op: str = ""  # the op that allocated it, for reading a trace
    freed_in: str | None = None  # phase in which it was freed; None: alive at the end
    raw: int = 0  # bytes of the storage before rounding
    block: int | None = None  # the decoder block it belongs to; None: embeddings, head, shared
    # stack/cat over tensors of every block (clip_grad_norm's per-tensor norms): raw bytes per block
    per_block: dict[int, int] | None = None

    def bytes_with(self, template: int | None, copies: int) -> int:
        if not copies or not self.per_block:
            return self.nbytes
        return allocation_bytes(self.raw + copies * self.per_block.get(template, 0))


@dataclass
class MemoryTimeline:
    peak_bytes: int
    peak_phase: str
    breakdown: dict[str, int]
    end_bytes: int
    events: int
    # the highest total while a region's ops allocate (e.g. "reference": the reference model's forward)
    region_peaks: dict[str, int] = field(default_factory=dict)
    host_bytes: int = 0  # the most held at once in host memory by the categories offloaded there
    host_breakdown: dict[str, int] = field(default_factory=dict)  # what of them is live then


@dataclass
class MemoryTracker(TorchDispatchMode):
    phase: str = "init"
    region: str = ""
    allocations: list[_Allocation] = field(default_factory=list)
    # (+1 alloc / -1 free, allocation index, the block running then or None)
    log: list[tuple[int, int, int | None]] = field(default_factory=list)
    segment: int | None = None  # the decoder block whose forward or backward is running
    unscalable: str | None = None  # why this trace cannot stand for more blocks, if it cannot
    ops: set[str] = field(default_factory=set)  # the name of every op dispatched or emulated
    paused: bool = False  # ops run without being accounted (see `untracked`)
    _by_storage: Any = field(default=None)

    def __post_init__(self) -> None:
        super().__init__()
        self._by_storage = {}  # id(storage) -> (weakref, allocation)

    # -- tracking ---------------------------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.paused:
            return func(*args, **kwargs)
        name = func.name()
        if name.startswith("aten::_foreach_") and self.phase == "optimizer":
            self.segment = None  # a multi-tensor optimizer: no one parameter's span, each output has its block
        self.ops.add(name)
        emulated = EMULATED.get(name)
        if emulated is not None:
            return emulated(self, *args, **kwargs)
        out = func(*args, **kwargs)
        region = self.region
        if name in DEQUANTIZE_OPS:
            self.region = "dequantized_weights"
        try:
            outputs = tree_flatten(out)[0]
            for value, block in zip(outputs, self._output_blocks(name, args, kwargs, outputs)):
                if isinstance(value, torch.Tensor):
                    allocation = self.track(value, op=name, block=block)
                    if allocation.block is _MIXED:
                        self._aggregate(allocation, name, args, kwargs)
        finally:
            self.region = region
        return out

    def _entry(self, storage):
        """(weakref, allocation) of a storage the tracker follows (allocation None while a resize holds it at 0
        bytes); None for a storage it has not seen (an id can outlive its storage)."""
        known = self._by_storage.get(id(storage))
        return known if known is not None and known[0]() is storage else None

    def _block_of(self, tensor: torch.Tensor) -> int | None:
        entry = self._entry(compat.local_tensor(tensor).untyped_storage())
        return entry[1].block if entry is not None and entry[1] is not None else None

    def _output_blocks(self, name: str, args, kwargs, outputs: list) -> list:
        """The block each output belongs to: the running block, else the block its inputs belong to."""
        if self.segment is not None:
            return [self.segment] * len(outputs)
        if name.startswith("aten::_foreach_"):  # element i of the output comes from element i of the inputs
            lists = [a for a in args if isinstance(a, (list, tuple)) and len(a) == len(outputs)]
            return [
                next((b for b in (self._block_of(lst[i]) for lst in lists if isinstance(lst[i], torch.Tensor))
                      if b is not None), None)
                for i in range(len(outputs))
            ]
        blocks = {self._block_of(t) for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        blocks.discard(None)
        if len(blocks) > 1:
            return [_MIXED] * len(outputs)
        return [blocks.pop() if blocks else None] * len(outputs)

    def _aggregate(self, allocation: _Allocation, name: str, args, kwargs) -> None:
        """An op over tensors of several blocks: its size grows with the block count for stack and
        cat (which the replay accounts); any other such op makes the trace stand for itself only."""
        allocation.block = None
        if name not in ("aten::stack", "aten::cat"):
            self.unscalable = f"{name} combines tensors of several decoder blocks"
            return
        allocation.per_block = {}
        for t in args[0]:
            block = self._block_of(t)
            if block is not None:
                allocation.per_block[block] = allocation.per_block.get(block, 0) + t.numel() * t.element_size()

    def track(self, tensor: torch.Tensor, tag: str | None = None, op: str = "", block=None) -> _Allocation:
        storage = compat.local_tensor(tensor).untyped_storage()  # a DTensor's memory is its local shard's
        entry = self._entry(storage)
        if entry is not None and entry[1] is not None:
            allocation = entry[1]
            if tag is not None:
                allocation.tag = tag
            return allocation
        return self._allocate(storage, tag, op, block, entry[0] if entry is not None else None)

    def _allocate(self, storage, tag: str | None, op: str, block, ref=None) -> _Allocation:
        if block is None:
            block = self.segment
        raw = storage.nbytes()
        if op:
            self.ops.add(op)
        allocation = _Allocation(len(self.allocations), allocation_bytes(raw), self.phase, self.region, tag, op=op,
                                 raw=raw, block=block)
        self.allocations.append(allocation)
        self.log.append((1, allocation.index, self.segment))
        key = id(storage)
        self._by_storage[key] = (ref or weakref.ref(storage, self._freed(key)), allocation)
        return allocation

    def _free(self, allocation: _Allocation) -> None:
        allocation.freed_in = self.phase
        self.log.append((-1, allocation.index, self.segment))

    def _freed(self, key: int):
        def callback(ref) -> None:
            current = self._by_storage.get(key)
            if current is None or current[0] is not ref:
                return
            del self._by_storage[key]
            if current[1] is not None:
                self._free(current[1])

        return callback

    def _resized(self, storage, old_nbytes: int) -> None:
        """torch.UntypedStorage.resize_, which no dispatch mode sees: FSDP2 frees a block's unsharded
        parameters by resizing their storage to 0 and allocates them again by resizing it back (as
        torch's own torch.distributed._tools.mem_tracker patches it to see). A resize frees the storage's
        bytes and allocates its new size."""
        if self.paused or storage.nbytes() == old_nbytes:
            return
        entry = self._entry(storage)
        ref = entry[0] if entry is not None else None
        if entry is not None and entry[1] is not None:
            self._free(entry[1])
            self._by_storage[id(storage)] = (ref, None)
        if storage.nbytes():
            self._allocate(storage, "unsharded_weights", "UntypedStorage.resize_", None, ref)

    def __enter__(self):
        original = torch.UntypedStorage.resize_
        tracker = self

        def resize_(storage, size):
            old = storage.nbytes()
            result = original(storage, size)
            tracker._resized(storage, old)
            return result

        self._original_resize = original
        torch.UntypedStorage.resize_ = resize_
        try:
            return super().__enter__()
        except BaseException:
            torch.UntypedStorage.resize_ = original
            raise

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            torch.UntypedStorage.resize_ = self._original_resize

    def tag(self, tensor: torch.Tensor, tag: str | None, block: int | None = None) -> None:
        """Name what a tensor is (weights, adapters, gradients, ...) and the decoder block it belongs
        to, whenever it was allocated."""
        allocation = self.track(tensor, tag, block=block)
        if block is not None:
            allocation.block = block

    def untracked(self):
        """Run ops without accounting them: what a fused CUDA kernel computes in registers, emulated here by
        torch ops whose temporaries the kernel never allocates (TRL's Triton fold of a logits tile). Their
        in-place writes into tracked tensors allocate nothing either way."""
        import contextlib

        @contextlib.contextmanager
        def paused():
            was, self.paused = self.paused, True
            try:
                yield
            finally:
                self.paused = was

        return paused()

    def held_from_start(self, tensors: list[tuple[torch.Tensor, int | None]], tag: str) -> None:
        """Tensors held from before the step began that the step's own tagging does not reach (a frozen
        reference model beside the trained one), with their decoder block: tracked as allocated at init,
        before every event logged so far."""
        (phase, segment), (self.phase, self.segment) = (self.phase, self.segment), ("init", None)
        start = len(self.log)
        try:
            for tensor, block in tensors:
                allocation = self.track(tensor, tag, block=block)
                allocation.block = block
        finally:
            self.phase, self.segment = phase, segment
        added = self.log[start:]
        self.log[:] = added + self.log[:start]

    def forget_transients(self, phase: str) -> None:
        """Drop the events of what `phase` allocated and has freed again: the optimizer step that
        creates the states of a steady-state step is set-up, not part of the step."""
        gone = {a.index for a in self.allocations if a.phase == phase and a.freed_in is not None}
        self.log = [event for event in self.log if event[1] not in gone]

    # -- results ----------------------------------------------------------------------------------
    def _category(self, a: _Allocation) -> str:
        if a.tag is not None:
            return a.tag
        if a.region in ("logits_loss", "dequantized_weights", "reference", "host_optimizer_step"):
            return a.region
        if a.phase == "forward" and a.freed_in != "forward":
            return "activations"  # kept from the forward pass for the backward pass
        if a.phase in ("optimizer", "warmup") and a.freed_in is None:
            return "optimizer_state"
        if a.phase == "init":
            return "weights"
        return "temporaries"

    def _labelled_log(self) -> list[tuple[int, _Allocation, int | None]]:
        """(sign, allocation, block) in log order, except that a run of consecutive frees is sorted by
        block, size and category: memory only falls during it, so the order cannot move the peak, and
        bulk frees (autocast's weight cache, a dying autograd graph) come in hash-map order."""
        out: list[tuple[int, _Allocation, int | None]] = []
        frees: list[tuple[int, _Allocation, int | None]] = []

        def flush():
            # aggregates last: their size depends on the block count, their place must not
            frees.sort(key=lambda e: (-1 if e[2] is None else e[2], bool(e[1].per_block), e[1].nbytes,
                                      self._category(e[1])))
            out.extend(frees)
            frees.clear()

        for sign, index, segment in self.log:
            allocation = self.allocations[index]
            event = (sign, allocation, segment if segment is not None else allocation.block)
            if sign < 0:
                frees.append(event)
                continue
            flush()
            out.append(event)
        flush()
        return out

    def _events(self, template: int | None, copies: int):
        """(sign, allocation) in log order; with copies, each run of the template block's events is
        followed by `copies` repetitions of itself: the log of a model with that many more blocks."""
        run: list[tuple[int, _Allocation]] = []
        for sign, allocation, block in self._labelled_log():
            if copies and block == template:
                run.append((sign, allocation))
                continue
            if run:
                yield from run * (copies + 1)
                run = []
            yield sign, allocation
        yield from run * (copies + 1)

    def periodic(self, template: int, other: int) -> str | None:
        """None when the template block and another block logged the same events (sign, bytes,
        category, in order); else what differs, and the trace cannot be replicated."""
        if self.unscalable:
            return self.unscalable
        categories = {}
        runs: dict[int, list[list]] = {template: [], other: []}
        last = None
        for sign, a, block in self._labelled_log():
            if block in runs:
                if block != last:
                    runs[block].append([])
                if a.index not in categories:
                    categories[a.index] = self._category(a)
                runs[block][-1].append((sign, a.nbytes, categories[a.index]))
            last = block
        if runs[template] != runs[other]:
            return f"decoder blocks {template} and {other} allocate differently"
        return None

    def memory_curve(self, template: int | None = None, copies: int = 0) -> list[tuple[int, int, str]]:
        """Every event as (sign, bytes, category): what tests compare to prove a replay exact."""
        return [(sign, a.bytes_with(template, copies), self._category(a)) for sign, a in self._events(template, copies)]

    def timeline(self, template: int | None = None, copies: int = 0, host: frozenset = frozenset()) -> MemoryTimeline:
        """The peak and what is live at it; with copies, for the model with `copies` more blocks
        like `template`; `host`: categories held in host memory (offloaded), counted apart."""
        categories = {}
        total = peak = host_total = host_peak = 0
        breakdown = dict.fromkeys(CATEGORIES, 0)
        at_peak = dict(breakdown)
        host_live = dict.fromkeys(host, 0)
        at_host_peak = dict(host_live)
        peak_phase = "init"
        events = 0
        region_peaks: dict[str, int] = {}
        for sign, a in self._events(template, copies):
            events += 1
            nbytes = a.bytes_with(template, copies)
            category = categories.get(a.index)
            if category is None:
                category = categories[a.index] = self._category(a)
            if category in host:
                host_total += sign * nbytes
                host_live[category] += sign * nbytes
                if host_total > host_peak:
                    host_peak, at_host_peak = host_total, dict(host_live)
                continue
            total += sign * nbytes
            breakdown[category] += sign * nbytes
            if total > peak:
                peak, peak_phase, at_peak = total, a.phase, dict(breakdown)
            if sign > 0 and a.region == "reference" and total > region_peaks.get(a.region, 0):
                region_peaks[a.region] = total
        return MemoryTimeline(peak, peak_phase, {k: v for k, v in at_peak.items() if v}, total, events, region_peaks,
                              host_peak, {k: v for k, v in at_host_peak.items() if v})


_MIXED = object()  # an op's inputs come from several decoder blocks
