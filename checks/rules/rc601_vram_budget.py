"""RC601: one real training step of the full-size model fits the target GPU's memory budget."""

from __future__ import annotations

from recipe_checks.findings import Severity
from recipe_checks.rules.base import CannotJudge, NotRun, Rule

from recipe_checks.gpus import GIB


class VramBudget(Rule):
    """
    ## What it checks
    The recipe's training step, traced for the full-size model on fake tensors (forward, backward,
    gradient clipping and optimizer step, with the recipe's exact settings), peaks below the budget:
    `hardware.vram_budget_gib`, or the target GPU's memory less a 5% allocator margin. The peak adds
    the CUDA context and cuBLAS workspaces (checks/data/memory_overheads.yaml) to every byte the
    caching allocator hands out. `recipe-checks estimate RECIPE` prints the same estimate.

    ## Why it matters
    An out-of-memory error at step 1, or at the first long batch, is the most common way a rented GPU
    hour is lost.

    ## Example
        model: meta-llama/Llama-3.1-8B
        lora: {r: 16, target_modules: all-linear}
        training: {per_device_train_batch_size: 8, max_seq_length: 2048, bf16: true}
        hardware: {gpu: rtx4090}

    ## Use instead
    The finding lists fixes ranked by the memory they save, each traced: gradient checkpointing, a
    smaller micro-batch with more accumulation, QLoRA, a paged 8-bit optimizer, shorter sequences,
    a chunked loss (`training.use_liger_kernel: true`, Liger's fused linear cross-entropy). When no
    single fix fits, it adds the first combination that does (QLoRA + a smaller micro-batch), traced as
    a whole; when the weights alone exceed the budget, it says so and names the smallest GPU profile
    where the recipe fits as it is.
    """

    id = "RC601"
    name = "vram-budget"
    check = "vram"
    reads = frozenset({"model", "quantization", "lora", "training", "hardware", "distributed"})
    needs = frozenset({"gpu", "model"})
    why = "an out-of-memory error at step 1 loses the GPU hour this check exists to save"

    def run(self, ctx):
        from recipe_checks.memory.estimate import estimate
        from recipe_checks.memory.errors import NotModelled
        from recipe_checks.memory.step import TraceError
        from recipe_checks.recipe.library import MissingExtra

        gpu = ctx.gpu
        try:
            result = estimate(ctx.recipe, ctx.state.resolved_model(), gpu, catalog=ctx.state.catalog)
        except MissingExtra as exc:  # a DPO recipe without TRL: skipped, naming the extra
            raise NotRun(f"not run: {exc}") from None
        except NotModelled as exc:  # a step the libraries run that the trace does not model: not checked, no error
            raise NotRun(f"not checked: the training step is not modelled: {exc}") from None
        except TraceError as exc:
            # The engine reports this, unless the static checks' errors already say why (peft or
            # transformers refusing the recipe as written): then it points at those instead.
            raise CannotJudge(self.finding(
                ctx, f"the training step cannot be traced: {exc}", ("training",), at_value=False,
                help="fix what the message names; if the recipe trains as it is, the memory estimate does not "
                     "cover this setting yet",
            )) from None
        shown = ", ".join(f"{k} {v / GIB:.2f}" for k, v in sorted(result.breakdown.items(), key=lambda kv: -kv[1]))
        # a distributed recipe: rank 0 of its world size (checks/memory/sharding.py)
        rank = (f" per rank (rank 0 of {result.world_size}, {result.plan.label})" if result.plan is not None else "")
        if result.plan is not None and result.trace.timeline.host_bytes:
            shown += f"; offloaded to host memory: {result.trace.timeline.host_bytes / GIB:.2f} per rank"
        if result.fits:
            yield self.finding(
                ctx,
                f"peak {result.peak_bytes / GIB:.1f} GiB{rank} of the {result.budget_bytes / GIB:.1f} GiB budget on {gpu.key} "
                f"(at the peak, GiB: {shown})",
                ("training",), at_value=False, help="", severity=Severity.INFO,
            )
            return
        fixes = [
            f"{f.name}: peak {f.peak_bytes / GIB:.1f} GiB (saves {f.saved_bytes / GIB:.1f} GiB{', fits' if f.fits else ''})"
            f" -- {f.change}"
            for f in result.fixes
        ]
        paged = (f"; {result.paged_bytes / GIB:.1f} GiB of it is paged optimizer state that can spill to host memory"
                 if result.paged_bytes >= 0.05 * GIB else "")
        yield self.finding(
            ctx,
            f"peak {result.peak_bytes / GIB:.1f} GiB{rank} does not fit the {result.budget_bytes / GIB:.1f} GiB budget "
            f"({result.budget_source}) on {gpu.key}{paged}",
            ("hardware", "vram_budget_gib") if ctx.recipe.hardware.vram_budget_gib else ("training",),
            at_value=False,
            help=(f"{result.weights_note}. " if result.weights_note else "") + "fixes, each traced: "
            + ("; ".join(fixes) if fixes else "none of the usual fixes brings it under the budget"),
            details=(f"at the peak ({result.peak_phase}), GiB: {shown}",),
        )
