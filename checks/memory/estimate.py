"""Will this recipe fit on this GPU? The traced peak plus the CUDA overheads, against the budget,
and when it does not fit, concrete fixes ranked by the bytes they save, each traced itself; when no
single fix fits, the first traced combination that does; when the weights alone exceed the budget,
the smallest GPU profile where the recipe fits as it is.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from recipe_checks.gpus import GIB
from recipe_checks.memory.errors import TraceError
from recipe_checks.memory.settings import StepSettings, settings_from_recipe

OVERHEADS_FILE = Path(__file__).resolve().parent.parent / "data" / "memory_overheads.yaml"


@functools.cache
def overheads() -> dict:
    return yaml.safe_load(OVERHEADS_FILE.read_text(encoding="utf-8"))


def overhead_bytes() -> int:
    data = overheads()
    return int(data["cuda_context"]["bytes"]) + int(data["cublas_workspace"]["bytes"])


# A fix is offered when it saves at least this share of the traced tensors' peak: a few KiB less (a shorter
# batch of token ids where the sequence length decides nothing else) is no fix.
MIN_SAVING = 0.01

# A combination applies at most this many fixes; each round traces the fixes that apply on top of the
# previous ones (at most len(candidate_fixes) traces a round), so the search stays a few dozen traces.
COMBINATION_ROUNDS = 3


@dataclass
class Fix:
    name: str
    change: str  # what to write in the recipe
    peak_bytes: int
    saved_bytes: int
    fits: bool
    parts: tuple[str, ...] = ()  # a combination: the names of the fixes it applies, in order; () for one fix
    settings: Any = field(default=None, repr=False, compare=False)  # what it was traced with (not in to_dict)


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
    weights_bytes: int = 0  # the model's weights (and 4-bit quantization state) at the peak
    smallest_fitting_gpu: str | None = None  # set when the weights alone exceed the budget
    weights_note: str | None = None  # says so, naming that GPU (also the first of `notes`)
    plan: Any = None  # the distributed plan (checks/memory/sharding.py ShardPlan); None: one GPU

    @property
    def world_size(self) -> int:
        return self.plan.world_size if self.plan is not None else 1

    def per_rank(self) -> dict:
        """Rank 0's peak and breakdown, what of it is one shard of the whole and what every rank holds."""
        plan = self.plan
        sharded = sorted(k for k in self.breakdown if k in plan.sharded)
        return {
            "rank": 0, "strategy": plan.strategy, "peak_bytes": self.peak_bytes, "breakdown": self.breakdown,
            "sharded": sharded, "not_sharded": sorted(k for k in self.breakdown if k not in plan.sharded),
            "host_offloaded_bytes": self.trace.timeline.host_bytes,
            "host_offloaded_breakdown": self.trace.timeline.host_breakdown,
        }

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
            "fixes": [{f.name: getattr(fix, f.name) for f in dataclasses.fields(fix) if f.name != "settings"}
                      for fix in self.fixes],
            "notes": self.notes,
            "weights_bytes": self.weights_bytes,
            "weights_exceed_budget": self.weights_exceed_budget,
            "smallest_fitting_gpu": self.smallest_fitting_gpu,
            "world_size": self.world_size,
            "per_rank": self.per_rank() if self.plan is not None else None,
            # a DPO step's reference forward: the highest total while it runs, overheads included (None: none ran)
            "reference_pass_peak_bytes": (self.trace.timeline.region_peaks["reference"] + overhead_bytes()
                                          if "reference" in getattr(self.trace.timeline, "region_peaks", {}) else None),
        }

    @property
    def weights_exceed_budget(self) -> bool:
        return self.weights_bytes > self.budget_bytes


def budget_for(recipe, gpu) -> tuple[int, str]:
    if recipe.hardware.vram_budget_gib is not None:
        return int(recipe.hardware.vram_budget_gib * GIB), "hardware.vram_budget_gib"
    margin = float(overheads()["allocator_margin"]["fraction"])
    return int(gpu.memory_bytes * (1 - margin)), f"{gpu.key} memory less {margin:.0%} allocator margin"


