"""The device interface behind real training steps: CpuDevice's exact counting and its limit, reading
out-of-memory errors (CpuDevice's and real CUDA ones), recovery from one, the memory plan for standing a
local GPU in for a target, and the like-for-like comparison with the traced estimate.
"""

from __future__ import annotations

import gc

import pytest
import torch

from recipe_checks.gpus import GIB, MIB, GpuCatalog
from recipe_checks.memory.tracker import allocation_bytes
from recipe_checks.run.device import (
    KIB,
    CpuDevice,
    CudaDevice,
    DeviceUnavailable,
    cpu_out_of_memory_error,
    format_size,
    is_out_of_memory_error,
    memory_fraction,
    native_bf16,
)
from recipe_checks.run.measure import (
    MemoryPlan,
    OutOfMemory,
    Skip,
    compare_with_estimate,
    cuda_context_bytes,
    guarded_step,
    memory_limit_for,
)


def storage_bytes(*tensors: torch.Tensor) -> int:
    """What CUDA's allocated counter holds for these tensors: each distinct storage once, in 512-byte
    blocks."""
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(allocation_bytes(n) for n in storages.values())


@pytest.fixture
def no_automatic_gc():
    """Reference cycles die only when a test (or the code under test) collects them."""
    gc.collect()
    gc.disable()
    yield
    gc.enable()


# -- CpuDevice counts ---------------------------------------------------------------------------------
def test_cpu_device_counts_each_new_storage_once_in_512_byte_blocks():
    device = CpuDevice()
    with device.measuring():
        x = torch.empty(1000)  # 4000 bytes: 4096 in 512-byte blocks
        assert device.allocated() == 4096
        view, part = x.view(10, 100), x[10:]  # views share x's storage: no allocation
        x.add_(1.0)  # in place: no allocation
        assert device.allocated() == 4096
        y = x * 2  # 4096 more
        assert device.allocated() == 8192
        del view, part
        assert device.allocated() == 8192
        del x
        assert device.allocated() == 4096  # x's storage freed with its last view
    del y
    assert device.allocated() == 0  # a storage counted while measuring is subtracted when it dies later
    assert device.peak_allocated() == device.peak_reserved() == 8192


def test_a_view_of_an_undeclared_tensor_is_no_allocation_but_a_copy_of_it_is():
    outside = torch.randn(2048)  # made before measuring, not declared: not on the device's books
    device = CpuDevice()
    with device.measuring():
        flat = outside.view(32, 64)
        assert device.allocated() == 0
        copy = outside[::2].contiguous()  # 1024 floats
        assert device.allocated() == 4096
    assert flat.untyped_storage().data_ptr() == outside.untyped_storage().data_ptr()
    del copy


def test_tensors_from_data_are_counted_and_growth_in_place_is_an_allocation():
    device = CpuDevice()
    with device.measuring():
        made = torch.tensor([1.0, 2.0, 3.0])  # built below the dispatcher, seen through lift_fresh
        assert device.allocated() == 512
        grows = torch.empty(0)
        assert device.allocated() == 512
        grows.resize_(1024)  # the same storage, 4096 bytes now
        assert device.allocated() == 512 + 4096
    del made, grows
    assert device.allocated() == 0


