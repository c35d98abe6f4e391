"""What a real training step's memory means: which local GPU may stand for the target and how it is limited,
what an out-of-memory failure reports and how the next recipe still runs, and how the measured peak
compares, like with like, with the traced estimate and the budget.

Plain functions over numbers and a Device (checks/run/device.py), so all of it is tested on CPU.
"""

from __future__ import annotations

import re
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

from recipe_checks.gpus import GIB, MIB, GpuProfile
from recipe_checks.run.device import KIB, Device, memory_fraction
from recipe_checks.suggest import normalize_name

T = TypeVar("T")


def cuda_context_bytes() -> int:
    """The memory a CUDA process holds outside torch's caching allocator: the CUDA context (driver state,
    kernels, cuBLAS/cuDNN handles), which torch's counters never see.

    Only the context: the estimate's other overhead, cuBLAS workspaces, is allocated through the caching
    allocator (aten/src/ATen/cuda/CublasHandlePool.cpp keeps them as its DataPtrs), so once a matmul has
    run it is inside torch.cuda.memory_allocated already."""
    from recipe_checks.memory.estimate import overheads

    return int(overheads()["cuda_context"]["bytes"])


def size_text(nbytes: int, unit: int | None = None) -> str:
    """A size for people, two decimals: in `unit` (GIB, MIB, KIB) when given, so figures read together
    share one unit; else GiB from 1 GiB, then MiB, KiB, bytes. Negative sizes keep their '-'."""
    sign, n = ("-" if nbytes < 0 else ""), abs(nbytes)
    if unit is None:
        unit = next((u for u in (GIB, MIB, KIB) if n >= u), 1)
    if unit == 1:
        return f"{sign}{n} bytes"
    return f"{sign}{n / unit:.2f} {_UNIT_NAMES[unit]}"


_UNIT_NAMES = {GIB: "GiB", MIB: "MiB", KIB: "KiB"}


# -- may this GPU stand for the target? ----------------------------------------------------------------
@dataclass(frozen=True)
class Skip:
    """Why the step cannot run here: the requirement, and how to meet it."""

    reason: str


@dataclass(frozen=True)
class MemoryPlan:
    """How the local GPU stands for the target: its caching allocator capped at `limit_bytes`
    (`fraction` of the local total), or no cap (None) where the local GPU is the target's model."""

    target: str
    device_name: str
    device_total: int
    target_total: int
    limit_bytes: int | None
    fraction: float | None
    outside_allocator_bytes: int

    def apply(self, device: Device) -> None:
        device.limit_memory(self.limit_bytes)

    def describe(self) -> str:
        if self.limit_bytes is None:
            return (f"the local {self.device_name} ({size_text(self.device_total)}) is the {self.target} "
                    f"target's model: no memory limit")
        return (f"the local {self.device_name} ({size_text(self.device_total)}) limited to "
                f"{size_text(self.limit_bytes)} (fraction {self.fraction:.4f}): the {self.target}'s "
                f"{size_text(self.target_total)} less {size_text(self.outside_allocator_bytes)} "
                f"for the CUDA context")


def is_target_model(device_name: str, target: GpuProfile) -> bool:
    """Whether the name a GPU reports is the target's own (its profile name, key or an alias)."""
    names = {normalize_name(n) for n in (target.name, target.key, *target.aliases)}
    return normalize_name(device_name) in names


