"""RC807: a distributed strategy on one GPU, with nothing offloaded, distributes nothing."""

from __future__ import annotations

from recipe_checks.findings import Severity
from recipe_checks.rules.base import Rule


class SingleRankDistributed(Rule):
    """
    ## What it checks
    A `distributed` section whose world size is 1 (`world_size: 1`, or one node with one GPU) and that
    offloads nothing to the CPU.

    ## Why it matters
    DDP on one rank replicates onto nobody; FSDP and ZeRO on one rank shard into one shard of the whole:
    the run holds everything a single-GPU run holds, plus the wrappers' buffers and communication. On one
    GPU only offload (ZeRO-Offload, FSDP's CPUOffloadPolicy) changes the memory, and it is not set.

    ## Example
        distributed: {strategy: zero2, world_size: 1}

    ## Use instead
    Remove the section for one GPU, or give the number of GPUs the run has, or offload:

        distributed: {strategy: zero2, world_size: 1, zero: {offload_optimizer: cpu}}
    """

    id = "RC807"
    name = "single-rank-distributed"
    check = "schema"
    severity = Severity.WARNING
    reads = frozenset({"distributed"})
    why = "on one GPU DDP, FSDP and ZeRO change nothing but their own overhead, unless they offload"

    def run(self, ctx):
        distributed = ctx.recipe.distributed
        if distributed is None or not distributed.size_known or distributed.size != 1:
            return
        zero, fsdp = distributed.zero, distributed.fsdp
        if (zero is not None and "cpu" in (zero.offload_optimizer, zero.offload_param)) or (
                zero is not None and "nvme" in (zero.offload_optimizer, zero.offload_param)) or (
                fsdp is not None and fsdp.offload_policy == "cpu"):
            return
        key = next((k for k in ("world_size", "gpus_per_node") if getattr(distributed, k) is not None), "strategy")
        yield self.finding(
            ctx, f"strategy {distributed.strategy} on 1 GPU offloads nothing: it distributes nothing",
            ("distributed", key),
            help="remove the distributed section for a one-GPU run, or give the number of GPUs the run has",
        )
