"""gpu-step and gpu-train: the recipe's full-size architecture, with random weights (weight values do not
change memory; nothing is downloaded), really quantized where the recipe says so, trained on a GPU at the
recipe's sequence length and batch, with the memory of the process limited to the target GPU's.

Everything runs through the Device interface (checks/run/device.py): CudaDevice on a GPU, and in the
tests a CPU device standing for one, so that the memory limit, the out-of-memory report and the
comparison with the traced estimate are exercised where there is no GPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from recipe_checks.run.measure import (
    MemoryComparison,
    MemoryPlan,
    OutOfMemory,
    Skip,
    compare_with_estimate,
    memory_limit_for,
)
from recipe_checks.run.setup import (
    Scale,
    TrainingSetup,
    optimizer_and_scheduler,
    training_arguments,
    trainer_output_dir,
    training_kwargs,
    trusted,
    vocab_size,
)

# Real steps gpu-step runs: the first allocates the optimizer's states; the peak of the steady state
# (what the trace estimates) is reached from the second on.
GPU_STEPS = 3


@dataclass
class GpuOutcome:
    skip: str | None = None  # why it did not run here: the requirement
    plan: MemoryPlan | None = None
    out_of_memory: OutOfMemory | None = None
    comparison: MemoryComparison | None = None
    train: Any = None  # the TrainReport of gpu-train
    notes: list[str] = field(default_factory=list)


def torch_device(device) -> str:
    """The torch device string of a Device: 'cuda:0'; a device may name its own (a CPU device standing in
    for a CUDA one in the tests: 'cpu')."""
    if getattr(device, "torch_device", None):
        return device.torch_device
    index = getattr(device, "index", None)
    return f"cuda:{index}" if device.kind == "cuda" and index is not None else ("cuda" if device.kind == "cuda" else "cpu")


def full_size_setup(recipe, resolved, scale: Scale, device: str, *, schedule_steps: int) -> TrainingSetup:
    """The recipe's full-size model with random weights on `device`, quantized, adapted and checkpointed
    as the trace builds it, with the optimizer and scheduler the Trainer builds."""
    from recipe_checks.memory.build import build_step_model
    from recipe_checks.memory.settings import settings_from_recipe

    settings = settings_from_recipe(recipe, resolved.config)
    task = recipe.lora.task_type if recipe.lora is not None else "CAUSAL_LM"
    kwargs = training_kwargs(recipe, scale)
    args = training_arguments(kwargs, output_dir=trainer_output_dir(),
                              on_cpu=device == "cpu")
    built = build_step_model(resolved, settings, task or "CAUSAL_LM", real=True, device=device)
    trainer, optimizer, scheduler = optimizer_and_scheduler(built.model, args, schedule_steps)
    return TrainingSetup(
        model=built.model, args=args, trainer=trainer, optimizer=optimizer, scheduler=scheduler,
        schedule_steps=schedule_steps, precision=recipe.training_dtype, weights_dtype=settings.weights_dtype,
        quantized=bool(built.quantized), checkpointing=settings.gradient_checkpointing, scale=scale, notes=list(built.notes),
    )


def _start(recipe, profile, device) -> GpuOutcome:
    """An outcome holding how the device stands for the target, or why it cannot."""
    distributed = getattr(recipe, "distributed", None)
    if distributed is not None and distributed.size > 1:  # one process here; the run needs all its ranks
        return GpuOutcome(skip=f"needs the recipe's {distributed.size} GPUs in one {distributed.strategy} run "
                               "(torchrun); this check runs one process on one GPU, so the sharded step is "
                               "checked by the vram trace only")
    plan = memory_limit_for(profile, device, needs_bf16=recipe.training.bf16)
    return GpuOutcome(skip=plan.reason) if isinstance(plan, Skip) else GpuOutcome(plan=plan)


def _drop_setup(holder: dict) -> None:
    """After an out-of-memory failure: the gradients a failed backward left on the parameters go."""
    setup = holder.pop("setup", None)
    if setup is not None:
        setup.optimizer.zero_grad(set_to_none=True)


def gpu_step(recipe, resolved, profile, device, *, estimate=None) -> GpuOutcome:
    """GPU_STEPS real steps of the full-size model on `device`, limited to the target's memory; the peak
    against the budget and the traced estimate (`estimate`: an Estimate, traced here when not given)."""
    from recipe_checks.memory.estimate import estimate as trace_estimate
    from recipe_checks.run.measure import cuda_context_bytes
    from recipe_checks.run.step import token_batches

    outcome = _start(recipe, profile, device)
    if outcome.skip:
        return outcome
    plan = outcome.plan
    traced = estimate if estimate is not None else trace_estimate(recipe, resolved, profile)
    where = torch_device(device)
    scale = Scale.full(recipe)
    holder: dict[str, Any] = {}

    @trusted("gpu-step")
    def build_and_run():
        import torch

        from recipe_checks.run.setup import autocast

        setup = full_size_setup(recipe, resolved, scale, where, schedule_steps=max(GPU_STEPS, 10))
        holder["setup"] = setup
        device.release()  # the build's transients (weights before quantization) are not the step's
        plan.apply(device)
        device.reset_peak()
        model, optimizer = setup.model, setup.optimizer
        trainable = [p for p in model.parameters() if p.requires_grad]
        batches = token_batches(vocab_size(resolved.config), scale, scale.gradient_accumulation, seed=0)
        model.train()
        for _ in range(GPU_STEPS):
            for batch in batches:
                batch = batch.to(where)
                with autocast(setup.precision, batch.device.type):
                    loss = model(input_ids=batch, labels=batch).loss
                (loss / scale.gradient_accumulation).backward()
                del loss
            if setup.args.max_grad_norm and setup.args.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(trainable, setup.args.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return device.peak_allocated(), device.peak_reserved()

    context = cuda_context_bytes() if device.kind == "cuda" else 0
    result = _guarded(device, build_and_run, traced.budget_bytes, holder)
    if isinstance(result, OutOfMemory):
        outcome.out_of_memory = result
        return outcome
    allocated, reserved = result
    outcome.comparison = compare_with_estimate(allocated, reserved, traced.peak_bytes, context, traced.budget_bytes)
    return outcome


def gpu_train(recipe, resolved, profile, device, *, steps: int) -> GpuOutcome:
    """A short run through the Trainer at the recipe's sizes on `device`, limited to the target's memory."""
    from recipe_checks.run.train import run_training

    outcome = _start(recipe, profile, device)
    if outcome.skip:
        return outcome
    plan = outcome.plan
    where = torch_device(device)
    holder: dict[str, Any] = {}

    @trusted("gpu-train")
    def build_and_train():
        setup = full_size_setup(recipe, resolved, Scale.full(recipe), where, schedule_steps=steps)
        holder["setup"] = setup
        device.release()
        plan.apply(device)
        device.reset_peak()
        report = run_training(setup, recipe, vocab_size=vocab_size(resolved.config), steps=steps, device=where)
        return report, device.peak_allocated(), device.peak_reserved()

    from recipe_checks.memory.estimate import budget_for

    budget, _ = budget_for(recipe, profile)
    result = _guarded(device, build_and_train, budget, holder)
    if isinstance(result, OutOfMemory):
        outcome.out_of_memory = result
        return outcome
    outcome.train, allocated, reserved = result
    outcome.notes.append(f"peak {allocated / 2**30:.2f} GiB allocated, {reserved / 2**30:.2f} GiB reserved")
    outcome.comparison = compare_with_estimate(allocated, reserved, allocated, 0, budget)
    return outcome


def _guarded(device, fn, budget_bytes: int, holder: dict):
    """fn under guarded_step (an out-of-memory failure becomes a report, its memory released); the
    memory limit lifted afterwards, whatever happened, so the next recipe starts from a clean device."""
    from recipe_checks.run.measure import guarded_step

    try:
        return guarded_step(device, fn, budget_bytes=budget_bytes, cleanup=lambda: _drop_setup(holder))
    finally:
        holder.clear()
        device.limit_memory(None)
        device.release()


def local_device():
    """The GPU this machine runs gpu-step and gpu-train on (the first CUDA device), or a DeviceUnavailable
    saying what is missing. One place, so a test can stand a CPU device in for it."""
    from recipe_checks.run.device import CudaDevice

    return CudaDevice(0)