def memory_limit_for(target: GpuProfile, device: Device, *, needs_bf16: bool = False,
                     outside_allocator_bytes: int | None = None) -> MemoryPlan | Skip:
    """Whether `device` can run a step meant for `target`, and how its memory is limited to the target's.

    A larger local GPU is capped to the target: the caching allocator may hold the target's memory less
    what a process holds outside it there (`outside_allocator_bytes`, by default the CUDA context), since
    on the target card the context takes its share of the same memory, and set_per_process_memory_fraction
    caps only the allocator. A local GPU of the target's own model runs uncapped: torch reports a little
    less memory than the profile's nvidia-smi figure (an RTX 4090: 23.65 GiB against 24564 MiB), which
    must not make a GPU too small to stand for itself. Any other smaller GPU, a device that is not CUDA,
    or a recipe needing bf16 on a GPU without it: a Skip saying what is needed.

    The capped GPU is not the target in every respect: its kernels, cuDNN's workspace choices (made from
    free memory) and its context differ, so the cap makes an out-of-memory failure likely where the
    target's would be, not certain."""
    need = size_text(target.memory_bytes)
    if device.kind != "cuda":
        return Skip(f"needs a CUDA GPU with at least {need} to stand for the {target.key} target "
                    f"({target.name}); the local device is {device.name}: run it on a machine with an NVIDIA "
                    f"GPU and a CUDA build of torch (cpu-step checks the step on CPU here)")
    local = device.total_memory()
    if not local:
        return Skip(f"cannot read the memory of the local {device.name}: it needs at least {need} to stand "
                    f"for the {target.key} target")
    same_model = is_target_model(device.name, target)
    if local < target.memory_bytes and not same_model:
        return Skip(f"needs a CUDA GPU with at least {need} (the {target.key} target's memory); the local "
                    f"{device.name} has {size_text(local)}: run it on a GPU with {need} or more (it is "
                    f"limited to the target's memory there) or check the recipe against a smaller target "
                    f"with --gpu")
    if needs_bf16 and not device.supports_bf16():
        capability = device.capability()
        sm = f"sm_{capability[0]}{capability[1]}" if capability else "unknown compute capability"
        return Skip(f"the recipe trains in bf16 and the local {device.name} ({sm}) has no native bf16: run "
                    f"it on a GPU with sm_80 (Ampere) or newer, or train in fp16 on this one")
    outside = cuda_context_bytes() if outside_allocator_bytes is None else outside_allocator_bytes
    if same_model and local <= target.memory_bytes:
        return MemoryPlan(target.key, device.name, local, target.memory_bytes, None, None, outside)
    limit = target.memory_bytes - outside
    if limit <= 0:
        return Skip(f"the {target.key} target's {need} leave nothing beside {size_text(outside)} held "
                    f"outside torch's allocator")
    return MemoryPlan(target.key, device.name, local, target.memory_bytes, limit,
                      memory_fraction(limit, local), outside)


# -- out of memory ------------------------------------------------------------------------------------
_UNITS = {"bytes": 1, "kib": KIB, "kb": KIB, "mib": MIB, "mb": MIB, "gib": GIB, "gb": GIB,
          "tib": 1024 * GIB, "tb": 1024 * GIB}  # torch's MPS message says KB/MB/GB for binary units
_SIZE = r"(\d+(?:\.\d+)?)\s*(bytes|KiB|MiB|GiB|TiB|KB|MB|GB|TB)\b"
# Each field, as the caching allocator words it since torch 2.1 (first) and before (second): see
# OutOfMemory.from_message. "capac\w*": torch 2.1 printed "total capacty".
_FIELDS = {
    "requested": (rf"Tried to allocate {_SIZE}", r"you tried to allocate (\d+)()\s*bytes"),
    "total": (rf"total capac\w* of {_SIZE}", rf"{_SIZE} total capac"),
    "free": (rf"of which {_SIZE} is free", rf"{_SIZE} free\b"),
    "allowed": (rf"{_SIZE} allowed",),
    "allocated": (rf"Of the allocated memory {_SIZE} is allocated by PyTorch", rf"{_SIZE} already allocated"),
    "unallocated": (rf"{_SIZE} is reserved by PyTorch but unallocated",),
    "reserved": (rf"{_SIZE} reserved in total by PyTorch",),
    "process": (rf"this process has {_SIZE} memory in use",),
}