def test_declared_parameters_are_the_baseline_and_a_training_step_is_counted_exactly():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 300), torch.nn.ReLU(), torch.nn.Linear(300, 10))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    params = list(model.parameters())
    device = CpuDevice()
    with device.measuring(model, optimizer):
        assert device.allocated() == storage_bytes(*params)  # as CUDA counts the weights already on it
        loss = model(torch.randn(16, 64)).square().mean()
        loss.backward()
        optimizer.step()
        del loss
    state = [t for s in optimizer.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
    # weights, gradients and AdamW's exp_avg, exp_avg_sq and step tensors are all that is left
    assert device.allocated() == storage_bytes(*params, *(p.grad for p in params), *state)
    assert device.peak_allocated() > device.allocated()  # activations and temporaries came and went
    optimizer.zero_grad(set_to_none=True)
    assert device.allocated() == storage_bytes(*params, *state)


def test_reset_peak_starts_the_peak_from_what_is_allocated_now():
    device = CpuDevice()
    with device.measuring():
        keep = torch.empty(256)  # 1024 bytes
        gone = torch.empty(1024)  # 4096 bytes
        del gone
        assert device.peak_allocated() == 5120
        device.reset_peak()
        assert device.peak_allocated() == 1024
    del keep


# -- CpuDevice's limit and the out-of-memory message ---------------------------------------------------
def test_the_limit_raises_an_out_of_memory_error_shaped_like_cudas_that_the_parser_reads_back():
    device = CpuDevice(total_memory=8 * GIB)
    device.limit_memory(1 * MIB)
    with device.measuring():
        held = torch.empty(MIB // 8, dtype=torch.float16)  # 256 KiB
        with pytest.raises(torch.OutOfMemoryError) as raised:
            torch.empty(2 * MIB, dtype=torch.uint8)
        assert device.allocated() == 256 * 1024  # the failed 2 MiB is not held
    error = raised.value
    assert isinstance(error, cpu_out_of_memory_error())
    assert ("Tried to allocate 2.00 MiB. CPU has a total capacity of 8.00 GiB of which 768.00 KiB is free."
            in str(error))
    assert (error.requested, error.allocated, error.limit) == (2 * MIB, 256 * 1024, MIB)
    report = OutOfMemory.from_exception(error)
    assert (report.requested_bytes, report.allocated_bytes, report.reserved_bytes) == (
        2 * MIB, 256 * 1024, 256 * 1024)
    assert (report.total_bytes, report.allowed_bytes, report.free_bytes) == (8 * GIB, MIB, 768 * 1024)
    del held


def test_without_a_limit_the_same_allocation_succeeds():
    device = CpuDevice()
    device.limit_memory(MIB)
    device.limit_memory(None)
    with device.measuring():
        big = torch.empty(2 * MIB, dtype=torch.uint8)
    assert device.peak_allocated() == 2 * MIB
    del big


def test_the_limit_counts_the_declared_baseline():
    weights = torch.empty(MIB // 4)  # 1 MiB, declared live: counts against the limit as on CUDA
    device = CpuDevice()
    device.limit_memory(MIB + 4096)
    with device.measuring(weights):
        torch.empty(1024)  # 4096 bytes: fits exactly
        with pytest.raises(torch.OutOfMemoryError):
            keep = torch.empty(1024), torch.empty(1024)  # noqa: F841 - the second one does not fit


def test_torch_size_format_is_followed_at_each_boundary():
    # c10/cuda/CUDACachingAllocator.cpp format_size: "<= 1024" bytes, "<= 1 MiB" KiB, "<= 1 GiB" MiB, else GiB
    assert [format_size(n) for n in (0, 1024, 1025, MIB, MIB + 1, GIB, 3 * GIB // 2)] == [
        "0 bytes", "1024 bytes", "1.00 KiB", "1024.00 KiB", "1.00 MiB", "1024.00 MiB", "1.50 GiB"]


# -- real CUDA messages -------------------------------------------------------------------------------
# Copied verbatim from a comment of 2024-03-13 on https://github.com/pytorch/pytorch/issues/16417
# (an RTX 4090: torch reports 23.65 GiB where nvidia-smi says 24564 MiB).
CUDA_OOM_2_1 = (
    "torch.cuda.OutOfMemoryError: CUDA out of memory. Tried to allocate 22.00 MiB. GPU 0 has a total "
    "capacity of 23.65 GiB of which 11.06 MiB is free. Including non-PyTorch memory, this process has "
    "23.60 GiB memory in use. Of the allocated memory 22.90 GiB is allocated by PyTorch, and 194.87 MiB "
    "is reserved by PyTorch but unallocated. If reserved but unallocated memory is large try setting "
    "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation.  See documentation for "
    "Memory Management  (https://pytorch.org/docs/stable/notes/cuda.html#environment-variables)"
)
# Copied verbatim from https://github.com/Li-Chongyi/Zero-DCE/issues/52 (2023-06-01; torch before 2.1).
CUDA_OOM_2_0 = (
    "OutOfMemoryError: CUDA out of memory. Tried to allocate 1.71 GiB (GPU 0; 6.00 GiB total capacity; "
    "3.49 GiB already allocated; 1.04 GiB free; 3.50 GiB reserved in total by PyTorch) If reserved "
    "memory is >> allocated memory try setting max_split_size_mb to avoid fragmentation.  See "
    "documentation for Memory Management and PYTORCH_CUDA_ALLOC_CONF"
)
# Copied verbatim from https://github.com/Synthintel0/MyGirlGPT/issues/11 (2023-12-06; torch 2.1's "capacty").
CUDA_OOM_CAPACTY = (
    "torch.cuda.OutOfMemoryError: CUDA out of memory. Tried to allocate 32.00 MiB. GPU 0 has a total "
    "capacty of 4.00 GiB of which 41.56 MiB is free. Including non-PyTorch memory, this process has 3.44 "
    "GiB memory in use. Of the allocated memory 2.58 GiB is allocated by PyTorch, and 1.90 MiB is "
    "reserved by PyTorch but unallocated. If reserved but unallocated memory is large try setting "
    "max_split_size_mb to avoid fragmentation.  See documentation for Memory Management and "
    "PYTORCH_CUDA_ALLOC_CONF."
)


def size(number: float, unit: int) -> int:
    return round(number * unit)


def test_a_real_cuda_oom_message_is_read_with_its_numbers():
    report = OutOfMemory.from_message(CUDA_OOM_2_1, budget_bytes=size(22.8, GIB))
    assert report.requested_bytes == size(22.00, MIB)
    assert report.total_bytes == size(23.65, GIB)
    assert report.free_bytes == size(11.06, MIB)
    assert report.allocated_bytes == size(22.90, GIB)
    # reserved = allocated + reserved-but-unallocated
    assert report.reserved_bytes == size(22.90, GIB) + size(194.87, MIB)
    assert report.allowed_bytes is None  # no memory fraction was set
    assert report.process_bytes == size(23.60, GIB)  # allocator's reserved + the CUDA context (~0.5 GiB here)
    assert str(report).startswith("out of memory: tried to allocate 22.00 MiB with 22.90 GiB allocated "
                                  "(23.09 GiB reserved); the budget is 22.80 GiB, the device has 23.65 GiB")


def test_the_message_of_torch_before_2_1_and_the_capacty_typo_are_read_too():
    old = OutOfMemory.from_message(CUDA_OOM_2_0)
    assert (old.requested_bytes, old.total_bytes, old.allocated_bytes, old.free_bytes,
            old.reserved_bytes) == (
        size(1.71, GIB), size(6.00, GIB), size(3.49, GIB), size(1.04, GIB), size(3.50, GIB))
    typo = OutOfMemory.from_message(CUDA_OOM_CAPACTY)
    assert (typo.requested_bytes, typo.total_bytes, typo.allocated_bytes) == (
        size(32.00, MIB), size(4.00, GIB), size(2.58, GIB))


def test_a_message_with_a_memory_fraction_set_reads_the_allowed_memory():
    # CUDACachingAllocator.cpp (torch 2.13) puts "<allowed> allowed; " before "Of the allocated memory" when
    # set_per_process_memory_fraction is in force; no public report of one was found, so it is built from
    # the source's format string
    message = ("CUDA out of memory. Tried to allocate 1.00 GiB. GPU 0 has a total capacity of 139.81 GiB of "
               "which 110.52 GiB is free. Including non-PyTorch memory, this process has 24.00 GiB memory in "
               "use. 23.23 GiB allowed; Of the allocated memory 22.75 GiB is allocated by PyTorch, and "
               "412.00 MiB is reserved by PyTorch but unallocated.")
    report = OutOfMemory.from_message(message)
    assert report.allowed_bytes == size(23.23, GIB)
    assert report.total_bytes == size(139.81, GIB)
    assert "23.23 GiB allowed of the device's 139.81 GiB" in str(report)


def test_out_of_memory_is_recognised_by_type_by_message_and_through_a_wrapping_error():
    assert is_out_of_memory_error(torch.OutOfMemoryError("anything"))
    assert is_out_of_memory_error(RuntimeError(CUDA_OOM_2_0))  # torch before 2.0 raised a plain RuntimeError
    assert is_out_of_memory_error(RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling "
                                               "cublasCreate(handle)"))
    try:
        try:
            raise torch.OutOfMemoryError(CUDA_OOM_2_1)
        except torch.OutOfMemoryError as inner:
            raise RuntimeError("the step failed") from inner
    except RuntimeError as wrapped:
        assert is_out_of_memory_error(wrapped)
        # the numbers are the inner error's
        assert OutOfMemory.from_exception(wrapped).requested_bytes == size(22.00, MIB)
    assert not is_out_of_memory_error(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not is_out_of_memory_error(ValueError("out of memory. Tried to allocate"))  # not a device failure


# -- recovering from an out-of-memory step ------------------------------------------------------------
def make_step(model: torch.nn.Module, batch: int):
    def step():
        loss = model(torch.randn(batch, 128)).square().mean()
        loss.backward()
        return loss.item()

    return step


def test_an_out_of_memory_step_is_reported_released_and_the_next_step_runs():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(128, 512), torch.nn.ReLU(), torch.nn.Linear(512, 128))
    device = CpuDevice(total_memory=64 * MIB)
    device.limit_memory(2 * MIB)
    before = storage_bytes(*model.parameters())

    def zero_grad():
        model.zero_grad(set_to_none=True)

    failed = guarded_step(device, make_step(model, 4096), budget_bytes=MIB, live=(model,), cleanup=zero_grad)
    assert isinstance(failed, OutOfMemory)
    assert failed.requested_bytes == 4096 * 128 * 4  # the input batch itself
    assert failed.budget_bytes == MIB and failed.allowed_bytes == 2 * MIB
    assert (failed.allocated_before, failed.allocated_after) == (before, before)
    assert "memory released: allocated is back to what it was before the step" in str(failed)
    assert device.allocated() == before and device.peak_allocated() == before

    loss = guarded_step(device, make_step(model, 8), live=(model,))
    assert isinstance(loss, float)
    assert device.allocated() == before + storage_bytes(*(p.grad for p in model.parameters()))


def test_a_failed_step_whose_error_is_kept_elsewhere_still_frees_its_tensors():
    kept = []  # a logger keeping the last error, say: its traceback keeps the failed step's frames

    def step():
        activations = torch.empty(MIB // 4)  # noqa: F841 - held by this frame when the next line fails
        try:
            torch.empty(4 * MIB, dtype=torch.uint8)
        except torch.OutOfMemoryError as exc:
            kept.append(exc)
            raise

    device = CpuDevice()
    device.limit_memory(2 * MIB)
    report = guarded_step(device, step)
    assert isinstance(report, OutOfMemory) and report.requested_bytes == 4 * MIB
    assert device.allocated() == 0 and report.left_allocated == 0
    assert kept and kept[0].__traceback__ is None


def test_a_failed_step_holding_tensors_in_a_reference_cycle_is_collected(no_automatic_gc):
    def step():
        cycle = {"activations": torch.empty(MIB // 4)}
        cycle["self"] = cycle  # freed by the garbage collector only
        torch.empty(4 * MIB, dtype=torch.uint8)

    device = CpuDevice()
    device.limit_memory(2 * MIB)
    report = guarded_step(device, step)
    assert isinstance(report, OutOfMemory)
    assert device.allocated() == 0 and report.allocated_after == 0


def test_gradients_a_failed_step_left_on_the_model_are_reported_unless_cleaned_up():
    model = torch.nn.Linear(256, 256)

    def step():
        model(torch.randn(4, 256)).sum().backward()  # gradients on the parameters: 257 KiB
        torch.empty(4 * MIB, dtype=torch.uint8)

    device = CpuDevice()
    device.limit_memory(2 * MIB)
    report = guarded_step(device, step, live=(model,))
    assert report.left_allocated == storage_bytes(model.weight.grad, model.bias.grad)
    assert "still allocated" in str(report)

    model.zero_grad(set_to_none=True)
    report = guarded_step(device, step, live=(model,), cleanup=lambda: model.zero_grad(set_to_none=True))
    assert report.left_allocated == 0
    assert report.peak_allocated_bytes > report.allocated_before  # the step's own peak, up to the failure
    assert device.peak_allocated() == device.allocated()  # reset: the next step's peak is its own


def test_an_op_whose_second_output_does_not_fit_holds_none_of_its_outputs():
    values = torch.randn(64 * 1024)  # sort returns 256 KiB of values, then 512 KiB of int64 indices
    device = CpuDevice()
    device.limit_memory(512 * 1024)
    with device.measuring():
        with pytest.raises(torch.OutOfMemoryError) as raised:
            torch.sort(values)
        # the error and its traceback are alive still (a step handling it, retrying smaller), the outputs not
        assert (raised.value.requested, raised.value.allocated) == (512 * 1024, 256 * 1024)
        assert device.allocated() == 0


def test_only_out_of_memory_is_caught():
    device = CpuDevice()

    def broken():
        raise ValueError("a bug in the step")

    with pytest.raises(ValueError, match="a bug in the step"):
        guarded_step(device, broken)
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        guarded_step(device, lambda: torch.ones(2, 3) @ torch.ones(2, 3))


# -- may the local GPU stand for the target? -----------------------------------------------------------
class FakeCuda:
    """A CUDA device as memory_limit_for sees one, with the figures torch would report."""

    kind = "cuda"

    def __init__(self, name: str, total: int, capability: tuple[int, int]) -> None:
        self.name, self.total, self.cc = name, total, capability
        self.limits: list[int | None] = []

    def total_memory(self) -> int:
        return self.total

    def capability(self) -> tuple[int, int]:
        return self.cc

    def supports_bf16(self) -> bool:
        return native_bf16(self.cc)

    def limit_memory(self, nbytes: int | None) -> None:
        self.limits.append(nbytes)


H200 = FakeCuda("NVIDIA H200", int(139.81 * GIB), (9, 0))


@pytest.fixture(scope="module")
def rtx4090():
    return GpuCatalog.load().get("rtx4090")


def test_a_larger_gpu_is_limited_to_the_target_memory(rtx4090):
    plan = memory_limit_for(rtx4090, H200, outside_allocator_bytes=0)
    assert isinstance(plan, MemoryPlan)
    assert plan.limit_bytes == rtx4090.memory_bytes
    assert plan.fraction == pytest.approx(rtx4090.memory_bytes / H200.total)
    device = FakeCuda("NVIDIA H200", H200.total, (9, 0))
    plan.apply(device)
    assert device.limits == [rtx4090.memory_bytes]


def test_the_limit_leaves_the_cuda_context_out_of_the_target_memory_by_default(rtx4090):
    plan = memory_limit_for(rtx4090, H200)
    assert plan.limit_bytes == rtx4090.memory_bytes - cuda_context_bytes()
    assert plan.fraction == pytest.approx(plan.limit_bytes / H200.total)
    assert "limited to 23.23 GiB" in plan.describe()


def test_a_smaller_gpu_skips_naming_both_sizes(rtx4090):
    skip = memory_limit_for(rtx4090, FakeCuda("Tesla V100-SXM2-16GB", 16 * GIB, (7, 0)))
    assert isinstance(skip, Skip)
    assert "needs a CUDA GPU with at least 23.99 GiB (the rtx4090 target's memory)" in skip.reason
    assert "the local Tesla V100-SXM2-16GB has 16.00 GiB" in skip.reason
    assert "--gpu" in skip.reason


def test_the_target_model_itself_runs_unlimited_though_torch_reports_less_than_nvidia_smi(rtx4090):
    plan = memory_limit_for(rtx4090, FakeCuda("NVIDIA GeForce RTX 4090", int(23.65 * GIB), (8, 9)))
    assert isinstance(plan, MemoryPlan)
    assert plan.limit_bytes is None and plan.fraction is None


def test_a_bf16_recipe_skips_on_a_gpu_without_bf16(rtx4090):
    turing = FakeCuda("Quadro RTX 8000", 48 * GIB, (7, 5))
    skip = memory_limit_for(rtx4090, turing, needs_bf16=True)
    assert isinstance(skip, Skip)
    assert "the recipe trains in bf16 and the local Quadro RTX 8000 (sm_75) has no native bf16" in skip.reason
    assert isinstance(memory_limit_for(rtx4090, turing, needs_bf16=False), MemoryPlan)


def test_no_cuda_device_skips_saying_what_is_needed(rtx4090):
    skip = memory_limit_for(rtx4090, CpuDevice())
    assert isinstance(skip, Skip)
    assert skip.reason.startswith("needs a CUDA GPU with at least 23.99 GiB to stand for the rtx4090 target")


def test_memory_fraction_and_bf16_capability_rules():
    assert memory_fraction(24 * GIB, 96 * GIB) == 0.25
    assert memory_fraction(96 * GIB, 24 * GIB) == 1.0  # never above the whole device
    with pytest.raises(ValueError):
        memory_fraction(0, 24 * GIB)
    assert native_bf16((8, 0)) and native_bf16((9, 0)) and not native_bf16((7, 5)) and not native_bf16(None)


@pytest.mark.skipif(torch.cuda.is_available(),
                    reason="checks the message where CUDA is absent; this machine has CUDA")
def test_cuda_device_where_cuda_is_absent_raises_saying_why():
    with pytest.raises(DeviceUnavailable,
                       match="no CUDA device: torch .* (is a CPU build|sees no CUDA device)"):
        CudaDevice()


# -- measured against estimated -----------------------------------------------------------------------
def test_comparison_is_like_with_like_and_reports_both_differences():
    c = compare_with_estimate(
        size(9.84, GIB), size(10.21, GIB), size(10.38, GIB), size(0.76, GIB), size(22.8, GIB))
    assert c.estimate_tensors == size(10.38, GIB) - size(0.76, GIB)  # the context is not in torch's counters
    assert c.measured_total == size(9.84, GIB) + size(0.76, GIB)
    assert c.estimate_difference == size(9.84, GIB) - c.estimate_tensors
    assert c.estimate_difference_percent == pytest.approx(100 * (9.84 - 9.62) / 9.62, abs=1e-6)
    assert c.budget_difference == c.measured_total - size(22.8, GIB)
    assert c.fits and c.reserved_fits
    assert c.lines() == [
        "measured peak 9.84 GiB allocated (10.21 GiB reserved) + 0.76 GiB CUDA context = 10.60 GiB of the "
        "22.80 GiB budget: 12.20 GiB (53.5%) to spare",
        "traced estimate 10.38 GiB (9.62 GiB of tensors + 0.76 GiB CUDA context): measured tensors are "
        "0.22 GiB (2.3%) above it",
    ]


def test_over_the_budget_does_not_fit_and_says_by_how_much():
    c = compare_with_estimate(
        size(23.0, GIB), size(23.5, GIB), size(20.0, GIB), size(0.76, GIB), size(22.8, GIB))
    assert not c.fits
    assert c.lines()[0].endswith("= 23.76 GiB of the 22.80 GiB budget: 0.96 GiB (4.2%) over it")
    assert "measured tensors are 3.76 GiB (19.5%) above it" in c.lines()[1]


def test_reserved_over_the_budget_is_flagged_though_allocated_fits():
    c = compare_with_estimate(
        size(20.0, GIB), size(22.5, GIB), size(21.0, GIB), size(0.76, GIB), size(22.8, GIB))
    assert c.fits and not c.reserved_fits
    assert "measured tensors are 0.24 GiB (1.2%) below it" in c.lines()[1]
    assert c.lines()[2].startswith("reserved + 0.76 GiB CUDA context = 23.26 GiB is over the budget")


def test_a_cpu_step_has_no_overhead_terms():
    c = compare_with_estimate(5 * KIB, 5 * KIB, 4 * KIB, 0, MIB)
    assert c.lines() == ["measured peak 5.00 KiB allocated (5.00 KiB reserved) of the 1.00 MiB budget: "
                         "1019.00 KiB (99.5%) to spare",
                         "traced estimate 4.00 KiB: measured tensors are 1.00 KiB (25.0%) above it"]

