"""The device a real training step runs on, behind one small interface: CUDA's own memory counters on a
GPU, and the same interface on CPU, counted exactly and limited, so the GPU-only logic is tested anywhere.

CudaDevice is deliberately thin (each method is one torch.cuda call): every decision made from its numbers
(the memory fraction, skips, the comparison with the estimate, reading an out-of-memory error) is a plain
function, here or in checks/run/measure.py, tested on CPU with CpuDevice or fake devices.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import os
import platform
import weakref
from collections.abc import Iterator
from typing import Any, Protocol

from recipe_checks.gpus import GIB, MIB

KIB = 1024
# bf16 tensor cores arrived with Ampere (sm_80); the GPU profiles' `bf16` field follows the same line
BF16_CAPABILITY = (8, 0)


class DeviceUnavailable(RuntimeError):
    """The device asked for is not on this machine; the message says what is missing and how to get it."""


class Device(Protocol):
    """What a real training step needs from the device it runs on.

    The counters follow torch.cuda's: `allocated` counts the bytes of live tensor storages (rounded to the
    allocator's 512-byte blocks), `reserved` what the allocator holds from the device (cached blocks
    included); neither includes memory outside the allocator (the CUDA context). Peaks are since the last
    `reset_peak` (or the start of `measuring`)."""

    kind: str  # "cpu" or "cuda"
    name: str

    def total_memory(self) -> int | None: ...
    def capability(self) -> tuple[int, int] | None: ...
    def supports_bf16(self) -> bool: ...
    def limit_memory(self, nbytes: int | None) -> None: ...
    def reset_peak(self) -> None: ...
    def allocated(self) -> int: ...
    def reserved(self) -> int: ...
    def peak_allocated(self) -> int: ...
    def peak_reserved(self) -> int: ...
    def release(self) -> None: ...
    def is_out_of_memory(self, exc: BaseException) -> bool: ...
    def measuring(self, *live: Any) -> contextlib.AbstractContextManager[None]: ...


# -- plain rules, tested without a GPU ---------------------------------------------------------------
def format_size(nbytes: int) -> str:
    """A size as torch's out-of-memory message prints it (c10/cuda/CUDACachingAllocator.cpp format_size):
    '512 bytes' up to 1 KiB, then two decimals of KiB, MiB or GiB."""
    if nbytes <= KIB:
        return f"{nbytes} bytes"
    if nbytes <= MIB:
        return f"{nbytes / KIB:.2f} KiB"
    if nbytes <= GIB:
        return f"{nbytes / MIB:.2f} MiB"
    return f"{nbytes / GIB:.2f} GiB"


def memory_fraction(limit_bytes: int, total_bytes: int) -> float:
    """The fraction for torch.cuda.set_per_process_memory_fraction that lets the caching allocator hold
    `limit_bytes` of a device of `total_bytes` (torch multiplies it by the device's total memory)."""
    if total_bytes <= 0:
        raise ValueError(f"the device's total memory must be positive, not {total_bytes}")
    if limit_bytes <= 0:
        raise ValueError(f"a memory limit must be positive, not {limit_bytes}")
    return min(1.0, limit_bytes / total_bytes)


def native_bf16(capability: tuple[int, int] | None) -> bool:
    """Whether a CUDA compute capability has bf16 tensor cores (sm_80, Ampere, and newer). Older GPUs
    emulate bf16 (torch.cuda.is_bf16_supported() says True by default): slow, and not the target's kernels."""
    return capability is not None and tuple(capability) >= BF16_CAPABILITY


# Messages of out-of-memory failures that torch raises as a plain RuntimeError, not OutOfMemoryError.
_OOM_TEXTS = (
    "out of memory. tried to allocate",  # the caching allocator's (CUDA, and CpuDevice's copy of it)
    "cuda error: out of memory",  # a driver-level cudaErrorMemoryAllocation outside the allocator
    "cublas_status_alloc_failed",  # cuBLAS failing to allocate its handle or workspace
    "defaultcpuallocator: can't allocate memory",  # the host itself out of memory
)


def is_out_of_memory_error(exc: BaseException) -> bool:
    """Whether an exception, or one it was raised from, is an out-of-memory failure of the device."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        oom_type = _torch_oom_type()
        if oom_type is not None and isinstance(exc, oom_type):
            return True
        text = str(exc).lower()
        if isinstance(exc, (RuntimeError, MemoryError)) and any(t in text for t in _OOM_TEXTS):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _torch_oom_type() -> type | None:
    import sys

    torch = sys.modules.get("torch")  # no torch imported: no torch error to recognise
    return getattr(torch, "OutOfMemoryError", None) if torch is not None else None


def cuda_unavailable_reason() -> str | None:
    """Why torch cannot use a CUDA GPU here, as a sentence that says how to get one; None when it can."""
    import torch

    if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
        return (f"torch {torch.__version__} is a CPU build (no CUDA support compiled in): install a CUDA "
                f"build of torch on a machine with an NVIDIA GPU")
    if not torch.cuda.is_available():
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        hint = f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else ""
        return (f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no CUDA device{hint}: run on a "
                f"machine with an NVIDIA GPU and a working driver")
    return None


# -- CUDA ---------------------------------------------------------------------------------------------
class CudaDevice:
    """One CUDA GPU, through torch.cuda's caching-allocator counters. Thin on purpose: the decisions made
    from these numbers are plain functions tested on CPU."""

    kind = "cuda"

    def __init__(self, index: int = 0) -> None:
        import torch

        reason = cuda_unavailable_reason()
        if reason is not None:
            raise DeviceUnavailable(f"no CUDA device: {reason}")
        count = torch.cuda.device_count()
        if not 0 <= index < count:
            raise DeviceUnavailable(f"no CUDA device {index}: torch sees {count} "
                                    f"(cuda:0 to cuda:{count - 1})")
        self.index = index
        self.name = torch.cuda.get_device_name(index)

    def __repr__(self) -> str:
        return f"CudaDevice({self.index}: {self.name})"

    def total_memory(self) -> int:
        import torch

        # the total cudaMemGetInfo reports, which set_per_process_memory_fraction multiplies (and the OOM
        # message prints); less than nvidia-smi's figure (an RTX 4090: 23.65 GiB here, 24564 MiB there)
        return int(torch.cuda.mem_get_info(self.index)[1])

    def capability(self) -> tuple[int, int]:
        import torch

        return tuple(torch.cuda.get_device_capability(self.index))

    def supports_bf16(self) -> bool:
        import torch

        if getattr(torch.version, "hip", None):  # ROCm: torch's own answer; a CUDA capability means nothing
            return bool(torch.cuda.is_bf16_supported())
        return native_bf16(self.capability())

    def limit_memory(self, nbytes: int | None) -> None:
        """Cap what the caching allocator may reserve on this GPU (None: the whole device again). Memory
        outside the allocator (the CUDA context) is not capped: a caller standing for a smaller GPU takes
        the context off the target's memory first (measure.memory_limit_for does)."""
        import torch

        total = self.total_memory()
        fraction = 1.0 if nbytes is None else memory_fraction(nbytes, total)
        torch.cuda.set_per_process_memory_fraction(fraction, self.index)

    def reset_peak(self) -> None:
        import torch

        torch.cuda.reset_peak_memory_stats(self.index)

    def allocated(self) -> int:
        import torch

        return int(torch.cuda.memory_allocated(self.index))

    def reserved(self) -> int:
        import torch

        return int(torch.cuda.memory_reserved(self.index))

    def peak_allocated(self) -> int:
        import torch

        return int(torch.cuda.max_memory_allocated(self.index))

    def peak_reserved(self) -> int:
        import torch

        return int(torch.cuda.max_memory_reserved(self.index))

    def release(self) -> None:
        """Free what nothing references any more; hand the allocator's cached blocks back to the device."""
        import torch

        gc.collect()  # tensors in reference cycles (a failed step's frames) die only here
        torch.cuda.synchronize(self.index)
        with torch.cuda.device(self.index):  # empty_cache empties the current device's cache
            torch.cuda.empty_cache()

    def is_out_of_memory(self, exc: BaseException) -> bool:
        return is_out_of_memory_error(exc)

    @contextlib.contextmanager
    def measuring(self, *live: Any) -> Iterator[None]:
        """Peaks from here: torch's counters see every tensor on the GPU, so `live` (what the step holds
        already) needs no declaring here; it is accepted for CpuDevice's sake."""
        import torch

        torch.cuda.synchronize(self.index)  # queued kernels' frees land before the peak is reset
        self.reset_peak()
        yield
        # the step's kernels finish before its peak is read; not after a failure, whose error a second
        # CUDA error from synchronizing would hide
        torch.cuda.synchronize(self.index)


# -- CPU ----------------------------------------------------------------------------------------------
def _host_memory() -> int | None:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):  # not a POSIX host
        return None


