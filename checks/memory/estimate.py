"""Will this recipe fit on this GPU? The traced peak plus the CUDA overheads, against the budget,
and when it does not fit, concrete fixes ranked by the bytes they save, each traced itself.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from checks.gpus import GIB
from checks.memory.errors import TraceError
from checks.memory.settings import StepSettings, settings_from_recipe

OVERHEADS_FILE = Path(__file__).resolve().parent.parent / "data" / "memory_overheads.yaml"


@functools.cache
def overheads() -> dict:
    return yaml.safe_load(OVERHEADS_FILE.read_text(encoding="utf-8"))


def overhead_bytes() -> int:
    data = overheads()
    return int(data["cuda_context"]["bytes"]) + int(data["cublas_workspace"]["bytes"])


@dataclass
class Fix:
    name: str
    change: str  # what to write in the recipe
    peak_bytes: int
    saved_bytes: int
    fits: bool


@dataclass
class Estimate:
    peak_bytes: int  # tensors at the traced peak + CUDA overheads
    budget_bytes: int
    budget_source: str
    breakdown: dict[str, int]  # category -> bytes at the peak, overhead included
    paged_bytes: int  # optimizer state in CUDA managed memory: can spill to host memory
    peak_phase: str
    trace: Any  # the StepTrace
    fixes: list[Fix] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return self.peak_bytes <= self.budget_bytes

    @property
    def fits_with_paging(self) -> bool:
        return self.peak_bytes - self.paged_bytes <= self.budget_bytes

    def to_dict(self) -> dict:
        return {
            "peak_bytes": self.peak_bytes,
            "budget_bytes": self.budget_bytes,
            "budget_source": self.budget_source,
            "fits": self.fits,
            "fits_if_paged_states_spill": self.fits_with_paging,
            "peak_phase": self.peak_phase,
            "breakdown": self.breakdown,
            "paged_optimizer_state_bytes": self.paged_bytes,
            "trainable_parameters": self.trace.trainable_params,
            "fixes": [dataclasses.asdict(f) for f in self.fixes],
            "notes": self.notes,
        }


def budget_for(recipe, gpu) -> tuple[int, str]:
    if recipe.hardware.vram_budget_gib is not None:
        return int(recipe.hardware.vram_budget_gib * GIB), "hardware.vram_budget_gib"
    margin = float(overheads()["allocator_margin"]["fraction"])
    return int(gpu.memory_bytes * (1 - margin)), f"{gpu.key} memory less {margin:.0%} allocator margin"


def _total(trace) -> int:
    return trace.timeline.peak_bytes + overhead_bytes()


def estimate(recipe, resolved, gpu, *, with_fixes: bool = True) -> Estimate:
    settings = settings_from_recipe(recipe, resolved.config)
    task = recipe.lora.task_type if recipe.lora else "CAUSAL_LM"
    try:
        # imported here: a library that lacks what the trace needs is a CompatError, a finding
        from checks.memory.step import trace_training_step

        trace = trace_training_step(resolved, settings, task)
    except TraceError:
        raise
    except Exception as exc:  # a model or setting the fake trace cannot run: a finding, not a crash
        raise TraceError(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
    budget, source = budget_for(recipe, gpu)
    data = overheads()
    breakdown = dict(trace.timeline.breakdown)
    breakdown["cuda_context"] = int(data["cuda_context"]["bytes"])
    breakdown["cublas_workspace"] = int(data["cublas_workspace"]["bytes"])
    result = Estimate(
        peak_bytes=_total(trace), budget_bytes=budget, budget_source=source, breakdown=breakdown,
        paged_bytes=trace.timeline.breakdown.get("optimizer_state_paged", 0), peak_phase=trace.timeline.peak_phase,
        trace=trace, notes=list(trace.notes),
    )
    if with_fixes and not result.fits:
        result.fixes = rank_fixes(resolved, settings, task, result)
    return result


def candidate_fixes(settings: StepSettings, model_type: str | None = None) -> list[tuple[str, str, StepSettings]]:
    """(name, recipe change, settings) for each fix that applies to these settings and model."""
    from checks.memory.chunked_loss import supports_chunked_loss

    out = []
    if not settings.gradient_checkpointing:
        out.append(("gradient checkpointing", "training.gradient_checkpointing: true",
                    dataclasses.replace(settings, gradient_checkpointing=True)))
    if settings.micro_batch > 1:
        half = settings.micro_batch // 2
        ga = settings.gradient_accumulation * settings.micro_batch // half
        out.append(("smaller micro-batch, same effective batch",
                    f"training.per_device_train_batch_size: {half}, gradient_accumulation_steps: {ga}",
                    dataclasses.replace(settings, micro_batch=half, gradient_accumulation=ga)))
    if settings.lora and not settings.quant_4bit:
        compute = settings.precision if settings.precision != "float32" else "bfloat16"
        nf4 = (("compute_dtype", compute), ("double_quant", True), ("quant_storage", "uint8"),
               ("quant_type", "nf4"), ("skip", ()))
        out.append(("QLoRA (4-bit NF4 base)",
                    f"quantization: {{load_in_4bit: true, bnb_4bit_quant_type: nf4, bnb_4bit_use_double_quant: true, "
                    f"bnb_4bit_compute_dtype: {compute}}}, training.optim: paged_adamw_8bit",
                    dataclasses.replace(settings, quant_4bit=nf4, optim="paged_adamw_8bit")))
    if settings.optim not in ("paged_adamw_8bit",):
        out.append(("paged 8-bit optimizer", "training.optim: paged_adamw_8bit",
                    dataclasses.replace(settings, optim="paged_adamw_8bit")))
    if settings.seq_len >= 256:
        out.append(("shorter sequences", f"training.max_seq_length: {settings.seq_len // 2}",
                    dataclasses.replace(settings, seq_len=settings.seq_len // 2)))
    if not settings.chunked_loss and supports_chunked_loss(model_type):
        out.append(("chunked loss (Liger's fused linear cross-entropy: no full logits)",
                    "training.use_liger_kernel: true (needs the liger-kernel package)",
                    dataclasses.replace(settings, chunked_loss=True)))
    return out


def rank_fixes(resolved, settings: StepSettings, task: str, base: Estimate) -> list[Fix]:
    from checks.memory.step import trace_training_step

    fixes = []
    for name, change, changed in candidate_fixes(settings, resolved.config.get("model_type")):
        try:
            peak = _total(trace_training_step(resolved, changed, task))
        except Exception:  # a fix the trace cannot run is not offered
            continue
        fixes.append(Fix(name, change, peak, base.peak_bytes - peak, peak <= base.budget_bytes))
    return sorted((f for f in fixes if f.saved_bytes > 0), key=lambda f: -f.saved_bytes)
