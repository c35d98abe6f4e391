"""Account the bytes a training step holds, allocation by allocation, as the CUDA caching allocator would.

A TorchDispatchMode sees every op's outputs; each new storage is one allocation (rounded up to the
allocator's 512-byte granularity) and is freed when its storage dies. The tracker logs allocations
and frees with the phase and region they happened in; categories are decided afterwards, when each
storage's fate is known (saved for backward, became a gradient, optimizer state), and the log is
replayed to find the peak and what was live at it.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

# c10/cuda/CUDACachingAllocator.cpp: every block is rounded up to kMinBlockSize = 512 bytes.
ALLOCATION_GRANULARITY = 512

CATEGORIES = (
    "weights", "quant_state", "adapters", "gradients", "optimizer_state", "optimizer_state_paged",
    "activations", "logits_loss", "dequantized_weights", "temporaries",
)


def allocation_bytes(nbytes: int) -> int:
    return math.ceil(nbytes / ALLOCATION_GRANULARITY) * ALLOCATION_GRANULARITY if nbytes else 0


@dataclass
class _Allocation:
    index: int
    nbytes: int
    phase: str  # init, forward, backward, optimizer
    region: str  # "", "logits_loss", "dequant"
    tag: str | None = None  # set explicitly (weights, adapters, gradients, ...) or decided at the end
    op: str = ""  # the op that allocated it, for reading a trace
    freed_in: str | None = None  # phase in which it was freed; None: alive at the end


@dataclass
class MemoryTimeline:
    peak_bytes: int
    peak_phase: str
    breakdown: dict[str, int]
    end_bytes: int
    events: int


@dataclass
class MemoryTracker(TorchDispatchMode):
    phase: str = "init"
    region: str = ""
    allocations: list[_Allocation] = field(default_factory=list)
    log: list[tuple[int, int]] = field(default_factory=list)  # (+1 alloc / -1 free, allocation index)
    _by_storage: Any = field(default=None)

    def __post_init__(self) -> None:
        super().__init__()
        self._by_storage = {}  # id(storage) -> (weakref, allocation)

    # -- tracking ---------------------------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.name()
        if name == "bitsandbytes::gemm_4bit":
            # On CUDA, bitsandbytes runs training-size matmuls (more than 1536 rows) as
            # dequantize + F.linear (backends/cuda/ops.py: _dequant_linear_fallback); its fake
            # kernel only returns the output, so run the same decomposition here.
            return self._gemm_4bit_as_cuda_fallback(*args, **kwargs)
        out = func(*args, **kwargs)
        region = self.region
        if name in ("bitsandbytes::dequantize_4bit", "bitsandbytes::dequantize_blockwise"):
            self.region = "dequantized_weights"
        try:
            for value in tree_flatten(out)[0]:
                if isinstance(value, torch.Tensor):
                    self.track(value, op=name)
        finally:
            self.region = region
        return out

    def _gemm_4bit_as_cuda_fallback(self, A, B, shapeB, absmax, blocksize, quant_type, bias=None,
                                    absmax_8bit=None, absmax_code=None, absmax_offset=None):
        # Ops called here bypass this mode, so each intermediate is tracked by hand, in order.
        ops = torch.ops.bitsandbytes
        region = self.region
        self.region = "dequantized_weights"
        try:
            if absmax_8bit is not None:
                nested = ops.dequantize_blockwise.default(absmax_8bit, absmax, absmax_code, 256, torch.float32)
                self.track(nested)
                absmax = nested + absmax_offset
                self.track(absmax)
                del nested
            weight = ops.dequantize_4bit.default(B, absmax, blocksize, quant_type, list(shapeB), A.dtype)
            self.track(weight)
            del absmax
        finally:
            self.region = region
        out = torch.nn.functional.linear(A, weight, bias)
        self.track(out)
        return out

    def track(self, tensor: torch.Tensor, tag: str | None = None, op: str = "") -> _Allocation | None:
        storage = tensor.untyped_storage()
        known = self._by_storage.get(id(storage))
        if known is not None and known[0]() is storage:
            allocation = known[1]
            if tag is not None:
                allocation.tag = tag
            return allocation
        nbytes = allocation_bytes(storage.nbytes())
        allocation = _Allocation(len(self.allocations), nbytes, self.phase, self.region, tag, op=op)
        self.allocations.append(allocation)
        self.log.append((1, allocation.index))
        self._by_storage[id(storage)] = (weakref.ref(storage, self._freed(id(storage), allocation)), allocation)
        return allocation

    def _freed(self, key: int, allocation: _Allocation):
        def callback(_ref) -> None:
            current = self._by_storage.get(key)
            if current is not None and current[1] is allocation:
                del self._by_storage[key]
            allocation.freed_in = self.phase
            self.log.append((-1, allocation.index))

        return callback

    def tag(self, tensor: torch.Tensor, tag: str) -> None:
        """Name what a tensor is (weights, adapters, gradients, ...), whenever it was allocated."""
        self.track(tensor, tag)

    # -- results ----------------------------------------------------------------------------------
    def _category(self, a: _Allocation) -> str:
        if a.tag is not None:
            return a.tag
        if a.region in ("logits_loss", "dequantized_weights"):
            return a.region
        if a.phase == "forward" and a.freed_in != "forward":
            return "activations"  # kept from the forward pass for the backward pass
        if a.phase == "optimizer" and a.freed_in is None:
            return "optimizer_state"
        if a.phase == "init":
            return "weights"
        return "temporaries"

    def timeline(self) -> MemoryTimeline:
        categories = [self._category(a) for a in self.allocations]
        total = peak = 0
        peak_at = -1
        for position, (sign, index) in enumerate(self.log):
            total += sign * self.allocations[index].nbytes
            if total > peak:
                peak, peak_at = total, position
        # replay up to the peak for the breakdown
        breakdown = dict.fromkeys(CATEGORIES, 0)
        for sign, index in self.log[: peak_at + 1]:
            breakdown[categories[index]] = breakdown.get(categories[index], 0) + sign * self.allocations[index].nbytes
        phase = self.allocations[self.log[peak_at][1]].phase if peak_at >= 0 else "init"
        return MemoryTimeline(peak, phase, {k: v for k, v in breakdown.items() if v}, total, len(self.log))