@functools.cache
def cpu_out_of_memory_error() -> type:
    """CpuDevice's out-of-memory error: a torch.OutOfMemoryError (so code that recovers from a CUDA OOM
    recovers from this one too), carrying the exact numbers its CUDA-shaped message prints rounded.
    Made on first use: torch is imported only when a device is used."""
    import torch

    class CpuOutOfMemoryError(torch.OutOfMemoryError):
        requested: int
        allocated: int
        limit: int
        total: int | None

    CpuOutOfMemoryError.__module__ = __name__
    CpuOutOfMemoryError.__qualname__ = "CpuOutOfMemoryError"
    return CpuOutOfMemoryError


class _Storage:
    """One counted storage: its bytes now (a storage can grow in place: resize_)."""

    __slots__ = ("nbytes", "ref")

    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes
        self.ref: weakref.ref | None = None


class CpuDevice:
    """The Device interface on CPU: counts the bytes of the live tensor storages created while measuring,
    as CUDA's allocated counter would (each storage once, in 512-byte blocks as recipe_checks.memory.tracker
    rounds them, until it is freed), tracks the peak, and enforces `limit_memory` by raising an
    out-of-memory error shaped like CUDA's.

    What it sees: every op's outputs, through a TorchDispatchMode (forward, backward and the optimizer:
    autograd carries the mode to the backward pass), plus the tensors handed to `measuring(...)` as
    already live (the model's parameters and buffers, their gradients, an optimizer's state): CUDA counts
    everything on the device, CPU memory holds much else, so what counts as already there is declared.
    torch.tensor(data) and torch.from_numpy count as new (they reach modes through lift_fresh; the latter
    wraps numpy's memory, which moving it to a GPU would copy). What it cannot see: scratch memory an op's
    kernel allocates and frees inside itself (the mode sees only an op's outputs), tensors made outside
    measuring and not declared, memory torch does not allocate as a tensor storage (a library's own
    buffers), and CUDA's coarser rounding where a cached block is handed out unsplit (up to 1 MiB more in
    its large pool). The limit is checked as an op's output appears: the host has allocated it already and
    it is dropped at once, so the limit bounds the counted bytes, not the process's memory. Reserved equals
    allocated on CPU: there is no caching allocator holding freed blocks."""

    kind = "cpu"

    def __init__(self, total_memory: int | None = None, *, bf16: bool = True) -> None:
        self.name = f"CPU ({platform.machine() or 'unknown'})"
        self._total = total_memory if total_memory is not None else _host_memory()
        self._bf16 = bf16
        self._limit: int | None = None
        self._live: dict[int, _Storage] = {}  # id(storage) -> its record
        self._allocated = 0
        self._peak = 0

    def __repr__(self) -> str:
        return f"CpuDevice(allocated={self._allocated}, peak={self._peak}, limit={self._limit})"

    def total_memory(self) -> int | None:
        return self._total

    def capability(self) -> None:
        return None

    def supports_bf16(self) -> bool:
        return self._bf16  # torch runs bf16 on any CPU (natively with AVX512-BF16/AMX, else converted)

    def limit_memory(self, nbytes: int | None) -> None:
        if nbytes is not None and nbytes <= 0:
            raise ValueError(f"a memory limit must be positive, not {nbytes}")
        self._limit = nbytes

    def reset_peak(self) -> None:
        self._peak = self._allocated

    def allocated(self) -> int:
        return self._allocated

    def reserved(self) -> int:
        return self._allocated

    def peak_allocated(self) -> int:
        return self._peak

    def peak_reserved(self) -> int:
        return self._peak

    def release(self) -> None:
        gc.collect()  # storages held in reference cycles are freed, and their finalizers subtract them

    def is_out_of_memory(self, exc: BaseException) -> bool:
        return is_out_of_memory_error(exc)

    @contextlib.contextmanager
    def measuring(self, *live: Any) -> Iterator[None]:
        """Count the storages of `live` (tensors, modules, optimizers, or lists and dicts of them: what the
        step starts with) as already allocated, reset the peak, and count every op's new outputs until the
        block ends. Counted storages are subtracted when they die, during the block or after it."""
        for tensor in _tensors_in(live):
            self._count(tensor, inputs=(), enforce=False)
        self.reset_peak()
        with _counting_mode()(self):
            yield

    # -- counting -----------------------------------------------------------------------------------
    def _count(self, tensor, inputs, *, enforce: bool = True) -> None:
        import torch

        # the memory trace's rule, CUDA's: a storage takes 512-byte blocks in torch.cuda.memory_allocated
        from recipe_checks.memory.tracker import allocation_bytes

        if tensor.device.type != "cpu" or tensor.layout is not torch.strided:
            return  # meta and sparse tensors hold no storage of their own here
        storage = tensor.untyped_storage()
        key = id(storage)
        record = self._live.get(key)
        if record is not None and record.ref() is storage:
            grown = allocation_bytes(storage.nbytes()) - record.nbytes
            if grown > 0:  # resized in place: the extra bytes are a new allocation
                if enforce:
                    self._check_limit(grown)
                record.nbytes += grown
                self._add(grown)
            return
        if key in inputs:
            return  # a view of (or in place on) an input this device never counted: no allocation
        nbytes = allocation_bytes(storage.nbytes())
        if enforce:
            self._check_limit(nbytes)
        record = _Storage(nbytes)
        record.ref = weakref.ref(storage, self._finalizer(key, record))
        self._live[key] = record
        self._add(nbytes)

    def _add(self, nbytes: int) -> None:
        self._allocated += nbytes
        self._peak = max(self._peak, self._allocated)

    def _finalizer(self, key: int, record: _Storage):
        def freed(_ref) -> None:
            if self._live.get(key) is record:
                del self._live[key]
            self._allocated -= record.nbytes

        return freed

    def _check_limit(self, nbytes: int) -> None:
        if self._limit is None or self._allocated + nbytes <= self._limit:
            return
        error = cpu_out_of_memory_error()(self._oom_message(nbytes))
        error.requested, error.allocated = nbytes, self._allocated
        error.limit, error.total = self._limit, self._total
        raise error

    def _oom_message(self, nbytes: int) -> str:
        """CUDA's message (c10/cuda/CUDACachingAllocator.cpp since torch 2.1, with a memory fraction set), for
        this device's numbers, so one parser reads both; the total is the simulated or host memory."""
        total = self._total if self._total is not None else self._limit
        free = max(0, self._limit - self._allocated)
        return (f"CPU out of memory (the limit of recipe-checks' CpuDevice). Tried to allocate "
                f"{format_size(nbytes)}. CPU has a total capacity of {format_size(total)} of which "
                f"{format_size(free)} is free. {format_size(self._limit)} allowed; Of the allocated memory "
                f"{format_size(self._allocated)} is allocated by PyTorch, and 0 bytes is reserved by PyTorch "
                f"but unallocated.")