def _total(trace) -> int:
    return trace.timeline.peak_bytes + overhead_bytes()


def estimate(recipe, resolved, gpu, *, with_fixes: bool = True, catalog=None) -> Estimate:
    """The traced estimate of one recipe on one GPU profile; when it does not fit, `with_fixes` traces
    the fixes (and, when none fits alone, their combinations). `catalog`: the profiles to name the
    smallest fitting one from when the weights alone exceed the budget (default: the shipped ones)."""
    # first: a target that is several cards ('a100') has no one budget, said before seconds of tracing
    budget, source = budget_for(recipe, gpu)
    settings = settings_from_recipe(recipe, resolved.config)
    task = recipe.lora.task_type if recipe.lora else "CAUSAL_LM"
    if settings.preference:  # TRL's step needs TRL: MissingExtra (the checks skip, naming the extra), not a trace error
        from recipe_checks.recipe.library import require_trl

        require_trl()
    try:
        # imported here: a library that lacks what the trace needs is a CompatError, a finding
        from recipe_checks.memory.step import trace_training_step

        trace = trace_training_step(resolved, settings, task)
    except TraceError:
        raise
    except Exception as exc:  # a model or setting the fake trace cannot run: a finding, not a crash
        raise TraceError(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
    data = overheads()
    breakdown = dict(trace.timeline.breakdown)
    breakdown["cuda_context"] = int(data["cuda_context"]["bytes"])
    breakdown["cublas_workspace"] = int(data["cublas_workspace"]["bytes"])
    result = Estimate(
        peak_bytes=_total(trace), budget_bytes=budget, budget_source=source, breakdown=breakdown,
        paged_bytes=trace.timeline.breakdown.get("optimizer_state_paged", 0), peak_phase=trace.timeline.peak_phase,
        trace=trace, notes=list(trace.notes),
        weights_bytes=breakdown.get("weights", 0) + breakdown.get("quant_state", 0), plan=settings.distributed,
    )
    if "reference" in trace.timeline.region_peaks:  # a DPO step's reference forward, wherever the peak is
        from recipe_checks.memory.preference import reference_pass_note

        result.notes.insert(0, reference_pass_note(trace.timeline.region_peaks["reference"] + overhead_bytes(),
                                                   result.peak_bytes))
    if result.fits:
        return result
    if with_fixes:
        result.fixes = rank_fixes(resolved, settings, task, result)
        if not any(f.fits for f in result.fixes):
            combined = combine_fixes(resolved, settings, task, result)
            if combined is not None:
                result.fixes = sorted([*result.fixes, combined], key=lambda f: -f.saved_bytes)
        if settings.distributed is not None:
            result.fixes = [_smallest_world_size(resolved, task, f, result) if f.name.startswith("more GPUs") else f
                            for f in result.fixes]
        if getattr(recipe, "unsloth", None) is not None:  # written as an Unsloth recipe writes them (RC120)
            from recipe_checks.unsloth import as_unsloth_fixes

            result.fixes = as_unsloth_fixes(result.fixes)
    if result.weights_exceed_budget:
        result.weights_note = _weights_exceed_note(recipe, result, catalog)
        result.notes.insert(0, result.weights_note)
    return result


def _smallest_world_size(resolved, task: str, fix: Fix, base: Estimate) -> Fix:
    """A 'more GPUs' fix that fits at twice the GPUs, narrowed to the smallest world size that fits: per-rank
    memory never rises with the world size of a sharded step (tests/test_distributed.py), so a bisection
    between the recipe's and twice it finds it, each size traced."""
    from recipe_checks.memory.step import trace_training_step

    if not fix.fits:
        return fix
    settings = fix.settings
    low, high = base.plan.world_size, base.plan.world_size * 2  # low does not fit, high does
    best = fix
    while high - low > 1:
        middle = (low + high) // 2
        changed = dataclasses.replace(settings, distributed=settings.distributed.with_world_size(middle))
        peak = _total(trace_training_step(resolved, changed, task))
        if peak <= base.budget_bytes:
            high = middle
            best = Fix(f"more GPUs ({middle})", f"distributed.world_size: {middle}", peak, base.peak_bytes - peak, True)
        else:
            low = middle
    return best


def _weights_exceed_note(recipe, result: Estimate, catalog) -> str:
    if catalog is None:
        from recipe_checks.gpus import GpuCatalog

        catalog = GpuCatalog.load()
    smallest = smallest_fitting_profile(recipe, result.peak_bytes, catalog)
    result.smallest_fitting_gpu = smallest.key if smallest is not None else None
    # a QLoRA of fused MoE experts shrinks them by dropping the quantization (checks/memory/experts.py)
    unquantize = any(f.name.startswith("LoRA without quantization") for f in result.fixes or ())
    shrink = "here LoRA without quantization: the experts stay 16-bit" if unquantize else "QLoRA"
    note = (f"the model's weights alone take {result.weights_bytes / GIB:.1f} GiB, more than the "
            f"{result.budget_bytes / GIB:.1f} GiB budget: only a fix that shrinks them ({shrink}) or a larger GPU fits")
    if smallest is None:
        return note + f"; no known GPU profile has the {result.peak_bytes / GIB:.1f} GiB the recipe needs as it is"
    return note + (f"; the smallest known GPU where the recipe fits as it is (peak {result.peak_bytes / GIB:.1f} "
                   f"GiB): {smallest.key} ({smallest.name}, {smallest.memory_bytes / GIB:.1f} GiB)")


def smallest_fitting_profile(recipe, peak_bytes: int, catalog):
    """The profile with the least memory whose budget (its memory less the allocator margin) holds the
    traced peak, among those with the precision the recipe trains in; None if no profile does."""
    plain = recipe.model_copy(update={"hardware": recipe.hardware.model_copy(update={"vram_budget_gib": None})})
    q = recipe.quantization
    wants_bf16 = "bfloat16" in (recipe.training_dtype, recipe.model.torch_dtype,
                                q.bnb_4bit_compute_dtype if q is not None and q.load_in_4bit else None)
    wants_fp8 = (recipe.model.torch_dtype or "").startswith("float8") or (q is not None and q.quant_method == "fp8")
    for profile in sorted(catalog, key=lambda p: (p.memory_bytes, p.key)):
        if (wants_bf16 and not profile.supports_bf16) or (wants_fp8 and not profile.supports_fp8):
            continue
        if peak_bytes <= budget_for(plain, profile)[0]:
            return profile
    return None


def candidate_fixes(settings: StepSettings, model_type: str | None = None, *,
                    fused_experts: bool = False) -> list[tuple[str, str, StepSettings]]:
    """(name, recipe change, settings) for each fix that applies to these settings and model
    (`fused_experts`: an MoE model whose experts are 3-D parameters, checks/memory/experts.py)."""
    from recipe_checks.memory.chunked_loss import supports_chunked_loss

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
    if fused_experts and settings.lora and (settings.quant_4bit or settings.quant_8bit):
        # bitsandbytes leaves fused 3-D experts unquantized and the kbit preparation upcasts them to float32
        dtype = settings.precision if settings.precision != "float32" else "bfloat16"
        out.append((f"LoRA without quantization (the experts stay {dtype} instead of float32)",
                    f"remove the quantization section, model.torch_dtype: {dtype}",
                    dataclasses.replace(settings, quant_4bit=(), quant_8bit=(), weights_dtype=dtype)))
    if settings.optim not in ("paged_adamw_8bit",):
        out.append(("paged 8-bit optimizer", "training.optim: paged_adamw_8bit",
                    dataclasses.replace(settings, optim="paged_adamw_8bit")))
    if settings.distributed is not None:  # several GPUs: another sharding, offload, more GPUs
        from recipe_checks.memory.sharding import distributed_fixes

        out.extend(distributed_fixes(settings))
    if settings.preference:  # a DPO step: its own fixes (precomputed reference, dpo.max_length)
        from recipe_checks.memory.preference import preference_fixes

        return [*out, *preference_fixes(settings)]
    if settings.diffusion:  # a diffusion transformer's step: sized by its images, max_seq_length does nothing
        return out
    if settings.seq_len >= 256:
        out.append(("shorter sequences", f"training.max_seq_length: {settings.seq_len // 2}",
                    dataclasses.replace(settings, seq_len=settings.seq_len // 2)))
    if not settings.chunked_loss and supports_chunked_loss(model_type):
        out.append(("chunked loss (Liger's fused linear cross-entropy: no full logits)",
                    "training.use_liger_kernel: true (needs the liger-kernel package)",
                    dataclasses.replace(settings, chunked_loss=True)))
    return out


def _traced_fixes(resolved, settings: StepSettings, task: str) -> Iterator[tuple[str, str, StepSettings, int]]:
    """(name, change, settings, traced peak) of each fix that applies to `settings`, in candidate order,
    traced as it is asked for; a fix the trace cannot run is left out. Traces are cached per settings."""
    from recipe_checks.memory.step import trace_training_step
    from recipe_checks.progress import tick

    from recipe_checks.memory.experts import config_has_experts

    for name, change, changed in candidate_fixes(settings, resolved.config.get("model_type"),
                                                 fused_experts=config_has_experts(resolved.config)):
        tick(name)
        try:
            peak = _total(trace_training_step(resolved, changed, task))
        except Exception:  # a fix the trace cannot run is not offered
            continue
        yield name, change, changed, peak


def rank_fixes(resolved, settings: StepSettings, task: str, base: Estimate) -> list[Fix]:
    """Each single fix, traced, that lowers the peak: the largest saving first."""
    fixes = [Fix(name, change, peak, base.peak_bytes - peak, peak <= base.budget_bytes, settings=changed)
             for name, change, changed, peak in _traced_fixes(resolved, settings, task)]
    least = MIN_SAVING * base.trace.timeline.peak_bytes
    return sorted((f for f in fixes if f.saved_bytes > 0 and f.saved_bytes >= least), key=lambda f: -f.saved_bytes)


def combine_fixes(resolved, settings: StepSettings, task: str, base: Estimate,
                  rounds: int = COMBINATION_ROUNDS) -> Fix | None:
    """The first traced combination of fixes that fits, when no single one does (None: none found).

    Greedy: apply the fix that saves the most, trace every fix that still applies on top of it, and
    take the first of those (in candidate order, the least disruptive first) that fits; else apply the
    one that saves the most and go on, up to `rounds` fixes in all. Every combination is traced as a
    whole, never added up from the single savings (fixes interact: a smaller batch saves less on QLoRA).
    """
    applied: dict[str, str] = {}  # fix name -> change; a fix applied again (halving the batch twice) replaces it
    current, peak = settings, base.peak_bytes
    for depth in range(rounds):
        traced = []
        for name, change, changed, fix_peak in _traced_fixes(resolved, current, task):
            if depth > 0 and fix_peak <= base.budget_bytes:  # the first that fits: the others are not traced
                parts = {**applied, name: change}
                return Fix(" + ".join(parts), " and ".join(parts.values()), fix_peak, base.peak_bytes - fix_peak,
                           True, parts=tuple(parts))
            traced.append((name, change, changed, fix_peak))
        best = min(traced, key=lambda t: t[3], default=None)
        if best is None or best[3] >= peak:
            return None
        name, change, current, peak = best
        applied.pop(name, None)
        applied[name] = change
    return None
