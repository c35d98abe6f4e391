"""RC721: real steps of the full-size model fit the target GPU's memory, on a real GPU."""

from __future__ import annotations

from recipe_checks.findings import Severity
from recipe_checks.rules._gpu_common import GPU_READS, run_on_gpu
from recipe_checks.rules.base import Rule


class GpuStepMemory(Rule):
    """
    ## What it checks
    On a machine with a CUDA GPU, the recipe's full-size architecture is built with random weights
    (weight values do not change memory; nothing is downloaded), quantized by bitsandbytes where the
    recipe says so, adapted by peft, and trained for three real steps at the recipe's sequence length,
    micro-batch and accumulation. A local GPU larger than the target is limited to the target's memory
    (`torch.cuda.set_per_process_memory_fraction`), so an RTX 4090 budget is tested on an H100. The
    peak (`torch.cuda.max_memory_allocated`, and reserved) plus the CUDA context must fit the budget;
    the finding reports it beside the traced estimate, like with like. Skipped without a CUDA GPU, or
    on a local GPU smaller than the target or without a capability the recipe needs (bf16).

    ## Why it matters
    The traced estimate is exact for what it models; a real GPU also has the caching allocator's
    fragmentation, the kernels' workspaces and the library versions of the day. This is the check that
    says the run fits on the hardware, not on paper.

    ## Example
        model: meta-llama/Llama-3.1-8B
        training: {per_device_train_batch_size: 8, max_seq_length: 4096, bf16: true}
        hardware: {gpu: rtx4090}

    ## Use instead
    The fixes that `recipe-checks estimate` ranks (checkpointing, a smaller micro-batch with more
    accumulation, QLoRA, a paged 8-bit optimizer, a chunked loss).
    """

    id = "RC721"
    name = "gpu-step-memory"
    check = "gpu-step"
    reads = GPU_READS
    needs = frozenset({"gpu", "model"})
    why = "the run that fits on paper must fit on the GPU: an out-of-memory error at step 1 loses the GPU hour"

    def run(self, ctx):
        from recipe_checks.run.gpu import gpu_step

        _, outcome, failed = run_on_gpu(
            self, ctx, "gpu-step", lambda device: gpu_step(ctx.recipe, ctx.state.resolved_model(), ctx.gpu, device))
        if failed:
            yield from failed
            return
        comparison = outcome.comparison
        text = f"{outcome.plan.describe()}; " + "; ".join(comparison.lines())
        if comparison.fits:
            yield self.finding(ctx, text, ("training",), at_value=False, help="", severity=Severity.INFO)
        else:
            yield self.finding(ctx, f"over budget: {text}", ("training",), at_value=False,
                               help="apply the fixes `recipe-checks estimate` ranks for this recipe")