def parse_size(number: str, unit: str) -> int:
    """'12.00', 'MiB' -> bytes. The message rounds to two decimals: the result is within half a
    hundredth of the unit (5 MiB of a GiB figure)."""
    return round(float(number) * _UNITS[(unit or "bytes").lower()])


@dataclass
class OutOfMemory:
    """A step that ran out of memory, with the numbers its error gave (None where it gave none) and what
    the recovery left allocated. Sizes read from the message are rounded as the message rounds them."""

    message: str
    requested_bytes: int | None = None
    allocated_bytes: int | None = None
    reserved_bytes: int | None = None
    total_bytes: int | None = None
    allowed_bytes: int | None = None
    free_bytes: int | None = None
    process_bytes: int | None = None  # all the process holds on the device, its CUDA context included
    budget_bytes: int | None = None
    peak_allocated_bytes: int | None = None  # the device's peak in the step, up to the failure
    allocated_before: int | None = None  # when the step started
    allocated_after: int | None = None  # after the recovery

    @classmethod
    def from_message(cls, message: str, *, budget_bytes: int | None = None) -> OutOfMemory:
        """Read an out-of-memory message: torch's caching allocator (c10/cuda/CUDACachingAllocator.cpp):
        since 2.1 "Tried to allocate R. GPU 0 has a total capacity of T of which F is free. [Including
        non-PyTorch memory, this process has P memory in use. ][L allowed; ]Of the allocated memory A is
        allocated by PyTorch, and U is reserved by PyTorch but unallocated." (reserved = A + U); before
        2.1 "Tried to allocate R (GPU 0; T total capacity; A already allocated; F free; [L allowed; ]
        V reserved in total by PyTorch)"; CpuDevice words its own as the first; the host's allocator says
        "you tried to allocate N bytes"."""
        found: dict[str, int] = {}
        for field, patterns in _FIELDS.items():
            for pattern in patterns:
                match = re.search(pattern, message, flags=re.IGNORECASE)
                if match:
                    found[field] = parse_size(*match.groups())
                    break
        reserved = found.get("reserved")
        if reserved is None and "unallocated" in found and "allocated" in found:
            reserved = found["allocated"] + found["unallocated"]
        first_line = message.strip().splitlines()[0] if message.strip() else ""
        return cls(message=first_line, requested_bytes=found.get("requested"),
                   allocated_bytes=found.get("allocated"), reserved_bytes=reserved,
                   total_bytes=found.get("total"), allowed_bytes=found.get("allowed"),
                   free_bytes=found.get("free"), process_bytes=found.get("process"),
                   budget_bytes=budget_bytes)

    @classmethod
    def from_exception(cls, exc: BaseException, *, budget_bytes: int | None = None) -> OutOfMemory:
        # the allocator's error may be wrapped (a library re-raising it): read the first that has numbers
        chain, seen = [], set()
        while exc is not None and id(exc) not in seen:
            seen.add(id(exc))
            chain.append(exc)
            exc = exc.__cause__ or exc.__context__
        reports = [cls.from_message(str(e), budget_bytes=budget_bytes) for e in chain]
        return next((r for r in reports if r.requested_bytes is not None), reports[0])

    @property
    def left_allocated(self) -> int | None:
        """Bytes the recovery could not free: what the step stored outside itself (gradients on the
        model, optimizer state) unless cleaned up."""
        if self.allocated_before is None or self.allocated_after is None:
            return None
        return self.allocated_after - self.allocated_before

    def lines(self) -> list[str]:
        def size(n):
            return size_text(n) if n is not None else "?"

        held = f"{size(self.allocated_bytes)} allocated"
        if self.reserved_bytes is not None:
            held += f" ({size(self.reserved_bytes)} reserved)"
        first = f"out of memory: tried to allocate {size(self.requested_bytes)} with {held}"
        limits = []
        if self.budget_bytes is not None:
            limits.append(f"the budget is {size_text(self.budget_bytes)}")
        if self.allowed_bytes is not None:
            limits.append(f"{size_text(self.allowed_bytes)} allowed of the device's {size(self.total_bytes)}")
        elif self.total_bytes is not None:
            limits.append(f"the device has {size_text(self.total_bytes)}")
        out = [first + ("; " + ", ".join(limits) if limits else "")]
        if self.process_bytes is not None:
            out.append(f"the process held {size_text(self.process_bytes)} of the device, its CUDA context "
                       f"included")
        if self.peak_allocated_bytes is not None:
            out.append(f"peak allocated in the step before it failed: {size_text(self.peak_allocated_bytes)}")
        left = self.left_allocated
        if left is not None:
            out.append("memory released: allocated is back to what it was before the step" if left <= 0 else
                       f"memory released, but {size_text(left)} more than before the step is still allocated")
        return out

    def __str__(self) -> str:
        return "\n".join(self.lines())

    def to_dict(self) -> dict:
        return asdict(self)