def _tensors_in(objects) -> Iterator[Any]:
    """Every tensor in tensors, modules (parameters, buffers, gradients), optimizers (their state) and
    lists, tuples and dicts of them."""
    import torch

    stack = list(objects)
    while stack:
        obj = stack.pop()
        if isinstance(obj, torch.Tensor):
            yield obj
            if obj.is_leaf and obj.grad is not None:  # .grad of a non-leaf is always None, and warns
                yield obj.grad
        elif isinstance(obj, torch.nn.Module):
            stack.extend(obj.parameters())
            stack.extend(obj.buffers())
        elif isinstance(obj, torch.optim.Optimizer):
            stack.extend(obj.state.values())
        elif isinstance(obj, dict):
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple, set)):
            stack.extend(obj)


def _flat_tensors(value, out: list) -> list:
    """The tensors in an op's arguments or outputs (nested lists, tuples and dicts)."""
    import torch

    if isinstance(value, torch.Tensor):
        out.append(value)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _flat_tensors(item, out)
    elif isinstance(value, dict):
        for item in value.values():
            _flat_tensors(item, out)
    return out


# torch.tensor(data) and torch.from_numpy build their tensor below the dispatcher and then pass it
# through this op so that modes see it
_FRESH_OPS = ("aten::lift_fresh",)


@functools.cache
def _counting_mode() -> type:
    """The TorchDispatchMode class that hands every op's outputs to a CpuDevice (made on first use)."""
    from recipe_checks import compat

    class CountingMode(compat.torch_dispatch_mode()):
        def __init__(self, device: CpuDevice) -> None:
            super().__init__()
            self.device = device

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            import torch

            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            if func.name() in _FRESH_OPS:
                inputs = set()  # its input is the tensor just made (torch.tensor, from_numpy): not a view
            else:
                inputs = {id(t.untyped_storage()) for t in _flat_tensors((args, kwargs), [])
                          if t.layout is torch.strided}
            outputs = _flat_tensors(out, [])
            try:
                for tensor in outputs:
                    self.device._count(tensor, inputs)
            except BaseException:
                # the step never gets these outputs, as CUDA never hands out a block it failed to allocate:
                # drop them now (the traceback keeps this frame, and the frame would keep them)
                out = outputs = tensor = None
                raise
            return out

    return CountingMode