def _drop_frames(exc: BaseException) -> None:
    """Clear the locals of the frames a failed step left in its traceback (and in those of the errors it
    chained): they hold the step's tensors, which must die before the next recipe runs."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        traceback.clear_frames(exc.__traceback__)  # skips frames still running: this one
        exc.__traceback__ = None
        exc = exc.__cause__ or exc.__context__


def guarded_step(device: Device, fn: Callable[[], T], *, budget_bytes: int | None = None, live: tuple = (),
                 cleanup: Callable[[], None] | None = None) -> T | OutOfMemory:
    """Run `fn` measuring on `device` (with `live`, what the step starts with, declared to it) and return
    what it returns; if it runs out of memory, an OutOfMemory report instead, after releasing what the
    step held: its frames' references dropped, `cleanup` run (e.g. the model's zero_grad(set_to_none=True),
    for gradients a failed backward left on the parameters), garbage collected, the allocator's cache
    emptied and the peak reset. Only out-of-memory failures are caught: any other error propagates."""
    before = None
    try:
        with device.measuring(*live):
            before = device.allocated()  # with `live` declared: what CUDA's counter holds before the step
            return fn()
    except BaseException as exc:
        if not device.is_out_of_memory(exc):
            raise
        report = OutOfMemory.from_exception(exc, budget_bytes=budget_bytes)
        report.peak_allocated_bytes = device.peak_allocated()
        _drop_frames(exc)
    # out of the except block: the exception itself is gone too
    if cleanup is not None:
        cleanup()
    device.release()
    device.reset_peak()
    report.allocated_before, report.allocated_after = before, device.allocated()
    return report


# -- measured against estimated -----------------------------------------------------------------------
@dataclass(frozen=True)
class MemoryComparison:
    """A measured peak against the traced estimate and the budget, like with like.

    torch's counters (max_memory_allocated, max_memory_reserved) count the caching allocator's blocks
    only; the estimate's peak is those tensors plus what a process holds outside the allocator (the CUDA
    context), and the budget is for everything on the card. So the measured allocated peak is compared
    with the estimate less that overhead (tensors with tensors), and the measured peak plus the overhead
    with the budget (the card with the card). Reserved adds the allocator's cached free blocks: reported,
    and flagged when it alone would not fit, but the verdict is on allocated, as the estimate's is."""

    measured_allocated: int
    measured_reserved: int
    estimate_peak: int
    overhead: int
    budget: int
    overhead_label: str = "CUDA context"

    @property
    def estimate_tensors(self) -> int:
        return self.estimate_peak - self.overhead

    @property
    def measured_total(self) -> int:
        return self.measured_allocated + self.overhead

    @property
    def reserved_total(self) -> int:
        return self.measured_reserved + self.overhead

    @property
    def estimate_difference(self) -> int:
        """Measured tensors less traced tensors: positive when the step used more than estimated."""
        return self.measured_allocated - self.estimate_tensors

    @property
    def estimate_difference_percent(self) -> float | None:
        return 100 * self.estimate_difference / self.estimate_tensors if self.estimate_tensors > 0 else None

    @property
    def budget_difference(self) -> int:
        """Measured total less the budget: positive when over it."""
        return self.measured_total - self.budget

    @property
    def budget_difference_percent(self) -> float | None:
        return 100 * self.budget_difference / self.budget if self.budget > 0 else None

    @property
    def fits(self) -> bool:
        return self.measured_total <= self.budget

    @property
    def reserved_fits(self) -> bool:
        return self.reserved_total <= self.budget

    def lines(self) -> list[str]:
        # GiB for every figure of a GPU-sized step (a 0.76 GiB context reads with a 9.84 GiB peak); each its
        # own unit for a tiny one, whose kilobytes would read 0.00 GiB
        unit = GIB if min(self.budget, self.measured_allocated, self.estimate_peak) >= GIB else None

        def size(n: int) -> str:
            return size_text(n, unit)

        over, pct = self.budget_difference, self.budget_difference_percent
        pct_text = f" ({abs(pct):.1f}%)" if pct is not None else ""
        verdict = f"{size(-over)}{pct_text} to spare" if self.fits else f"{size(over)}{pct_text} over it"
        # no overhead (a CPU step): no "+ 0 bytes" terms
        plus = f" + {size(self.overhead)} {self.overhead_label}" if self.overhead else ""
        total = f"{plus} = {size(self.measured_total)}" if self.overhead else ""
        out = [f"measured peak {size(self.measured_allocated)} allocated ({size(self.measured_reserved)} "
               f"reserved){total} of the {size(self.budget)} budget: {verdict}"]
        diff, diff_pct = self.estimate_difference, self.estimate_difference_percent
        if diff_pct is None:
            relation = "the estimate traced no tensors to compare with"
        elif diff == 0:
            relation = "measured tensors equal it"
        else:
            side = "above" if diff > 0 else "below"
            relation = f"measured tensors are {size(abs(diff))} ({abs(diff_pct):.1f}%) {side} it"
        parts = f" ({size(self.estimate_tensors)} of tensors{plus})" if self.overhead else ""
        out.append(f"traced estimate {size(self.estimate_peak)}{parts}: {relation}")
        if self.fits and not self.reserved_fits:
            cached = self.measured_reserved - self.measured_allocated
            out.append(f"reserved{plus} = {size(self.reserved_total)} is over the budget: the allocator also "
                       f"held {size(cached)} of freed blocks, and fragmentation can still run the target out "
                       f"of memory")
        return out

    def __str__(self) -> str:
        return "\n".join(self.lines())

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "estimate_tensors": self.estimate_tensors,
                "measured_total": self.measured_total,
                "estimate_difference": self.estimate_difference,
                "estimate_difference_percent": self.estimate_difference_percent,
                "budget_difference": self.budget_difference,
                "budget_difference_percent": self.budget_difference_percent, "fits": self.fits,
                "reserved_fits": self.reserved_fits}


def compare_with_estimate(measured_peak_allocated: int, measured_peak_reserved: int, estimate_peak_bytes: int,
                          estimate_overhead_bytes: int, budget_bytes: int, *,
                          overhead_label: str = "CUDA context") -> MemoryComparison:
    """Compare a measured peak with the traced estimate and the budget, like with like (MemoryComparison).

    `estimate_peak_bytes` is Estimate.peak_bytes (traced tensors + overheads); `estimate_overhead_bytes`
    the part of it torch's counters cannot see: cuda_context_bytes() on a GPU (cuBLAS workspaces are
    inside the counters), 0 on CPU, where there is no context."""
    return MemoryComparison(measured_peak_allocated, measured_peak_reserved, estimate_peak_bytes,
                            estimate_overhead_bytes, budget_bytes, overhead_label)
